// The draft model's backends (DraftModel.create opts.backend): the resident step on its CPU
// backend ('resident-host', native/src/step) behind the same JS surface as the CPU step, so the
// wiring a GPU job uses ('cuda': the same resident step on CudaOps) is checked here: the state
// kept in the backend between steps, copied back for weights(), optimizerState(), checkpoints
// and accept length, rebuilt after setWeights() and loadOptimizerState(). 'cuda' itself needs a
// GPU: without one it is refused by name.
import assert from 'node:assert/strict';
import { InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import { acceptLength, cudaInfo, DraftModel, initDraftWeights, TargetModel, type StepOptions } from '../../src/native/addon.ts';
import { makeFixture, TINY_GQA } from '../support/fixtures.ts';

const TRAIN: StepOptions = { lr: 3e-3, clip: 1.0, weightDecay: 0.01, returnGrads: false };

function close(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, what);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) { num = Math.max(num, Math.abs(got[i]! - want[i]!)); den = Math.max(den, Math.abs(want[i]!)); }
  assert.ok(num <= tol * Math.max(den, 1e-30), `${what}: max |Δ| ${num} > ${tol}·${den}`);
}
function closeRecord(got: Record<string, Float32Array>, want: Record<string, Float32Array>, tol: number, what: string): void {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), what);
  for (const k of Object.keys(want)) close(got[k]!, want[k]!, tol, `${what}.${k}`);
}

describe('draft model backends', function () {
  this.timeout(60_000);

  it("'resident-host' trains, evaluates and hands back its state as the CPU step does (steps, weights(), optimizer state, setWeights, returnGrads, logits)", async () => {
    const fx = makeFixture(TINY_GQA, 11, { batch: 3, seq: 7 });
    const fx2 = makeFixture(TINY_GQA, 12, { batch: 3, seq: 7 });
    const lengths = Int32Array.from([7, 5, 2]);
    const cpu = DraftModel.create(TINY_GQA, fx.weights, { threads: 1 });
    const res = DraftModel.create(TINY_GQA, fx.weights, { threads: 1, backend: 'resident-host' });
    assert.equal(res.backend, 'resident-host');
    assert.equal(cpu.backend, 'cpu');
    type Out = { loss: number; ploss: Float32Array; acc: Float32Array; gradNorm?: number; step?: number; grads?: Record<string, Float32Array> | null };
    const both = async (f: (m: DraftModel) => Promise<Out>) => {
      const [a, b] = [await f(cpu), await f(res)];
      assert.ok(Math.abs(b.loss - a.loss) <= 1e-5 * Math.abs(a.loss), `loss ${b.loss} vs ${a.loss}`);
      close(b.ploss, a.ploss, 1e-5, 'ploss');
      close(b.acc, a.acc, 1e-6, 'acc');
      if (a.gradNorm !== undefined) assert.ok(Math.abs(b.gradNorm! - a.gradNorm) <= 1e-5 * a.gradNorm, `gradNorm ${b.gradNorm} vs ${a.gradNorm}`);
      assert.equal(b.step, a.step);
      return [a, b] as const;
    };
    const batch = { ...fx.batch, lengths }, batch2 = fx2.batch;
    await both((m) => m.step(batch, TRAIN));
    await both((m) => m.step(batch2, { ...TRAIN, samples: 2 }));
    closeRecord(res.weights(), cpu.weights(), 1e-5, 'weights after 2 steps');
    const [oc, or] = [cpu.optimizerState(), res.optimizerState()];
    assert.equal(or.step, oc.step);
    closeRecord(or.m, oc.m, 1e-4, 'm');
    closeRecord(or.v, oc.v, 1e-4, 'v');
    // training goes on from the resident state after it was read back
    await both((m) => m.step(batch, TRAIN));
    await both((m) => m.evaluate(batch2));
    // a write on the host side reaches the next resident step
    const w = cpu.weights();
    const edited = { fc: w.fc!.map((x) => x * 0.5), lm: w.lm!.map((x) => -x) };
    cpu.setWeights(edited);
    res.setWeights(edited);
    const st = cpu.optimizerState();
    cpu.loadOptimizerState(st);
    res.loadOptimizerState(st);
    const [g1, g2] = await both((m) => m.step(batch2, { ...TRAIN, returnGrads: true }));
    closeRecord(g2.grads as Record<string, Float32Array>, g1.grads as Record<string, Float32Array>, 1e-4, 'returned grads');
    close(await res.logits(batch), await cpu.logits(batch), 1e-5, 'logits (the CPU debug path on the resident state)');
    closeRecord(res.weights(), cpu.weights(), 1e-5, 'weights at the end');
    cpu.close();
    res.close();
  });

  it("accept length reads a resident draft's trained weights", async () => {
    const fx = makeFixture(TINY_GQA, 13, { batch: 2, seq: 6 });
    const target = TargetModel.create({ vocab: TINY_GQA.vocab, hidden: TINY_GQA.hidden, heads: 4, kvHeads: 2, intermediate: 24, layers: 8, ropeTheta: 10000, rmsEps: 1e-6, seed: 5 });
    const d2t = Int32Array.from({ length: TINY_GQA.draftVocab }, (_, j) => j);
    const weights = initDraftWeights(TINY_GQA, 2, { ...target.frozen(), d2t });
    const cpu = DraftModel.create(TINY_GQA, weights, { threads: 1 });
    const res = DraftModel.create(TINY_GQA, weights, { threads: 1, backend: 'resident-host' });
    const prompts = [Int32Array.from([1, 2, 3, 4]), Int32Array.from([5, 6, 7]), Int32Array.from([9, 3])];
    const untrained = await acceptLength(cpu, target, prompts, { maxNew: 12 });
    for (let i = 0; i < 2; i++) for (const m of [cpu, res]) await m.step(fx.batch, { ...TRAIN, lr: 0.1 });
    const [a, b] = [await acceptLength(cpu, target, prompts, { maxNew: 12 }), await acceptLength(res, target, prompts, { maxNew: 12 })];
    assert.notDeepEqual(a, untrained, 'training must change the accept length here, or this test could not tell stale weights');
    assert.deepEqual(b, a);
    for (const m of [cpu, res, target]) m.close();
  });

  it('a bad backend is an InvalidArgumentError naming the choices; cuda without a GPU is UnavailableError naming why', () => {
    const fx = makeFixture(TINY_GQA, 1);
    assert.throws(() => DraftModel.create(TINY_GQA, fx.weights, { backend: 'tpu' as never }),
      (e: unknown) => e instanceof InvalidArgumentError && /backend must be one of cpu, cuda, resident-host \(got tpu\)/.test((e as Error).message));
    if (cudaInfo().gpus.length === 0) {
      assert.throws(() => DraftModel.create(TINY_GQA, fx.weights, { backend: 'cuda' }),
        (e: unknown) => e instanceof UnavailableError && /backend 'cuda' is not available here: (no usable CUDA device|this addon was built without CUDA)/.test((e as Error).message));
    } else {
      const m = DraftModel.create(TINY_GQA, fx.weights, { backend: 'cuda' });
      assert.equal(m.backend, 'cuda');
      m.close();
    }
  });
});
