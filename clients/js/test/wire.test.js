// Encoding/decoding of V2 infer bodies: binary tensor extension (compared with the bytes tritonclient
// builds), BYTES framing, BOOL, FP16, JSON mode, and malformed bodies.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeInferResponse, encodeInferRequest } from '../src/wire.js';
import { floatToHalfBits } from '../src/float16.js';
import { bytesToStrings } from '../src/tensors.js';
import { runFixture } from './support.js';

const utf8 = new TextEncoder();
const json = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

function fromFixture(t) {
  const data = t.datatype === 'INT64' || t.datatype === 'UINT64' ? t.data.map(BigInt) : t.data;
  return { ...t, data };
}

test('binary request body equals the one tritonclient.http builds, for every datatype', () => {
  const [, ref] = runFixture('triton_request.py');
  const expected = Buffer.from(ref.body, 'base64');
  const refHeader = json(expected.subarray(0, ref.json_size));
  const outputs = refHeader.outputs.map((o) => ({ name: o.name, parameters: o.parameters }));
  const { body, headers } = encodeInferRequest(ref.tensors.map(fromFixture), {
    id: 'req-7', parameters: { note: 'x' }, outputs,
  });
  const headerLength = Number(headers['Inference-Header-Content-Length']);
  assert.deepEqual(json(body.subarray(0, headerLength)), refHeader);
  assert.deepEqual(Buffer.from(body.subarray(headerLength)), expected.subarray(ref.json_size));
});

test('without an output list the binary request asks for every output in binary', () => {
  const { body, headers } = encodeInferRequest([{ name: 'x', datatype: 'FP32', shape: [2], data: [1, 2] }]);
  const header = json(body.subarray(0, Number(headers['Inference-Header-Content-Length'])));
  assert.equal(header.parameters.binary_data_output, true);
  assert.deepEqual(header.inputs[0].parameters, { binary_data_size: 8 });
  assert.equal(body.length, Number(headers['Inference-Header-Content-Length']) + 8);
});

test('JSON request: BOOL as booleans, FP16 as numbers, BYTES as strings, INT64 exact', () => {
  const { body, headers } = encodeInferRequest([
    { name: 'b', datatype: 'BOOL', shape: [3], data: [true, 0, 1] },
    { name: 'h', datatype: 'FP16', shape: [2], data: [0.5, 1 / 3] },
    { name: 's', datatype: 'BYTES', shape: [2], data: ['é', utf8.encode('x')] },
    { name: 'i', datatype: 'INT64', shape: [1], data: [9007199254740993n] },
  ], { binary: false, outputs: ['o'] });
  assert.equal(headers['Content-Type'], 'application/json');
  const text = new TextDecoder().decode(body);
  assert.match(text, /"data":\[9007199254740993\]/); // not rounded to ...992
  const header = JSON.parse(text);
  assert.deepEqual(header.inputs[0].data, [true, false, true]);
  assert.deepEqual(header.inputs[1].data, [0.5, 0.333251953125]); // the FP16 value actually sent
  assert.deepEqual(header.inputs[2].data, ['é', 'x']);
  assert.deepEqual(header.outputs, [{ name: 'o' }]);
});

test('JSON request refuses BYTES that are not UTF-8, pointing at the binary extension', () => {
  assert.throws(
    () => encodeInferRequest([{ name: 's', datatype: 'BYTES', shape: [1], data: [new Uint8Array([0xff])] }], { binary: false }),
    /not valid UTF-8.*binary/,
  );
});

test('inputs are checked before sending: element count, datatype, names', () => {
  assert.throws(() => encodeInferRequest([{ name: 'x', datatype: 'FP32', shape: [2, 2], data: [1, 2, 3] }]),
    /'x': shape \[2,2\] holds 4 elements but data has 3/);
  assert.throws(() => encodeInferRequest([{ name: 'x', datatype: 'FLOAT', shape: [1], data: [1] }]), /unknown datatype 'FLOAT'/);
  assert.throws(() => encodeInferRequest([{ datatype: 'FP32', shape: [1], data: [1] }]), /needs a name/);
  assert.throws(() => encodeInferRequest([]), /non-empty/);
});

function responseBody(header, chunks) {
  const h = utf8.encode(JSON.stringify(header));
  const total = h.length + chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  out.set(h);
  let off = h.length;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return [out, h.length];
}

test('binary response: numeric, BOOL, FP16, BYTES and JSON outputs decode; unaligned offsets are fine', () => {
  const bytesData = new Uint8Array([3, 0, 0, 0, 97, 98, 99, 0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9]);
  const fp16 = new Uint16Array([floatToHalfBits(1.5), floatToHalfBits(-0.25)]);
  const i64 = new BigInt64Array([-5n, 2n ** 62n]);
  const [body, length] = responseBody({
    model_name: 'm', model_version: '1', id: 'q',
    outputs: [
      { name: 'B', datatype: 'BOOL', shape: [3], parameters: { binary_data_size: 3 } },
      { name: 'S', datatype: 'BYTES', shape: [3], parameters: { binary_data_size: bytesData.length } },
      { name: 'H', datatype: 'FP16', shape: [2], parameters: { binary_data_size: 4 } },
      { name: 'I', datatype: 'INT64', shape: [1, 2], parameters: { binary_data_size: 16 } },
      { name: 'J', datatype: 'FP32', shape: [2, 1], data: [[0.5], [2]] },
    ],
  }, [new Uint8Array([1, 0, 1]), bytesData, new Uint8Array(fp16.buffer), new Uint8Array(i64.buffer)]);
  const r = decodeInferResponse(body, String(length));
  assert.equal(r.modelName, 'm');
  assert.equal(r.id, 'q');
  assert.deepEqual(Array.from(r.output('B').data), [1, 0, 1]);
  assert.deepEqual(bytesToStrings(r.output('S').data), ['abc', '', 'é']);
  assert.deepEqual(Array.from(r.output('H').data), [1.5, -0.25]);
  assert.deepEqual(Array.from(r.output('H').raw), Array.from(fp16));
  assert.deepEqual(Array.from(r.output('I').data), [-5n, 2n ** 62n]);
  assert.deepEqual(r.output('I').shape, [1, 2]);
  assert.ok(r.output('J').data instanceof Float32Array);
  assert.deepEqual(Array.from(r.output('J').data), [0.5, 2]);
  assert.throws(() => r.output('nope'), /no output named 'nope'/);
});

test('malformed responses fail clearly', () => {
  const [body, length] = responseBody(
    { outputs: [{ name: 'x', datatype: 'FP32', shape: [4], parameters: { binary_data_size: 16 } }] },
    [new Uint8Array(8)],
  );
  assert.throws(() => decodeInferResponse(body, String(length)), /'x' binary data runs past the end/);
  assert.throws(() => decodeInferResponse(body, '100000'), /does not fit/);
  const [bad] = responseBody({ outputs: [{ name: 's', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: 6 } }] },
    [new Uint8Array([9, 0, 0, 0, 1, 2])]);
  assert.throws(() => decodeInferResponse(bad, String(bad.length - 6)), /runs past the end of its data/);
});
