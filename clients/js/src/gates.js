// A textbook LSTM / GRU / RNN that runs from the server's per-gate JSON alone (GET .../gates), with
// ONNX semantics: layout 0 (time-major) X is [seq, batch, input], Y [seq, directions, batch, hidden],
// states [directions, batch, hidden]; layout 1 (batch-major) X is [batch, seq, input], Y [batch, seq,
// directions, hidden], states [batch, directions, hidden]. Per-sequence lengths (ONNX sequence_lens):
// Y is zero past a sequence's length and Y_h/Y_c hold its state at its last valid step.
// No onnxruntime: the "JavaScript version of my trained LSTM" in a few kilobytes.

const sigmoid = (x) => 1 / (1 + Math.exp(-x));
// ONNX activation functions; the numbers are ONNX's default alpha/beta.
const ACTIVATIONS = {
  sigmoid: [0, 0, () => sigmoid],
  tanh: [0, 0, () => Math.tanh],
  relu: [0, 0, () => (x) => Math.max(0, x)],
  softsign: [0, 0, () => (x) => x / (1 + Math.abs(x))],
  softplus: [0, 0, () => (x) => Math.log1p(Math.exp(x))],
  leakyrelu: [1, 0, (a = 0.01) => (x) => (x >= 0 ? x : a * x)],
  thresholdedrelu: [1, 0, (a = 1) => (x) => (x > a ? x : 0)],
  elu: [1, 0, (a = 1) => (x) => (x >= 0 ? x : a * (Math.exp(x) - 1))],
  hardsigmoid: [1, 1, (a = 0.2, b = 0.5) => (x) => Math.max(0, Math.min(1, a * x + b))],
  scaledtanh: [1, 1, (a = 1, b = 1) => (x) => a * Math.tanh(b * x)],
  affine: [1, 1, (a = 1, b = 0) => (x) => a * x + b],
};

const GATE_KEYS = { LSTM: ['i', 'o', 'f', 'c'], GRU: ['z', 'r', 'h'], RNN: ['h'] };
const DEFAULT_ACTS = { LSTM: ['Sigmoid', 'Tanh', 'Tanh'], GRU: ['Sigmoid', 'Tanh'], RNN: ['Tanh'] };

/** Activation functions of every direction, consuming alpha/beta in order like onnxruntime does. */
function activationsOf(node, directions) {
  const per = DEFAULT_ACTS[node.op].length;
  let names = node.activations && node.activations.length ? node.activations : DEFAULT_ACTS[node.op];
  if (names.length === per && directions === 2) names = [...names, ...names];
  if (names.length !== per * directions) throw new RangeError(`${node.op} '${node.node}': ${names.length} activations for ${directions} direction(s)`);
  const alphas = [...(node.activation_alpha ?? [])];
  const betas = [...(node.activation_beta ?? [])];
  const fns = names.map((spec) => {
    const name = typeof spec === 'string' ? spec : spec.name;
    const entry = ACTIVATIONS[name.toLowerCase()];
    if (!entry) throw new RangeError(`unsupported activation '${name}'`);
    const [takesAlpha, takesBeta, make] = entry;
    const a = typeof spec === 'object' && spec.alpha !== undefined ? spec.alpha : takesAlpha && alphas.length ? alphas.shift() : undefined;
    const b = typeof spec === 'object' && spec.beta !== undefined ? spec.beta : takesBeta && betas.length ? betas.shift() : undefined;
    return make(a, b);
  });
  return Array.from({ length: directions }, (_, d) => fns.slice(d * per, (d + 1) * per));
}

/** out[j] = b1[j] + b2[j] + sum_k W[j][k] * v[off + k] (W is [H][K], rows as nested arrays). */
function affine(W, v, off, bias1, bias2, out) {
  for (let j = 0; j < W.length; j++) {
    const row = W[j];
    let s = (bias1 ? bias1[j] : 0) + (bias2 ? bias2[j] : 0);
    for (let k = 0; k < row.length; k++) s += row[k] * v[off + k];
    out[j] = s;
  }
  return out;
}

