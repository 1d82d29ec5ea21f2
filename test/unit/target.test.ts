// The synthetic target's decoding paths (native/src/model/target_model.cc): KV-cached generation
// against recomputing every prefix, the fused rollout (aux/last from the decoding pass)
// against a separate forward(), batched decoding against one prompt at a time, determinism,
// the shape knobs (logitScale, zipf, residualScale) and their defaults, input validation,
// and the event loop staying free while the target decodes.
import assert from 'node:assert/strict';
import { InvalidArgumentError, NativeError } from '../../src/errors.ts';
import {
  acceptLength, DraftModel, initDraftWeights, TARGET_DEFAULTS, TargetModel, validateTargetConfig,
  type DraftConfig, type TargetConfig,
} from '../../src/native/addon.ts';
import { rejects, throwsLike } from '../support/assert.ts';
import { f32ToBf16 } from '../../src/tensor.ts';

// Two sizes: a tiny one, and the `small` preset's (cluster/presets.ts) for the statistics.
const TC: TargetConfig = { vocab: 40, hidden: 16, heads: 4, kvHeads: 2, intermediate: 24, layers: 8, ropeTheta: 10000, rmsEps: 1e-6, seed: 5 };
const SMALL: TargetConfig = { vocab: 1024, hidden: 64, heads: 4, kvHeads: 2, intermediate: 172, layers: 8, ropeTheta: 10000, rmsEps: 1e-6, seed: 0 };
const LEGACY = { logitScale: 1, zipf: 0, residualScale: 1 };

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}
const prompt = (r: () => number, V: number, n: number) => Int32Array.from({ length: n }, () => Math.floor(r() * V));

/** max |a − b| / max |b|: the error relative to the tensor's scale. */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) { d = Math.max(d, Math.abs(a[i]! - b[i]!)); m = Math.max(m, Math.abs(b[i]!)); }
  return d / m;
}

/** Logits z = last_p·Wtᵀ in float64. */
function logitsAt(last: Float32Array, p: number, wt: Float32Array, V: number, H: number): Float64Array {
  const z = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let i = 0; i < H; i++) s += last[p * H + i]! * wt[v * H + i]!;
    z[v] = s;
  }
  return z;
}
function top2(z: Float64Array): { arg: number; gap: number } {
  let a = -1, b = -Infinity, best = -Infinity;
  for (let v = 0; v < z.length; v++) {
    if (z[v]! > best) { b = best; best = z[v]!; a = v; } else if (z[v]! > b) b = z[v]!;
  }
  return { arg: a, gap: best - b };
}

