// One flag between remote and local: openModel(client, name, {local}).infer(inputs) answers the
// same way whether the server or onnxruntime-web in this process does the work.
import { LocalRunner } from './runner.js';

/**
 * @param {import('./client.js').InferenceClient} client
 * @param {string} name
 * @param {{version?: string|number, local?: boolean, runner?: LocalRunner}} [options]
 */
export function openModel(client, name, { version = undefined, local = false, runner = undefined } = {}) {
  let localModel;
  const handle = {
    name,
    version,
    local,
    metadata: () => client.modelMetadata(name, { version }),
    gates: () => client.gates(name, { version }),
    async infer(inputs, options = {}) {
      if (!local) return client.infer(name, inputs, { version, ...options });
      runner ??= new LocalRunner(client);
      localModel ??= await runner.load(name, { version });
      return localModel.infer(inputs, options);
    },
  };
  return handle;
}
