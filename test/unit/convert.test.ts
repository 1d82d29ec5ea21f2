// The native bf16/f16 → f32 upcast (native/src/kernels/convert.cc) against references written from the
// IEEE definitions, for every one of the 65536 bit patterns of each, on both f16 paths (F16C
// where the CPU has it, and the portable loop), and against numpy's float16 (python3 with numpy: scripts/setup.sh installs it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { InvalidArgumentError } from '../../src/errors.ts';
import { convertInfo, upcastToF32 } from '../../src/native/addon.ts';

const ALL = Uint16Array.from({ length: 65536 }, (_, i) => i);
const bitsOf = (f: Float32Array): Uint32Array => new Uint32Array(f.buffer, f.byteOffset, f.length);
const dv = new DataView(new ArrayBuffer(4));
/** The f32 bit pattern of a (float32-representable) number. */
const f32Bits = (x: number): number => { dv.setFloat32(0, x); return dv.getUint32(0); };

/** bf16 = sign, 8-bit exponent (bias 127), 7-bit mantissa: f32 with the low 16 mantissa bits cut. */
function bf16Reference(h: number): number {
  const s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
  if (e === 0xff) return m === 0 ? f32Bits(s ? -Infinity : Infinity) : (h << 16) >>> 0; // a NaN is kept as it is
  const v = e === 0 ? (m / 128) * 2 ** -126 : (1 + m / 128) * 2 ** (e - 127);
  return f32Bits(s ? -v : v);
}

/** IEEE binary16: sign, 5-bit exponent (bias 15), 10-bit mantissa; NaNs widen quiet (IEEE 754 §6.2), payload kept. */
function f16Reference(h: number): number {
  const s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m === 0 ? f32Bits(s ? -Infinity : Infinity) : ((s << 31) | 0x7fc00000 | (m << 13)) >>> 0;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return f32Bits(s ? -v : v);
}

function firstMismatch(got: Uint32Array, ref: (h: number) => number): string | null {
  for (let h = 0; h < 65536; h++) {
    if (got[h] !== ref(h)) return `0x${h.toString(16).padStart(4, '0')} → 0x${got[h]!.toString(16)}, expected 0x${ref(h).toString(16)}`;
  }
  return null;
}

describe('upcastToF32 (native bf16/f16 → f32)', () => {
  it('bf16: every bit pattern equals the IEEE definition (a 16-bit shift; -0, subnormals, inf, NaN payloads)', () => {
    const dst = new Float32Array(65536).fill(Number.NaN);
    upcastToF32(ALL, 'bf16', dst, 0);
    assert.equal(firstMismatch(bitsOf(dst), bf16Reference), null);
    assert.equal(dst[0x3f80], 1); // the defect this fixes: 1.0 read as the number 16256
    assert.equal(dst[0xc000], -2);
  });

  for (const portable of [false, true]) {
    it(`f16 (${portable ? 'portable loop' : convertInfo().f16c ? 'F16C path' : 'portable loop, no F16C here'}): every bit pattern equals IEEE binary16`, () => {
      const dst = new Float32Array(65536);
      upcastToF32(ALL, 'f16', dst, 0, { portable });
      assert.equal(firstMismatch(bitsOf(dst), f16Reference), null);
      assert.equal(dst[0x3c00], 1);
      assert.equal(dst[0x0001], 2 ** -24); // smallest subnormal
      assert.equal(dst[0x7bff], 65504); // largest finite
      assert.equal(dst[0xfc00], -Infinity);
    });
  }

  it('f16 agrees with numpy float16 → float32 (NaNs: both NaN)', function () {
    const py = spawnSync('python3', ['-c', 'import sys, numpy as np; sys.stdout.buffer.write(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32).tobytes())'], { maxBuffer: 1 << 20 });
    assert.ok(py.status === 0 && py.stdout.length === 65536 * 4, `python3 with numpy is needed (scripts/setup.sh installs it): ${py.stderr?.toString().trim().split('\n').at(-1) ?? ''}`);
    const np = new Float32Array(py.stdout.buffer.slice(py.stdout.byteOffset, py.stdout.byteOffset + py.stdout.length));
    const dst = new Float32Array(65536);
    upcastToF32(ALL, 'f16', dst, 0);
    const npBits = bitsOf(np), got = bitsOf(dst);
    let nans = 0;
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(np[h]!)) { nans++; assert.ok(Number.isNaN(dst[h]!), `0x${h.toString(16)}: numpy NaN, got ${dst[h]}`); continue; }
      assert.equal(got[h], npBits[h], `0x${h.toString(16)}: numpy 0x${npBits[h]!.toString(16)}, got 0x${got[h]!.toString(16)}`);
    }
    assert.equal(nans, 2 * 1023);
  });

  it('writes exactly dst[dstOffset, dstOffset + n) for odd lengths and offsets (the vector tails)', () => {
    for (const dtype of ['bf16', 'f16'] as const) {
      for (const n of [0, 1, 7, 8, 9, 15, 17, 33]) {
        for (const off of [0, 1, 3]) {
          const src = Uint16Array.from({ length: n }, (_, i) => 0x3c00 + i * 37);
          const dst = new Float32Array(off + n + 5).fill(-7);
          upcastToF32(src, dtype, dst, off);
          const ref = dtype === 'bf16' ? bf16Reference : f16Reference;
          for (let i = 0; i < dst.length; i++) {
            const want = i >= off && i < off + n ? ref(src[i - off]!) : f32Bits(-7);
            assert.equal(bitsOf(dst)[i], want, `${dtype} n=${n} off=${off} at ${i}`);
          }
        }
      }
    }
  });

  it('a src view at an odd offset into its buffer converts the words of the view', () => {
    const buf = new Uint16Array([0xffff, 0x3f80, 0x4000, 0xffff]);
    const dst = new Float32Array(2);
    upcastToF32(buf.subarray(1, 3), 'bf16', dst);
    assert.deepEqual(Array.from(dst), [1, 2]);
  });

  it('bad arguments are InvalidArgumentErrors naming the argument', () => {
    const src = new Uint16Array(4), dst = new Float32Array(4);
    const bad = (fn: () => void, re: RegExp) => assert.throws(fn, (e: Error) => e instanceof InvalidArgumentError && re.test(e.message), re.source);
    bad(() => upcastToF32(new Float32Array(4) as unknown as Uint16Array, 'bf16', dst), /src must be a Uint16Array.*Float32Array/);
    bad(() => upcastToF32(new Uint8Array(8) as unknown as Uint16Array, 'bf16', dst), /src must be a Uint16Array/);
    bad(() => upcastToF32(src, 'f32' as 'bf16', dst), /dtype must be "bf16" or "f16", got "f32"/);
    bad(() => upcastToF32(src, 'f16', new Uint16Array(4) as unknown as Float32Array), /dst must be a Float32Array.*Uint16Array/);
    bad(() => upcastToF32(src, 'f16', dst, -1), /dstOffset must be a non-negative integer, got number -1/);
    bad(() => upcastToF32(src, 'f16', dst, 0.5), /dstOffset must be a non-negative integer/);
    bad(() => upcastToF32(src, 'f16', dst, 1), /dstOffset 1 \+ src.length 4 exceeds dst.length 4/);
    // The native side checks what the wrapper cannot see: src and dst sharing memory.
    const shared = new Float32Array(8);
    bad(() => upcastToF32(new Uint16Array(shared.buffer, 0, 4), 'bf16', shared, 0), /overlap/);
    assert.deepEqual(Array.from(dst), [0, 0, 0, 0], 'nothing written by a refused call');
  });
});
