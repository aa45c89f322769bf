// Drives Debian's Chromium (headless, via playwright-core) against a running modelbridge server:
// for every model in the job, the same inputs through the server (REST, from the page) and through
// onnxruntime-web in the page; for recurrent nodes also the plain-JS gates implementation; then a
// screenshot of /ui with a model loaded. Used by tests/e2e/test_browser_parity.py.
//
// Usage: node scripts/browser-parity.mjs JOB.json RESULT.json
//   JOB: {url, gpu?: bool, models: [{name, device?: 'wasm'|'webgpu'|'auto', inputs: [{name, datatype, shape, data}], parameters?,
//                        recurrent?: {onnx_b64, extra_inputs? (state tensors), nodes: [{index, x, sequence_lens?, initial_h, initial_c, outputs: {Y, Y_h, Y_c}}]}}],
//         x / sequence_lens / initial_h / initial_c: {output: name in the probe model} | {input: model input} | {values, shape} | null
//         screenshot?: {model, path}, quickstart?: '/ui/quickstart.html', keyed?: {url, key, model},
//         pages?: [url of a page that sets #out[data-done=yes] with a JSON verdict]}
//   64-bit integer data travels as strings.
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

const [jobPath, resultPath] = process.argv.slice(2);
const job = JSON.parse(readFileSync(jobPath, 'utf8'));

// Runs inside the page.
async function inPage(model) {
  const mb = await import('/ui/vendor/modelbridge.js');
  const revive = (t) => ({ ...t, data: t.datatype === 'INT64' || t.datatype === 'UINT64' ? t.data.map(BigInt) : t.data });
  const plain = (t) => ({
    name: t.name, datatype: t.datatype, shape: t.shape,
    data: t.datatype === 'BYTES' ? mb.bytesToStrings(t.data) : Array.from(t.data, (v) => (typeof v === 'bigint' ? String(v) : Number(v))),
  });
  const maxDiff = (a, b) => {
    if (a.length !== b.length) return Infinity;
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    return m;
  };
  const client = new mb.InferenceClient();
  const runner = mb.createLocalRunner(client, { device: model.device ?? 'wasm' });
  const inputs = model.inputs.map(revive);
  const local = await runner.load(model.name);
  // Stateful models: one whole sequence in one request (zero initial state on both sides).
  const options = model.parameters ? { parameters: model.parameters } : {};
  const server = await client.infer(model.name, inputs, options);
  const browser = await local.infer(inputs, options);
  // device 'auto' takes WebGPU when the browser has an adapter, else wasm; either way the same answers.
  const auto = model.device ? local : await mb.createLocalRunner(client, { device: 'auto' }).load(model.name);
  const autoOut = model.device ? browser : await auto.infer(inputs, options);
  const result = {
    name: model.name, device: local.device, auto: { device: auto.device, outputs: autoOut.outputs.map(plain) }, irDowngraded: runner.irDowngraded ?? null,
    server: server.outputs.map(plain), browser: browser.outputs.map(plain), gates: [],
  };
  if (model.recurrent) {
    // The same model with every recurrent node's X, states and outputs exposed as graph outputs.
    const bytes = Uint8Array.from(atob(model.recurrent.onnx_b64), (c) => c.charCodeAt(0));
    const [session] = await runner.createSession(bytes);
    const probe = new mb.LocalModel(mb.ort, session, { name: `${model.name}+probes` });
    const probeInputs = [...inputs, ...(model.recurrent.extra_inputs ?? []).map(revive)];
    const run = await probe.infer(probeInputs);
    // A node's X or state is either computed in the graph (exposed as an output) or a known value.
    const value = (ref) => {
      if (ref === null) return undefined;
      if (ref.output) return run.output(ref.output);
      if (ref.input) return probeInputs.find((t) => t.name === ref.input);
      return { data: ref.values, shape: ref.shape };
    };
    const doc = await client.gates(model.name);
    const { runGates } = await import('/ui/vendor/modelbridge-gates.js'); // the standalone 4 KB build
    for (const spec of model.recurrent.nodes) {
      const x = value(spec.x);
      const [seqLength, batchSize] = x.shape;
      const initialH = value(spec.initial_h)?.data;
      const initialC = value(spec.initial_c)?.data;
      const seqLens = value(spec.sequence_lens ?? null)?.data;
      const mine = runGates(doc, x.data, { node: spec.index, seqLength, batchSize, initialH, initialC, seqLens });
      const diffs = {};
      for (const [key, name] of Object.entries(spec.outputs)) diffs[key] = maxDiff(mine[key], run.output(name).data);
      result.gates.push({ node: doc.nodes[spec.index].node, op: doc.nodes[spec.index].op, diffs });
    }
    await session.release();
  }
  return result;
}

