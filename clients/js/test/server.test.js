// Every client call against the real server (python -m server.cli serve on a free loopback port,
// serving the example repository), plus the local runner and the gates JSON of a served model.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as ort from 'onnxruntime-web';
import {
  InferenceClient, LocalRunner, ModelCache, ServerError, bytesToStrings, openModel, runGates,
} from '../src/index.js';
import { ROOT, maxAbsDiff, serveSupports, startServer } from './support.js';

// With an admin key configured (when this server version has keys), the repository index needs it.
const ADMIN_KEY = 'js-client-test-admin-key-0123456789';
const withKeys = serveSupports('--admin-keys');
let server;
let client;
before(async () => {
  server = await startServer({ args: withKeys ? ['--admin-keys', ADMIN_KEY] : [] });
  client = new InferenceClient({ baseUrl: server.url, apiKey: withKeys ? ADMIN_KEY : undefined });
});
after(async () => server && server.stop());

const range = (n, f) => Array.from({ length: n }, (_, k) => f(k));
const addSubInputs = [
  { name: 'INPUT0', datatype: 'INT32', shape: [2, 16], data: range(32, (k) => k * 3 - 40) },
  { name: 'INPUT1', datatype: 'INT32', shape: [2, 16], data: range(32, (k) => 7 - k) },
];

test('health and server metadata', async () => {
  assert.equal(await client.live(), true);
  assert.equal(await client.ready(), true);
  const meta = await client.serverMetadata();
  assert.equal(typeof meta.name, 'string');
  assert.ok(meta.extensions.includes('binary_tensor_data'));
});

test('model metadata, config, readiness, repository index', async () => {
  const meta = await client.modelMetadata('add_sub');
  assert.deepEqual(meta.inputs.map((i) => [i.name, i.datatype]), [['INPUT0', 'INT32'], ['INPUT1', 'INT32']]);
  assert.equal((await client.modelMetadata('add_sub', { version: 1 })).name, 'add_sub');
  const config = await client.modelConfig('add_sub');
  assert.equal(config.name, 'add_sub');
  assert.equal(config.max_batch_size, 8);
  assert.equal(await client.modelReady('add_sub'), true);
  assert.equal(await client.modelReady('no_such_model'), false);
  const index = await client.repositoryIndex();
  for (const m of ['add_sub', 'identity_types', 'lstm_tiny']) assert.ok(index.some((e) => e.name === m), m);
});

test('the API key travels as a bearer token: administration without it is refused', async (t) => {
  if (!withKeys) return t.skip('this server has no API keys');
  const anonymous = new InferenceClient({ baseUrl: server.url });
  const refused = await anonymous.repositoryIndex().catch((e) => e);
  assert.ok(refused instanceof ServerError);
  assert.equal(refused.status, 401);
  assert.match(refused.serverMessage, /Bearer/);
  assert.equal((await anonymous.modelMetadata('add_sub')).name, 'add_sub'); // inference stays open
  const wrong = await new InferenceClient({ baseUrl: server.url, apiKey: 'x'.repeat(20) }).repositoryIndex().catch((e) => e);
  assert.equal(wrong.status, 401);
});

test('infer, binary and JSON, with output selection, request id and parameters', async () => {
  const expectedSum = range(32, (k) => k * 3 - 40 + 7 - k);
  const expectedDiff = range(32, (k) => k * 3 - 40 - (7 - k));
  for (const binary of [true, false]) {
    const r = await client.infer('add_sub', addSubInputs, { binary, id: `req-${binary}` });
    assert.equal(r.id, `req-${binary}`);
    assert.equal(r.modelName, 'add_sub');
    assert.deepEqual(Array.from(r.output('OUTPUT0').data), expectedSum);
    assert.deepEqual(Array.from(r.output('OUTPUT1').data), expectedDiff);
    assert.deepEqual(r.output('OUTPUT0').shape, [2, 16]);
    assert.ok(r.output('OUTPUT0').data instanceof Int32Array);
    const only = await client.infer('add_sub', addSubInputs, { binary, outputs: ['OUTPUT1'], parameters: { note: 'x' } });
    assert.deepEqual(only.outputs.map((o) => o.name), ['OUTPUT1']);
    assert.deepEqual(Array.from(only.outputs[0].data), expectedDiff);
  }
});

