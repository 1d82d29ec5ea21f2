// Tiny seeded draft configs, weights and batches for the equivalence and CLI tests. Every
// fixture is float32 (what the native side consumes) and deterministic in its seed; batches
// always contain positions with mask = 0 and positions whose target argmax is outside d2t
// (ok = 0), and every TTT step has weighted positions.
import { refShapes, referenceTarget, type RefConfig } from './reference.ts';

export const TINY: RefConfig = {
  vocab: 40, draftVocab: 16, hidden: 8, heads: 2, kvHeads: 1, intermediate: 12, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6,
};
/** GQA group 2, K = 4, and non-default RoPE θ / ε so both are known to be honoured. */
export const TINY_GQA: RefConfig = {
  vocab: 48, draftVocab: 20, hidden: 16, heads: 4, kvHeads: 2, intermediate: 20, ttt: 4, ropeTheta: 500, rmsEps: 1e-5,
};

/** mulberry32: a small, well-mixed 32-bit PRNG. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gauss(r: () => number): () => number {
  return () => {
    const u = 1 - r(), v = r();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

function randn(n: number, std: number, g: () => number, mean = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = mean + std * g();
  return a;
}

export type FixtureWeights = Record<string, Float32Array | Int32Array>;
export interface FixtureBatch { ids: Int32Array; aux: Float32Array; last: Float32Array; mask: Uint8Array; batch: number; seq: number }
export interface Fixture {
  config: RefConfig;
  weights: FixtureWeights;
  batch: FixtureBatch;
  /** Positions (b, t) with mask = 0, and with mask = 1 but ok = 0. */
  masked: number;
  notOk: number;
}

/** Trainable + frozen weights (d2t filled with 0..Vd-1; makeFixture picks a real one). */
export function makeWeights(c: RefConfig, seed: number): FixtureWeights {
  const g = gauss(rng(seed));
  const s = refShapes(c);
  const w: FixtureWeights = {};
  for (const [name, shape] of Object.entries(s)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (name === 'd2t') w[name] = Int32Array.from({ length: n }, (_, i) => i);
    else if (name.startsWith('n_')) w[name] = randn(n, 0.2, g, 1); // norms near 1, not exactly
    else if (name === 'embed') w[name] = randn(n, 1, g);
    else if (name === 'target_head') w[name] = randn(n, 1.5 / Math.sqrt(c.hidden), g);
    else if (name === 'lm') w[name] = randn(n, 2 / Math.sqrt(c.hidden), g);
    else w[name] = randn(n, 1 / Math.sqrt(shape[1]), g); // Linear [out, in]
  }
  return w;
}

/**
 * A config's weights and a batch [B, T], with d2t chosen so that some positions' target
 * argmax falls outside it, some mask = 0, and every TTT step has weighted positions. Target
 * argmaxes have a clear margin (no float32/float64 near ties).
 */
export function makeFixture(c: RefConfig, seed: number, opts: { batch?: number; seq?: number } = {}): Fixture {
  const B = opts.batch ?? 2, T = opts.seq ?? 6, H = c.hidden, V = c.vocab, Vd = c.draftVocab;
  for (let attempt = 0; attempt < 1000; attempt++) {
    const r = rng(seed * 7919 + attempt);
    const g = gauss(r);
    const weights = makeWeights(c, seed * 104729 + attempt);
    const ids = Int32Array.from({ length: B * T }, () => Math.floor(r() * V));
    ids[0] = V - 1; // the edges of the vocabulary are legal tokens
    if (B * T > 1) ids[1] = 0;
    const aux = randn(B * T * 3 * H, 1, g);
    const last = randn(B * T * H, 1, g);
    const mask = Uint8Array.from({ length: B * T }, () => (r() < 0.8 ? 1 : 0));
    const batch: FixtureBatch = { ids, aux, last, mask, batch: B, seq: T };
    // target argmaxes with d2t = identity (only y matters here)
    const tg = referenceTarget(c, weights, batch);
    if (tg.margin.flat().some((m) => m < 1e-3)) continue;
    const ys = [...new Set(tg.y.flat())];
    shuffle(ys, r);
    const inc = ys.slice(0, Math.max(1, Math.ceil(ys.length / 2)));
    const exc = new Set(ys.slice(inc.length));
    const rest = Array.from({ length: V }, (_, i) => i).filter((v) => !exc.has(v) && !inc.includes(v));
    shuffle(rest, r);
    const d2t = [...inc, ...rest].slice(0, Vd);
    if (d2t.length < Vd) continue;
    shuffle(d2t, r); // not sorted: the mapping must really be used
    weights.d2t = Int32Array.from(d2t);
    const tg2 = referenceTarget(c, weights, batch);
    let masked = 0, notOk = 0;
    const wsum = new Array<number>(c.ttt).fill(0);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        if (mask[b * T + t] === 0) masked++;
        else if (tg2.ok[b][t] === 0) notOk++;
      }
      for (let k = 0; k < c.ttt; k++) {
        for (let t = 0; t + 1 + k < T; t++) wsum[k] += mask[b * T + t + 1 + k] * tg2.ok[b][t + 1 + k];
      }
    }
    if (masked === 0 || notOk === 0 || wsum.some((x) => x === 0)) continue;
    return { config: c, weights, batch, masked, notOk };
  }
  throw new Error('makeFixture: no fixture met the conditions (config too small?)');
}

function shuffle<T>(a: T[], r: () => number): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
}
