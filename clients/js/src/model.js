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
    /**
     * A stateful model's sequence: step(inputs) sends sequence_start on the first step and keeps the
     * sequence_id; step(inputs, {end: true}) or end() closes it. The server keeps the state remotely,
     * the local runner in this process: the calls are the same.
     */
    sequence(id = randomSequenceId()) {
      let started = false;
      let ended = false;
      const step = async (inputs, { end = false, ...options } = {}) => {
        if (ended) throw new RangeError(`sequence ${id} has ended`);
        const parameters = { ...(options.parameters ?? {}), sequence_id: id, sequence_start: !started, sequence_end: end };
        const result = await handle.infer(inputs, { ...options, parameters });
        started = true;
        ended = end;
        return result;
      };
      return { id, step, end: (inputs, options = {}) => step(inputs, { ...options, end: true }) };
    },
  };
  return handle;
}

function randomSequenceId() {
  // The V2 sequence extension takes uint64 or string ids; a string never collides with small integers.
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `js-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}