function stepLSTM(g, P, acts, clip, inputForget, x, xo, h, c, H) {
  const [f, gAct, hAct] = acts;
  const pre = {};
  for (const k of ['i', 'o', 'f', 'c']) {
    pre[k] = affine(g[k].W, x, xo, g[k].Wb, null, new Float64Array(H));
    const r = affine(g[k].R, h, 0, g[k].Rb, null, new Float64Array(H));
    for (let j = 0; j < H; j++) pre[k][j] += r[j];
  }
  const cl = (v) => (clip ? Math.max(-clip, Math.min(clip, v)) : v);
  const hNew = new Float64Array(H);
  const cNew = new Float64Array(H);
  for (let j = 0; j < H; j++) {
    const it = f(cl(pre.i[j] + (P ? P.i[j] * c[j] : 0)));
    const ft = inputForget ? 1 - it : f(cl(pre.f[j] + (P ? P.f[j] * c[j] : 0)));
    const ct = gAct(cl(pre.c[j]));
    cNew[j] = ft * c[j] + it * ct;
    const ot = f(cl(pre.o[j] + (P ? P.o[j] * cNew[j] : 0)));
    hNew[j] = ot * hAct(cNew[j]);
  }
  return [hNew, cNew];
}

function stepGRU(g, acts, clip, linearBeforeReset, x, xo, h, H) {
  const [f, gAct] = acts;
  const cl = (v) => (clip ? Math.max(-clip, Math.min(clip, v)) : v);
  const zx = affine(g.z.W, x, xo, g.z.Wb, g.z.Rb, new Float64Array(H));
  const zh = affine(g.z.R, h, 0, null, null, new Float64Array(H));
  const rx = affine(g.r.W, x, xo, g.r.Wb, g.r.Rb, new Float64Array(H));
  const rh = affine(g.r.R, h, 0, null, null, new Float64Array(H));
  const z = zx.map((v, j) => f(cl(v + zh[j])));
  const r = rx.map((v, j) => f(cl(v + rh[j])));
  const hx = affine(g.h.W, x, xo, g.h.Wb, null, new Float64Array(H));
  let hh;
  if (linearBeforeReset) {
    hh = affine(g.h.R, h, 0, g.h.Rb, null, new Float64Array(H)).map((v, j) => r[j] * v);
  } else {
    hh = affine(g.h.R, h.map((v, j) => r[j] * v), 0, g.h.Rb, null, new Float64Array(H));
  }
  return hx.map((v, j) => (1 - z[j]) * gAct(cl(v + hh[j])) + z[j] * h[j]);
}

function stepRNN(g, acts, clip, x, xo, h, H) {
  const cl = (v) => (clip ? Math.max(-clip, Math.min(clip, v)) : v);
  const pre = affine(g.h.W, x, xo, g.h.Wb, g.h.Rb, new Float64Array(H));
  const rh = affine(g.h.R, h, 0, null, null, new Float64Array(H));
  return pre.map((v, j) => acts[0](cl(v + rh[j])));
}

function checkedLengths(seqLens, seqLength, batchSize) {
  if (seqLens === undefined || seqLens === null) return Array(batchSize).fill(seqLength);
  if (seqLens.length !== batchSize) throw new RangeError(`seqLens has ${seqLens.length} values, expected one per batch item (${batchSize})`);
  return Array.from(seqLens, (v, b) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > seqLength) throw new RangeError(`seqLens[${b}] is ${v}, expected an integer in 0..${seqLength}`);
    return n;
  });
}

function checkedState(name, value, count) {
  if (value === undefined || value === null) return undefined;
  if (value.length !== count) throw new RangeError(`${name} has ${value.length} values, expected directions x batch x hidden = ${count}`);
  return value;
}

/**
 * Runs one recurrent node of the gates JSON.
 * @param {object} node one entry of gates.nodes
 * @param {ArrayLike<number>} x flat X: [seqLength, batchSize, input_size] (layout 0) or [batchSize, seqLength, input_size] (layout 1)
 * @param {{seqLength: number, batchSize?: number, initialH?: ArrayLike<number>, initialC?: ArrayLike<number>,
 *   seqLens?: ArrayLike<number|bigint>, layout?: 0|1}} shape
 *   initialH/initialC: flat [directions, batch, hidden] (layout 0) or [batch, directions, hidden] (layout 1); zeros when
 *   omitted. seqLens: each batch item's length (ONNX sequence_lens); all seqLength when omitted. layout: defaults to
 *   the node's own (0 when the JSON does not say).
 * @returns {{Y: Float32Array, Y_h: Float32Array, Y_c?: Float32Array, dims: {Y: number[], Y_h: number[], Y_c?: number[]}}}
 */
