// The sharded draft step in one process: ranks are threads sharing memory (ThreadComm,
// Communicator.threadWorld), every layout of up to 4 ranks against the single-rank native
// step and the float64 reference on the same weights and batch; a broken group mid-step.
// (test/equivalence/sharded.test.ts runs the same layouts as real processes over Gloo.)
import assert from 'node:assert/strict';
import { Communicator } from '../../src/native/collectives.ts';
import { sliceBatch } from '../../src/job/draft-io.ts';
import { CollectiveError, InvalidArgumentError } from '../../src/errors.ts';
import { DraftModel, type StepOptions, type StepResult } from '../../src/native/addon.ts';
import type { Fixture } from '../support/fixtures.ts';
import {
  LAYOUTS, SHARD_CFG, UPDATE, compareStep, fmtErrors, referenceStep, shardFixture, singleRankStep, type StepNumbers,
} from '../support/sharded.ts';

interface World { comms: Communicator[]; models: DraftModel[] }

async function makeWorld(fx: Fixture, l: { tp: number; sp: number; dp: number }, timeoutMs = 20_000): Promise<World> {
  const n = l.tp * l.sp * l.dp;
  const comms = Communicator.threadWorld(n, { timeoutMs });
  // every rank passes its own copy; rank 0's are broadcast (the others are scrambled to prove it)
  const models = await Promise.all(comms.map((c, r) => {
    const w = { ...fx.weights };
    if (r > 0) w.fc = (fx.weights.fc as Float32Array).map((x) => x + r);
    return DraftModel.createSharded(fx.config, w, c, l, { threads: 1 });
  }));
  return { comms, models };
}

async function closeWorld(w: World): Promise<void> {
  for (const m of w.models) m.close();
  await Promise.all(w.comms.map((c) => c.close()));
}

function slices(fx: Fixture, w: World): ReturnType<typeof sliceBatch>[] {
  return w.models.map((m) => {
    const s = m.shard!;
    return sliceBatch(fx.batch, { sp: s.sp, dp: s.dp, spIdx: s.spIdx, dpIdx: s.dpIdx }, fx.config.ttt, fx.config.hidden);
  });
}

