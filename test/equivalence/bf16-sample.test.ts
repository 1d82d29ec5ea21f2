// A sample stored in bf16 or f16 trains like its f32 values: through the real store (put, get)
// and stackBatch (the native upcast) into DraftModel.step. Stored in a 16-bit dtype, it must
// train bit-identically to the f32 sample holding the same values (the 16-bit values widened
// by an independent JS reference), and within the dtype's rounding of the original f32 sample.
// The defect this replaces (raw 16-bit words copied as numbers) is shown to be far outside it.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SchemaError } from '../../src/errors.ts';
import { stackBatch } from '../../src/job/batch.ts';
import { DraftModel, type DraftBatch } from '../../src/native/addon.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { FEATURE_NAMES } from '../../src/wire/schema.ts';
import { makeFixture, TINY, type Fixture } from '../support/fixtures.ts';

const STEPS = 3;
const u32 = (f: Float32Array) => new Uint32Array(f.buffer, f.byteOffset, f.length);

/** f32 → bf16, round to nearest even (the fixture holds no NaN). */
function toBf16(x: Float32Array): Uint16Array {
  return Uint16Array.from(u32(x), (b) => ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff);
}
function fromBf16(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length);
  u32(out).set(Uint32Array.from(h, (w) => (w << 16) >>> 0));
  return out;
}
/** f32 → IEEE binary16, round to nearest even (normal, subnormal and overflow ranges). */
function toF16(x: Float32Array): Uint16Array {
  return Uint16Array.from(u32(x), (b) => {
    const sign = (b >>> 16) & 0x8000, e = ((b >>> 23) & 0xff) - 127 + 15;
    let m = b & 0x7fffff;
    if (e >= 31) return sign | 0x7c00;
    if (e <= 0) {
      if (e < -10) return sign;
      m |= 0x800000;
      const shift = 14 - e, half = 2 ** (shift - 1), rem = m % 2 ** shift;
      let h = Math.floor(m / 2 ** shift);
      if (rem > half || (rem === half && (h & 1))) h++;
      return sign | h;
    }
    let h = (e << 10) | (m >>> 13);
    const rem = m & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry into the exponent is right (up to inf)
    return sign | h;
  });
}
function fromF16(h: Uint16Array): Float32Array {
  return Float32Array.from(h, (w) => {
    const s = w >> 15 ? -1 : 1, e = (w >> 10) & 0x1f, m = w & 0x3ff;
    if (e === 31) return m ? Number.NaN : s * Infinity;
    return s * (e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15));
  });
}

const CODECS = {
  bf16: { encode: toBf16, decode: fromBf16, eps: 2 ** -9 },
  f16: { encode: toF16, decode: fromF16, eps: 2 ** -11 },
} as const;

/** The fixture's batch as per-sample tensors, aux/last transformed by `floats`. */
function samplesOf(fx: Fixture, floats: (x: Float32Array) => { dtype: 'f32' | 'bf16' | 'f16'; data: Float32Array | Uint16Array }): Record<string, Tensor>[] {
  const { batch: B, seq: T, ids, aux, last, mask } = fx.batch;
  const H = fx.config.hidden;
  return Array.from({ length: B }, (_, b) => {
    const a = floats(aux.slice(b * T * 3 * H, (b + 1) * T * 3 * H)), l = floats(last.slice(b * T * H, (b + 1) * T * H));
    return {
      ids: tensor('i32', [T], ids.slice(b * T, (b + 1) * T)),
      aux: tensor(a.dtype, [T, 3 * H], a.data),
      last: tensor(l.dtype, [T, H], l.data),
      mask: tensor('u8', [T], mask.slice(b * T, (b + 1) * T)),
    };
  });
}

async function train(fx: Fixture, batch: DraftBatch): Promise<{ losses: number[]; weights: Record<string, Float32Array> }> {
  const model = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try {
    const losses: number[] = [];
    for (let i = 0; i < STEPS; i++) losses.push((await model.step(batch, { lr: 1e-2, clip: null, weightDecay: 0, returnGrads: false })).loss);
    return { losses, weights: model.weights() };
  } finally { model.close(); }
}

