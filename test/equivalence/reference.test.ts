// The native draft step against the independent float64 reference (test/support/reference.ts):
// forward (loss, ploss, acc), every trainable gradient (finite differences and the analytic
// float64 backward), AdamW with clipping and weight decay, and hand-computed cases.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { DraftModel, type StepOptions, type StepResult } from '../../src/native/addon.ts';
import {
  REF_TRAINABLE, referenceAdamW, referenceBackward, referenceGradEntries, referenceGrads, referenceLoss, relErr, worstElement,
  type RefAdamState, type RefConfig, type RefLoss, type RefWeights,
} from '../support/reference.ts';
import { TINY, TINY_GQA, makeFixture, makeWeights, rng, type Fixture, type FixtureBatch, type FixtureWeights } from '../support/fixtures.ts';

const NO_UPDATE: StepOptions = { lr: null, clip: null, weightDecay: 0, returnGrads: true };

async function nativeStep(fx: { config: RefConfig; weights: FixtureWeights; batch: FixtureBatch }, opts: StepOptions = NO_UPDATE): Promise<StepResult> {
  const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try {
    return await m.step(fx.batch, opts);
  } finally {
    m.close();
  }
}

function assertClose(got: number, want: number, rel: number, what: string, abs = 0): void {
  const tol = rel * Math.abs(want) + abs;
  assert.ok(Math.abs(got - want) <= tol, `${what}: native ${got}, reference ${want} (|diff| ${Math.abs(got - want).toExponential(2)} > ${tol.toExponential(2)})`);
}

function assertForward(r: { loss: number; ploss: ArrayLike<number>; acc: ArrayLike<number> }, ref: RefLoss, label: string): void {
  assertClose(r.loss, ref.loss, 1e-5, `${label} loss`);
  assert.equal(r.ploss.length, ref.ploss.length, `${label} ploss length`);
  assert.equal(r.acc.length, ref.acc.length, `${label} acc length`);
  for (let k = 0; k < ref.ploss.length; k++) {
    assertClose(r.ploss[k], ref.ploss[k], 1e-5, `${label} ploss[${k}]`, 1e-7);
    assertClose(r.acc[k], ref.acc[k], 1e-5, `${label} acc[${k}]`, 1e-7);
  }
}

/** Norm-wise relative error ≤ rel per tensor, and elementwise |g−ĝ| ≤ rel·|ĝ| + floor·‖ĝ‖∞. */
function assertGrads(got: Record<string, ArrayLike<number>>, want: Record<string, ArrayLike<number>>, label: string, rel = 1e-3, floor = 1e-3): void {
  for (const name of REF_TRAINABLE) {
    const g = got[name], w = want[name];
    assert.ok(g, `${label}: native returned no gradient for "${name}"`);
    assert.equal(g.length, w.length, `${label}: grad "${name}" has ${g.length} elements, expected ${w.length}`);
    let inf = 0;
    for (let i = 0; i < w.length; i++) inf = Math.max(inf, Math.abs(w[i]));
    assert.ok(inf > 0, `${label}: reference gradient of "${name}" is all zero (fixture too weak)`);
    const e = relErr(g, w);
    assert.ok(e <= rel, `${label}: grad "${name}" norm-wise relative error ${e.toExponential(3)} > ${rel}`);
    const we = worstElement(g, w, (floor / rel) * inf);
    assert.ok(
      Math.abs(we.got - we.want) <= rel * Math.abs(we.want) + floor * inf,
      `${label}: grad "${name}"[${we.index}] native ${we.got}, reference ${we.want} (‖ĝ‖∞ ${inf.toExponential(2)})`,
    );
  }
}

interface ChildResult { loss: number; ploss: number[]; acc: number[]; grads: Record<string, number[]> }

