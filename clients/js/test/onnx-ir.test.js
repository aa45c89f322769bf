import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-web';
import { irVersionOf, withIrVersion } from '../src/onnx-ir.js';
import { InferenceClient, LocalRunner } from '../src/index.js';
import { runFixture } from './support.js';

const [dir, cases] = runFixture('recurrent_models.py');
const model = readFileSync(join(dir, `${cases[0]}.onnx`));

test('the IR version field is read and rewritten, also when its varint grows', () => {
  assert.equal(irVersionOf(model), 8); // the fixture sets ir_version = 8
  const big = withIrVersion(model, 300);
  assert.equal(irVersionOf(big), 300);
  assert.equal(big.length, model.length + 1);
  assert.deepEqual(Buffer.from(withIrVersion(big, 8)), model);
});

test('a model stamped with a too-new IR version still opens: the runner lowers the stamp', async () => {
  const runner = new LocalRunner(new InferenceClient({ baseUrl: 'http://unused' }), { ort });
  const [session] = await runner.createSession(withIrVersion(model, 300));
  assert.deepEqual(runner.irDowngraded.found, 300);
  assert.ok(runner.irDowngraded.max >= 10);
  await session.release();
  const strict = new LocalRunner(new InferenceClient({ baseUrl: 'http://unused' }), { ort, lowerIrVersion: false });
  await assert.rejects(strict.createSession(withIrVersion(model, 300)), /Unsupported model IR version: 300/);
});
