// Padded data-parallel batches: StepOptions.samples. Ranks pad their local batches to a common
// size with dummy samples whose mask is all zero; with samples = the real samples of the
// global batch the step equals the single-rank step over the real samples only (loss, ploss,
// acc, grad norm, gradients, AdamW update). Plus the option's validation and the agreement
// check across ranks.
import assert from 'node:assert/strict';
import { Communicator } from '../../src/native/collectives.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { DraftModel, type DraftBatch, type StepOptions } from '../../src/native/addon.ts';
import type { Fixture } from '../support/fixtures.ts';
import { UPDATE, compareStep, fmtErrors, shardFixture, singleRankStep, type StepNumbers } from '../support/sharded.ts';

/**
 * The samples `real` of the fixture's batch (sp = 1: a sample is its T positions), followed by
 * `pad` copies of sample `padFrom` with the mask all zero (ids in range, finite aux/last).
 */
function pick(fx: Fixture, real: number[], pad = 0, padFrom = real[real.length - 1]!): DraftBatch {
  const { seq: T } = fx.batch, H = fx.config.hidden;
  const rows = [...real.map((s) => ({ s, padded: false })), ...Array.from({ length: pad }, () => ({ s: padFrom, padded: true }))];
  const B = rows.length;
  const ids = new Int32Array(B * T), mask = new Uint8Array(B * T);
  const last = new Float32Array(B * T * H), aux = new Float32Array(B * T * 3 * H);
  rows.forEach(({ s, padded }, i) => {
    ids.set(fx.batch.ids.subarray(s * T, (s + 1) * T), i * T);
    if (!padded) mask.set(fx.batch.mask.subarray(s * T, (s + 1) * T), i * T);
    last.set(fx.batch.last.subarray(s * T * H, (s + 1) * T * H), i * T * H);
    aux.set(fx.batch.aux.subarray(s * T * 3 * H, (s + 1) * T * 3 * H), i * T * 3 * H);
  });
  return { ids, aux, last, mask, batch: B, seq: T };
}

async function dp2World(fx: Fixture): Promise<{ comms: Communicator[]; models: DraftModel[] }> {
  const comms = Communicator.threadWorld(2, { timeoutMs: 20_000 });
  const models = await Promise.all(comms.map((c) => DraftModel.createSharded(fx.config, fx.weights, c, { tp: 1, sp: 1, dp: 2 }, { threads: 1 })));
  return { comms, models };
}

async function closeWorld(w: { comms: Communicator[]; models: DraftModel[] }): Promise<void> {
  for (const m of w.models) m.close();
  await Promise.all(w.comms.map((c) => c.close()));
}

async function unshardedStep(fx: Fixture, batch: DraftBatch, opts: StepOptions): Promise<StepNumbers> {
  const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try {
    const r = await m.step(batch, opts);
    return { loss: r.loss, gradNorm: r.gradNorm, ploss: r.ploss, acc: r.acc, grads: r.grads!, weights: opts.lr !== null ? m.weights() : null };
  } finally {
    m.close();
  }
}

/** Worst relative error of ploss and absolute error of acc, for the report. */
function metricErrors(got: StepNumbers, want: StepNumbers): string {
  let p = 0, a = 0;
  for (let k = 0; k < want.ploss.length; k++) {
    p = Math.max(p, Math.abs(got.ploss[k]! - want.ploss[k]!) / Math.max(Math.abs(want.ploss[k]!), 1e-30));
    a = Math.max(a, Math.abs(got.acc[k]! - want.acc[k]!));
  }
  return `ploss ${p.toExponential(1)}, acc |Δ| ${a.toExponential(1)}`;
}

const isSamplesError = (e: unknown) => e instanceof InvalidArgumentError && /options\.samples/.test(e.message);

