// A draft shaped like a real target's: a head dim that is not hidden/heads (Qwen3: 128 with
// hidden 1024 and 16 heads) and llama3 RoPE scaling (Llama 3.x), checked against the float64
// reference (test/support/reference.ts: its own RoPE frequency formula, transformers'), forward
// and analytic backward, unsharded and tensor-parallel.
import assert from 'node:assert/strict';
import { Communicator } from '../../src/native/collectives.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { DraftModel, draftParamShapes, type StepOptions } from '../../src/native/addon.ts';
import { REF_TRAINABLE, referenceBackward, relErr, type RefConfig } from '../support/reference.ts';
import { makeFixture, type Fixture } from '../support/fixtures.ts';

const GRADS: StepOptions = { lr: null, clip: null, weightDecay: 0, returnGrads: true };
// original 32 positions, factors 4 and 1: with θ = 100 and d = 12 the six frequencies fall in
// all three llama3 bands (kept, smoothed, stretched) over a 16-token sequence.
const SHAPED: RefConfig = {
  vocab: 61, draftVocab: 30, hidden: 32, heads: 4, kvHeads: 2, headDim: 12, intermediate: 40, ttt: 3,
  ropeTheta: 100, rmsEps: 1e-5,
  ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 },
};

function check(fx: Fixture, got: { loss: number; grads: Record<string, ArrayLike<number>> }, label: string): number {
  const ref = referenceBackward(fx.config, fx.weights, fx.batch);
  assert.ok(Math.abs(got.loss - ref.loss.loss) <= 1e-5 * ref.loss.loss, `${label}: loss ${got.loss} vs reference ${ref.loss.loss}`);
  let worst = 0;
  for (const name of REF_TRAINABLE) {
    const e = relErr(got.grads[name]!, ref.grads[name]);
    worst = Math.max(worst, e);
    assert.ok(e <= 1e-4, `${label}: grad "${name}" norm-wise relative error ${e.toExponential(2)}`);
  }
  return worst;
}

describe('a draft shaped like a real target: head dim ≠ hidden/heads, llama3 RoPE scaling', function () {
  this.timeout(60_000);
  const fx = makeFixture(SHAPED, 3, { batch: 2, seq: 16 });

  it('tensor shapes follow headDim: q [heads·headDim, 2H], o [H, heads·headDim]', () => {
    const s = draftParamShapes(SHAPED);
    assert.deepEqual([s.q, s.k, s.o], [[48, 64], [24, 64], [32, 48]]);
  });

  it('the step equals the float64 reference (loss and every gradient)', async () => {
    const m = DraftModel.create(SHAPED, fx.weights, { threads: 1 });
    try { check(fx, (await m.step(fx.batch, GRADS)) as { loss: number; grads: Record<string, Float32Array> }, 'unsharded'); } finally { m.close(); }
  });

  it('the scaling matters: the same weights without it give another loss (the test can fail)', async () => {
    const m = DraftModel.create({ ...SHAPED, ropeScaling: null }, fx.weights, { threads: 1 });
    try {
      const r = await m.step(fx.batch, GRADS);
      const ref = referenceBackward(fx.config, fx.weights, fx.batch);
      assert.ok(Math.abs(r.loss - ref.loss.loss) > 1e-4 * ref.loss.loss, `loss ${r.loss} should differ from ${ref.loss.loss}`);
    } finally { m.close(); }
  });

  it('tp = 2 gives the same step', async () => {
    const comms = Communicator.threadWorld(2, { timeoutMs: 20_000 });
    const models = await Promise.all(comms.map((c) => DraftModel.createSharded(SHAPED, fx.weights, c, { tp: 2, sp: 1, dp: 1 }, { threads: 1 })));
    try {
      const rs = await Promise.all(models.map((m) => m.step(fx.batch, GRADS)));
      check(fx, rs[0] as { loss: number; grads: Record<string, Float32Array> }, 'tp=2');
    } finally {
      for (const m of models) m.close();
      await Promise.all(comms.map((c) => c.close()));
    }
  });

  it('refuses an odd head dim and a bad scaling, naming the field', () => {
    assert.throws(() => DraftModel.create({ ...SHAPED, headDim: 11 }, fx.weights), (e: unknown) => e instanceof InvalidArgumentError && /headDim/.test(e.message));
    assert.throws(() => DraftModel.create({ ...SHAPED, ropeScaling: { type: 'llama3', factor: 0 } }, fx.weights),
      (e: unknown) => e instanceof InvalidArgumentError && /ropeScaling/.test(e.message) && /factor/.test(e.message));
  });
});
