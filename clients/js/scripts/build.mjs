// Builds the browser bundle into server/ui/vendor/ and copies onnxruntime-web's wasm runtime next to
// it (the bundle points ort.env.wasm.wasmPaths at its own directory). Run by `npm install` (prepare).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', '..', '..', 'server', 'ui', 'vendor');
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, '..', 'src', 'browser.js')],
  outfile: join(out, 'modelbridge.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  // Load the wasm glue (.mjs) as a separate file instead of inlining it into the bundle.
  conditions: ['onnxruntime-web-use-extern-wasm'],
  logLevel: 'warning',
});

// The plain-JS LSTM/GRU/RNN alone, for pages that only need the gates JSON (no onnxruntime).
await build({
  entryPoints: [join(here, '..', 'src', 'gates.js')],
  outfile: join(out, 'modelbridge-gates.js'),
  bundle: true, format: 'esm', platform: 'neutral', target: 'es2022', minify: true, logLevel: 'warning',
});

const require = createRequire(import.meta.url);
const ortDist = dirname(require.resolve('onnxruntime-web/ort-wasm-simd-threaded.jsep.wasm'));
// The default onnxruntime-web build (wasm + WebGPU/WebNN) loads the "jsep" runtime.
for (const f of ['ort-wasm-simd-threaded.jsep.mjs', 'ort-wasm-simd-threaded.jsep.wasm']) {
  copyFileSync(join(ortDist, f), join(out, f));
}
const kb = (f) => Math.round(statSync(join(out, f)).size / 1024);
console.log(`built server/ui/vendor: modelbridge.js ${kb('modelbridge.js')} KB, modelbridge-gates.js `
  + `${(statSync(join(out, 'modelbridge-gates.js')).size / 1024).toFixed(1)} KB, jsep wasm ${kb('ort-wasm-simd-threaded.jsep.wasm')} KB`);
