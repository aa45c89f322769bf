// The IR version field of an ONNX file (ModelProto field 1, a varint), read and rewritten without
// a protobuf library. onnx >= 1.23 stamps IR 14 on everything it saves, while onnxruntime-web 1.30
// loads IR <= 13: models that use nothing newer run unchanged once the stamp is lowered.

function readVarint(bytes, pos) {
  let value = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= bytes.length) throw new RangeError('truncated varint in ONNX model');
    const b = bytes[pos++];
    value |= BigInt(b & 0x7f) << shift;
    if (!(b & 0x80)) return [value, pos];
    shift += 7n;
  }
}

function encodeVarint(value) {
  const out = [];
  let v = BigInt(value);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}

/** [start, end, value] of the top-level ir_version field, or null when the file has none. */
function findIrVersion(bytes) {
  let pos = 0;
  while (pos < bytes.length) {
    const start = pos;
    const [tag, afterTag] = readVarint(bytes, pos);
    const field = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    pos = afterTag;
    if (wire === 0) {
      const [value, end] = readVarint(bytes, pos);
      if (field === 1) return [start, end, Number(value)];
      pos = end;
    } else if (wire === 2) {
      const [len, body] = readVarint(bytes, pos);
      pos = body + Number(len);
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new RangeError(`not an ONNX model (wire type ${wire} at byte ${start})`);
  }
  return null;
}

export function irVersionOf(bytes) {
  const found = findIrVersion(bytes);
  return found ? found[2] : null;
}

/** A copy of the model with ir_version set to `version`. */
export function withIrVersion(bytes, version) {
  const found = findIrVersion(bytes);
  const field = [0x08, ...encodeVarint(version)];
  if (!found) return Uint8Array.from([...field, ...bytes]);
  const [start, end] = found;
  const out = new Uint8Array(bytes.length - (end - start) + field.length);
  out.set(bytes.subarray(0, start), 0);
  out.set(field, start);
  out.set(bytes.subarray(end), start + field.length);
  return out;
}

/** The versions in onnxruntime's "Unsupported model IR version: X, max supported IR version: Y", if that is the error. */
export function unsupportedIrVersion(error) {
  const m = /Unsupported model IR version: (\d+), max supported IR version: (\d+)/.exec(String(error?.message ?? error));
  return m ? { found: Number(m[1]), max: Number(m[2]) } : null;
}
