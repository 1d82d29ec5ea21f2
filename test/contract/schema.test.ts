// The queue enforces the job's sample schema at commit, against a real nats-server and a real
// queue actor: a ref with a wrong dtype, a wrong shape, a missing or unknown feature, or more
// tokens than the job's sequence is refused with a SchemaError (code SCHEMA, not retryable)
// naming the field, what was found and what the job expects; nothing is written to the
// write-ahead log for it, so the same sample id committed correctly afterwards is new. Correct
// refs (aux/last in f32, bf16 or f16) are accepted.
import assert from 'node:assert/strict';
import { startQueue } from '../../actors/queue.ts';
import { Bus } from '../../src/bus/bus.ts';
import { SchemaError } from '../../src/errors.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import type { FeatureSpec, SampleRef } from '../../src/wire/sampleref.ts';
import { checkSampleRef, sampleSchema } from '../../src/wire/schema.ts';
import { withNats } from '../support/nats-server.ts';
import { sampleRef } from '../support/store-fixtures.ts';

const JOB = 'schemajob';
// The store fixture's ref: T = 128, H = 64 (aux bf16 [128, 192], last f32 [128, 64]).
const SCHEMA = sampleSchema({ seqLen: 128, draft: { hidden: 64 } });
const good = sampleRef({ job: JOB });
const withFeatures = (sampleId: string, f: Record<string, FeatureSpec | undefined>): SampleRef => {
  const features = Object.fromEntries(Object.entries({ ...good.features, ...f }).filter(([, v]) => v !== undefined)) as Record<string, FeatureSpec>;
  return sampleRef({ job: JOB, sampleId, generation: 1, features });
};

/** A ref of T tokens (every feature T long), with `f` overriding. */
function shorter(T: number, f: Record<string, FeatureSpec> = {}): SampleRef {
  return sampleRef({ job: JOB, sampleId: `short-${T}-${Object.keys(f).join('')}`, generation: 1, numTokens: T, features: {
    ids: { dtype: 'i32', shape: [T] }, aux: { dtype: 'bf16', shape: [T, 192] }, last: { dtype: 'f32', shape: [T, 64] }, mask: { dtype: 'u8', shape: [T] }, ...f,
  } });
}

