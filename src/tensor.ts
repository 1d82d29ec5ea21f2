// Host tensors as Draftwire passes them around: a dtype, a shape and a typed array view.
import { InvalidArgumentError } from './errors.ts';

export type Dtype = 'f32' | 'f64' | 'bf16' | 'f16' | 'i32' | 'i64' | 'u8';
export type TensorData = Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;

export interface Tensor {
  dtype: Dtype;
  shape: number[];
  data: TensorData;
}

export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = { f32: 4, f64: 8, bf16: 2, f16: 2, i32: 4, i64: 8, u8: 1 };

const ARRAY_OF: Record<Dtype, new (buf: ArrayBufferLike, off: number, len: number) => TensorData> = {
  f32: Float32Array, f64: Float64Array, bf16: Uint16Array, f16: Uint16Array, i32: Int32Array, i64: BigInt64Array, u8: Uint8Array,
};

export function isDtype(x: unknown): x is Dtype {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, x);
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** A typed-array view of `bytes` (copied first when unaligned, so views are always valid). */
export function viewAs(dtype: Dtype, bytes: Uint8Array): TensorData {
  const size = DTYPE_BYTES[dtype];
  if (bytes.byteLength % size !== 0) throw new InvalidArgumentError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  const src = bytes.byteOffset % size === 0 ? bytes : new Uint8Array(bytes); // copy realigns
  return new ARRAY_OF[dtype](src.buffer, src.byteOffset, src.byteLength / size);
}

export function tensor(dtype: Dtype, shape: number[], data?: TensorData): Tensor {
  const n = numel(shape);
  const out = data ?? new ARRAY_OF[dtype](new ArrayBuffer(n * DTYPE_BYTES[dtype]), 0, n);
  if (out.length !== n) throw new InvalidArgumentError(`tensor data has ${out.length} elements, shape [${shape}] needs ${n}`);
  return { dtype, shape: [...shape], data: out };
}

export function bytesOf(t: Tensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** f32 → bf16 bit patterns, rounded to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN. */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length), out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i]!;
    out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** f32 → IEEE half bit patterns, rounded to nearest even (as torch's .to(torch.float16)); overflow → ±inf, NaN stays NaN. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length), out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i]!, sign = (x >>> 16) & 0x8000, e = (x >>> 23) & 0xff, m = x & 0x7fffff;
    if (e === 0xff) { out[i] = sign | 0x7c00 | (m ? 0x200 : 0); continue; }
    const he = e - 127 + 15;
    if (he >= 0x1f) { out[i] = sign | 0x7c00; continue; }
    if (he <= 0) { // subnormal half (or zero): shift the full mantissa, round to nearest even
      if (he < -10) { out[i] = sign; continue; }
      const full = m | 0x800000, shift = 14 - he, half = full >>> shift, rest = full & ((1 << shift) - 1), mid = 1 << (shift - 1);
      out[i] = sign | (half + (rest > mid || (rest === mid && (half & 1)) ? 1 : 0));
      continue;
    }
    const half = (he << 10) | (m >>> 13), rest = m & 0x1fff;
    out[i] = sign | (half + (rest > 0x1000 || (rest === 0x1000 && (half & 1)) ? 1 : 0)); // a carry rolls into the exponent (to inf at most)
  }
  return out;
}