export function runRecurrentNode(node, x, { seqLength, batchSize = 1, initialH = undefined, initialC = undefined,
  seqLens = undefined, layout = undefined }) {
  const op = node.op;
  if (!GATE_KEYS[op]) throw new RangeError(`unsupported recurrent op '${op}'`);
  const H = node.hidden_size;
  const I = node.input_size;
  const D = node.directions.length;
  const L = layout ?? node.layout ?? 0;
  if (L !== 0 && L !== 1) throw new RangeError(`layout must be 0 (time-major) or 1 (batch-major), got ${layout}`);
  if (!Number.isInteger(seqLength) || seqLength < 0 || !Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`seqLength ${seqLength} / batchSize ${batchSize} must be integers (batchSize >= 1)`);
  }
  if (x.length !== seqLength * batchSize * I) {
    const dims = L === 0 ? `seq ${seqLength} x batch ${batchSize}` : `batch ${batchSize} x seq ${seqLength}`;
    throw new RangeError(`x has ${x.length} values, expected ${dims} x input ${I}`);
  }
  const lengths = checkedLengths(seqLens, seqLength, batchSize);
  const h0 = checkedState('initialH', initialH, D * batchSize * H);
  const c0 = checkedState('initialC', initialC, D * batchSize * H);
  // Flat offsets of one (time, batch) row of X and Y, and of one (direction, batch) state, per layout.
  const xAt = L === 0 ? (t, b) => (t * batchSize + b) * I : (t, b) => (b * seqLength + t) * I;
  const yAt = L === 0 ? (t, d, b) => ((t * D + d) * batchSize + b) * H : (t, d, b) => ((b * seqLength + t) * D + d) * H;
  const stateAt = L === 0 ? (d, b) => (d * batchSize + b) * H : (d, b) => (b * D + d) * H;
  const acts = activationsOf(node, D);
  const clip = node.clip ?? 0;
  const Y = new Float32Array(seqLength * D * batchSize * H); // zeros past each sequence's length
  const Yh = new Float32Array(D * batchSize * H);
  const Yc = op === 'LSTM' ? new Float32Array(D * batchSize * H) : undefined;
  node.directions.forEach((dir, d) => {
    const reverse = dir.direction === 'reverse';
    let gates = dir.gates;
    // RNN has one gate; converters.gates names it 'i', older documents 'h'.
    if (op === 'RNN' && !gates.h && Object.keys(gates).length === 1) gates = { h: Object.values(gates)[0] };
    for (const key of GATE_KEYS[op]) {
      if (!gates[key]) throw new RangeError(`${op} '${node.node}' ${dir.direction}: gate '${key}' missing`);
    }
    for (let b = 0; b < batchSize; b++) {
      const o = stateAt(d, b);
      const slice = (v) => Float64Array.from(Array.prototype.slice.call(v, o, o + H));
      let h = h0 ? slice(h0) : new Float64Array(H);
      let c = c0 ? slice(c0) : new Float64Array(H);
      const n = lengths[b]; // a reverse direction starts at the sequence's own last step, not at seqLength - 1
      for (let s = 0; s < n; s++) {
        const t = reverse ? n - 1 - s : s;
        const xo = xAt(t, b);
        if (op === 'LSTM') [h, c] = stepLSTM(gates, dir.peepholes, acts[d], clip, node.input_forget, x, xo, h, c, H);
        else if (op === 'GRU') h = stepGRU(gates, acts[d], clip, node.linear_before_reset, x, xo, h, H);
        else h = stepRNN(gates, acts[d], clip, x, xo, h, H);
        Y.set(h, yAt(t, d, b));
      }
      if (n === 0) continue; // like onnxruntime: a zero-length sequence ends in zero state, not the initial one
      Yh.set(h, o);
      if (Yc) Yc.set(c, o);
    }
  });
  const state = L === 0 ? [D, batchSize, H] : [batchSize, D, H];
  const dims = { Y: L === 0 ? [seqLength, D, batchSize, H] : [batchSize, seqLength, D, H], Y_h: state };
  const result = { Y, Y_h: Yh, dims };
  if (Yc) {
    result.Y_c = Yc;
    dims.Y_c = state;
  }
  return result;
}

/** Runs the gates JSON's node (by index or ONNX node name; the first by default). */
export function runGates(gates, x, { node = 0, ...shape }) {
  const nodes = gates.nodes ?? [];
  const found = typeof node === 'number' ? nodes[node] : nodes.find((n) => n.node === node);
  if (!found) throw new RangeError(`no recurrent node ${JSON.stringify(node)} in the gates JSON (${nodes.length} nodes)`);
  return runRecurrentNode(found, x, shape);
}