describe('synthetic target: KV-cached, batched and fused decoding', function () {
  this.timeout(60_000);

  it('KV-cached greedy generation equals recomputing every prefix from scratch', async () => {
    for (const cfg of [TC, { ...SMALL, vocab: 256 }]) {
      const t = TargetModel.create(cfg, { threads: 1 });
      try {
        const { target_head: wt } = t.frozen();
        const r = lcg(11);
        let checked = 0, ties = 0;
        for (let i = 0; i < 3; i++) {
          const P = 1 + i * 3, N = 20;
          const seq = await t.generate(prompt(r, cfg.vocab, P), N);
          assert.equal(seq.length, P + N);
          // Each new token from a forward of the prefix alone (no cache): argmax of last·Wtᵀ.
          for (let n = P; n < P + N; n++) {
            const { last } = await t.forward(seq.slice(0, n), 1, n);
            const { arg, gap } = top2(logitsAt(last, n - 1, wt, cfg.vocab, cfg.hidden));
            if (arg !== seq[n]) {
              assert.ok(gap < 1e-4, `${cfg.vocab}: position ${n}: cached decoding chose ${seq[n]}, recompute ${arg} (gap ${gap})`);
              ties++;
            }
            checked++;
          }
        }
        assert.ok(ties <= 1, `${ties} float ties among ${checked} tokens`);
      } finally {
        t.close();
      }
    }
  });

  it('rollout: aux/last from the decoding pass equal a separate forward() of the final ids', async () => {
    for (const cfg of [TC, SMALL]) {
      const t = TargetModel.create(cfg, { threads: 1 });
      try {
        const r = lcg(3);
        const H = cfg.hidden;
        for (const [P, N] of [[8, 56], [1, 12], [5, 0]] as const) {
          const p = prompt(r, cfg.vocab, P);
          const out = await t.rollout(p, N);
          const L = P + N;
          assert.equal(out.ids.length, L);
          assert.deepEqual(out.ids, await t.generate(p, N), 'rollout ids = generate ids');
          assert.equal(out.aux.length, L * 3 * H);
          assert.equal(out.last.length, L * H);
          const f = await t.forward(out.ids, 1, L);
          const ea = relErr(out.aux, f.aux), el = relErr(out.last, f.last);
          assert.ok(ea < 2e-6 && el < 2e-6, `vocab ${cfg.vocab}, P=${P} N=${N}: aux rel err ${ea}, last ${el}`);
        }
      } finally {
        t.close();
      }
    }
  });

  it('batched decoding equals one prompt at a time (greedy and sampled, ragged prompts)', async () => {
    const t = TargetModel.create(SMALL, { threads: 1 });
    try {
      const r = lcg(5);
      const prompts = Array.from({ length: 6 }, (_, i) => prompt(r, SMALL.vocab, i === 2 ? 3 : 8));
      const seeds = prompts.map((_, i) => 1000 + i);
      const greedy = await t.generateBatch(prompts, 24);
      const sampled = await t.generateBatch(prompts, 24, { temperature: 0.8, seeds });
      const fused = await t.rolloutBatch(prompts, 24, { temperature: 0.8, seeds });
      let differ = 0;
      for (let i = 0; i < prompts.length; i++) {
        assert.deepEqual(greedy[i], await t.generate(prompts[i]!, 24), `greedy row ${i}`);
        const one = await t.generate(prompts[i]!, 24, { temperature: 0.8, seed: seeds[i] });
        assert.deepEqual(sampled[i], one, `sampled row ${i}`);
        if (one.join() !== greedy[i]!.join()) differ++;
        const single = await t.rollout(prompts[i]!, 24, { temperature: 0.8, seed: seeds[i] });
        assert.deepEqual(fused[i]!.ids, single.ids, `rollout row ${i}`);
        assert.ok(relErr(fused[i]!.aux, single.aux) < 2e-6 && relErr(fused[i]!.last, single.last) < 2e-6, `rollout row ${i} features`);
      }
      assert.ok(differ > 0, 'sampling at temperature 0.8 departs from greedy somewhere');
      // more prompts than one native group (32): still one result per prompt, in order
      const many = Array.from({ length: 40 }, (_, i) => prompts[i % prompts.length]!);
      const out = await t.generateBatch(many, 4);
      assert.equal(out.length, 40);
      out.forEach((o, i) => assert.deepEqual(o.subarray(0, 28), greedy[i % prompts.length]!.subarray(0, many[i]!.length + 4)));
    } finally {
      t.close();
    }
  });

  it('is deterministic per seed: two models, two calls, bit for bit', async () => {
    const a = TargetModel.create(SMALL), b = TargetModel.create(SMALL), c = TargetModel.create({ ...SMALL, seed: 1 });
    try {
      const r = lcg(9);
      const prompts = Array.from({ length: 4 }, () => prompt(r, SMALL.vocab, 8));
      const opts = { temperature: 1, seeds: [1, 2, 3, 4] };
      const ra = await a.rolloutBatch(prompts, 16, opts), rb = await b.rolloutBatch(prompts, 16, opts);
      assert.deepEqual(ra, rb);
      assert.deepEqual(await a.rolloutBatch(prompts, 16, opts), ra);
      const rc = await c.rolloutBatch(prompts, 16, opts);
      assert.notDeepEqual(rc.map((x) => x.ids), ra.map((x) => x.ids), 'another seed is another target');
    } finally {
      a.close(); b.close(); c.close();
    }
  });

  it('shape knobs: defaults when absent, logitScale scales Wt, the default target is peaked and skewed', async () => {
    const v = validateTargetConfig(TC);
    assert.deepEqual({ logitScale: v.logitScale, zipf: v.zipf, residualScale: v.residualScale }, { ...TARGET_DEFAULTS });
    const implicit = TargetModel.create(SMALL), explicit = TargetModel.create({ ...SMALL, ...TARGET_DEFAULTS });
    const x2 = TargetModel.create({ ...SMALL, logitScale: 2 * TARGET_DEFAULTS.logitScale });
    const legacy = TargetModel.create({ ...SMALL, ...LEGACY });
    try {
      const fi = implicit.frozen(), fe = explicit.frozen(), f2 = x2.frozen(), fl = legacy.frozen();
      assert.deepEqual(fi, fe, 'omitted knobs are the defaults (native and src/native.ts agree)');
      assert.deepEqual(fi.embed, fl.embed, 'the knobs leave E alone');
      for (let i = 0; i < 64; i++) assert.ok(Math.abs(f2.target_head[i]! - 2 * fi.target_head[i]!) <= 1e-6 * Math.abs(f2.target_head[i]!), 'Wt scales with logitScale');
      // Greedy decoding only depends on argmax: logitScale alone does not change the text.
      const r = lcg(21);
      const prompts = Array.from({ length: 16 }, () => prompt(r, SMALL.vocab, 8));
      assert.deepEqual(await x2.generateBatch(prompts, 24), await implicit.generateBatch(prompts, 24));
      // Next-token statistics over generated text: p of the greedy token, mass of the top 5,
      // and the share of the text its 16 most frequent tokens make up (Zipf-like skew).
      const stats = async (t: TargetModel, wt: Float32Array) => {
        const out = await t.rolloutBatch(prompts, 48);
        let pmax = 0, top5 = 0, n = 0;
        const count = new Map<number, number>();
        for (const o of out) {
          for (let p = 8; p < 56; p++) {
            count.set(o.ids[p]!, (count.get(o.ids[p]!) ?? 0) + 1);
            const z = logitsAt(o.last, p, wt, SMALL.vocab, SMALL.hidden);
            const m = Math.max(...z), e = Array.from(z, (x) => Math.exp(x - m)), s = e.reduce((a, b) => a + b, 0);
            e.sort((a, b) => b - a);
            pmax += e[0]! / s; top5 += (e[0]! + e[1]! + e[2]! + e[3]! + e[4]!) / s; n++;
          }
        }
        const freq = [...count.values()].sort((a, b) => b - a);
        return { pmax: pmax / n, top5: top5 / n, top16: freq.slice(0, 16).reduce((a, b) => a + b, 0) / n };
      };
      const now = await stats(implicit, fi.target_head), old = await stats(legacy, fl.target_head);
      const show = `default ${JSON.stringify(now)}, legacy ${JSON.stringify(old)}`;
      assert.ok(now.pmax > 0.3 && now.pmax < 0.7, `greedy token p: ${show}`);
      assert.ok(now.top5 > 0.6, `top-5 mass: ${show}`);
      assert.ok(now.top16 > 2 * old.top16, `unigram skew: ${show}`);
      assert.ok(old.pmax < 0.15, `the legacy target is near-uniform: ${show}`);
    } finally {
      implicit.close(); explicit.close(); x2.close(); legacy.close();
    }
  });

  it('accept length runs on the fused batched rollout (ragged prompts, deterministic)', async () => {
    const t = TargetModel.create(TC);
    const D: DraftConfig = { vocab: 40, draftVocab: 24, hidden: 16, heads: 4, kvHeads: 2, intermediate: 24, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6 };
    const m = DraftModel.create(D, initDraftWeights(D, 2, { ...t.frozen(), d2t: Int32Array.from({ length: 24 }, (_, j) => j) }));
    try {
      const prompts = [Int32Array.from([1, 2, 3]), Int32Array.from([9]), Int32Array.from([5, 5, 5, 5, 5, 5])];
      const all = await acceptLength(m, t, prompts, { maxNew: 12 });
      let steps = 0, gen = 0;
      for (const p of prompts) {
        const one = await acceptLength(m, t, [p], { maxNew: 12 });
        steps += one.verifySteps; gen += one.generated;
      }
      assert.equal(all.verifySteps, steps, 'a prompt decoded with others verifies as it does alone');
      assert.equal(all.generated, gen);
      assert.deepEqual(await acceptLength(m, t, prompts, { maxNew: 12 }), all);
    } finally {
      m.close(); t.close();
    }
  });

  it('rejects bad configs and inputs', async () => {
    throwsLike(() => TargetModel.create({ ...TC, logitScale: 0 }), InvalidArgumentError, /config\.logitScale must be a number in \(0, 1000\]/);
    throwsLike(() => TargetModel.create({ ...TC, zipf: -1 }), InvalidArgumentError, /config\.zipf/);
    throwsLike(() => TargetModel.create({ ...TC, residualScale: Number.NaN }), InvalidArgumentError, /config\.residualScale/);
    const t = TargetModel.create(TC);
    try {
      const ok = Int32Array.from([1, 2]);
      await rejects(t.generateBatch([], 3), InvalidArgumentError, /prompts is empty/);
      await rejects(t.generateBatch(ok as unknown as Int32Array[], 3), InvalidArgumentError, /prompts must be an array/);
      await rejects(t.generateBatch([ok, new Int32Array(0)], 3), InvalidArgumentError, /prompts\[1\] is empty/);
      await rejects(t.rolloutBatch([ok, Int32Array.from([3, 40])], 3), InvalidArgumentError, /prompts\[1\]\[1\] = 40 is outside/);
      await rejects(t.rolloutBatch([ok, Float32Array.from([1]) as unknown as Int32Array], 3), InvalidArgumentError, /prompts\[1\]/);
      await rejects(t.generateBatch([ok, ok], 3, { seeds: [1] }), InvalidArgumentError, /seeds has 1 entries for 2 prompts/);
      await rejects(t.generateBatch([ok], 3, { seeds: [1.5] }), InvalidArgumentError, /seeds\[0\]/);
      await rejects(t.generateBatch([ok], 3, { seeds: 7 as unknown as number[] }), InvalidArgumentError, /opts\.seeds must be an array/);
      await rejects(t.generateBatch([ok], 3, { temperature: -1 }), InvalidArgumentError, /temperature must be >= 0/);
      await rejects(t.rollout(ok, -1), InvalidArgumentError, /maxNew/);
      await rejects(t.rollout(ok, 2.5), InvalidArgumentError, /maxNew/);
      await rejects(t.rollout(ok, (1 << 17) - 1), InvalidArgumentError, /length \+ maxNew must be <=/);
      // the model still works after every refusal
      assert.equal((await t.rollout(ok, 3)).ids.length, 5);
    } finally {
      t.close();
    }
    await rejects(t.rollout(Int32Array.from([1]), 1), NativeError, /closed/);
  });

  it('decodes off the event loop', async () => {
    const t = TargetModel.create(SMALL, { threads: 1 });
    try {
      const r = lcg(1);
      const prompts = Array.from({ length: 64 }, () => prompt(r, SMALL.vocab, 8));
      let ticks = 0;
      const timer = setInterval(() => { ticks++; }, 5);
      const t0 = performance.now();
      const out = await t.rolloutBatch(prompts, 56);
      const ms = performance.now() - t0;
      clearInterval(timer);
      assert.equal(out.length, 64);
      assert.ok(ms > 30, `the rollout should take a while (${ms.toFixed(0)} ms)`);
      assert.ok(ticks >= Math.min(5, ms / 20), `only ${ticks} timer ticks during a ${ms.toFixed(0)} ms rollout`);
    } finally {
      t.close();
    }
  });
});

