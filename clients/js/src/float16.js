// IEEE half (FP16) and bfloat16 <-> float conversions; Float16Array is not available everywhere,
// so 16-bit floats travel as their raw bits in a Uint16Array.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float -> FP16 bits, round to nearest even (same as numpy's astype(float16)). */
export function floatToHalfBits(value) {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow -> signed zero
    mant |= 0x800000; // make the implicit bit explicit for the subnormal shift
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half += 1;
    return sign | half;
  }
  let half = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half += 1; // may carry into the exponent: correct
  return half;
}

export function halfBitsToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function floatToBf16Bits(value) {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40; // keep NaN a NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToFloat(b) {
  u32[0] = b << 16;
  return f32[0];
}

/** numbers / Float32Array / Float16Array / raw Uint16Array -> raw bits. */
export function toHalfBits(data, { bfloat = false } = {}) {
  if (data instanceof Uint16Array) return data;
  if (!bfloat && typeof Float16Array !== 'undefined' && data instanceof Float16Array) {
    return new Uint16Array(data.buffer, data.byteOffset, data.length);
  }
  const conv = bfloat ? floatToBf16Bits : floatToHalfBits;
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = conv(Number(data[i]));
  return out;
}

export function halfBitsToFloat32(bits, { bfloat = false } = {}) {
  const conv = bfloat ? bf16BitsToFloat : halfBitsToFloat;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = conv(bits[i]);
  return out;
}
