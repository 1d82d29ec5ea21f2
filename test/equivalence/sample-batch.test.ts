// A batch handed to the step as its samples (batchOfSamples: the store's arrays, stacked by the
// addon off the event loop) trains bit-identically to the same samples stacked in JS
// (stackBatch, and sliceBatch on a sharded model): every dtype (f32, bf16, f16), samples shorter
// than the batch, padding samples, and a sequence-parallel rank's slice. Bad input is refused
// with an InvalidArgumentError naming the field.
import assert from 'node:assert/strict';
import { InvalidArgumentError } from '../../src/errors.ts';
import { batchOfSamples, stackBatch } from '../../src/job/batch.ts';
import { sliceBatch } from '../../src/job/draft-io.ts';
import { DraftModel, type DraftBatch, type SampleBatch, type StepOptions } from '../../src/native/addon.ts';
import { Communicator } from '../../src/native/collectives.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { makeFixture, TINY, type Fixture } from '../support/fixtures.ts';
import { SHARD_CFG, shardFixture } from '../support/sharded.ts';

const u32 = (f: Float32Array) => new Uint32Array(f.buffer, f.byteOffset, f.length);
const OPTS: StepOptions = { lr: 1e-2, clip: 0.5, weightDecay: 0.01, returnGrads: true };

/** Sample b of the fixture, its first `len` positions, aux/last in `dtype`. */
function sampleOf(fx: Fixture, b: number, len: number, dtype: 'f32' | 'bf16' | 'f16'): Record<string, Tensor> {
  const { seq: T, ids, aux, last, mask } = fx.batch;
  const H = fx.config.hidden;
  const floats = (x: Float32Array, width: number) => {
    const part = x.slice(b * T * width, (b * T + len) * width);
    if (dtype === 'f32') return tensor('f32', [len, width], part);
    const words = dtype === 'bf16' ? Uint16Array.from(u32(part), (w) => w >>> 16) : Uint16Array.from(part, (v) => f16Bits(v));
    return tensor(dtype, [len, width], words);
  };
  return {
    ids: tensor('i32', [len], ids.slice(b * T, b * T + len)),
    aux: floats(aux, 3 * H),
    last: floats(last, H),
    mask: tensor('u8', [len], mask.slice(b * T, b * T + len)),
  };
}

/** IEEE binary16 bits of v, truncated (bf16 too: rounding does not matter here, both paths get the same words). */
function f16Bits(v: number): number {
  const f = new Float32Array([v]), b = new Uint32Array(f.buffer)[0]!;
  const sign = (b >>> 16) & 0x8000, e = ((b >>> 23) & 0xff) - 127 + 15;
  if (e <= 0) return sign;
  if (e >= 31) return sign | 0x7c00;
  return sign | (e << 10) | ((b >>> 13) & 0x3ff);
}

async function twoSteps(fx: Fixture, batch: DraftBatch | SampleBatch) {
  const model = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try {
    const a = await model.step(batch, OPTS);
    const b = await model.step(batch, OPTS);
    const ev = await model.evaluate(batch);
    const logits = await model.logits(batch);
    return { a, b, ev, logits, weights: model.weights() };
  } finally { model.close(); }
}

function assertSame(x: Awaited<ReturnType<typeof twoSteps>>, y: Awaited<ReturnType<typeof twoSteps>>): void {
  for (const k of ['a', 'b'] as const) {
    assert.equal(x[k].loss, y[k].loss, `step ${k}: loss`);
    assert.equal(x[k].gradNorm, y[k].gradNorm, `step ${k}: gradient norm`);
    assert.deepEqual(u32(x[k].ploss), u32(y[k].ploss), `step ${k}: per-position loss`);
    assert.deepEqual(u32(x[k].acc), u32(y[k].acc), `step ${k}: accuracy`);
    for (const [name, g] of Object.entries(x[k].grads!)) assert.deepEqual(u32(g), u32(y[k].grads![name]!), `step ${k}: gradient of "${name}"`);
  }
  assert.equal(x.ev.loss, y.ev.loss, 'evaluate: loss');
  assert.deepEqual(u32(x.logits), u32(y.logits), 'logits');
  for (const [name, w] of Object.entries(x.weights)) assert.deepEqual(u32(w), u32(y.weights[name]!), `weights "${name}" after two steps`);
}

