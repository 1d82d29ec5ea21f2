// Shared pieces of the sharded-step equivalence tests (test/equivalence/sharded*.test.ts):
// a tiny config every layout of 4 ranks can split (tp 4: kv heads, MLP width and draft vocab
// divisible by 4; sp 4: T = 8; dp 4: B = 4), the single-rank native step and the float64
// reference on it, and the comparisons with their measured errors.
import assert from 'node:assert/strict';
import { DraftModel, type StepOptions } from '../../src/native/addon.ts';
import { REF_TRAINABLE, referenceAdamW, referenceBackward, referenceLoss, relErr, type RefConfig } from './reference.ts';
import { makeFixture, type Fixture } from './fixtures.ts';

/** GQA group 2; tp 4 leaves 2 heads / 1 kv head / 6 MLP columns / 6 draft ids per rank. */
export const SHARD_CFG: RefConfig = {
  vocab: 64, draftVocab: 24, hidden: 32, heads: 8, kvHeads: 4, intermediate: 24, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6,
};
export const SHARD_B = 4;
export const SHARD_T = 8;

export const LAYOUTS: Record<string, { tp: number; sp: number; dp: number }> = {
  'tp2×sp2': { tp: 2, sp: 2, dp: 1 },
  'tp2×dp2': { tp: 2, sp: 1, dp: 2 },
  'sp4': { tp: 1, sp: 4, dp: 1 },
  'dp4': { tp: 1, sp: 1, dp: 4 },
  'tp4': { tp: 4, sp: 1, dp: 1 },
  'sp2×dp2': { tp: 1, sp: 2, dp: 2 },
  'tp1×sp1×dp1': { tp: 1, sp: 1, dp: 1 },
};

/** One AdamW step with clipping that binds (the clip coefficient is < 1) and weight decay. */
export const UPDATE: StepOptions = { lr: 1e-2, clip: 0.5, weightDecay: 0.01, returnGrads: true };

/** A fixture whose draft argmaxes have a clear margin at every weighted position (accuracy is then exact). */
export function shardFixture(seed: number): Fixture {
  for (let s = seed; s < seed + 200; s++) {
    const fx = makeFixture(SHARD_CFG, s, { batch: SHARD_B, seq: SHARD_T });
    const ref = referenceLoss(SHARD_CFG, fx.weights, fx.batch);
    if (ref.accMargin.every((m) => m > 1e-3) && ref.acc.some((a) => a > 0)) return fx;
  }
  throw new Error('shardFixture: no seed gave clear draft argmaxes');
}

export interface StepNumbers {
  loss: number; gradNorm: number; ploss: ArrayLike<number>; acc: ArrayLike<number>;
  grads: Record<string, ArrayLike<number>>; weights: Record<string, ArrayLike<number>> | null;
}

export async function singleRankStep(fx: Fixture, opts: StepOptions = UPDATE): Promise<StepNumbers> {
  const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try {
    const r = await m.step(fx.batch, opts);
    return { loss: r.loss, gradNorm: r.gradNorm, ploss: r.ploss, acc: r.acc, grads: r.grads!, weights: opts.lr !== null ? m.weights() : null };
  } finally {
    m.close();
  }
}

export function referenceStep(fx: Fixture, opts: StepOptions = UPDATE): StepNumbers {
  const { loss, grads } = referenceBackward(fx.config, fx.weights, fx.batch);
  const up = opts.lr !== null ? referenceAdamW(fx.weights, grads, null, { lr: opts.lr, clip: opts.clip, weightDecay: opts.weightDecay }) : null;
  return { loss: loss.loss, gradNorm: up?.gradNorm ?? Math.sqrt(REF_TRAINABLE.reduce((s, n) => s + grads[n].reduce((a, x) => a + x * x, 0), 0)),
    ploss: loss.ploss, acc: loss.acc, grads, weights: up?.weights ?? null };
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);

/** Worst errors of one comparison, for the report: relative (loss, grad norm), norm-wise relative
 * (grads, worst tensor), and |Δw| / lr (new weights: the fraction of a step-one update). */
