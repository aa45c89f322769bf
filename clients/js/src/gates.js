// A textbook LSTM / GRU / RNN that runs from the server's per-gate JSON alone (GET .../gates), with
// ONNX semantics (layout 0: X is [seq, batch, input]; Y is [seq, directions, batch, hidden]).
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

/**
 * Runs one recurrent node of the gates JSON.
 * @param {object} node one entry of gates.nodes
 * @param {ArrayLike<number>} x flat [seqLength, batchSize, input_size]
 * @param {{seqLength: number, batchSize?: number, initialH?: ArrayLike<number>, initialC?: ArrayLike<number>}} shape
 *   initialH/initialC are flat [directions, batch, hidden]; zeros when omitted.
 * @returns {{Y: Float32Array, Y_h: Float32Array, Y_c?: Float32Array, dims: {Y: number[], Y_h: number[]}}}
 */
export function runRecurrentNode(node, x, { seqLength, batchSize = 1, initialH = undefined, initialC = undefined }) {
  const op = node.op;
  if (!GATE_KEYS[op]) throw new RangeError(`unsupported recurrent op '${op}'`);
  const H = node.hidden_size;
  const I = node.input_size;
  const D = node.directions.length;
  if (x.length !== seqLength * batchSize * I) {
    throw new RangeError(`x has ${x.length} values, expected seq ${seqLength} x batch ${batchSize} x input ${I}`);
  }
  const acts = activationsOf(node, D);
  const clip = node.clip ?? 0;
  const Y = new Float32Array(seqLength * D * batchSize * H);
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
      const o = (d * batchSize + b) * H;
      let h = initialH ? Float64Array.from(Array.prototype.slice.call(initialH, o, o + H)) : new Float64Array(H);
      let c = initialC ? Float64Array.from(Array.prototype.slice.call(initialC, o, o + H)) : new Float64Array(H);
      for (let s = 0; s < seqLength; s++) {
        const t = reverse ? seqLength - 1 - s : s;
        const xo = (t * batchSize + b) * I;
        if (op === 'LSTM') [h, c] = stepLSTM(gates, dir.peepholes, acts[d], clip, node.input_forget, x, xo, h, c, H);
        else if (op === 'GRU') h = stepGRU(gates, acts[d], clip, node.linear_before_reset, x, xo, h, H);
        else h = stepRNN(gates, acts[d], clip, x, xo, h, H);
        Y.set(h, ((t * D + d) * batchSize + b) * H);
      }
      Yh.set(h, o);
      if (Yc) Yc.set(c, o);
    }
  });
  const result = { Y, Y_h: Yh, dims: { Y: [seqLength, D, batchSize, H], Y_h: [D, batchSize, H] } };
  if (Yc) result.Y_c = Yc;
  return result;
}

/** Runs the gates JSON's node (by index or ONNX node name; the first by default). */
export function runGates(gates, x, { node = 0, ...shape }) {
  const nodes = gates.nodes ?? [];
  const found = typeof node === 'number' ? nodes[node] : nodes.find((n) => n.node === node);
  if (!found) throw new RangeError(`no recurrent node ${JSON.stringify(node)} in the gates JSON (${nodes.length} nodes)`);
  return runRecurrentNode(found, x, shape);
}
