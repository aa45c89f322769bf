// The client's error types, over an injected fetch (the transport, not the server, is replaced here;
// the real server's errors are covered in server.test.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConnectionError, InferenceClient, ModelBridgeError, ServerError } from '../src/index.js';

const answering = (status, body, headers = {}) => async (url) => new Response(body, { status, headers: { ...headers } });

test('a non-2xx answer becomes ServerError with the status and the server\'s message', async () => {
  const client = new InferenceClient({ baseUrl: 'http://x', fetch: answering(400, '{"error":"input \'A\' has shape [3], expected [-1,16]"}') });
  const err = await client.modelMetadata('m').catch((e) => e);
  assert.ok(err instanceof ServerError && err instanceof ModelBridgeError);
  assert.equal(err.status, 400);
  assert.equal(err.serverMessage, "input 'A' has shape [3], expected [-1,16]");
  assert.deepEqual(err.body, { error: "input 'A' has shape [3], expected [-1,16]" });
});

test('an error body that is not JSON is kept as the message', async () => {
  const client = new InferenceClient({ baseUrl: 'http://x', fetch: answering(502, 'Bad Gateway from proxy') });
  const err = await client.serverMetadata().catch((e) => e);
  assert.equal(err.status, 502);
  assert.equal(err.serverMessage, 'Bad Gateway from proxy');
});

test('no answer at all becomes ConnectionError naming the URL', async () => {
  const client = new InferenceClient({ baseUrl: 'http://127.0.0.1:9', fetch: async () => { throw new TypeError('fetch failed'); } });
  const err = await client.infer('m', [{ name: 'x', datatype: 'FP32', shape: [1], data: [1] }]).catch((e) => e);
  assert.ok(err instanceof ConnectionError);
  assert.match(err.message, /http:\/\/127\.0\.0\.1:9\/v2\/models\/m\/infer.*fetch failed/);
});

test('health calls answer false on 503 instead of throwing', async () => {
  const client = new InferenceClient({ baseUrl: 'http://x', fetch: answering(503, '') });
  assert.equal(await client.ready(), false);
  assert.equal(await client.modelReady('m'), false);
});

test('requests go to the V2 paths, with versions and escaped names', async () => {
  const seen = [];
  const client = new InferenceClient({
    baseUrl: 'http://x/',
    fetch: async (url, init) => { seen.push([init.method, url]); return new Response('{}', { status: 200 }); },
  });
  await client.modelConfig('a b', { version: 3 });
  await client.modelStatistics();
  await client.gates('m');
  assert.deepEqual(seen, [
    ['GET', 'http://x/v2/models/a%20b/versions/3/config'],
    ['GET', 'http://x/v2/models/stats'],
    ['GET', 'http://x/v2/models/m/gates'],
  ]);
});

test('the client refuses to start without a base URL outside a page', () => {
  assert.throws(() => new InferenceClient({}), /baseUrl is required/);
});
