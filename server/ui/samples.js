// Deterministic example inputs built from a model's metadata: every -1 dimension becomes 1 (first)
// or 8 (others), values are smooth functions of the position, per datatype.
const FIRST_FREE_DIM = 1;
const OTHER_FREE_DIM = 8;

export function concreteShape(shape) {
  return shape.map((d, k) => (d >= 0 ? d : k === 0 ? FIRST_FREE_DIM : OTHER_FREE_DIM));
}

function values(datatype, count, seed) {
  const at = (k) => Math.sin(0.37 * k + seed);
  switch (datatype) {
    case 'BOOL': return Array.from({ length: count }, (_, k) => at(k) > 0);
    case 'BYTES': return Array.from({ length: count }, (_, k) => `item-${seed}-${k}`);
    case 'INT64': case 'UINT64': return Array.from({ length: count }, (_, k) => BigInt(Math.round(50 * Math.abs(at(k)))));
    case 'FP16': case 'BF16': case 'FP32': case 'FP64': return Array.from({ length: count }, (_, k) => at(k));
    default: return Array.from({ length: count }, (_, k) => Math.round(50 * Math.abs(at(k))));
  }
}

/**
 * Which model inputs feed a recurrent node's sequence_lens, and which input carries that node's sequence,
 * from the gates document's per-node wiring: { lengthsInput: sequenceInput }.
 */
export function lengthInputs(gatesDoc) {
  const found = {};
  for (const node of gatesDoc?.nodes ?? []) {
    const lens = node.wiring?.sequence_lens?.graph_inputs ?? [];
    const sequence = (node.wiring?.X?.graph_inputs ?? []).find((name) => !lens.includes(name));
    if (sequence) for (const name of lens) found[name] = sequence;
  }
  return found;
}

// Lengths must lie in [1, steps] (onnxruntime refuses others): the time axis of a [batch, steps, ...] or
// [steps, batch, ...] sequence is the longer of its first two axes for the shapes concreteShape makes.
function lengthValues(datatype, count, sequenceShape) {
  const steps = Math.max(1, Math.max(...sequenceShape.slice(0, 2)));
  const lengths = Array.from({ length: count }, (_, k) => Math.max(1, steps - k)); // descending: sorted packs too
  return datatype === 'INT64' || datatype === 'UINT64' ? lengths.map(BigInt) : lengths;
}

export function sampleInputs(metadata, { lengths = {} } = {}) {
  const shapes = Object.fromEntries(metadata.inputs.map((input) => [input.name, concreteShape(input.shape)]));
  return metadata.inputs.map((input, i) => {
    const shape = shapes[input.name];
    const count = shape.reduce((a, b) => a * b, 1);
    const sequence = shapes[lengths[input.name]];
    const data = sequence ? lengthValues(input.datatype, count, sequence) : values(input.datatype, count, i + 1);
    return { name: input.name, datatype: input.datatype, shape, data };
  });
}

/** Samples of a sine shaped like the sine_lstm example's training data (0.1 rad apart). */
export function sineSeries(count, { step = 0.1, amplitude = 0.9 } = {}) {
  return Array.from({ length: count }, (_, k) => amplitude * Math.sin(k * step));
}

/** The model's window length and the shape of one window for an input of [batch, steps(, 1)]. */
export function windowShape(input, { fallback = 20 } = {}) {
  const steps = input.shape[1] > 0 ? input.shape[1] : fallback;
  return [1, steps, ...input.shape.slice(2).map((d) => (d > 0 ? d : 1))];
}
