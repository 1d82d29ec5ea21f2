// The native addon through src/native.ts: input validation (the process survives bad input),
// the TTT attention mask, a hand-computed loss, AdamW and its state, the event loop staying
// responsive during a step, the synthetic target's determinism, and accept length.
import assert from 'node:assert/strict';
import { InvalidArgumentError, NativeError } from '../../src/errors.ts';
import { portableBlockDigests } from '../../src/store/checksum.ts';
import {
  acceptLength, blake3Blocks, blake3BlocksSync, blasInfo, DraftModel, draftParamShapes, initDraftWeights, TargetModel, TRAINABLE_NAMES, validateDraftConfig,
  type DraftBatch, type DraftConfig, type StepOptions, type TargetConfig,
} from '../../src/native/addon.ts';
import { rejects, throwsLike } from '../support/assert.ts';

const TINY: DraftConfig = { vocab: 40, draftVocab: 24, hidden: 16, heads: 4, kvHeads: 2, intermediate: 24, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6 };
const NO_UPDATE: StepOptions = { lr: null, clip: null, weightDecay: 0, returnGrads: false };

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}

function makeBatch(c: DraftConfig, B: number, T: number, seed = 1): DraftBatch {
  const r = lcg(seed);
  return {
    ids: Int32Array.from({ length: B * T }, () => Math.floor(r() * c.vocab)),
    aux: Float32Array.from({ length: B * T * 3 * c.hidden }, () => r() * 2 - 1),
    last: Float32Array.from({ length: B * T * c.hidden }, () => (r() * 2 - 1) * 3),
    mask: Uint8Array.from({ length: B * T }, (_, i) => (i % 7 === 5 ? 0 : 1)),
    batch: B, seq: T,
  };
}

/** Weights with every trainable tensor scaled up, so each one visibly moves the logits. */
function tinyWeights(c: DraftConfig, seed = 3): Record<string, Float32Array | Int32Array> {
  const w = initDraftWeights(c, seed);
  for (const n of TRAINABLE_NAMES) {
    const a = w[n] as Float32Array;
    if (!n.startsWith('n_')) for (let i = 0; i < a.length; i++) a[i]! *= 20;
  }
  const d2t = new Int32Array(c.draftVocab);
  for (let j = 0; j < d2t.length; j++) d2t[j] = (j * 7) % c.vocab; // distinct: gcd(7, 40) = 1
  w.d2t = d2t;
  return w;
}