test('every datatype round-trips through identity_types, binary and JSON', async () => {
  const n = 6;
  const values = {
    BOOL: range(n, (k) => k % 3 === 0), UINT8: range(n, (k) => 250 + k % 5), UINT16: range(n, (k) => 65530 + k % 5),
    UINT32: range(n, (k) => 4294967290 + k % 5), UINT64: range(n, (k) => 2n ** 64n - 1n - BigInt(k)),
    INT8: range(n, (k) => -128 + k), INT16: range(n, (k) => -32768 + k), INT32: range(n, (k) => -(2 ** 31) + k),
    INT64: range(n, (k) => -(2n ** 62n) - BigInt(k)), FP16: range(n, (k) => 0.5 - k * 0.25),
    FP32: range(n, (k) => k / 3), FP64: range(n, (k) => k / 7), BYTES: range(n, (k) => `s${k}é`.repeat(k)),
  };
  const inputs = Object.entries(values).map(([dt, data]) => ({ name: `IN_${dt}`, datatype: dt, shape: [2, 3], data }));
  for (const binary of [true, false]) {
    const r = await client.infer('identity_types', inputs, { binary });
    for (const [dt, data] of Object.entries(values)) {
      const out = r.output(`OUT_${dt}`);
      assert.equal(out.datatype, dt);
      assert.deepEqual(out.shape, [2, 3]);
      if (dt === 'BYTES') assert.deepEqual(bytesToStrings(out.data), data, dt);
      else if (dt === 'BOOL') assert.deepEqual(Array.from(out.data), data.map(Number), dt);
      else if (dt === 'FP32') assert.deepEqual(Array.from(out.data), Array.from(Float32Array.from(data)), dt);
      else if ((dt === 'UINT64' || dt === 'INT64') && !binary) continue; // JSON numbers beyond 2^53 lose digits
      else assert.deepEqual(Array.from(out.data), data, `${dt} binary=${binary}`);
    }
  }
});

test('server errors arrive as ServerError with status and message', async () => {
  const missing = await client.modelMetadata('no_such_model').catch((e) => e);
  assert.ok(missing instanceof ServerError);
  assert.equal(missing.status, 404);
  assert.match(missing.serverMessage, /no_such_model/);
  const bad = await client.infer('add_sub', [{ name: 'INPUT0', datatype: 'INT32', shape: [1, 3], data: [1, 2, 3] }]).catch((e) => e);
  assert.ok(bad instanceof ServerError);
  assert.equal(bad.status, 400);
  assert.ok(bad.serverMessage.length > 0);
});

