// Variable-length samples: DraftBatch.lengths. A batch padded to its longest sample (the
// positions past a sample's length hold anything) trains exactly as its samples do one by one:
// loss and gradients equal the mean of the single-sample steps, each on its own unpadded
// sequence. Also under sequence parallelism (sp = 2), and bad lengths are refused.
import assert from 'node:assert/strict';
import { sliceBatch } from '../../src/job/draft-io.ts';
import { Communicator } from '../../src/native/collectives.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { DraftModel, type DraftBatch, type StepOptions } from '../../src/native/addon.ts';
import { relErr } from '../support/reference.ts';
import type { Fixture } from '../support/fixtures.ts';
import { shardFixture, SHARD_T } from '../support/sharded.ts';

const GRADS: StepOptions = { lr: null, clip: null, weightDecay: 0, returnGrads: true };
const LENGTHS = [8, 5, 3, 6];

/** Sample s of the fixture cut to its first `len` positions, as a batch of one. */
function alone(fx: Fixture, s: number, len: number): DraftBatch {
  const T = fx.batch.seq, H = fx.config.hidden, o = s * T;
  return {
    ids: fx.batch.ids.slice(o, o + len), mask: fx.batch.mask.slice(o, o + len),
    aux: fx.batch.aux.slice(o * 3 * H, (o + len) * 3 * H), last: fx.batch.last.slice(o * H, (o + len) * H),
    batch: 1, seq: len,
  };
}

/** The fixture's batch with lengths, the positions past each length overwritten by `fill`. */
function padded(fx: Fixture, lengths: number[], fill: (i: number) => number): DraftBatch {
  const T = fx.batch.seq, H = fx.config.hidden, V = fx.config.vocab;
  const b = { ...fx.batch, ids: fx.batch.ids.slice(), mask: fx.batch.mask.slice(), aux: fx.batch.aux.slice(), last: fx.batch.last.slice() };
  lengths.forEach((len, s) => {
    for (let t = len; t < T; t++) {
      const r = s * T + t;
      b.ids[r] = Math.abs(Math.floor(fill(r) * 1000)) % V;
      b.mask[r] = fill(r) > 0 ? 1 : 0;
      for (let j = 0; j < H; j++) b.last[r * H + j] = fill(r + j);
      for (let j = 0; j < 3 * H; j++) b.aux[r * 3 * H + j] = fill(r - j);
    }
  });
  return { ...b, lengths: Int32Array.from(lengths) };
}

async function step(fx: Fixture, batch: DraftBatch) {
  const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
  try { return await m.step(batch, GRADS); } finally { m.close(); }
}

/** Mean loss and gradients of the samples stepped one by one. */
async function meanOfAlone(fx: Fixture, lengths: number[]) {
  const rs = [];
  for (let s = 0; s < lengths.length; s++) rs.push(await step(fx, alone(fx, s, lengths[s]!)));
  const grads: Record<string, Float64Array> = {};
  for (const name of Object.keys(rs[0]!.grads!)) {
    const g = new Float64Array(rs[0]!.grads![name]!.length);
    for (const r of rs) r.grads![name]!.forEach((x, i) => { g[i] += x / rs.length; });
    grads[name] = g;
  }
  return { loss: rs.reduce((a, r) => a + r.loss, 0) / rs.length, grads };
}

function assertClose(label: string, got: { loss: number; grads?: Record<string, Float32Array> | null }, want: { loss: number; grads: Record<string, Float64Array> }): number {
  assert.ok(Math.abs(got.loss - want.loss) <= 1e-5 * Math.abs(want.loss), `${label}: loss ${got.loss} vs ${want.loss}`);
  let worst = 0;
  for (const [name, w] of Object.entries(want.grads)) {
    const e = relErr(got.grads![name]!, w);
    worst = Math.max(worst, e);
    assert.ok(e <= 1e-4, `${label}: grad "${name}" norm-wise relative error ${e.toExponential(2)}`);
  }
  return worst;
}

describe('variable-length samples: a padded batch with lengths trains as its samples one by one', function () {
  this.timeout(60_000);
  let fx: Fixture;
  before(() => { fx = shardFixture(11); assert.equal(fx.batch.seq, SHARD_T); });

  it('unsharded: loss and gradients equal the mean of the single-sample steps', async () => {
    const want = await meanOfAlone(fx, LENGTHS);
    const got = await step(fx, padded(fx, LENGTHS, () => 0));
    assertClose('padded', got, want);
  });

  it('what the padding holds does not matter', async () => {
    const a = await step(fx, padded(fx, LENGTHS, () => 0));
    const b = await step(fx, padded(fx, LENGTHS, (i) => Math.sin(i * 12.9898) * 3));
    assert.equal(a.loss, b.loss);
    for (const name of Object.keys(a.grads!)) assert.deepEqual(b.grads![name], a.grads![name], `grad "${name}"`);
  });

  it('without lengths the same batch trains differently (the test can fail)', async () => {
    const want = await meanOfAlone(fx, LENGTHS);
    const b = padded(fx, LENGTHS, () => 0);
    const got = await step(fx, { ...b, lengths: null });
    assert.ok(Math.abs(got.loss - want.loss) > 1e-3 * Math.abs(want.loss), `loss ${got.loss} should differ from ${want.loss}`);
  });

  it('sp = 2: the sharded step with lengths equals the unsharded one', async () => {
    const want = await meanOfAlone(fx, LENGTHS);
    const full = padded(fx, LENGTHS, (i) => Math.cos(i));
    const comms = Communicator.threadWorld(2, { timeoutMs: 20_000 });
    const models = await Promise.all(comms.map((c) => DraftModel.createSharded(fx.config, fx.weights, c, { tp: 1, sp: 2, dp: 1 }, { threads: 1 })));
    try {
      const rs = await Promise.all(models.map((m, r) =>
        m.step(sliceBatch(full, { sp: 2, dp: 1, spIdx: r, dpIdx: 0 }, fx.config.ttt, fx.config.hidden), { ...GRADS, returnGrads: false })));
      for (const r of rs) assert.ok(Math.abs(r.loss - want.loss) <= 1e-5 * Math.abs(want.loss), `sp rank loss ${r.loss} vs ${want.loss}`);
      const grads = await models[0]!.gatherGrads();
      await models[1]!.gatherGrads();
      assertClose('sp=2', { loss: rs[0]!.loss, grads }, want);
    } finally {
      for (const m of models) m.close();
      await Promise.all(comms.map((c) => c.close()));
    }
  });

  it('refuses lengths outside [1, seq] and of the wrong count', async () => {
    const m = DraftModel.create(fx.config, fx.weights, { threads: 1 });
    try {
      for (const bad of [[0, 8, 8, 8], [8, 9, 8, 8]]) {
        await assert.rejects(m.step({ ...fx.batch, lengths: Int32Array.from(bad) }, GRADS),
          (e: unknown) => e instanceof InvalidArgumentError && /lengths\[\d\] = \d+ is outside \[1, seq=8\]/.test(e.message), `lengths ${bad}`);
      }
      await assert.rejects(m.step({ ...fx.batch, lengths: Int32Array.from([8, 8]) }, GRADS),
        (e: unknown) => e instanceof InvalidArgumentError && /batch\.lengths/.test(e.message));
    } finally { m.close(); }
  });
});
