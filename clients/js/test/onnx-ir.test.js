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

/** Runs `fn` with console.warn recorded; returns the warnings. */
async function warnings(fn) {
  const seen = [];
  const original = console.warn;
  console.warn = (...args) => seen.push(args.join(' '));
  try {
    await fn();
  } finally {
    console.warn = original;
  }
  return seen;
}

test('a model stamped with a too-new IR version still opens: the runner lowers the stamp and says so', async () => {
  const runner = new LocalRunner(new InferenceClient({ baseUrl: 'http://unused' }), { ort });
  let session;
  const said = await warnings(async () => { [session] = await runner.createSession(withIrVersion(model, 300)); });
  assert.deepEqual(runner.irDowngraded.found, 300);
  assert.ok(runner.irDowngraded.max >= 10);
  assert.equal(said.length, 1);
  assert.match(said[0], new RegExp(`IR version 300 .*\\(${runner.irDowngraded.max}\\).*rewritten to ${runner.irDowngraded.max}`));
  await session.release();
  // A file onnxruntime-web reads as it is: opened untouched, and nothing said.
  const quiet = await warnings(async () => { [session] = await runner.createSession(model); });
  assert.deepEqual(quiet, []);
  assert.equal(runner.irDowngraded, null);
  await session.release();
  const strict = new LocalRunner(new InferenceClient({ baseUrl: 'http://unused' }), { ort, lowerIrVersion: false });
  await assert.rejects(strict.createSession(withIrVersion(model, 300)), /Unsupported model IR version: 300/);
});
