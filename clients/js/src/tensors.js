// Tensor values: normalising what users pass, and the two V2 encodings (binary extension, JSON).
//
// A tensor is {name, datatype, shape, data}. Decoded `data` is:
//   numeric      the datatype's typed array (INT64/UINT64: BigInt64Array/BigUint64Array)
//   FP16, BF16   Float32Array of the values (the raw bits are kept in `raw` as Uint16Array)
//   BOOL         Uint8Array of 0/1
//   BYTES        Array<Uint8Array> (see bytesToStrings)
import { datatypeInfo, elementCount } from './datatypes.js';
import { halfBitsToFloat32, toHalfBits } from './float16.js';

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function flatten(data) {
  if (ArrayBuffer.isView(data)) return data;
  if (!Array.isArray(data)) throw new TypeError(`tensor data must be an array or typed array, got ${typeof data}`);
  return data.some(Array.isArray) ? data.flat(Infinity) : data;
}

/** The typed storage a tensor is sent with (raw bits for FP16/BF16, Uint8Array[] for BYTES). */
export function toStorage(datatype, data) {
  const info = datatypeInfo(datatype);
  const flat = flatten(data);
  if (datatype === 'BYTES') {
    return Array.from(flat, (v) => {
      if (typeof v === 'string') return utf8.encode(v);
      if (v instanceof Uint8Array) return v;
      throw new TypeError(`BYTES elements must be strings or Uint8Array, got ${typeof v}`);
    });
  }
  if (datatype === 'FP16' || datatype === 'BF16') return toHalfBits(flat, { bfloat: datatype === 'BF16' });
  if (flat instanceof info.array && datatype !== 'BOOL') return flat;
  if (datatype === 'BOOL') return Uint8Array.from(flat, (v) => (v ? 1 : 0));
  if (info.array === BigInt64Array || info.array === BigUint64Array) {
    return info.array.from(flat, (v) => (typeof v === 'bigint' ? v : BigInt(Math.trunc(Number(v)))));
  }
  return info.array.from(flat, Number);
}

/** Checks and normalises a user tensor; returns {name, datatype, shape, storage}. */
export function prepareInput(tensor) {
  const { name, datatype, shape, data } = tensor ?? {};
  if (typeof name !== 'string' || !name) throw new TypeError('every input needs a name');
  if (!Array.isArray(shape)) throw new TypeError(`input '${name}': shape must be an array`);
  datatypeInfo(datatype);
  const storage = toStorage(datatype, data);
  const count = elementCount(shape);
  if (storage.length !== count) {
    throw new RangeError(`input '${name}': shape [${shape}] holds ${count} elements but data has ${storage.length}`);
  }
  return { name, datatype, shape: shape.map(Number), storage };
}

/** Bytes of a tensor in the binary extension: little-endian, row-major; BYTES = 4-byte LE length + bytes. */
export function storageToBytes(datatype, storage) {
  if (datatype === 'BYTES') {
    const total = storage.reduce((n, b) => n + 4 + b.length, 0);
    const out = new Uint8Array(total);
    const view = new DataView(out.buffer);
    let off = 0;
    for (const b of storage) {
      view.setUint32(off, b.length, true);
      out.set(b, off + 4);
      off += 4 + b.length;
    }
    return out;
  }
  return new Uint8Array(storage.buffer, storage.byteOffset, storage.byteLength);
}

/** Binary tensor bytes -> decoded tensor data (copying, so alignment never matters). */
export function bytesToData(datatype, bytes, count) {
  const info = datatypeInfo(datatype);
  if (datatype === 'BYTES') {
    const items = [];
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let off = 0;
    while (off < bytes.length) {
      if (off + 4 > bytes.length) throw new RangeError('BYTES tensor truncated in a length prefix');
      const len = view.getUint32(off, true);
      if (off + 4 + len > bytes.length) throw new RangeError('BYTES tensor element runs past the end of its data');
      items.push(bytes.slice(off + 4, off + 4 + len));
      off += 4 + len;
    }
    if (count !== undefined && items.length !== count) {
      throw new RangeError(`BYTES tensor has ${items.length} elements, shape says ${count}`);
    }
    return { data: items };
  }
  if (bytes.length % info.size !== 0) throw new RangeError(`${bytes.length} bytes is not a whole number of ${datatype} elements`);
  const copy = bytes.slice();
  const typed = new info.array(copy.buffer, 0, copy.length / info.size);
  if (count !== undefined && typed.length !== count) {
    throw new RangeError(`${datatype} tensor has ${typed.length} elements, shape says ${count}`);
  }
  return fromStorage(datatype, typed);
}

/** Typed storage -> {data, raw?} in the decoded representation. */
export function fromStorage(datatype, storage) {
  if (datatype === 'FP16' || datatype === 'BF16') {
    return { data: halfBitsToFloat32(storage, { bfloat: datatype === 'BF16' }), raw: storage };
  }
  return { data: storage };
}

/** JSON `data` (flat or nested) -> decoded tensor data. */
export function jsonToData(datatype, data) {
  const flat = flatten(data);
  if (datatype === 'BYTES') return { data: flat.map((s) => (typeof s === 'string' ? utf8.encode(s) : Uint8Array.from(s))) };
  if (datatype === 'FP16' || datatype === 'BF16') {
    return { data: Float32Array.from(flat, Number), raw: toHalfBits(flat, { bfloat: datatype === 'BF16' }) };
  }
  return { data: toStorage(datatype, flat) };
}

/** Storage -> a JSON-able flat array (BigInt stays BigInt; see stringifyWithBigInt). */
export function storageToJson(datatype, storage) {
  if (datatype === 'BYTES') {
    return storage.map((b) => {
      try {
        return utf8Strict.decode(b);
      } catch {
        throw new TypeError('a BYTES element is not valid UTF-8: send it with the binary extension (binary: true)');
      }
    });
  }
  if (datatype === 'BOOL') return Array.from(storage, (v) => v !== 0);
  if (datatype === 'FP16' || datatype === 'BF16') return Array.from(fromStorage(datatype, storage).data);
  return Array.from(storage);
}

const BIGINT_MARK = '\u0000bigint:';

/** JSON.stringify that writes BigInt values as plain JSON numbers (exact, no precision loss). */
export function stringifyWithBigInt(value) {
  const text = JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? BIGINT_MARK + v.toString() : v));
  return text.replace(/"\\u0000bigint:(-?\d+)"/g, '$1');
}

/** Decode BYTES tensor elements as UTF-8 strings. */
export function bytesToStrings(items) {
  const dec = new TextDecoder();
  return items.map((b) => dec.decode(b));
}