describe('a batch given as its samples (stacked by the addon off the event loop)', function () {
  this.timeout(60_000);
  const fx = makeFixture(TINY, 21, { batch: 4, seq: 8 });
  const T = fx.batch.seq, H = fx.config.hidden;

  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    it(`${dtype}: samples of 8, 5 and 3 positions and one padding sample train bit-identically to stackBatch`, async () => {
      const samples = [sampleOf(fx, 0, 8, dtype), sampleOf(fx, 1, 5, dtype), sampleOf(fx, 2, 3, dtype)];
      const stacked = stackBatch(samples, T, H, 1);
      assert.ok(stacked.lengths, 'the stacked batch carries lengths (else the padding path is not exercised)');
      assertSame(await twoSteps(fx, batchOfSamples(samples, T, H, 1)), await twoSteps(fx, stacked));
    });
  }

  it('whole samples, no padding: the same as stackBatch (no lengths)', async () => {
    const samples = [0, 1, 2, 3].map((b) => sampleOf(fx, b, T, 'f32'));
    assertSame(await twoSteps(fx, batchOfSamples(samples, T, H)), await twoSteps(fx, stackBatch(samples, T, H)));
  });

  it('a sequence-parallel world (sp 2 × dp 2, ranks as threads): each rank\'s slice taken natively equals sliceBatch', async () => {
    const sfx = shardFixture(5);
    const { batch: B, seq: ST } = sfx.batch;
    const SH = SHARD_CFG.hidden;
    const whole = Array.from({ length: B }, (_, b) => sampleOf(sfx, b, b === 1 ? ST - 3 : ST, 'bf16'));
    const stacked = stackBatch(whole, ST, SH);
    const layout = { tp: 1, sp: 2, dp: 2 };
    const run = async (batchOf: (s: { sp: number; dp: number; spIdx: number; dpIdx: number }) => DraftBatch | SampleBatch) => {
      const comms = Communicator.threadWorld(4, { timeoutMs: 20_000 });
      const models = await Promise.all(comms.map((c) => DraftModel.createSharded(sfx.config, { ...sfx.weights }, c, layout, { threads: 1 })));
      try {
        return await Promise.all(models.map((m) => m.step(batchOf(m.shard!), OPTS)));
      } finally {
        for (const m of models) m.close();
        await Promise.all(comms.map((c) => c.close()));
      }
    };
    const nb = B / layout.dp;
    const native = await run((s) => batchOfSamples(whole.slice(s.dpIdx * nb, (s.dpIdx + 1) * nb), ST, SH));
    const js = await run((s) => sliceBatch(stacked, s, SHARD_CFG.ttt, SH));
    native.forEach((r, i) => {
      assert.equal(r.loss, js[i]!.loss, `rank ${i}: loss`);
      assert.equal(r.gradNorm, js[i]!.gradNorm, `rank ${i}: gradient norm`);
      for (const [name, g] of Object.entries(r.grads!)) assert.deepEqual(u32(g), u32(js[i]!.grads![name]!), `rank ${i}: gradient of "${name}"`);
    });
  });

  describe('bad input: an InvalidArgumentError naming what is wrong', () => {
    const good = () => batchOfSamples([sampleOf(fx, 0, 8, 'bf16'), sampleOf(fx, 1, 4, 'f32')], T, H);
    const cases: [string, (b: SampleBatch) => unknown, RegExp][] = [
      ['more samples than batch', (b) => ({ ...b, batch: 1 }), /batch\.samples holds 2 samples, more than batch = 1/],
      ['a sample longer than seq', (b) => ({ ...b, seq: 4 }), /batch\.samples\[0\]\.ids has 8 positions, outside \[1, seq = 4\]/],
      ['an unknown dtype', (b) => ({ ...b, samples: [{ ...b.samples[0]!, auxDtype: 'f64' }, b.samples[1]!] }), /batch\.samples\[0\]\.auxDtype must be 'f32', 'bf16' or 'f16'/],
      ['bf16 words where f32 is declared', (b) => ({ ...b, samples: [{ ...b.samples[0]!, auxDtype: 'f32' }, b.samples[1]!] }), /batch\.samples\[0\]\.aux \(f32\) must be a Float32Array/],
      ['aux of the wrong size', (b) => ({ ...b, samples: [b.samples[0]!, { ...b.samples[1]!, aux: new Float32Array(5) }] }), /batch\.samples\[1\]\.aux \(f32\) has 5 elements, expected 96/],
      ['a mask shorter than ids', (b) => ({ ...b, samples: [b.samples[0]!, { ...b.samples[1]!, mask: new Uint8Array(3) }] }), /batch\.samples\[1\]\.mask \(one per position of ids\) has 3 elements, expected 4/],
      ['samples not an array', (b) => ({ ...b, samples: {} }), /batch\.samples must be an array/],
      ['a sample that is not an object', (b) => ({ ...b, samples: [7] }), /batch\.samples\[0\]/],
      ['an id outside the vocabulary', (b) => ({ ...b, samples: [{ ...b.samples[0]!, ids: new Int32Array(8).fill(9999) }, b.samples[1]!] }), /ids\[0\] = 9999 is outside \[0, vocab=40\)/],
    ];
    for (const [name, mutate, want] of cases) {
      it(name, async () => {
        const model = DraftModel.create(fx.config, fx.weights, { threads: 1 });
        try {
          await assert.rejects(model.step(mutate(good()) as SampleBatch, OPTS), (e: unknown) => e instanceof InvalidArgumentError && want.test(e.message));
          // the model is still usable after a refused batch
          assert.ok(Number.isFinite((await model.step(good(), OPTS)).loss));
        } finally { model.close(); }
      });
    }
  });
});