describe('a bf16 / f16 sample trains like its f32 values (store → stackBatch → DraftModel.step)', function () {
  this.timeout(60_000);
  const fx = makeFixture(TINY, 11, { batch: 3, seq: 8 });
  const T = fx.batch.seq, H = fx.config.hidden;
  let dir: string;
  let store: SharedDirFeatureStore;
  let n = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dw-bf16-'));
    store = await SharedDirFeatureStore.attach({ dir, storeId: 'store-a', job: 'job1', auth: AuthPolicy.disabled(), producer: { node: 'n', actor: 'test', incarnation: 1 }, usageRefreshMs: 0 });
  });
  after(async () => { await store.close(); rmSync(dir, { recursive: true, force: true }); });

  /** Every sample through the store (put, then get as a rank does), stacked into one batch. */
  async function viaStore(samples: Record<string, Tensor>[], dtype: string): Promise<DraftBatch> {
    const got = [];
    for (const s of samples) {
      const ref = await store.put(`s-${n++}`, s);
      assert.equal(ref.features.aux!.dtype, dtype, 'the ref records the stored dtype');
      const t = await store.get(ref, { names: [...FEATURE_NAMES] });
      assert.equal(t.aux!.dtype, dtype, 'the store returns the stored dtype');
      got.push(t);
    }
    return stackBatch(got, T, H);
  }

  const original = () => viaStore(samplesOf(fx, (x) => ({ dtype: 'f32', data: x })), 'f32');

  for (const dtype of ['bf16', 'f16'] as const) {
    const c = CODECS[dtype];
    it(`${dtype}: bit-identical to its f32 upcast, and within ${dtype} rounding of the original f32 sample`, async () => {
      const half = await viaStore(samplesOf(fx, (x) => ({ dtype, data: c.encode(x) })), dtype);
      const upcast = await viaStore(samplesOf(fx, (x) => ({ dtype: 'f32', data: c.decode(c.encode(x)) })), 'f32');
      const orig = await original();
      // The batch the step sees holds exactly the 16-bit values, widened.
      assert.deepEqual(u32(half.aux), u32(upcast.aux));
      assert.deepEqual(u32(half.last), u32(upcast.last));
      assert.notDeepEqual(u32(half.aux), u32(orig.aux), 'rounding to 16 bits changed some values (else this test proves nothing)');

      const [h, u, o] = [await train(fx, half), await train(fx, upcast), await train(fx, orig)];
      assert.deepEqual(h.losses, u.losses, 'same losses, bit for bit');
      for (const [name, w] of Object.entries(h.weights)) assert.deepEqual(u32(w), u32(u.weights[name]!), `weights "${name}" after ${STEPS} steps`);

      // Each input moved by at most eps relative (one rounding): the loss may move by as much
      // relative, no more (measured: bf16 ~1e-4, f16 ~5e-6 relative).
      const tol = c.eps * o.losses[0]!;
      for (let i = 0; i < STEPS; i++) {
        assert.ok(Math.abs(h.losses[i]! - o.losses[i]!) <= tol, `step ${i}: ${dtype} loss ${h.losses[i]} vs f32 ${o.losses[i]} (tolerance ${tol.toExponential(2)})`);
      }
      // The defect this fixes: the raw words copied into the f32 batch as numbers (bf16 1.0 as
      // 16256) train somewhere else entirely.
      const words = (name: 'aux' | 'last') => Float32Array.from(samplesOf(fx, (x) => ({ dtype, data: c.encode(x) })).flatMap((s) => Array.from(s[name]!.data as Uint16Array)));
      const garbage = await train(fx, { ...half, aux: words('aux'), last: words('last') });
      assert.ok(!(Math.abs(garbage.losses[0]! - o.losses[0]!) <= 10 * tol), `raw ${dtype} words as numbers: loss ${garbage.losses[0]} vs ${o.losses[0]}`);
    });
  }

  it('stackBatch refuses a sample off the schema with a SchemaError naming the feature', () => {
    const ok = samplesOf(fx, (x) => ({ dtype: 'bf16', data: toBf16(x) }));
    const bad = (over: Record<string, Tensor | undefined>, field: string, re: RegExp) => {
      const s = Object.fromEntries(Object.entries({ ...ok[1]!, ...over }).filter(([, v]) => v !== undefined)) as Record<string, Tensor>;
      assert.throws(() => stackBatch([ok[0]!, s], T, H), (e: Error) => e instanceof SchemaError && e.detail?.field === field && re.test(e.message), re.source);
    };
    bad({ aux: tensor('i32', [T, 3 * H]) }, 'aux', /sample 1: feature "aux" has dtype i32, the job expects f32, bf16, f16/);
    bad({ last: tensor('f16', [T * H]) }, 'last', /feature "last" has shape \[64\], the job expects \[8, 8\]/);
    bad({ mask: undefined }, 'mask', /feature "mask" is missing/);
    bad({ ids: { dtype: 'i32', shape: [T], data: new Int32Array(T - 1) } }, 'ids', /feature "ids" \(i32\) holds Int32Array\(7\), its dtype and shape need Int32Array\(8\)/);
    bad({ aux: { dtype: 'bf16', shape: [T, 3 * H], data: new Float32Array(T * 3 * H) } }, 'aux', /feature "aux" \(bf16\) holds Float32Array\(192\), its dtype and shape need Uint16Array\(192\)/);
    assert.equal(stackBatch(ok, T, H).batch, ok.length);
  });
});
