// The plain-JS LSTM/GRU/RNN against onnxruntime-web on the same ONNX files. The models are built by a
// Python script at test time (random weights) and their gates JSON is made by converters.gates, the
// code behind the server's GET .../gates.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-web';
import { runGates } from '../src/gates.js';
import { maxAbsDiff, runFixture } from './support.js';

const [dir, cases] = runFixture('recurrent_models.py');

for (const name of cases) {
  test(`${name}: JS gates equal onnxruntime-web within 1e-5`, async () => {
    const d = JSON.parse(readFileSync(join(dir, `${name}.json`), 'utf8'));
    const session = await ort.InferenceSession.create(readFileSync(join(dir, `${name}.onnx`)));
    const state = (v) => new ort.Tensor('float32', Float32Array.from(v), d.dims.state);
    const feeds = { X: new ort.Tensor('float32', Float32Array.from(d.x), d.dims.x), initial_h: state(d.initial_h) };
    if (session.inputNames.includes('initial_c')) feeds.initial_c = state(d.initial_c);
    const expected = await session.run(feeds);
    const [seqLength, batchSize] = d.dims.x;
    const got = runGates(d.gates, d.x, { seqLength, batchSize, initialH: d.initial_h, initialC: d.initial_c });
    for (const out of d.outputs) {
      const diff = maxAbsDiff(got[out], expected[out].data);
      assert.ok(diff < 1e-5, `${out}: max |diff| ${diff}`);
    }
    await session.release();
  });
}

test('bad gates input fails clearly', () => {
  const d = JSON.parse(readFileSync(join(dir, `${cases[0]}.json`), 'utf8'));
  assert.throws(() => runGates(d.gates, [1, 2], { seqLength: 5, batchSize: 2 }), /x has 2 values, expected seq 5 x batch 2 x input 3/);
  assert.throws(() => runGates(d.gates, d.x, { node: 'nope', seqLength: 5, batchSize: 2 }), /no recurrent node "nope"/);
});
