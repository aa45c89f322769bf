// Entry of the browser bundle (server/ui/vendor/modelbridge.js): the package with onnxruntime-web
// built in, its wasm files loaded from next to the bundle (served by our server, never a CDN).
import * as ort from 'onnxruntime-web';
import { LocalRunner } from './runner.js';

ort.env.wasm.wasmPaths = new URL('./', import.meta.url).href;

export * from './index.js';
export { ort };

/** A LocalRunner that uses the bundled onnxruntime-web. */
export function createLocalRunner(client, options = {}) {
  return new LocalRunner(client, { ort, ...options });
}