test('model download: the exact file, its ETag, and 304 when unchanged', async () => {
  const onDisk = readFileSync(join(ROOT, 'server', 'examples', 'repository', 'add_sub', '1', 'model.onnx'));
  const first = await client.downloadModel('add_sub');
  assert.deepEqual(Buffer.from(first.bytes), onDisk);
  assert.equal(first.etag.replace(/"/g, ''), createHash('sha256').update(onDisk).digest('hex'));
  const again = await client.downloadModel('add_sub', { etag: first.etag });
  assert.deepEqual(again, { bytes: null, etag: first.etag, notModified: true });
});

test('local runner (onnxruntime-web in Node) answers like the server; the second load revalidates by ETag', async () => {
  const runner = new LocalRunner(client, { ort, cache: new ModelCache({ persistent: false }) });
  const local = await runner.load('add_sub');
  assert.equal(local.source, 'network');
  assert.equal(local.device, 'wasm');
  const remote = await client.infer('add_sub', addSubInputs);
  const mine = await local.infer(addSubInputs);
  assert.deepEqual(mine.outputs.map((o) => [o.name, o.datatype, o.shape, Array.from(o.data)]),
    remote.outputs.map((o) => [o.name, o.datatype, o.shape, Array.from(o.data)]));
  const reloaded = await runner.load('add_sub');
  assert.equal(reloaded, local); // same ETag: same session
  assert.equal(reloaded.source, 'cache'); // revalidated with If-None-Match: 304, nothing downloaded
});

test('one flag switches a model handle between the server and the local runner', async () => {
  const inputs = [{ name: 'x', datatype: 'FP32', shape: [1, 5, 2], data: range(10, (k) => Math.sin(k)) }];
  const remote = await openModel(client, 'lstm_tiny').infer(inputs);
  const local = await openModel(client, 'lstm_tiny', { local: true, runner: new LocalRunner(client, { ort }) }).infer(inputs);
  assert.deepEqual(local.output('y').shape, remote.output('y').shape);
  assert.ok(maxAbsDiff(local.output('y').data, remote.output('y').data) < 1e-5);
});

test('gates JSON of lstm_tiny runs in plain JS and matches the server', async () => {
  const gates = await client.gates('lstm_tiny');
  const [batch, seq, input] = [2, 4, 2];
  const x = range(batch * seq * input, (k) => Math.cos(k * 0.7));
  const remote = await client.infer('lstm_tiny', [{ name: 'x', datatype: 'FP32', shape: [batch, seq, input], data: x }]);
  // The model takes batch-major x and transposes around its LSTM: do the same around runGates.
  const xt = new Float32Array(seq * batch * input);
  for (let b = 0; b < batch; b++) for (let t = 0; t < seq; t++) for (let i = 0; i < input; i++) {
    xt[(t * batch + b) * input + i] = x[(b * seq + t) * input + i];
  }
  const { Y, dims } = runGates(gates, xt, { seqLength: seq, batchSize: batch });
  const H = dims.Y[3];
  const y = new Float32Array(batch * seq * H);
  for (let b = 0; b < batch; b++) for (let t = 0; t < seq; t++) for (let h = 0; h < H; h++) {
    y[(b * seq + t) * H + h] = Y[(t * batch + b) * H + h];
  }
  const diff = maxAbsDiff(y, remote.output('y').data);
  assert.ok(diff < 1e-5, `max |diff| ${diff}`);
});

test('statistics count the inferences made', async () => {
  const stats = await client.modelStatistics('add_sub');
  assert.ok(stats.model_stats[0].inference_count >= 4);
  const all = await client.modelStatistics();
  assert.ok(all.model_stats.length >= 3);
});

test('a stateful model streams step by step, on the server and in the local runner, like one whole request', async (t) => {
  const index = await client.repositoryIndex();
  if (!index.some((m) => m.name === 'lstm_stream')) return t.skip('no lstm_stream in the example repository');
  const steps = 5;
  const x = range(steps * 2, (k) => Math.sin(k * 0.9));
  const step = (k) => [{ name: 'x', datatype: 'FP32', shape: [1, 1, 2], data: x.slice(2 * k, 2 * k + 2) }];
  const whole = [{ name: 'x', datatype: 'FP32', shape: [1, steps, 2], data: x }];
  const once = { parameters: { sequence_id: 4242, sequence_start: true, sequence_end: true } };
  const serverWhole = (await client.infer('lstm_stream', whole, once)).output('y').data;
  const local = await new LocalRunner(client, { ort }).load('lstm_stream');
  assert.deepEqual(local.outputNames.length > local.state.length, true);
  const localWhole = (await local.infer(whole, once)).output('y').data;
  assert.ok(maxAbsDiff(serverWhole, localWhole) < 1e-5);
  for (const [name, infer] of [['server', (i, o) => client.infer('lstm_stream', i, o)], ['local', (i, o) => local.infer(i, o)]]) {
    const seq = name === 'server' ? 777 : 'browser-seq';
    const ys = [];
    for (let k = 0; k < steps; k++) {
      const parameters = { sequence_id: seq, sequence_start: k === 0, sequence_end: k === steps - 1 };
      const r = await infer(step(k), { parameters });
      assert.deepEqual(r.outputs.map((o) => o.name), ['y'], 'state outputs stay hidden');
      ys.push(...r.output('y').data);
    }
    const diff = maxAbsDiff(ys, serverWhole);
    assert.ok(diff < 1e-5, `${name}: step by step vs whole sequence ${diff}`);
  }
  await assert.rejects(local.infer(step(0), { parameters: { sequence_id: 'never-started' } }), /not running: start it with sequence_start/);

  // The same through model handles: one flag between server-kept and locally kept state.
  for (const isLocal of [false, true]) {
    const seq = openModel(client, 'lstm_stream', { local: isLocal, runner: new LocalRunner(client, { ort }) }).sequence();
    const ys = [];
    for (let k = 0; k < steps - 1; k++) ys.push(...(await seq.step(step(k))).output('y').data);
    ys.push(...(await seq.end(step(steps - 1))).output('y').data);
    assert.ok(maxAbsDiff(ys, serverWhole) < 1e-5, `local=${isLocal}`);
    await assert.rejects(seq.step(step(0)), /has ended/);
  }
});