describe('padded batches: StepOptions.samples normalises the loss by the real samples', function () {
  this.timeout(60_000);
  let fx: Fixture;
  const report: string[] = [];

  before(() => { fx = shardFixture(5); }); // B = 4 samples s0..s3, T = 8
  after(() => { if (process.env.DRAFTWIRE_SHARD_REPORT) console.log(report.join('\n')); });

  it('dp=2: rank 0 steps on s0,s1,s2, rank 1 on s3 + 2 pads, samples = 4: equals the unsharded step on s0..s3', async () => {
    const want = await singleRankStep(fx); // B = 4, no samples option, AdamW with clipping and decay
    const w = await dp2World(fx);
    try {
      const batches = [pick(fx, [0, 1, 2]), pick(fx, [3], 2)];
      assert.equal(batches[1]!.mask.subarray(8).reduce((a, x) => a + x, 0), 0, 'the pads are fully masked');
      const opts: StepOptions = { ...UPDATE, samples: 4 };
      const rs = await Promise.all(w.models.map((m, r) => m.step(batches[r]!, opts)));
      const news = await Promise.all(w.models.map((m) => m.gatherWeights()));
      for (let r = 0; r < 2; r++) {
        const got: StepNumbers = { ...rs[r]!, grads: rs[r]!.grads!, weights: news[r]! };
        const e = compareStep(`dp2 padded rank ${r} vs unsharded on the real samples`, got, want, { rel: 1e-5, gradRel: 1e-5 }, UPDATE.lr!);
        report.push(`dp2 padded rank ${r}: ${fmtErrors(e)}; ${metricErrors(got, want)}`);
        assert.equal(rs[r]!.step, 1);
      }
      // without the option the pads dilute the mean: the loss is 4/6 of the real one
      const w2 = await dp2World(fx);
      try {
        const diluted = await Promise.all(w2.models.map((m, r) => m.step(batches[r]!, { ...UPDATE, lr: null })));
        const rel = Math.abs(diluted[0]!.loss - (want.loss * 4) / 6) / want.loss;
        assert.ok(rel <= 1e-5, `unnormalised padded loss ${diluted[0]!.loss} vs 4/6 · ${want.loss}`);
      } finally {
        await closeWorld(w2);
      }
    } finally {
      await closeWorld(w);
    }
  });

  it('unsharded: B = 3 with samples = 2 and the third sample a pad equals the step on the 2 real samples', async () => {
    const want = await unshardedStep(fx, pick(fx, [0, 1]), UPDATE);
    const got = await unshardedStep(fx, pick(fx, [0, 1], 1, 2), { ...UPDATE, samples: 2 });
    const e = compareStep('unsharded padded vs real samples only', got, want, { rel: 1e-5, gradRel: 1e-5 }, UPDATE.lr!);
    report.push(`unsharded padded: ${fmtErrors(e)}; ${metricErrors(got, want)}`);
    // samples = B is the default, bit for bit
    const a = await unshardedStep(fx, fx.batch, { ...UPDATE, samples: 4 });
    const b = await unshardedStep(fx, fx.batch, { ...UPDATE, samples: null });
    const c = await unshardedStep(fx, fx.batch, UPDATE);
    assert.equal(a.loss, c.loss);
    assert.equal(b.loss, c.loss);
    assert.equal(a.gradNorm, c.gradNorm);
    for (const t of Object.keys(c.grads)) assert.deepEqual(a.grads[t], c.grads[t], `grad "${t}"`);
  });

  it('rejects samples outside [1, B·dp], non-integers and non-numbers, naming the option', async () => {
    const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
    try {
      const b = pick(fx, [0, 1], 1);
      for (const bad of [0, 1.5, 4, -1, Number.NaN, 'x', true]) {
        await assert.rejects(m.step(b, { ...UPDATE, samples: bad as number }), isSamplesError, `samples = ${String(bad)}`);
      }
      await assert.rejects(m.step(b, { ...UPDATE, samples: 4 }), (e: unknown) => isSamplesError(e) && /\[1, B·dp = 3\]/.test((e as Error).message));
      // nothing was stepped; a good value still works
      const ok = await m.step(b, { ...UPDATE, samples: 3 });
      assert.equal(ok.step, 1);
    } finally {
      m.close();
    }
    const w = await dp2World(fx);
    try {
      const batches = [pick(fx, [0, 1, 2]), pick(fx, [3], 2)];
      // the bound is B·dp = 6 in a dp = 2 world
      const over = await Promise.allSettled(w.models.map((m, r) => m.step(batches[r]!, { ...UPDATE, samples: 7 })));
      for (const r of over) {
        assert.equal(r.status, 'rejected');
        const e = (r as PromiseRejectedResult).reason;
        assert.ok(isSamplesError(e) && /\[1, B·dp = 6\]/.test(e.message), String(e));
      }
      // ranks that disagree on samples fail together
      const rs = await Promise.allSettled(w.models.map((m, r) => m.step(batches[r]!, { ...UPDATE, samples: r === 0 ? 4 : 5 })));
      for (const r of rs) {
        assert.equal(r.status, 'rejected');
        const e = (r as PromiseRejectedResult).reason;
        assert.ok(e instanceof InvalidArgumentError, String(e));
        assert.match(e.message, /disagree on samples \(loss normaliser\)/);
      }
      // absent on one rank = every sample (6): disagrees with 4 as well
      const rs2 = await Promise.allSettled(w.models.map((m, r) => m.step(batches[r]!, r === 0 ? { ...UPDATE, samples: 4 } : UPDATE)));
      for (const r of rs2) {
        assert.equal(r.status, 'rejected');
        assert.match((r as PromiseRejectedResult).reason.message, /disagree on samples \(loss normaliser\)/);
      }
      // nothing broke: the world steps fine afterwards
      const ok = await Promise.all(w.models.map((m, r) => m.step(batches[r]!, { ...UPDATE, samples: 4 })));
      assert.equal(ok[0]!.step, 1);
      assert.equal(ok[0]!.loss, ok[1]!.loss);
    } finally {
      await closeWorld(w);
    }
  });
});