// Counts canvas pixels that differ from white/transparent: proof that something was drawn.
function inkOf() {
  return Array.from(document.querySelectorAll('canvas')).filter((c) => c.offsetParent !== null).map((c) => {
    const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    let ink = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240)) ink++;
    return { id: c.id || 'heatmap', width: c.width, height: c.height, ink };
  });
}

// job.gpu: a software WebGPU adapter (SwiftShader) instead of --disable-gpu, to exercise the WebGPU path.
const GPU_ARGS = ['--headless', '--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan', '--use-angle=swiftshader'];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: job.gpu ? GPU_ARGS : CHROMIUM_ARGS });
const out = { models: [], console: [], requests: [], screenshot: null, seconds: {} };
const t0 = Date.now();
const lap = (what) => { out.seconds[what] = (Date.now() - t0) / 1000; };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
  page.on('request', (r) => out.requests.push(r.url()));
  await page.goto(`${job.url}/ui/`);
  await page.waitForFunction(() => ['ready', 'done', 'error', 'locked'].includes(document.getElementById('status').dataset.state));
  out.crossOriginIsolated = await page.evaluate(() => self.crossOriginIsolated);
  lap('ui-open');
  for (const model of job.models) {
    try {
      out.models.push(await page.evaluate(inPage, model));
    } catch (err) {
      out.models.push({ name: model.name, error: String(err.message ?? err) });
    }
    lap(model.name);
  }
  if (job.quickstart) {
    await page.goto(`${job.url}${job.quickstart}`);
    await page.waitForFunction(() => document.getElementById('out').textContent.includes('max |'), null, { timeout: 60000 });
    out.quickstart = await page.evaluate(() => document.getElementById('out').textContent);
    lap('quickstart');
  }
  if (job.screenshot) {
    await page.goto(`${job.url}/ui/?model=${encodeURIComponent(job.screenshot.model)}`);
    await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('status').dataset.state), null,
      { timeout: 120000 });
    const status = await page.evaluate(() => ({
      state: document.getElementById('status').dataset.state,
      text: document.getElementById('status').textContent,
      ui: window.modelbridgeUI,
    }));
    await page.screenshot({ path: job.screenshot.path, fullPage: true });
    out.screenshot = { ...status, canvases: await page.evaluate(inkOf), path: job.screenshot.path };
    lap('screenshot');
  }
  if (job.pages) {
    // Pages that write their verdict (JSON) into #out, e.g. a page on another origin using the client.
    out.pages = {};
    for (const url of job.pages) {
      const other = await browser.newPage();
      other.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
      await other.goto(url);
      await other.waitForFunction(() => document.getElementById('out').dataset.done === 'yes', null, { timeout: 120000 });
      out.pages[url] = JSON.parse(await other.evaluate(() => document.getElementById('out').textContent));
      await other.close();
    }
    lap('pages');
  }
  if (job.keyed) {
    // A server that requires an inference key: /ui asks for it, then works with it.
    const keyed = await browser.newPage();
    const stateOf = () => keyed.evaluate(() => document.getElementById('status').dataset.state);
    const settled = (states) => keyed.waitForFunction((s) => s.includes(document.getElementById('status').dataset.state), states);
    await keyed.goto(`${job.keyed.url}/ui/`);
    await settled(['locked', 'ready', 'done', 'error']);
    out.keyed = { before: await stateOf() };
    await keyed.fill('#key', job.keyed.key);
    await keyed.click('#key-form button');
    await settled(['ready', 'done', 'error']);
    await keyed.click(`#models button:text-is("${job.keyed.model}")`);
    await settled(['done', 'error']);
    out.keyed.after = await keyed.evaluate(() => ({
      state: document.getElementById('status').dataset.state,
      text: document.getElementById('status').textContent,
      ui: window.modelbridgeUI,
    }));
    lap('keyed');
  }
} finally {
  await browser.close();
}
writeFileSync(resultPath, JSON.stringify(out));