describe('TargetModel features in bf16 (rounded natively, on the worker thread)', () => {
  const bits = (a: Uint16Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  it('forward and rolloutBatch with featureDtype bf16 give exactly the f32 features rounded to nearest even (f32ToBf16)', async () => {
    const t = TargetModel.create(SMALL, { threads: 1 });
    try {
      const ids = Int32Array.from({ length: 24 }, (_, i) => (i * 37) % SMALL.vocab);
      const f = await t.forward(ids, 2, 12);
      const h = await t.forward(ids, 2, 12, { featureDtype: 'bf16' });
      assert.ok(h.aux instanceof Uint16Array && h.last instanceof Uint16Array);
      assert.ok(bits(h.aux).equals(bits(f32ToBf16(f.aux))), 'aux rounds as f32ToBf16');
      assert.ok(bits(h.last).equals(bits(f32ToBf16(f.last))), 'last rounds as f32ToBf16');
      const prompts = [ids.subarray(0, 5), ids.subarray(5, 9)];
      const rf = await t.rolloutBatch(prompts, 6, { seeds: [1, 2] });
      const rh = await t.rolloutBatch(prompts, 6, { seeds: [1, 2], featureDtype: 'bf16' });
      for (let i = 0; i < 2; i++) {
        assert.deepEqual(rh[i]!.ids, rf[i]!.ids);
        assert.ok(bits(rh[i]!.aux).equals(bits(f32ToBf16(rf[i]!.aux))) && bits(rh[i]!.last).equals(bits(f32ToBf16(rf[i]!.last))), `rollout ${i}`);
      }
      await rejects(t.forward(ids, 2, 12, { featureDtype: 'f16' as 'bf16' }), InvalidArgumentError, /featureDtype must be "f32" or "bf16"/);
    } finally { t.close(); }
  });
});
