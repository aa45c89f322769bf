// One table: V2 datatype <-> typed array used for its elements <-> onnxruntime-web tensor type.
// FP16/BF16 elements are held as raw bits (Uint16Array) on the wire; BYTES has no fixed size.

/** @type {Record<string, {array: any, size: number, ort: string|null}>} */
export const DATATYPES = {
  BOOL: { array: Uint8Array, size: 1, ort: 'bool' },
  UINT8: { array: Uint8Array, size: 1, ort: 'uint8' },
  UINT16: { array: Uint16Array, size: 2, ort: 'uint16' },
  UINT32: { array: Uint32Array, size: 4, ort: 'uint32' },
  UINT64: { array: BigUint64Array, size: 8, ort: 'uint64' },
  INT8: { array: Int8Array, size: 1, ort: 'int8' },
  INT16: { array: Int16Array, size: 2, ort: 'int16' },
  INT32: { array: Int32Array, size: 4, ort: 'int32' },
  INT64: { array: BigInt64Array, size: 8, ort: 'int64' },
  FP16: { array: Uint16Array, size: 2, ort: 'float16' },
  BF16: { array: Uint16Array, size: 2, ort: null },
  FP32: { array: Float32Array, size: 4, ort: 'float32' },
  FP64: { array: Float64Array, size: 8, ort: 'float64' },
  BYTES: { array: null, size: 0, ort: 'string' },
};

const ORT_TO_V2 = Object.fromEntries(
  Object.entries(DATATYPES).filter(([, v]) => v.ort).map(([k, v]) => [v.ort, k]),
);

export function datatypeInfo(datatype) {
  const info = DATATYPES[datatype];
  if (!info) throw new TypeError(`unknown datatype '${datatype}' (expected one of ${Object.keys(DATATYPES).join(', ')})`);
  return info;
}

export function v2FromOrtType(ortType) {
  const dt = ORT_TO_V2[ortType];
  if (!dt) throw new TypeError(`onnxruntime tensor type '${ortType}' has no V2 datatype`);
  return dt;
}

export function elementCount(shape) {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(Number(d)) || Number(d) < 0) throw new TypeError(`invalid dimension ${d} in shape [${shape}]`);
    n *= Number(d);
  }
  return n;
}