/** Refs off the schema: [what is wrong, the ref, the field named, text the message must hold]. */
const BAD: [string, SampleRef, string, RegExp][] = [
  ['aux in i32', withFeatures('bad-dtype', { aux: { dtype: 'i32', shape: [128, 192] } }), 'aux', /feature "aux" has dtype i32, the job expects f32, bf16, f16/],
  ['ids in f32', withFeatures('bad-ids', { ids: { dtype: 'f32', shape: [128] } }), 'ids', /feature "ids" has dtype f32, the job expects i32/],
  ['last [128, 32]', withFeatures('bad-shape', { last: { dtype: 'bf16', shape: [128, 32] } }), 'last', /feature "last" has shape \[128, 32\], the job expects \[128, 64\] \(\[T, H\] with T = 128 \(2 ≤ T ≤ seqLen = 128\), H = 64\)/],
  ['aux flattened', withFeatures('bad-rank', { aux: { dtype: 'f32', shape: [128 * 192] } }), 'aux', /feature "aux" has shape \[24576\], the job expects \[128, 192\]/],
  ['mask missing', withFeatures('no-mask', { mask: undefined }), 'mask', /feature "mask" is missing/],
  ['an unknown feature', withFeatures('extra', { logits: { dtype: 'f32', shape: [128, 10] } }), 'logits', /feature "logits" is not in the job's schema \(ids, aux, last, mask\)/],
  ['numTokens over seqLen', sampleRef({ job: JOB, sampleId: 'long', generation: 1, numTokens: 129 }), 'numTokens', /numTokens is 129, the sample holds 128 tokens/],
  ['ids longer than seqLen', withFeatures('too-long', { ids: { dtype: 'i32', shape: [129] } }), 'ids', /feature "ids" has shape \[129\], the job expects \[128\]/],
  ['a single token', withFeatures('too-short', { ids: { dtype: 'i32', shape: [1] } }), 'ids', /feature "ids" has shape \[1\], the job expects \[128\] \(\[T\] with T = 128 \(2 ≤ T/],
  ['features of two lengths', shorter(50, { aux: { dtype: 'bf16', shape: [60, 192] } }), 'aux', /feature "aux" has shape \[60, 192\], the job expects \[50, 192\]/],
];

describe('the sample schema, enforced by the queue at commit (real nats-server, real queue actor)', function () {
  this.timeout(60_000);
  const nats = withNats();
  let bus: Bus, producer: Bus;
  let system: ActorSystem;
  let queue: { stop(): Promise<void> };

  before(async () => {
    bus = await Bus.connect({ servers: nats.url, job: JOB, auth: AuthPolicy.disabled(), name: 'queue' });
    producer = await Bus.connect({ servers: nats.url, job: JOB, auth: AuthPolicy.disabled(), name: 'producer' });
    system = new ActorSystem('schema-test');
    queue = startQueue(system, { bus, schema: SCHEMA, tickMs: 100 });
    await bus.flush();
  });
  after(async () => { await queue.stop(); await system.shutdown(); await producer.close(); await bus.close(); });

  const commit = (ref: SampleRef, key: string) => producer.request<{ status: string }>(producer.subjects.queue.commit, { ref }, { idempotencyKey: key, retries: 3, timeoutMs: 5000 });

  it('the checker alone: the store fixture fits, every bad ref is refused naming its field', () => {
    checkSampleRef(good, SCHEMA);
    for (const T of [2, 50, 127]) checkSampleRef(shorter(T), SCHEMA); // a conversation keeps its own length
    for (const [what, ref, field, re] of BAD) {
      assert.throws(() => checkSampleRef(ref, SCHEMA), (e: Error) => e instanceof SchemaError && re.test(e.message) && e.detail?.field === field, what);
    }
  });

  for (const [what, ref, field, re] of BAD) {
    it(`refuses a ref with ${what}: SchemaError over NATS naming "${field}"`, async () => {
      await assert.rejects(commit(ref, `commit:${ref.sampleId}:bad`), (e: Error) => {
        assert.ok(e instanceof SchemaError, `${e.name}: ${e.message}`);
        assert.equal(e.code, 'SCHEMA');
        assert.equal(e.retryable, false);
        assert.match(e.message, re);
        assert.match(e.message, new RegExp(`sample ${ref.sampleId}`));
        assert.equal(e.detail?.field, field);
        return true;
      });
    });
  }

  it('wrote nothing for the refused commits: the same ids and generations committed correctly are new samples, not duplicates', async () => {
    const events = await readLedgerEvents(bus);
    const refused = new Set(BAD.map(([, r]) => r.sampleId));
    assert.deepEqual(events.filter((ev) => ev.type === 'put' && refused.has(ev.ref.sampleId)), [], 'no put event for a refused ref');
    const st0 = await producer.request<{ samples: number }>(producer.subjects.queue.status, {}, { retries: 2 });
    assert.equal(st0.samples, 0);
    for (const id of refused) assert.equal((await commit(sampleRef({ job: JOB, sampleId: id, generation: 1 }), `commit:${id}:good`)).status, 'added', id);
    const st1 = await producer.request<{ samples: number }>(producer.subjects.queue.status, {}, { retries: 2 });
    assert.equal(st1.samples, refused.size);
  });

  it('accepts aux/last in f32, bf16 or f16', async () => {
    let i = 0;
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const ref = withFeatures(`ok-${dtype}`, { aux: { dtype, shape: [128, 192] }, last: { dtype: dtype === 'f32' ? 'f16' : dtype, shape: [128, 64] } });
      assert.equal((await commit(ref, `commit:ok:${i++}`)).status, 'added', dtype);
    }
  });
});
