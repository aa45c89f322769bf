// V2 infer request/response bodies: JSON, and the binary tensor data extension
// (JSON header + raw tensor bytes, split at Inference-Header-Content-Length).
import { elementCount } from './datatypes.js';
import {
  bytesToData, jsonToData, prepareInput, storageToBytes, storageToJson, stringifyWithBigInt,
} from './tensors.js';

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

function outputRequests(outputs, { binary }) {
  if (outputs === undefined) return undefined;
  return outputs.map((o) => {
    const spec = typeof o === 'string' ? { name: o } : { ...o };
    if (typeof spec.name !== 'string') throw new TypeError('every requested output needs a name');
    const parameters = { ...(spec.parameters ?? {}) };
    if (binary && parameters.binary_data === undefined) parameters.binary_data = true;
    return Object.keys(parameters).length ? { name: spec.name, parameters } : { name: spec.name };
  });
}

/**
 * @param {Array<{name:string, datatype:string, shape:number[], data:any, parameters?:object}>} inputs
 * @param {{binary?: boolean, outputs?: Array<string|{name:string, parameters?:object}>, id?: string, parameters?: object}} options
 * @returns {{body: Uint8Array, headers: Record<string,string>}}
 */
export function encodeInferRequest(inputs, { binary = true, outputs = undefined, id = undefined, parameters = undefined } = {}) {
  if (!Array.isArray(inputs) || inputs.length === 0) throw new TypeError('infer needs a non-empty array of inputs');
  const prepared = inputs.map((t) => ({ ...prepareInput(t), parameters: t.parameters }));
  const header = {};
  if (id !== undefined) header.id = String(id);
  const params = { ...(parameters ?? {}) };
  if (binary && outputs === undefined) params.binary_data_output = true;
  if (Object.keys(params).length) header.parameters = params;
  const chunks = [];
  header.inputs = prepared.map((t) => {
    const entry = { name: t.name, shape: t.shape, datatype: t.datatype };
    const tparams = { ...(t.parameters ?? {}) };
    if (binary) {
      const bytes = storageToBytes(t.datatype, t.storage);
      chunks.push(bytes);
      tparams.binary_data_size = bytes.length;
    } else {
      entry.data = storageToJson(t.datatype, t.storage);
    }
    if (Object.keys(tparams).length) entry.parameters = tparams;
    return entry;
  });
  const requested = outputRequests(outputs, { binary });
  if (requested) header.outputs = requested;
  const headerBytes = utf8.encode(stringifyWithBigInt(header));
  if (!binary) return { body: headerBytes, headers: { 'Content-Type': 'application/json' } };
  const total = headerBytes.length + chunks.reduce((n, c) => n + c.length, 0);
  const body = new Uint8Array(total);
  body.set(headerBytes, 0);
  let off = headerBytes.length;
  for (const c of chunks) {
    body.set(c, off);
    off += c.length;
  }
  return {
    body,
    headers: {
      'Content-Type': 'application/octet-stream',
      'Inference-Header-Content-Length': String(headerBytes.length),
    },
  };
}

/**
 * @param {Uint8Array} bytes the whole response body
 * @param {number|null} headerLength the Inference-Header-Content-Length response header, if any
 */
export function decodeInferResponse(bytes, headerLength) {
  const jsonEnd = headerLength === null || headerLength === undefined ? bytes.length : Number(headerLength);
  if (!Number.isInteger(jsonEnd) || jsonEnd < 0 || jsonEnd > bytes.length) {
    throw new RangeError(`Inference-Header-Content-Length ${headerLength} does not fit a ${bytes.length}-byte body`);
  }
  const header = JSON.parse(utf8Decoder.decode(bytes.subarray(0, jsonEnd)));
  let off = jsonEnd;
  const outputs = (header.outputs ?? []).map((o) => {
    const { binary_data_size: size, ...otherParams } = o.parameters ?? {};
    const shape = (o.shape ?? []).map(Number);
    let decoded;
    if (size !== undefined) {
      if (off + size > bytes.length) throw new RangeError(`output '${o.name}' binary data runs past the end of the body`);
      decoded = bytesToData(o.datatype, bytes.subarray(off, off + size), elementCount(shape));
      off += size;
    } else {
      decoded = jsonToData(o.datatype, o.data ?? []);
    }
    const tensor = { name: o.name, datatype: o.datatype, shape, ...decoded };
    if (Object.keys(otherParams).length) tensor.parameters = otherParams;
    return tensor;
  });
  return makeResult({
    modelName: header.model_name,
    modelVersion: header.model_version,
    id: header.id,
    parameters: header.parameters,
    outputs,
  });
}

/** The result object both remote and local inference return. */
export function makeResult({ modelName, modelVersion, id, parameters, outputs }) {
  const result = { modelName, modelVersion, outputs };
  if (id !== undefined) result.id = id;
  if (parameters !== undefined) result.parameters = parameters;
  Object.defineProperty(result, 'output', {
    enumerable: false,
    value: (name) => {
      const t = outputs.find((o) => o.name === name);
      if (!t) throw new RangeError(`no output named '${name}' (have ${outputs.map((o) => o.name).join(', ')})`);
      return t;
    },
  });
  return result;
}
