import assert from 'node:assert/strict';
import { test } from 'node:test';
import { floatToHalfBits, halfBitsToFloat, floatToBf16Bits, bf16BitsToFloat } from '../src/float16.js';
import { runFixture } from './support.js';

const num = (v) => (typeof v === 'string' ? (v.startsWith('-') ? -Infinity : Infinity) : v);

test('FP16 conversion matches numpy bit for bit (rounding, subnormals, overflow)', () => {
  const [, ref] = runFixture('float16_bits.py');
  ref.values.forEach((v, k) => {
    assert.equal(floatToHalfBits(num(v)), ref.half_bits[k], `value ${v}`);
    assert.equal(halfBitsToFloat(ref.half_bits[k]), num(ref.half_back[k]), `bits ${ref.half_bits[k]}`);
  });
});

test('FP16 keeps NaN a NaN', () => {
  assert.ok(Number.isNaN(halfBitsToFloat(floatToHalfBits(NaN))));
});

test('BF16 is the upper half of FP32, rounded to nearest even', () => {
  const f = new Float32Array([1.5, -3.25, 1e-20, 3e38]);
  const u = new Uint32Array(f.buffer);
  f.forEach((v, k) => {
    const bits = floatToBf16Bits(v);
    assert.ok(Math.abs(bits - (u[k] >>> 16)) <= 1);
    assert.ok(Math.abs(bf16BitsToFloat(bits) - v) <= Math.abs(v) * 2 ** -8);
  });
  // 1 + 2^-8 is exactly halfway between two bfloat16 values: ties go to the even one (1.0).
  assert.equal(bf16BitsToFloat(floatToBf16Bits(1 + 2 ** -8)), 1);
  assert.ok(Number.isNaN(bf16BitsToFloat(floatToBf16Bits(NaN))));
});