describe('native addon', function () {
  this.timeout(120_000);

  it('blake3Blocks: the BLAKE3 reference vectors, per block, whatever the block count', async () => {
    const hex = (d: Uint8Array, b: number) => Buffer.from(d.subarray(32 * b, 32 * b + 32)).toString('hex');
    const abc = new TextEncoder().encode('abcabc');
    const d = await blake3Blocks(abc, [0, 3, 3]);
    assert.equal(hex(d, 0), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'); // BLAKE3("")
    assert.equal(hex(d, 1), '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85'); // BLAKE3("abc")
    assert.equal(hex(d, 2), hex(d, 1));
    // Many large blocks in parallel equal each block hashed alone.
    const big = new Uint8Array(9 << 20).map((_, i) => (i * 2654435761) >>> 24);
    const lens = Array.from({ length: 9 }, () => 1 << 20);
    const all = await blake3Blocks(big, lens);
    for (const b of [0, 4, 8]) assert.equal(hex(all, b), hex(await blake3Blocks(big.subarray(b << 20, (b + 1) << 20), [1 << 20]), 0));
    assert.notEqual(hex(all, 0), hex(all, 1));
    assert.deepEqual(blake3BlocksSync(big, lens), all, 'the synchronous path agrees');
    await rejects(blake3Blocks(abc, [4, 3]), InvalidArgumentError, /add up to 7 bytes, more than data's 6/);
    await rejects(blake3Blocks(abc, [-1]), InvalidArgumentError, /non-negative integers/);
  });

  it('blake3Blocks and the portable BLAKE3 (@noble/hashes, for installs without the addon) agree on every length', async () => {
    const lens = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 4097, 65_536, 1_000_003, 3 << 20];
    const total = lens.reduce((a, n) => a + n, 0);
    const bytes = new Uint8Array(total).map((_, i) => (i * 40503) >>> 7);
    const native = await blake3Blocks(bytes, lens);
    const portable = portableBlockDigests(bytes, lens);
    assert.equal(portable.length, lens.length);
    lens.forEach((n, b) => assert.equal(portable[b], Buffer.from(native.subarray(32 * b, 32 * b + 32)).toString('hex'), `block ${b} of ${n} bytes`));
  });

  it('loads OpenBLAS and names the core type it runs', () => {
    const info = blasInfo();
    assert.match(info.config, /OpenBLAS/);
    assert.ok(info.threads >= 1);
    assert.equal(info.coretype, process.env.OPENBLAS_CORETYPE ?? null);
  });

  describe('validation (bad input never crashes the process)', () => {
    it('rejects bad configs naming the field', () => {
      throwsLike(() => validateDraftConfig({ ...TINY, heads: 3, kvHeads: 1 }), InvalidArgumentError, /config\.hidden \(16\) must be a multiple of config\.heads/);
      throwsLike(() => validateDraftConfig({ ...TINY, kvHeads: 0 }), InvalidArgumentError, /config\.kvHeads/);
      throwsLike(() => validateDraftConfig({ ...TINY, draftVocab: 41 }), InvalidArgumentError, /config\.draftVocab/);
      throwsLike(() => validateDraftConfig({ ...TINY, rmsEps: Number.NaN }), InvalidArgumentError, /config\.rmsEps/);
      throwsLike(() => validateDraftConfig(null), InvalidArgumentError, /config must be an object/);
      assert.deepEqual(draftParamShapes(TINY).q, [16, 32]);
      assert.deepEqual(draftParamShapes(TINY).k, [8, 32]);
    });

    it('rejects wrong, missing and non-finite weights naming the tensor', () => {
      const good = tinyWeights(TINY);
      throwsLike(() => DraftModel.create(TINY, { ...good, q: new Float32Array(3) }), InvalidArgumentError,
        /weight 'q' \[16, 32\] has 3 elements, expected 512/);
      const { lm: _lm, ...noLm } = good;
      throwsLike(() => DraftModel.create(TINY, noLm), InvalidArgumentError, /missing weight 'lm'/);
      const nan = new Float32Array(good.down as Float32Array);
      nan[5] = Number.NaN;
      throwsLike(() => DraftModel.create(TINY, { ...good, down: nan }), InvalidArgumentError, /weight 'down' .*\[5\] is not finite/);
      throwsLike(() => DraftModel.create(TINY, { ...good, up: new Int32Array(24 * 16) }), InvalidArgumentError, /weight 'up'.* must be a Float32Array/);
      throwsLike(() => DraftModel.create(TINY, { ...good, bogus: new Float32Array(1) }), InvalidArgumentError, /unknown weight 'bogus'/);
      throwsLike(() => DraftModel.create(TINY, { ...good, embed: new Float32Array(10) }), InvalidArgumentError, /weight 'embed' \[40, 16\] has 10 elements/);
    });

    it('rejects a d2t with an out-of-range or repeated entry', () => {
      const good = tinyWeights(TINY);
      const out = new Int32Array(good.d2t as Int32Array);
      out[3] = 40;
      throwsLike(() => DraftModel.create(TINY, { ...good, d2t: out }), InvalidArgumentError, /d2t\[3\] = 40 is outside \[0, vocab=40\)/);
      const neg = new Int32Array(good.d2t as Int32Array);
      neg[0] = -1;
      throwsLike(() => DraftModel.create(TINY, { ...good, d2t: neg }), InvalidArgumentError, /d2t\[0\] = -1 is outside/);
      const dup = new Int32Array(good.d2t as Int32Array);
      dup[2] = dup[1]!;
      throwsLike(() => DraftModel.create(TINY, { ...good, d2t: dup }), InvalidArgumentError, /d2t\[2\] = \d+ repeats d2t\[1\]/);
    });

    it('rejects bad batches (NaN aux, id >= V, mask 2, wrong lengths) and keeps working', async () => {
      const m = DraftModel.create(TINY, tinyWeights(TINY), { threads: 1 });
      try {
        const b = makeBatch(TINY, 2, 9);
        const before = await m.evaluate(b);
        const aux = new Float32Array(b.aux);
        aux[100] = Number.NaN;
        await rejects(m.step({ ...b, aux }, NO_UPDATE), InvalidArgumentError, /batch\.aux\[100\] is not finite/);
        const last = new Float32Array(b.last);
        last[7] = Number.POSITIVE_INFINITY;
        await rejects(m.evaluate({ ...b, last }), InvalidArgumentError, /batch\.last\[7\] is not finite/);
        const ids = new Int32Array(b.ids);
        ids[4] = 40;
        await rejects(m.step({ ...b, ids }, NO_UPDATE), InvalidArgumentError, /batch\.ids\[4\] = 40 is outside \[0, vocab=40\)/);
        const mask = new Uint8Array(b.mask);
        mask[11] = 2;
        await rejects(m.step({ ...b, mask }, NO_UPDATE), InvalidArgumentError, /batch\.mask\[11\] = 2 \(must be 0 or 1\)/);
        await rejects(m.step({ ...b, ids: b.ids.subarray(1) }, NO_UPDATE), InvalidArgumentError, /batch\.ids .*has 17 elements, expected 18/);
        await rejects(m.step({ ...b, seq: 10 }, NO_UPDATE), InvalidArgumentError, /batch\.ids .*expected 20/);
        await rejects(m.step({ ...b, batch: 0 }, NO_UPDATE), InvalidArgumentError, /batch\.batch must be in \[1/);
        await rejects(m.step({ ...b, mask: new Int32Array(18) as unknown as Uint8Array }, NO_UPDATE), InvalidArgumentError, /batch\.mask.* must be a Uint8Array/);
        await rejects(m.step(b, { ...NO_UPDATE, lr: -1 }), InvalidArgumentError, /options\.lr must be >= 0/);
        // the caller's stack travels with the rejection
        const err = await m.step({ ...b, ids }, NO_UPDATE).then(() => null, (e: Error) => e);
        assert.ok(err?.stack?.includes('native.test.ts'), `stack should name the caller: ${err?.stack}`);
        // callers that bypass TypeScript get the same checks from C++
        await rejects(m.step(null as unknown as DraftBatch, NO_UPDATE), InvalidArgumentError, /batch must be an object/);
        const after = await m.evaluate(b);
        assert.equal(after.loss, before.loss);
      } finally {
        m.close();
      }
    });

    it('reports use after close as NativeError', async () => {
      const m = DraftModel.create(TINY, tinyWeights(TINY));
      m.close();
      await rejects(m.evaluate(makeBatch(TINY, 1, 4)), NativeError, /closed/);
      throwsLike(() => m.weights(), NativeError, /closed/);
    });
  });

  describe('the TTT attention mask', () => {
    // logits() returns every logit, [K, B, T, Vd]. Changing ids[p] of sample 0 may only move
    // the logits of step k at position t when t+1+k >= p (its own tokens, the step-0 keys at
    // s <= t, and the step-j keys at t itself); aux[p] only when t >= p; `last` never.
    const B = 2, T = 12, K = TINY.ttt, Vd = TINY.draftVocab;
    let m: DraftModel;
    let base: DraftBatch;
    let ref: Float32Array;
    before(async () => {
      m = DraftModel.create(TINY, tinyWeights(TINY), { threads: 1 });
      base = makeBatch(TINY, B, T, 5);
      ref = await m.logits(base);
    });
    after(() => m.close());

    function changed(a: Float32Array, k: number, b: number, t: number): boolean {
      const off = ((k * B + b) * T + t) * Vd;
      for (let j = 0; j < Vd; j++) if (a[off + j] !== ref[off + j]) return true;
      return false;
    }

    it('a token only reaches the (step, position) pairs the mask allows', async () => {
      for (const p of [1, 4, 7, 11]) {
        const ids = new Int32Array(base.ids);
        ids[p] = (ids[p]! + 13) % TINY.vocab;
        const got = await m.logits({ ...base, ids });
        for (let k = 0; k < K; k++) {
          for (let t = 0; t < T; t++) {
            const should = t + 1 + k >= p;
            assert.equal(changed(got, k, 0, t), should, `ids[${p}] changed step ${k} position ${t}: expected ${should}`);
            assert.equal(changed(got, k, 1, t), false, 'the other sample must not move');
          }
        }
      }
    });

    it('aux at p only reaches positions >= p; last never reaches the logits', async () => {
      for (const p of [0, 5, 11]) {
        const aux = new Float32Array(base.aux);
        for (let i = 0; i < 3 * TINY.hidden; i++) aux[p * 3 * TINY.hidden + i]! += 0.5;
        const got = await m.logits({ ...base, aux });
        for (let k = 0; k < K; k++) for (let t = 0; t < T; t++) {
          assert.equal(changed(got, k, 0, t), t >= p, `aux[${p}] changed step ${k} position ${t}`);
        }
      }
      const last = new Float32Array(base.last).map((x) => -x);
      const got = await m.logits({ ...base, last });
      assert.deepEqual(got, ref);
    });

    it('the loss at a position ignores later positions of aux and ids', async () => {
      // only targets u <= 6 count: mask them in, everything after out
      const mask = new Uint8Array(B * T);
      for (let t = 0; t <= 6; t++) mask[t] = 1;
      const a = await m.evaluate({ ...base, mask });
      const ids = new Int32Array(base.ids);
      const aux = new Float32Array(base.aux);
      for (let t = 7; t < T; t++) ids[t] = (ids[t]! + 5) % TINY.vocab; // step k at t reads ids[t+1+k] <= ids[6]
      for (let i = 7 * 3 * TINY.hidden; i < T * 3 * TINY.hidden; i++) aux[i] = -aux[i]!;
      const b = await m.evaluate({ ...base, mask, ids, aux });
      assert.equal(b.loss, a.loss);
      assert.deepEqual(b.ploss, a.ploss);
      assert.ok(a.loss > 0);
    });
  });

  it('matches the hand-computed loss with an all-zero lm (uniform logits)', async () => {
    // Vd = V makes every target token draftable (ok = 1), so w_{k,t} = mask[t+1+k] for t+1+k < T
    // and loss = Σ_k 0.8^k · (Σ_t w_{k,t} / (B·T)) · log Vd.
    const c: DraftConfig = { ...TINY, vocab: 24, draftVocab: 24 };
    const w = initDraftWeights(c, 9);
    (w.lm as Float32Array).fill(0);
    const B = 3, T = 10;
    const batch = makeBatch(c, B, T, 11);
    const m = DraftModel.create(c, w);
    try {
      const r = await m.step(batch, { ...NO_UPDATE, returnGrads: true });
      let want = 0;
      for (let k = 0; k < c.ttt; k++) {
        let sw = 0;
        for (let b = 0; b < B; b++) for (let t = 0; t + 1 + k < T; t++) sw += batch.mask[b * T + t + 1 + k]!;
        const pk = sw / (B * T) * Math.log(c.draftVocab);
        assert.ok(Math.abs(r.ploss[k]! - pk) <= 1e-6 * pk, `ploss[${k}] ${r.ploss[k]} vs ${pk}`);
        want += 0.8 ** k * pk;
      }
      assert.ok(Math.abs(r.loss - want) <= 1e-6 * want, `loss ${r.loss} vs ${want}`);
      // with uniform logits only lm gets a gradient (the rest sits behind a zero matrix)
      assert.ok(r.grads!.lm!.some((x) => x !== 0));
      assert.ok(r.grads!.fc!.every((x) => x === 0));
      assert.ok(r.gradNorm > 0);
    } finally {
      m.close();
    }
  });

  describe('AdamW and optimizer state', () => {
    it('one step with lr applies AdamW with clipping and weight decay exactly (first step)', async () => {
      const m = DraftModel.create(TINY, tinyWeights(TINY), { threads: 1 });
      try {
        const batch = makeBatch(TINY, 2, 8);
        const w0 = m.weights();
        const lr = 1e-2, clip = 0.05, wd = 0.1;
        const r = await m.step(batch, { lr, clip, weightDecay: wd, returnGrads: true });
        assert.equal(r.step, 1);
        assert.ok(r.gradNorm > clip, 'the test wants clipping to bite');
        const c = Math.min(1, clip / (r.gradNorm + 1e-6));
        const w1 = m.weights();
        const st = m.optimizerState();
        assert.equal(st.step, 1);
        for (const name of TRAINABLE_NAMES) {
          const g = r.grads![name]!, a = w0[name]!, b = w1[name]!;
          for (let i = 0; i < a.length; i++) {
            const gc = c * g[i]!;
            // m̂ = gc, v̂ = gc² after one step (bias correction undoes the (1−β) factors)
            const want = a[i]! - lr * (gc / (Math.abs(gc) + 1e-8) + wd * a[i]!);
            assert.ok(Math.abs(b[i]! - want) <= 2e-6 * Math.max(1, Math.abs(want)), `${name}[${i}]: ${b[i]} vs ${want}`);
            assert.ok(Math.abs(st.m[name]![i]! - 0.1 * gc) <= 1e-6 * Math.abs(gc) + 1e-12);
            assert.ok(Math.abs(st.v[name]![i]! - 0.05 * gc * gc) <= 1e-5 * gc * gc + 1e-20);
          }
        }
        // lr null computes gradients but changes nothing
        const again = await m.step(batch, NO_UPDATE);
        assert.equal(again.step, 1);
        assert.deepEqual(m.weights(), w1);
      } finally {
        m.close();
      }
    });

    it('weights and optimizer state round-trip into a fresh model', async () => {
      const batch = makeBatch(TINY, 2, 8, 4);
      const opts: StepOptions = { lr: 3e-3, clip: 1, weightDecay: 0.01, returnGrads: false };
      const wa = tinyWeights(TINY);
      const a = DraftModel.create(TINY, wa, { threads: 1 });
      // other trainable weights, the same frozen tensors
      const b = DraftModel.create(TINY, { ...tinyWeights(TINY, 77), embed: wa.embed!, target_head: wa.target_head!, d2t: wa.d2t! }, { threads: 1 });
      try {
        await a.step(batch, opts);
        await a.step(batch, opts);
        b.setWeights(a.weights());
        b.loadOptimizerState(a.optimizerState());
        assert.equal(b.optimizerState().step, 2);
        const ra = await a.step(batch, opts);
        const rb = await b.step(batch, opts);
        assert.equal(rb.loss, ra.loss);
        assert.equal(rb.step, 3);
        assert.deepEqual(b.weights(), a.weights());
        assert.deepEqual(b.optimizerState(), a.optimizerState());
        // a bad state is refused whole
        const st = a.optimizerState();
        throwsLike(() => b.loadOptimizerState({ ...st, m: { ...st.m, q: new Float32Array(2) } }), InvalidArgumentError, /optimizer state\.m tensor 'q'/);
        throwsLike(() => b.loadOptimizerState({ ...st, step: -1 }), InvalidArgumentError, /step/);
        throwsLike(() => b.setWeights({ nope: new Float32Array(1) }), InvalidArgumentError, /unknown weight 'nope'/);
        assert.deepEqual(b.weights(), a.weights());
      } finally {
        a.close();
        b.close();
      }
    });

    it('queues overlapping calls on one model, in call order', async () => {
      const batch = makeBatch(TINY, 2, 8);
      const opts: StepOptions = { lr: 1e-3, clip: null, weightDecay: 0, returnGrads: false };
      const m = DraftModel.create(TINY, tinyWeights(TINY), { threads: 1 });
      const seq = DraftModel.create(TINY, tinyWeights(TINY), { threads: 1 });
      try {
        const rs = await Promise.all([m.step(batch, opts), m.step(batch, opts), m.evaluate(batch)]);
        assert.deepEqual([rs[0].step, rs[1].step], [1, 2]);
        await seq.step(batch, opts);
        await seq.step(batch, opts);
        assert.equal(rs[2].loss, (await seq.evaluate(batch)).loss, 'evaluate ran after both updates');
      } finally {
        m.close();
        seq.close();
      }
    });
  });

  it('keeps the event loop responsive while a step runs', async () => {
    const c: DraftConfig = { vocab: 4096, draftVocab: 2048, hidden: 128, heads: 4, kvHeads: 2, intermediate: 384, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6 };
    const m = DraftModel.create(c, initDraftWeights(c, 1), { threads: 1 });
    try {
      const batch = makeBatch(c, 2, 512);
      let ticks = 0;
      const timer = setInterval(() => { ticks++; }, 5);
      const t0 = performance.now();
      const running = m.step(batch, { lr: 1e-4, clip: 1, weightDecay: 0, returnGrads: false });
      await new Promise((r) => setTimeout(r, 1));
      // a synchronous call while the step is in flight is refused, not raced
      throwsLike(() => m.weights(), NativeError, /busy/);
      const r = await running;
      const ms = performance.now() - t0;
      clearInterval(timer);
      assert.equal(r.step, 1);
      assert.ok(ms > 50, `the step should take a while (${ms.toFixed(0)} ms)`);
      assert.ok(ticks >= Math.min(5, ms / 20), `only ${ticks} timer ticks during a ${ms.toFixed(0)} ms step`);
    } finally {
      m.close();
    }
  });

  describe('synthetic target', () => {
    const TC: TargetConfig = { vocab: 40, hidden: 16, heads: 4, kvHeads: 2, intermediate: 24, layers: 8, ropeTheta: 10000, rmsEps: 1e-6, seed: 5 };

    it('is deterministic for a seed (weights, forward, greedy and sampled generation)', async () => {
      const a = TargetModel.create(TC), b = TargetModel.create(TC), c = TargetModel.create({ ...TC, seed: 6 });
      try {
        assert.deepEqual(a.frozen(), b.frozen());
        assert.notDeepEqual(a.frozen().embed, c.frozen().embed);
        const prompt = Int32Array.from([3, 1, 4, 1, 5]);
        const ga = await a.generate(prompt, 12), gb = await b.generate(prompt, 12);
        assert.equal(ga.length, 17);
        assert.deepEqual(ga.subarray(0, 5), prompt);
        assert.deepEqual(ga, gb);
        const sa = await a.generate(prompt, 12, { temperature: 1, seed: 42 });
        const sb = await b.generate(prompt, 12, { temperature: 1, seed: 42 });
        assert.deepEqual(sa, sb);
        const others = await Promise.all([1, 2, 3].map((s) => a.generate(prompt, 12, { temperature: 1, seed: s })));
        assert.ok(others.some((o) => o.join() !== sa.join()), 'different sampling seeds give different text');
        const ids = Int32Array.from({ length: 2 * 6 }, (_, i) => (i * 11) % 40);
        const fa = await a.forward(ids, 2, 6), fb = await b.forward(ids, 2, 6);
        assert.equal(fa.aux.length, 2 * 6 * 48);
        assert.equal(fa.last.length, 2 * 6 * 16);
        assert.deepEqual(fa, fb);
        assert.ok(fa.aux.every(Number.isFinite) && fa.last.every(Number.isFinite));
      } finally {
        a.close(); b.close(); c.close();
      }
    });

    it('greedy generation agrees with the argmax of last·Wtᵀ from forward', async () => {
      const t = TargetModel.create(TC);
      try {
        const seq = await t.generate(Int32Array.from([7, 8]), 10);
        const { last } = await t.forward(seq, 1, seq.length);
        const { target_head: wt } = t.frozen();
        for (let p = 1; p + 1 < seq.length; p++) {
          let best = -Infinity, arg = -1;
          for (let v = 0; v < TC.vocab; v++) {
            let z = 0;
            for (let i = 0; i < TC.hidden; i++) z += last[p * TC.hidden + i]! * wt[v * TC.hidden + i]!;
            if (z > best) { best = z; arg = v; }
          }
          assert.equal(seq[p + 1], arg, `position ${p}`);
        }
      } finally {
        t.close();
      }
    });

    it('rejects bad configs and inputs', async () => {
      throwsLike(() => TargetModel.create({ ...TC, layers: 7 }), InvalidArgumentError, /config\.layers must be >= 8/);
      const t = TargetModel.create(TC);
      try {
        await rejects(t.generate(Int32Array.from([40]), 3), InvalidArgumentError, /prompt\[0\] = 40 is outside/);
        await rejects(t.generate(new Int32Array(0), 3), InvalidArgumentError, /at least one token/);
        await rejects(t.forward(new Int32Array(5), 2, 3), InvalidArgumentError, /ids .*has 5 elements, expected 6/);
      } finally {
        t.close();
      }
    });

    it('measures accept length of a draft against it', async () => {
      const t = TargetModel.create(TC);
      const d2t = Int32Array.from({ length: 24 }, (_, j) => j);
      const m = DraftModel.create(TINY, initDraftWeights(TINY, 2, { ...t.frozen(), d2t }));
      try {
        const prompts = [Int32Array.from([1, 2, 3]), Int32Array.from([9])];
        const r = await acceptLength(m, t, prompts, { maxNew: 16 });
        assert.ok(r.verifySteps >= 2 * 16 / (TINY.ttt + 1));
        assert.ok(r.acceptLength >= 1 && r.acceptLength <= TINY.ttt + 1);
        assert.ok(r.generated >= 32 && r.generated <= 32 + 2 * TINY.ttt);
        assert.ok(Math.abs(r.acceptLength * r.verifySteps - r.generated) < 1e-9, 'each verify step yields a+1 tokens');
        const again = await acceptLength(m, t, prompts, { maxNew: 16 });
        assert.deepEqual(again, r);
        await rejects(acceptLength(m, t, [Int32Array.from([99])], { maxNew: 4 }), InvalidArgumentError, /prompts\[0\]\[0\] = 99/);
      } finally {
        m.close(); t.close();
      }
    });
  });
});
