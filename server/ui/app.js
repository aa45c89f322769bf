// The /ui demo page: models of the repository, their metadata, one inference on the server and one
// in this page (onnxruntime-web) side by side, the sine example, per-gate weight heatmaps.
import { InferenceClient, createLocalRunner, openModel } from './vendor/modelbridge.js';
import { LIVE_MODEL, LiveSine } from './live.js';
import { drawLines, heatmap, maxAbs } from './plots.js';
import { lengthInputs, sampleInputs, sineSeries, windowShape } from './samples.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const client = new InferenceClient();
const runner = createLocalRunner(client, { device: params.get('device') ?? 'wasm' });
const state = { models: [], comparison: null, sine: null };
window.modelbridgeUI = state; // read by the browser tests
const live = new LiveSine(client, runner);

function setStatus(text, kind) {
  $('status').textContent = text;
  $('status').dataset.state = kind;
}

function fill(table, header, rows) {
  table.replaceChildren();
  const tr = (cells, tag) => {
    const row = document.createElement('tr');
    for (const c of cells) {
      const cell = document.createElement(tag);
      cell.textContent = c;
      row.append(cell);
    }
    return row;
  };
  table.append(tr(header, 'th'), ...rows.map((r) => tr(r, 'td')));
}

const preview = (data) => Array.from(data.slice(0, 4), (v) => (typeof v === 'number' ? +v.toPrecision(5) : String(v))).join(', ')
  + (data.length > 4 ? ', …' : '');

function maxDiff(a, b) {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(Number(a[i]) - Number(b[i]));
    m = Number.isNaN(d) ? (Object.is(Number(a[i]), Number(b[i])) ? m : Infinity) : Math.max(m, d);
  }
  return a.length === b.length ? m : Infinity;
}

let nextSequence = 1;

/** Stateful models (sequence_batching.state in their config) get the whole sequence in one request. */
function sequenceOptions(config) {
  if (!config?.sequence_batching?.state?.length) return {};
  const id = `ui-${Date.now()}-${nextSequence++}`;
  return { parameters: { sequence_id: id, sequence_start: true, sequence_end: true } };
}

async function compare(name, metadata, config) {
  // A recurrent node's sequence_lens input needs lengths within the sequence, not arbitrary integers.
  const doc = await client.gates(name).catch(() => ({ nodes: [] }));
  const inputs = sampleInputs(metadata, { lengths: lengthInputs(doc) });
  const local = await runner.load(name);
  $('devices').textContent = `browser: onnxruntime-web (${local.device}), model from ${local.source}`;
  const [server, browser] = await Promise.all([
    client.infer(name, inputs, sequenceOptions(config)), local.infer(inputs, sequenceOptions(config)),
  ]);
  const rows = server.outputs.map((out) => {
    const mine = browser.output(out.name);
    const comparable = out.datatype !== 'BYTES';
    const diff = comparable ? maxDiff(out.data, mine.data) : (preview(out.data) === preview(mine.data) ? 0 : Infinity);
    return { name: out.name, shape: out.shape, server: out.data, browser: mine.data, diff };
  });
  const worst = Math.max(0, ...rows.map((r) => r.diff));
  fill($('compare'), ['output', 'shape', 'server', 'browser', 'max |diff|'],
    rows.map((r) => [r.name, `[${r.shape}]`, preview(r.server), preview(r.browser), r.diff.toExponential(2)]));
  $('max-diff').textContent = `max |server − browser| = ${worst.toExponential(2)}`;
  $('max-diff').className = worst <= 1e-5 ? 'ok' : 'bad';
  state.comparison = { model: name, device: local.device, maxDiff: worst, outputs: rows.map((r) => [r.name, r.diff]) };
}

async function sine(name, metadata) {
  const input = metadata.inputs[0];
  const shape = windowShape(input);
  const [known, steps] = [60, 40];
  const truth = sineSeries(known + steps);
  const history = truth.slice(0, known);
  const local = await runner.load(name);
  // Autoregressive: each prediction is appended to the window that predicts the next one.
  const predict = async (infer) => {
    const window = [...history];
    const out = [];
    for (let k = 0; k < steps; k++) {
      const r = await infer([{ name: input.name, datatype: input.datatype, shape, data: window.slice(-shape[1]) }]);
      const y = r.outputs[0].data;
      out.push(Number(y[y.length - 1]));
      window.push(out[out.length - 1]);
    }
    return out;
  };
  const t0 = performance.now();
  const server = await predict((x) => client.infer(name, x));
  const t1 = performance.now();
  const browser = await predict((x) => local.infer(x));
  state.sineMs = { server: t1 - t0, browser: performance.now() - t1 };
  drawLines($('sine-plot'), [
    { color: '#c8cad6', dash: [2, 4], points: truth.map((y, k) => [k, y]) },
    { color: '#667', points: history.map((y, k) => [k, y]) },
    { color: '#2f6fde', width: 3, points: server.map((y, k) => [known + k, y]) },
    { color: '#f29900', dash: [6, 4], points: browser.map((y, k) => [known + k, y]) },
  ]);
  const diff = maxDiff(server, browser);
  $('sine-legend').textContent = `grey: history (dotted: the true sine) · blue: server · orange dashed: browser — `
    + `${steps} steps, each fed back; max |server − browser| ${diff.toExponential(2)}`;
  state.sine = { model: name, maxDiff: diff, steps };
  $('sine').hidden = false;
}

/**
 * A stateful model streamed live: one step per request, a sine per input feature (phase-shifted), the
 * server keeping the state in one sequence and this page's runner in another; the plot grows per step.
 */
