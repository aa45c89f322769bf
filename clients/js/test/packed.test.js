// A real fused LSTM with sequence_lens and initial states (torch.onnx's export of nn.LSTM over a
// PackedSequence with h0/c0 inputs): the in-browser runner (onnxruntime-web) feeds the INT64 lengths and
// the state inputs like any other, and the plain-JS gates run the node from its own inputs; both agree
// with onnxruntime (Python) within 1e-5.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-web';
import { runGates } from '../src/gates.js';
import { LocalModel } from '../src/runner.js';
import { maxAbsDiff, runFixture } from './support.js';

const [dir] = runFixture('packed_lstm.py');
const d = JSON.parse(readFileSync(join(dir, 'packed_lstm.json'), 'utf8'));

test('the local runner feeds lengths and initial states; answers equal onnxruntime', async () => {
  const session = await ort.InferenceSession.create(readFileSync(join(dir, 'packed_lstm.onnx')));
  const local = new LocalModel(ort, session, { name: 'packed_lstm' });
  const inputs = Object.entries(d.inputs).map(([name, t]) => ({ name, datatype: t.datatype, shape: t.shape, data: t.data }));
  const result = await local.infer(inputs);
  for (const [name, expected] of Object.entries(d.outputs)) {
    const got = result.output(name);
    assert.deepEqual(got.shape, expected.shape, name);
    const diff = maxAbsDiff(got.data, expected.data);
    assert.ok(diff < 1e-5, `${name}: max |diff| ${diff}`);
  }
  await assert.rejects(local.infer(inputs.filter((t) => t.name !== 'lengths')), /needs input 'lengths'/);
  await local.release();
});

test('runGates runs the packed node from its sequence_lens and initial states', () => {
  const { X, sequence_lens: lens, initial_h: h0, initial_c: c0 } = d.node;
  const [node] = d.gates.nodes;
  assert.equal(node.wiring.sequence_lens.kind, 'computed');
  assert.deepEqual(node.wiring.sequence_lens.graph_inputs, ['lengths']);
  assert.ok(lens.data.some((n) => n < X.shape[0]), 'the fixture has sequences shorter than the batch');
  const [seqLength, batchSize] = X.shape;
  const got = runGates(d.gates, X.data, { seqLength, batchSize, seqLens: lens.data, initialH: h0.data, initialC: c0.data });
  for (const key of ['Y', 'Y_h', 'Y_c']) {
    const diff = maxAbsDiff(got[key], d.node[key].data);
    assert.ok(diff < 1e-5, `${key}: max |diff| ${diff}`);
  }
});