/** Runs `steps` gradient steps of the TINY B=3 T=11 fixture on `threads` threads in a child process (killed after 20 s). */
function threadedChild(threads: number, steps: number): Promise<ChildResult[]> {
  const url = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).href);
  const code = `
    const { DraftModel } = await import(${url('../../src/native/addon.ts')});
    const { TINY, makeFixture } = await import(${url('../support/fixtures.ts')});
    const fx = makeFixture(TINY, 2, { batch: 3, seq: 11 });
    const m = DraftModel.create(TINY, fx.weights, { threads: ${threads} });
    const out = [];
    for (let i = 0; i < ${steps}; i++) {
      const r = await m.step(fx.batch, { lr: null, clip: null, weightDecay: 0, returnGrads: true });
      const grads = {};
      for (const [k, v] of Object.entries(r.grads)) grads[k] = Array.from(v);
      out.push({ loss: r.loss, ploss: Array.from(r.ploss), acc: Array.from(r.acc), grads });
    }
    m.close();
    process.stdout.write(JSON.stringify(out), () => process.exit(0));`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', killed = false;
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { killed = true; child.kill('SIGKILL'); }, 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (killed) reject(new Error(`native step with threads: ${threads} did not finish within 20 s (hang); child killed`));
      else if (code !== 0) reject(new Error(`child exited ${code}: ${stderr}`));
      else resolve(JSON.parse(stdout) as ChildResult[]);
    });
  });
}

function pick(w: Record<string, Float32Array>): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const n of REF_TRAINABLE) out[n] = Float32Array.from(w[n]);
  return out;
}