async function stream(name, metadata) {
  const input = metadata.inputs[0];
  const features = input.shape[input.shape.length - 1] > 0 ? input.shape[input.shape.length - 1] : 1;
  const steps = 60;
  const remote = openModel(client, name).sequence();
  const local = openModel(client, name, { local: true, runner }).sequence();
  const [server, browser] = [[], []];
  $('stream').hidden = false;
  for (let t = 0; t < steps; t++) {
    const data = Array.from({ length: features }, (_, f) => 0.9 * Math.sin(0.1 * t + (f * Math.PI) / 2));
    const x = [{ name: input.name, datatype: input.datatype, shape: [1, 1, features], data }];
    const last = t === steps - 1;
    const [r, b] = await Promise.all([remote.step(x, { end: last }), local.step(x, { end: last })]);
    const value = (res) => { const y = res.outputs[0].data; return Number(y[y.length - 1]); };
    server.push([t, value(r)]);
    browser.push([t, value(b)]);
    drawLines($('stream-plot'), [
      { color: '#2f6fde', width: 3, points: server },
      { color: '#f29900', dash: [6, 4], points: browser },
    ]);
  }
  const diff = maxDiff(server.map((p) => p[1]), browser.map((p) => p[1]));
  $('stream-legend').textContent = `${steps} steps of ${name}'s last output · blue: server (sequence ${remote.id}) · `
    + `orange dashed: this page — max |diff| ${diff.toExponential(2)}`;
  state.stream = { model: name, steps, maxDiff: diff };
}

async function gates(name) {
  const doc = await client.gates(name);
  $('gates-panel').hidden = !doc.nodes.length;
  const box = $('gates');
  box.replaceChildren();
  for (const node of doc.nodes) {
    const title = document.createElement('h4');
    title.textContent = `${node.node}: ${node.op}, hidden ${node.hidden_size}, input ${node.input_size}`;
    box.append(title);
    const scale = maxAbs(node);
    for (const dir of node.directions) {
      for (const [gate, g] of Object.entries(dir.gates)) {
        const fig = document.createElement('div');
        fig.className = 'gate';
        const caption = `${dir.direction} ${gate}${g.source_gate ? ` (${g.source_gate})` : ''}`;
        fig.append(caption, heatmap(g.W, scale), 'W', heatmap(g.R, scale), 'R');
        box.append(fig);
      }
    }
  }
  return doc.nodes.length;
}

async function select(name) {
  for (const b of document.querySelectorAll('#models button')) b.classList.toggle('selected', b.textContent === name);
  history.replaceState(null, '', `?model=${encodeURIComponent(name)}`);
  setStatus(`running ${name}…`, 'running');
  $('detail').hidden = false;
  $('model-name').textContent = name;
  $('sine').hidden = true;
  $('stream').hidden = true;
  $('live').hidden = true;
  await live.stop(); // its last step ends the sequence on the server
  try {
    const [metadata, config] = await Promise.all([client.modelMetadata(name), client.modelConfig(name)]);
    const io = (list) => list.map((t) => [t.name, t.datatype, `[${t.shape}]`]);
    fill($('inputs'), ['name', 'datatype', 'shape'], io(metadata.inputs));
    fill($('outputs'), ['name', 'datatype', 'shape'], io(metadata.outputs));
    $('run').onclick = () => compare(name, metadata, config);
    const t0 = performance.now();
    await compare(name, metadata, config);
    const t1 = performance.now();
    const recurrent = await gates(name);
    const t2 = performance.now();
    if (name === 'sine_lstm' && recurrent) await sine(name, metadata);
    if (name === LIVE_MODEL) {
      live.show();
      live.start(); // runs until stopped; the page is done once the first steps are on screen
    } else if (config.sequence_batching?.state?.length) await stream(name, metadata);
    state.ms = { compare: t1 - t0, gates: t2 - t1, sine: performance.now() - t2 };
    setStatus(`${name}: done`, 'done');
  } catch (err) {
    setStatus(`${name}: ${err.message}`, 'error');
    throw err;
  }
}

/** The loaded models, from the statistics: the repository index is an administration call needing a key. */
async function modelNames() {
  return (await client.modelStatistics()).model_stats.map((m) => m.name);
}

const KEY_ITEM = 'modelbridge-api-key';

function useKey(key) {
  // The runner downloads models through the same client, so it carries the key too.
  client.headers = { ...client.headers, Authorization: `Bearer ${key}` };
}

/** A server that requires inference keys answers 401: ask for one (kept for this tab only). */
function askForKey(message) {
  setStatus(message, 'locked');
  $('key-form').hidden = false;
  $('key-form').onsubmit = (event) => {
    event.preventDefault();
    const key = $('key').value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    useKey(key);
    $('key-form').hidden = true;
    main();
  };
}

async function main() {
  $('server').textContent = client.baseUrl;
  const saved = sessionStorage.getItem(KEY_ITEM);
  if (saved) useKey(saved);
  let names;
  try {
    names = await modelNames();
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) throw err;
    sessionStorage.removeItem(KEY_ITEM);
    askForKey(`this server needs an API key: ${err.serverMessage}`);
    return;
  }
  state.models = [...new Set(names)].sort();
  $('models').replaceChildren(...state.models.map((name) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.textContent = name;
    b.onclick = () => select(name);
    li.append(b);
    return li;
  }));
  setStatus(`${state.models.length} models`, 'ready');
  const asked = params.get('model');
  if (asked !== null && !state.models.includes(asked)) {
    // A link to a model this server does not serve: say so rather than show the page as if it were fine.
    setStatus(`model '${asked}' does not exist on this server (or is not loaded); pick one of the ${state.models.length} below`, 'error');
    return;
  }
  const wanted = asked ?? (state.models.includes('sine_lstm') ? 'sine_lstm' : null);
  if (wanted) await select(wanted);
}

main().catch((err) => setStatus(err.message, 'error'));
