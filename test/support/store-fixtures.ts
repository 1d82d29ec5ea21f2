// Shared fixtures for the contract tests of sampleref, ledger and store (and their child processes).
import type { SampleRef } from '../../src/wire/sampleref.ts';

export function sampleRef(over: Partial<SampleRef> = {}): SampleRef {
  const sampleId = over.sampleId ?? 'row-000042';
  const generation = over.generation ?? 3;
  return {
    v: 1,
    job: 'job1',
    sampleId,
    generation,
    uri: `dir://store-a/${sampleId}?g=${generation}`,
    features: { aux: { dtype: 'bf16', shape: [128, 3 * 64] }, ids: { dtype: 'i32', shape: [128] }, last: { dtype: 'f32', shape: [128, 64] }, mask: { dtype: 'u8', shape: [128] } },
    numTokens: 128,
    bytes: 128 * 192 * 2 + 128 * 4 + 128 * 64 * 4 + 128,
    checksum: 'sha256m:' + 'ab'.repeat(32),
    producer: { node: 'node-1', actor: 'rollout.0', incarnation: 7 },
    createdAt: 1_700_000_000_000,
    ...over,
  };
}

import { createHash } from 'node:crypto';
import { tensor, bytesOf, type Tensor } from '../../src/tensor.ts';

/** A deterministic sample in the shape rollout writes (ids, aux, last, mask). */
export function makeSample(seed: number, T: number, H: number): Record<string, Tensor> {
  const ids = tensor('i32', [T]);
  const aux = tensor('bf16', [T, 3 * H]);
  const last = tensor('f32', [T, H]);
  const mask = tensor('u8', [T]);
  let x = (seed * 2654435761) >>> 0;
  const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  for (let i = 0; i < T; i++) { (ids.data as Int32Array)[i] = next() % 32000; (mask.data as Uint8Array)[i] = i % 7 === 0 ? 0 : 1; }
  const a = aux.data as Uint16Array;
  for (let i = 0; i < a.length; i++) a[i] = next() & 0xffff;
  const l = last.data as Float32Array;
  for (let i = 0; i < l.length; i++) l[i] = (next() % 2000) / 1000 - 1;
  return { ids, aux, last, mask };
}

export interface TensorDigest { dtype: string; shape: number[]; sha256: string }

export function digestTensors(ts: Record<string, Tensor>): Record<string, TensorDigest> {
  const out: Record<string, TensorDigest> = {};
  for (const name of Object.keys(ts).sort()) {
    const t = ts[name]!;
    out[name] = { dtype: t.dtype, shape: [...t.shape], sha256: createHash('sha256').update(bytesOf(t)).digest('hex') };
  }
  return out;
}

/** Rows [r0, r1) of every tensor of a sample (what a partial get must return). */
export function sliceRows(ts: Record<string, Tensor>, r0: number, r1: number): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(ts)) {
    const per = t.shape.slice(1).reduce((a, b) => a * b, 1);
    out[name] = { dtype: t.dtype, shape: [r1 - r0, ...t.shape.slice(1)], data: t.data.slice(r0 * per, r1 * per) as Tensor['data'] };
  }
  return out;
}