export interface Errors { loss: number; gradNorm: number; grads: number; weights: number; skipped: number }

/**
 * got vs want: loss, ploss and grad norm within `rel` relative; acc equal (to 1e-6); every
 * gradient within `gradRel` norm-wise (elementwise within gradRel·|ĝ| + gradRel·‖ĝ‖∞); the
 * updated weights within 2e-6·|w| + 1e-3·lr, except entries whose gradient is so close to 0
 * (|ĝ| ≤ 1e-4·‖ĝ‖∞ of its tensor) that float32 rounding alone can flip the sign of the
 * step-one update (≈ lr·sign(g)): those are compared through their gradients above.
 */
export function compareStep(label: string, got: StepNumbers, want: StepNumbers, tol: { rel: number; gradRel: number }, lr: number): Errors {
  const e: Errors = { loss: rel(got.loss, want.loss), gradNorm: rel(got.gradNorm, want.gradNorm), grads: 0, weights: 0, skipped: 0 };
  assert.ok(e.loss <= tol.rel, `${label}: loss ${got.loss} vs ${want.loss} (rel ${e.loss.toExponential(2)} > ${tol.rel})`);
  assert.ok(e.gradNorm <= tol.rel, `${label}: grad norm ${got.gradNorm} vs ${want.gradNorm} (rel ${e.gradNorm.toExponential(2)} > ${tol.rel})`);
  for (let k = 0; k < want.ploss.length; k++) {
    assert.ok(Math.abs(got.ploss[k] - want.ploss[k]) <= tol.rel * Math.abs(want.ploss[k]) + 1e-7, `${label}: ploss[${k}] ${got.ploss[k]} vs ${want.ploss[k]}`);
    assert.ok(Math.abs(got.acc[k] - want.acc[k]) <= 1e-6, `${label}: acc[${k}] ${got.acc[k]} vs ${want.acc[k]}`);
  }
  for (const name of REF_TRAINABLE) {
    const g = got.grads[name], w = want.grads[name];
    assert.ok(g, `${label}: no gradient for "${name}"`);
    assert.equal(g.length, w.length, `${label}: grad "${name}" has ${g.length} elements, expected ${w.length}`);
    let inf = 0;
    for (let i = 0; i < w.length; i++) inf = Math.max(inf, Math.abs(w[i]));
    const r = relErr(g, w);
    e.grads = Math.max(e.grads, r);
    assert.ok(r <= tol.gradRel, `${label}: grad "${name}" norm-wise relative error ${r.toExponential(2)} > ${tol.gradRel}`);
    for (let i = 0; i < w.length; i++) {
      assert.ok(Math.abs(g[i] - w[i]) <= tol.gradRel * (Math.abs(w[i]) + inf), `${label}: grad "${name}"[${i}] ${g[i]} vs ${w[i]} (‖ĝ‖∞ ${inf})`);
    }
    if (!got.weights || !want.weights) continue;
    const gw = got.weights[name], ww = want.weights[name];
    assert.equal(gw.length, ww.length, `${label}: new "${name}" length`);
    for (let i = 0; i < ww.length; i++) {
      if (Math.abs(w[i]) <= 1e-4 * inf) { e.skipped++; continue; }
      const d = Math.abs(gw[i] - ww[i]);
      e.weights = Math.max(e.weights, d / lr);
      assert.ok(d <= 2e-6 * Math.abs(ww[i]) + 1e-3 * lr, `${label}: new "${name}"[${i}] ${gw[i]} vs ${ww[i]} (grad ${w[i]}, ‖ĝ‖∞ ${inf})`);
    }
  }
  return e;
}

export function fmtErrors(e: Errors): string {
  return `loss ${e.loss.toExponential(1)}, grad norm ${e.gradNorm.toExponential(1)}, grads ${e.grads.toExponential(1)}, new weights |Δw|/lr ${e.weights.toExponential(1)} (${e.skipped} near-zero-gradient entries compared through their gradients)`;
}