describe('draft step vs float64 reference', function () {
  this.timeout(120_000);

  describe('the reference itself', () => {
    it('analytic float64 backward equals central finite differences (TINY)', () => {
      const fx = makeFixture(TINY, 11);
      const fd = referenceGrads(TINY, fx.weights, fx.batch);
      const an = referenceBackward(TINY, fx.weights, fx.batch).grads;
      for (const name of REF_TRAINABLE) assert.ok(relErr(an[name], fd[name]) < 1e-6, `reference grad ${name}: analytic vs FD ${relErr(an[name], fd[name])}`);
    });

    it('fixtures have masked positions, ok = 0 positions and weighted positions at every step', () => {
      for (const c of [TINY, TINY_GQA]) {
        const fx = makeFixture(c, 3);
        assert.ok(fx.masked > 0 && fx.notOk > 0, `masked ${fx.masked}, notOk ${fx.notOk}`);
        const ref = referenceLoss(c, fx.weights, fx.batch);
        assert.ok(ref.weightSum.every((w) => w > 0), `weightSum ${ref.weightSum}`);
        assert.ok(ref.accMargin.every((m) => m > 1e-3), `draft logits near a tie: ${ref.accMargin}`);
      }
    });
  });

  describe('hand-computed cases', () => {
    // V=10, Vd=4, K=2, B=2, T=4, lm = 0 (every draft logit is exactly 0, so log_softmax = −log 4
    // and the draft argmax is index 0). `last` is one-hot and target_head integral, so target
    // logits are exact: sample 0 ties target ids 2 and 7 (2 wins; d2t[0] = 2 → ok, tgt 0),
    // sample 1 ties ids 3 and 8 (3 wins; 3 ∉ d2t → ok = 0 everywhere in sample 1).
    const c: RefConfig = { vocab: 10, draftVocab: 4, hidden: 8, heads: 2, kvHeads: 1, intermediate: 4, ttt: 2, ropeTheta: 10000, rmsEps: 1e-6 };
    function handCase(mask0: number[]): { config: RefConfig; weights: FixtureWeights; batch: FixtureBatch } {
      const w = makeWeights(c, 5);
      w.lm = new Float32Array(c.draftVocab * c.hidden);
      const th = new Float32Array(c.vocab * c.hidden);
      for (let v = 0; v < c.vocab; v++) { th[v * c.hidden + 0] = v - 6; th[v * c.hidden + 1] = v - 6; }
      th[2 * c.hidden + 0] = 5; th[7 * c.hidden + 0] = 5;
      th[3 * c.hidden + 1] = 5; th[8 * c.hidden + 1] = 5;
      w.target_head = th;
      w.d2t = Int32Array.of(2, 8, 0, 1);
      const B = 2, T = 4, H = c.hidden;
      const last = new Float32Array(B * T * H);
      for (let t = 0; t < T; t++) { last[(0 * T + t) * H + 0] = 1; last[(1 * T + t) * H + 1] = 1; }
      const r = rng(9);
      const aux = Float32Array.from({ length: B * T * 3 * H }, () => r() * 2 - 1);
      const ids = Int32Array.of(1, 2, 3, 4, 5, 6, 7, 8);
      const mask = Uint8Array.from([...mask0, 1, 1, 1, 1]);
      return { config: c, weights: w, batch: { ids, aux, last, mask, batch: B, seq: T } };
    }

    it('lm = 0: loss = log(Vd)·Σ_k 0.8^k·W_k/(B·T), ties break to the lowest index', async () => {
      const fx = handCase([1, 1, 0, 1]);
      // step 0 weights u = 1..3 of sample 0: mask 1,0,1 → 2; step 1: u = 2,3 → 0,1 → 1
      const l4 = Math.log(4);
      const want = { loss: (l4 * (2 + 0.8 * 1)) / 8, ploss: [(l4 * 2) / 8, l4 / 8], acc: [1, 1] };
      const ref = referenceLoss(c, fx.weights, fx.batch);
      assertForward(ref, { ...want, weightSum: [], accMargin: [] }, 'reference');
      const r = await nativeStep(fx);
      assertForward(r, { ...want, weightSum: [], accMargin: [] }, 'native');
      // the gradient of a zero lm: Σ w·(softmax − p)⊗fin/(B·T) is nonzero; the rest flows through lm = 0
      assert.ok(r.grads, 'grads requested');
      for (const name of ['fc', 'q', 'k', 'v', 'o', 'gate', 'up', 'down', 'n_in', 'n_hid', 'n_post', 'n_final']) {
        assert.ok(r.grads[name].every((x) => x === 0), `grad "${name}" must be exactly 0 when lm = 0`);
      }
      assert.ok(r.grads.lm.some((x) => x !== 0), 'grad lm is nonzero');
    });

    it('nothing weighted (mask all 0, or T = 1): loss 0, acc 0, zero gradients', async () => {
      const fx = handCase([0, 0, 0, 0]);
      fx.batch.mask.fill(0);
      fx.weights.lm = makeWeights(c, 6).lm; // a real lm: still nothing may count
      for (const b of [fx.batch, { ...fx.batch, ids: fx.batch.ids.slice(0, 2), aux: fx.batch.aux.slice(0, 2 * 3 * c.hidden), last: fx.batch.last.slice(0, 2 * c.hidden), mask: Uint8Array.of(1, 1), seq: 1 }]) {
        const r = await nativeStep({ ...fx, batch: b });
        assert.equal(r.loss, 0);
        assert.deepEqual(Array.from(r.ploss), [0, 0]);
        assert.deepEqual(Array.from(r.acc), [0, 0]);
        assert.equal(r.gradNorm, 0);
        for (const name of REF_TRAINABLE) assert.ok(r.grads![name].every((x) => x === 0), `grad "${name}" must be 0`);
      }
    });
  });

  describe('TINY (V=40 Vd=16 H=8 nh=2 nkv=1 I=12 K=3, B=2 T=6)', () => {
    let fx: Fixture;
    let r: StepResult;
    let ref: RefLoss;
    before(async () => {
      fx = makeFixture(TINY, 1);
      r = await nativeStep(fx);
      ref = referenceLoss(TINY, fx.weights, fx.batch);
    });

    it('loss, ploss and acc equal the reference to 1e-5', () => {
      assert.ok(ref.acc.some((a) => a > 0), 'fixture has some correct predictions');
      assertForward(r, ref, 'TINY');
    });

    it('every gradient matches float64 finite differences (≤ 1e-3 relative)', () => {
      const fd = referenceGrads(TINY, fx.weights, fx.batch);
      assert.ok(r.grads);
      assertGrads(r.grads, fd, 'TINY vs FD');
      const norm = Math.sqrt(REF_TRAINABLE.reduce((s, n) => s + fd[n].reduce((a, x) => a + x * x, 0), 0));
      assertClose(r.gradNorm, norm, 1e-4, 'grad_norm');
    });

    it('evaluate() gives the same loss, ploss and acc without touching the weights', async () => {
      const m = DraftModel.create(TINY, fx.weights, { threads: 1 });
      try {
        const e = await m.evaluate(fx.batch);
        assertForward(e, ref, 'evaluate');
        const w = m.weights();
        for (const name of REF_TRAINABLE) assert.deepEqual(Array.from(w[name]), Array.from(fx.weights[name]), `weights "${name}" unchanged`);
      } finally {
        m.close();
      }
    });

    it('a longer batch (B=3, T=11: steps past the end, many keys) equals the float64 backward', async () => {
      const fx2 = makeFixture(TINY, 2, { batch: 3, seq: 11 });
      const r2 = await nativeStep(fx2);
      const { loss, grads } = referenceBackward(TINY, fx2.weights, fx2.batch);
      assertForward(r2, loss, 'TINY B=3 T=11');
      assertGrads(r2.grads!, grads, 'TINY B=3 T=11 vs analytic');
    });
  });

  describe('TINY_GQA (V=48 Vd=20 H=16 nh=4 nkv=2 I=20 K=4, θ=500, ε=1e-5; B=2 T=7)', () => {
    let fx: Fixture;
    let r: StepResult;
    before(async () => {
      fx = makeFixture(TINY_GQA, 26, { batch: 2, seq: 7 });
      r = await nativeStep(fx);
    });

    it('loss, ploss and acc equal the reference to 1e-5', () => {
      const ref = referenceLoss(TINY_GQA, fx.weights, fx.batch);
      assert.ok(ref.acc.filter((a) => a > 0).length >= 2, 'fixture has correct predictions at several steps');
      assertForward(r, ref, 'GQA');
    });

    it('every gradient matches the float64 backward; sampled entries match finite differences', () => {
      const an = referenceBackward(TINY_GQA, fx.weights, fx.batch).grads;
      assertGrads(r.grads!, an, 'GQA vs analytic');
      const pr = rng(77);
      const picks: Record<string, number[]> = {};
      for (const name of REF_TRAINABLE) picks[name] = Array.from({ length: 6 }, () => Math.floor(pr() * an[name].length));
      const fd = referenceGradEntries(TINY_GQA, fx.weights, fx.batch, picks);
      for (const name of REF_TRAINABLE) {
        let inf = 0;
        for (const x of an[name]) inf = Math.max(inf, Math.abs(x));
        picks[name].forEach((i, n) => {
          assertClose(r.grads![name][i], fd[name][n], 1e-3, `GQA grad "${name}"[${i}] vs FD`, 1e-3 * inf);
        });
      }
    });
  });

  describe('AdamW', () => {
    it('three steps with clipping and weight decay equal referenceAdamW on the native gradients (1e-6)', async () => {
      const fx = makeFixture(TINY, 8);
      const m = DraftModel.create(TINY, fx.weights, { threads: 1 });
      try {
        let w: RefWeights = { ...fx.weights };
        let state: RefAdamState | null = null;
        let clipSeen = false, unclippedDiff = 0;
        for (let s = 0; s < 3; s++) {
          const clip = 0.05 * (s + 1);
          const opts: StepOptions = { lr: 0.01, clip, weightDecay: 0.1, returnGrads: true };
          const r = await m.step(fx.batch, opts);
          assert.equal(r.step, s + 1, 'step count');
          assert.ok(r.grads);
          // the gradients are of the weights before this update, and unclipped
          const ref = referenceBackward(TINY, w, fx.batch);
          assertForward(r, ref.loss, `AdamW step ${s + 1}`);
          assertGrads(r.grads, ref.grads, `AdamW step ${s + 1} grads`);
          const upd = referenceAdamW(w, r.grads, state, { lr: 0.01, clip, weightDecay: 0.1 });
          assertClose(r.gradNorm, upd.gradNorm, 1e-5, `step ${s + 1} grad_norm`);
          if (upd.clipCoef < 0.99) clipSeen = true;
          const noClip = referenceAdamW(w, r.grads, state, { lr: 0.01, clip: null, weightDecay: 0.1 });
          const got = m.weights();
          for (const name of REF_TRAINABLE) {
            const g = got[name], want = upd.weights[name];
            let moved = 0;
            for (let i = 0; i < want.length; i++) {
              assert.ok(Math.abs(g[i] - want[i]) <= 1e-6 * Math.max(1, Math.abs(want[i])), `step ${s + 1} new "${name}"[${i}]: native ${g[i]}, reference ${want[i]}`);
              moved = Math.max(moved, Math.abs(want[i] - Number(w[name][i])));
              unclippedDiff = Math.max(unclippedDiff, Math.abs(noClip.weights[name][i] - want[i]));
            }
            assert.ok(moved > 1e-3, `step ${s + 1}: "${name}" moved only ${moved}`);
          }
          assert.deepEqual(Object.keys(got).sort(), [...REF_TRAINABLE].sort(), 'weights() returns the trainable tensors');
          w = { ...w, ...pick(got) }; // continue from the native (float32) weights
          state = upd.state;
        }
        assert.ok(clipSeen, 'clipping was active');
        assert.ok(unclippedDiff > 1e-4, `clipping changed the update (max diff vs unclipped ${unclippedDiff})`);
      } finally {
        m.close();
      }
    });

    it('optimizer state round-trips: a restored model takes the same next step', async () => {
      const fx = makeFixture(TINY, 9);
      const opts: StepOptions = { lr: 0.005, clip: 1, weightDecay: 0, returnGrads: false };
      const a = DraftModel.create(TINY, fx.weights, { threads: 1 });
      const b = DraftModel.create(TINY, fx.weights, { threads: 1 });
      try {
        await a.step(fx.batch, opts);
        b.setWeights(a.weights());
        b.loadOptimizerState(a.optimizerState());
        const ra = await a.step(fx.batch, opts);
        const rb = await b.step(fx.batch, opts);
        assert.equal(ra.step, 2);
        assert.equal(rb.step, 2);
        assert.equal(ra.grads, null, 'returnGrads: false gives no grads');
        const wa = a.weights(), wb = b.weights();
        for (const name of REF_TRAINABLE) assert.deepEqual(Array.from(wb[name]), Array.from(wa[name]), `"${name}" after restore`);
      } finally {
        a.close();
        b.close();
      }
    });
  });

  // In child processes: a native hang must fail this test, not stall the suite (a process
  // whose addon thread pool is stuck does not even exit).
  describe('multi-threaded (threads: 2, B=3, T=11)', function () {
    this.timeout(90_000);
    it('equals the float64 backward, in every one of 4 processes × 3 steps', async () => {
      const fx2 = makeFixture(TINY, 2, { batch: 3, seq: 11 });
      const { loss, grads } = referenceBackward(TINY, fx2.weights, fx2.batch);
      for (let p = 0; p < 4; p++) {
        const runs = await threadedChild(2, 3);
        for (const [i, r2] of runs.entries()) {
          assertForward(r2, loss, `threads=2 process ${p} step ${i}`);
          assertGrads(r2.grads, grads, `threads=2 process ${p} step ${i} vs analytic`);
        }
      }
    });
  });
});