describe('sharded draft step, ranks as threads (ThreadComm)', function () {
  this.timeout(60_000);
  let fx: Fixture;
  let single: StepNumbers;
  let ref: StepNumbers;
  const errors: string[] = [];

  before(async () => {
    fx = shardFixture(5);
    single = await singleRankStep(fx);
    ref = referenceStep(fx);
    compareStep('single rank vs reference', single, ref, { rel: 1e-5, gradRel: 1e-4 }, UPDATE.lr!);
  });
  after(() => { if (process.env.DRAFTWIRE_SHARD_REPORT) console.log(errors.join('\n')); });

  for (const [name, l] of Object.entries(LAYOUTS)) {
    it(`${name}: every rank reports the single-rank loss and grad norm; gathered grads and new weights match it and the reference`, async () => {
      const w = await makeWorld(fx, l);
      try {
        const sl = slices(fx, w);
        const rs: StepResult[] = await Promise.all(w.models.map((m, r) => m.step(sl[r]!, UPDATE)));
        const news = await Promise.all(w.models.map((m) => m.gatherWeights()));
        for (let r = 0; r < rs.length; r++) {
          const got: StepNumbers = { ...rs[r]!, grads: rs[r]!.grads!, weights: news[r]! };
          const e1 = compareStep(`${name} rank ${r} vs single rank`, got, single, { rel: 1e-5, gradRel: 1e-5 }, UPDATE.lr!);
          const e2 = compareStep(`${name} rank ${r} vs float64 reference`, got, ref, { rel: 1e-5, gradRel: 1e-4 }, UPDATE.lr!);
          if (r === 0) errors.push(`${name}: vs single ${fmtErrors(e1)}; vs reference ${fmtErrors(e2)}`);
          assert.equal(rs[r]!.step, 1);
          // AdamW identical on every rank: the same bits everywhere
          for (const t of Object.keys(news[0]!)) assert.deepEqual(news[r]![t], news[0]![t], `${name}: rank ${r}'s new "${t}" differs from rank 0's`);
          assert.equal(rs[r]!.loss, rs[0]!.loss, `${name}: rank ${r} reports another loss than rank 0`);
          assert.equal(rs[r]!.gradNorm, rs[0]!.gradNorm, `${name}: rank ${r} reports another grad norm than rank 0`);
        }
      } finally {
        await closeWorld(w);
      }
    });
  }

  it('evaluate() and a second step agree with the single-rank model (tp2×sp2)', async () => {
    const w = await makeWorld(fx, LAYOUTS['tp2×sp2']!);
    const m1 = DraftModel.create(fx.config, fx.weights, { threads: 1 });
    try {
      const sl = slices(fx, w);
      const opts: StepOptions = { ...UPDATE, returnGrads: false };
      for (let s = 0; s < 2; s++) {
        const want = await m1.step(fx.batch, opts);
        const got = await Promise.all(w.models.map((m, r) => m.step(sl[r]!, opts)));
        for (const g of got) {
          assert.ok(Math.abs(g.loss - want.loss) <= 1e-5 * want.loss, `step ${s + 1}: loss ${g.loss} vs ${want.loss}`);
          assert.ok(Math.abs(g.gradNorm - want.gradNorm) <= 1e-5 * want.gradNorm, `step ${s + 1}: grad norm ${g.gradNorm} vs ${want.gradNorm}`);
          assert.equal(g.grads, null);
          assert.equal(g.step, s + 1);
        }
      }
      const want = await m1.evaluate(fx.batch);
      const got = await Promise.all(w.models.map((m, r) => m.evaluate(sl[r]!)));
      for (const g of got) assert.ok(Math.abs(g.loss - want.loss) <= 1e-5 * want.loss, `evaluate: loss ${g.loss} vs ${want.loss}`);
      const st = await Promise.all(w.models.map((m) => m.gatherOptimizerState()));
      const st1 = m1.optimizerState();
      assert.equal(st[0]!.step, 2);
      for (const t of ['q', 'o', 'down', 'lm', 'fc']) {
        let worst = 0;
        for (let i = 0; i < st1.v[t]!.length; i++) worst = Math.max(worst, Math.abs(st[0]!.v[t]![i]! - st1.v[t]![i]!) / (st1.v[t]![i]! + 1e-20));
        assert.ok(worst < 1e-3, `gathered AdamW v "${t}" differs from the single-rank one by ${worst}`);
      }
    } finally {
      m1.close();
      await closeWorld(w);
    }
  });

  it('rejects layouts the config or the batch cannot split, naming the constraint', async () => {
    const comms = Communicator.threadWorld(4);
    try {
      await assert.rejects(DraftModel.createSharded({ ...SHARD_CFG, kvHeads: 2, heads: 4 }, fx.weights, comms[0]!, { tp: 4, sp: 1, dp: 1 }),
        (e: unknown) => e instanceof InvalidArgumentError && /kvHeads \(2\) must be divisible by tp \(4\)/.test(e.message));
      await assert.rejects(DraftModel.createSharded(SHARD_CFG, fx.weights, comms[0]!, { tp: 2, sp: 1, dp: 1 }),
        (e: unknown) => e instanceof InvalidArgumentError && /must equal the communicator's size 4/.test(e.message));
      assert.throws(() => sliceBatch(fx.batch, { sp: 3, dp: 1, spIdx: 0, dpIdx: 0 }, 3, SHARD_CFG.hidden),
        (e: unknown) => e instanceof InvalidArgumentError && /8 positions, which sp = 3 does not divide/.test(e.message));
      assert.throws(() => sliceBatch(fx.batch, { sp: 1, dp: 3, spIdx: 0, dpIdx: 0 }, 3, SHARD_CFG.hidden),
        (e: unknown) => e instanceof InvalidArgumentError && /4 samples, which dp = 3 does not divide/.test(e.message));
    } finally {
      await Promise.all(comms.map((c) => c.close()));
    }
  });

  it('ranks that disagree on the request fail together with InvalidArgumentError (no hang)', async () => {
    const w = await makeWorld(fx, LAYOUTS['dp4']!);
    try {
      const sl = slices(fx, w);
      const rs = await Promise.allSettled(w.models.map((m, r) => m.step(sl[r]!, { ...UPDATE, lr: r === 2 ? 0.5 : UPDATE.lr })));
      for (const r of rs) {
        assert.equal(r.status, 'rejected');
        assert.ok((r as PromiseRejectedResult).reason instanceof InvalidArgumentError, String((r as PromiseRejectedResult).reason));
        assert.match((r as PromiseRejectedResult).reason.message, /disagree on lr/);
      }
      // nothing broke: the same world steps fine afterwards
      const ok = await Promise.all(w.models.map((m, r) => m.step(sl[r]!, UPDATE)));
      assert.ok(Math.abs(ok[0]!.loss - single.loss) <= 1e-5 * single.loss);
    } finally {
      await closeWorld(w);
    }
  });

  it('a rank that never arrives mid-step: the others reject with CollectiveError once the group breaks, and stay failed', async () => {
    const w = await makeWorld(fx, LAYOUTS['tp2×sp2']!);
    try {
      const sl = slices(fx, w);
      const t0 = Date.now();
      const pending = w.models.slice(0, 3).map((m, r) => m.step(sl[r]!, UPDATE)); // rank 3 stays away
      await new Promise((r) => setTimeout(r, 200));
      w.comms[3]!.abortForTest('rank 3 died');
      const rs = await Promise.allSettled(pending);
      const ms = Date.now() - t0;
      for (const r of rs) {
        assert.equal(r.status, 'rejected');
        const e = (r as PromiseRejectedResult).reason;
        assert.ok(e instanceof CollectiveError, `${e?.name}: ${e?.message}`);
        assert.equal(e.code, 'COLLECTIVE');
        assert.match(e.stack ?? '', /sharded-threads\.test\.ts/, 'the error carries the caller\'s stack');
      }
      assert.ok(ms < 5000, `rejected after ${ms} ms`);
      await assert.rejects(w.models[0]!.step(sl[0]!, UPDATE), (e: unknown) => e instanceof CollectiveError && /earlier collective failed/.test((e as Error).message));
    } finally {
      await closeWorld(w);
    }
  });
});
