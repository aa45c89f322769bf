// The plain-JS LSTM/GRU/RNN against onnxruntime-web on the same ONNX files. The models are built by a
// Python script at test time (random weights) and their gates JSON is made by converters.gates, the
// code behind the server's GET .../gates. Cases with sequence lengths and initial states run in both
// layouts; onnxruntime refuses layout-1 nodes, so those are held to the Python reference instead.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-web';
import { runGates } from '../src/gates.js';
import { maxAbsDiff, runFixture } from './support.js';

const [dir, cases] = runFixture('recurrent_models.py');
const load = (name) => JSON.parse(readFileSync(join(dir, `${name}.json`), 'utf8'));

/** Swaps the first two axes of a flat row-major array of dims [a, b, ...rest]. */
function swap01(data, [a, b, ...rest]) {
  const inner = rest.reduce((m, v) => m * v, 1);
  const out = new Float32Array(data.length);
  for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) {
    out.set(Array.prototype.slice.call(data, (i * b + j) * inner, (i * b + j + 1) * inner), (j * a + i) * inner);
  }
  return out;
}

/** Y [seq, D, batch, H] (layout 0) -> [batch, seq, D, H] (layout 1). */
function yToBatchMajor(y, [seq, D, batch, H]) {
  const out = new Float32Array(y.length);
  for (let t = 0; t < seq; t++) for (let d = 0; d < D; d++) for (let b = 0; b < batch; b++) {
    out.set(y.subarray(((t * D + d) * batch + b) * H, ((t * D + d) * batch + b + 1) * H), ((b * seq + t) * D + d) * H);
  }
  return out;
}

async function onnxruntimeWeb(name, d) {
  const session = await ort.InferenceSession.create(readFileSync(join(dir, `${name}.onnx`)));
  const state = (v) => new ort.Tensor('float32', Float32Array.from(v), d.dims.state);
  const feeds = { X: new ort.Tensor('float32', Float32Array.from(d.x), d.dims.x), initial_h: state(d.initial_h) };
  if (session.inputNames.includes('initial_c')) feeds.initial_c = state(d.initial_c);
  if (session.inputNames.includes('sequence_lens')) feeds.sequence_lens = new ort.Tensor('int32', Int32Array.from(d.seq_lens), [d.dims.batch]);
  const result = await session.run(feeds);
  await session.release();
  return result;
}

const shapeOf = (d) => ({ seqLength: d.dims.seq, batchSize: d.dims.batch, initialH: d.initial_h, initialC: d.initial_c,
  seqLens: d.seq_lens ?? undefined });

for (const name of cases) {
  const d = load(name);
  if (d.layout === 0) {
    test(`${name}: JS gates equal onnxruntime-web within 1e-5`, async () => {
      const expected = await onnxruntimeWeb(name, d);
      const got = runGates(d.gates, d.x, shapeOf(d));
      for (const out of d.outputs) {
        const diff = maxAbsDiff(got[out], expected[out].data);
        assert.ok(diff < 1e-5, `${out}: max |diff| ${diff}`);
      }
      if (!d.seq_lens) return;
      // The same node asked batch-major (layout: 1): X and the states transposed in, the answers transposed.
      const { seq, batch } = d.dims;
      const D = d.dims.state[0];
      const H = d.dims.state[2];
      const bm = runGates(d.gates, swap01(d.x, d.dims.x), { ...shapeOf(d), layout: 1,
        initialH: swap01(d.initial_h, d.dims.state), initialC: swap01(d.initial_c, d.dims.state) });
      assert.deepEqual(bm.dims.Y, [batch, seq, D, H]);
      assert.ok(maxAbsDiff(bm.Y, yToBatchMajor(expected.Y.data, [seq, D, batch, H])) < 1e-5, 'Y (layout 1)');
      for (const out of d.outputs.slice(1)) {
        assert.ok(maxAbsDiff(bm[out], swap01(expected[out].data, d.dims.state)) < 1e-5, `${out} (layout 1)`);
      }
    });
  } else {
    test(`${name}: JS gates in the node's layout ${d.layout} equal the Python reference within 1e-5`, () => {
      const got = runGates(d.gates, d.x, shapeOf(d)); // layout taken from the gates JSON
      assert.equal(d.gates.nodes[0].layout, 1);
      for (const out of d.outputs) {
        const diff = maxAbsDiff(got[out], d.expected[out]);
        assert.ok(diff < 1e-5, `${out}: max |diff| ${diff}`);
      }
    });
  }
}

test('past its length a sequence gives zeros and keeps its last state', () => {
  const d = load('gru_bidirectional_lens');
  const { seq, batch } = d.dims;
  const [D, , H] = d.dims.state;
  const got = runGates(d.gates, d.x, shapeOf(d));
  const short = 1; // seq_lens [5, 2]: batch item 1 runs two steps
  for (let t = 0; t < seq; t++) {
    for (let dd = 0; dd < D; dd++) {
      const row = got.Y.subarray(((t * D + dd) * batch + short) * H, ((t * D + dd) * batch + short + 1) * H);
      assert.equal(row.some((v) => v !== 0), t < d.seq_lens[short], `Y[${t}, ${dd}, ${short}]`);
    }
  }
  const lastForward = got.Y.subarray(((1 * D + 0) * batch + short) * H, ((1 * D + 0) * batch + short + 1) * H);
  assert.deepEqual(got.Y_h.subarray((0 * batch + short) * H, (0 * batch + short + 1) * H), lastForward);
  const lastReverse = got.Y.subarray(((0 * D + 1) * batch + short) * H, ((0 * D + 1) * batch + short + 1) * H);
  assert.deepEqual(got.Y_h.subarray((1 * batch + short) * H, (1 * batch + short + 1) * H), lastReverse);
});

test('bad gates input fails clearly', () => {
  const d = load(cases[0]);
  assert.throws(() => runGates(d.gates, [1, 2], { seqLength: 5, batchSize: 2 }), /x has 2 values, expected seq 5 x batch 2 x input 3/);
  assert.throws(() => runGates(d.gates, [1, 2], { seqLength: 5, batchSize: 2, layout: 1 }), /expected batch 2 x seq 5 x input 3/);
  assert.throws(() => runGates(d.gates, d.x, { node: 'nope', seqLength: 5, batchSize: 2 }), /no recurrent node "nope"/);
  assert.throws(() => runGates(d.gates, d.x, { seqLength: 5, batchSize: 2, seqLens: [5] }), /seqLens has 1 values, expected one per batch item \(2\)/);
  assert.throws(() => runGates(d.gates, d.x, { seqLength: 5, batchSize: 2, seqLens: [6, 1] }), /seqLens\[0\] is 6, expected an integer in 0\.\.5/);
  assert.throws(() => runGates(d.gates, d.x, { seqLength: 5, batchSize: 2, initialH: [0] }), /initialH has 1 values, expected directions x batch x hidden = 8/);
  assert.throws(() => runGates(d.gates, d.x, { seqLength: 5, batchSize: 2, layout: 2 }), /layout must be 0 \(time-major\) or 1 \(batch-major\)/);
});
