import assert from 'node:assert/strict';
import { InvalidArgumentError, LeaseExpiredError, StaleEpochError, StaleGenerationError } from '../../src/errors.ts';
import { LeaseLedger, auditEvents, type Lease, type LedgerEvent } from '../../src/ledger/ledger.ts';
import { dpPartition } from '../../src/ledger/partition.ts';
import { decodeMessage, encodeMessage, type SampleRef } from '../../src/wire/sampleref.ts';
import { sampleRef } from '../support/store-fixtures.ts';

function ref(id: string, gen = 1): SampleRef {
  return sampleRef({ sampleId: id, generation: gen, uri: `dir://store-a/${id}?g=${gen}`, checksum: `sha256m:${(gen % 256).toString(16).padStart(2, '0').repeat(32)}` });
}

/** A ledger plus its log, as the queue actor keeps it. */
class Harness {
  readonly log: LedgerEvent[] = [];
  private k = 0;
  constructor(readonly q = new LeaseLedger({ leaseMs: 1000, maxDeliveries: 3 })) {}
  key(): string { return `k${++this.k}`; }
  rec<T extends { events: LedgerEvent[] }>(r: T): T { this.log.push(...r.events); return r; }
  put(id: string, gen = 1, now = 0) { return this.rec(this.q.put(ref(id, gen), { key: this.key(), now })); }
  get(max: number, index: number, num: number, opts: { epoch?: number; now?: number; consumer?: string; leaseMs?: number } = {}) {
    return this.rec(this.q.get(max, { partition: [index, num], consumer: opts.consumer ?? `rank${index}`, epoch: opts.epoch ?? this.q.currentEpoch(), key: this.key(), now: opts.now ?? 0, leaseMs: opts.leaseMs })).leases;
  }
  ack(l: Lease, now = 0) { return this.rec(this.q.ack(l.leaseId, l.epoch, { key: this.key(), now })); }
  release(l: Lease, now = 0) { return this.rec(this.q.release(l.leaseId, l.epoch, { key: this.key(), now })); }
  fail(l: Lease, retryable: boolean, now = 0) { return this.rec(this.q.fail(l.leaseId, l.epoch, retryable, { key: this.key(), now, reason: 'boom' })); }
  expire(now: number) { return this.rec(this.q.expire(now)); }
  epoch(epoch: number, num?: number) { return this.rec(this.q.setEpoch(epoch, { num, key: this.key(), now: 0 })); }
}

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('LeaseLedger (lease ledger)', () => {
  it('put -> get -> ack: states, depth, inFlight, stats', () => {
    const h = new Harness();
    for (let i = 0; i < 5; i++) assert.equal(h.put(`s${i}`).status, 'added');
    assert.equal(h.q.depth(), 5);
    const leases = h.get(10, 0, 1, { now: 100 });
    assert.deepEqual(leases.map((l) => l.sampleId), ['s0', 's1', 's2', 's3', 's4'], 'insertion order');
    assert.equal(leases[0]!.deadline, 1100);
    assert.equal(leases[0]!.delivery, 1);
    assert.equal(leases[0]!.ref.sampleId, 's0');
    assert.equal(h.q.depth(), 0);
    assert.equal(h.q.inFlight(), 5);
    assert.equal(h.q.state('s0')!.state, 'leased');
    assert.equal(h.ack(leases[0]!).status, 'acked');
    assert.equal(h.q.state('s0')!.state, 'consumed');
    assert.equal(h.q.state('nope'), undefined);
    const st = h.q.stats();
    assert.equal(st.consumed, 1);
    assert.equal(st.leased, 4);
    assert.equal(st.leasesGranted, 5);
    assert.equal(st.seq, h.log.length);
    assert.deepEqual(h.get(10, 0, 1), [], 'nothing pending');
  });

  it('put is idempotent on (sampleId, generation); newer generations replace pending/leased, never consumed', () => {
    const h = new Harness();
    assert.equal(h.put('a', 5).status, 'added');
    const dup = h.put('a', 5);
    assert.equal(dup.status, 'duplicate');
    assert.deepEqual(dup.events, []);
    assert.equal(h.q.depth(), 1);
    h.put('b', 1);
    assert.equal(h.put('a', 6).status, 'replaced');
    assert.deepEqual(h.q.pendingIds(), ['a', 'b'], 'replacement keeps its place');
    assert.throws(() => h.put('a', 4), StaleGenerationError);
    const [la] = h.get(1, 0, 1);
    assert.equal(la!.ref.generation, 6);
    assert.equal(h.put('a', 7).status, 'replaced', 'newer generation of a leased sample');
    assert.equal(h.q.state('a')!.lease!.leaseId, la!.leaseId, 'the live lease stays valid');
    h.release(la!);
    const [la2] = h.get(2, 0, 1).filter((l) => l.sampleId === 'a');
    assert.equal(la2!.ref.generation, 7, 'the next lease carries the new generation');
    h.ack(la2!);
    assert.equal(h.put('a', 7).status, 'duplicate', 'a retried put of a consumed sample is still answered');
    assert.throws(() => h.put('a', 8), (e: unknown) => e instanceof InvalidArgumentError && /already consumed/.test((e as Error).message));
    assert.throws(() => h.q.put({ ...ref('c'), v: 2 } as unknown as SampleRef, { key: 'bad', now: 0 }), InvalidArgumentError);
  });

  it('leases only the asked partition and never blocks on other partitions', () => {
    const h = new Harness();
    const ids = Array.from({ length: 60 }, (_, i) => `p${i}`);
    for (const id of ids) h.put(id);
    const num = 3;
    const want = (i: number) => ids.filter((id) => dpPartition(id, num) === i);
    for (let i = 0; i < num; i++) {
      const got = h.get(1000, i, num).map((l) => l.sampleId);
      assert.deepEqual(got, want(i), `partition ${i}`);
    }
    assert.equal(h.q.depth(), 0);
    // Many pending samples of one partition do not slow down another's get.
    const q = new LeaseLedger();
    let n = 0;
    for (let i = 0; n < 20000; i++) { const id = `big${i}`; if (dpPartition(id, 2) === 0) { q.put(ref(id), { key: `p${id}`, now: 0 }); n++; } }
    q.put(ref('lonely-1'), { key: 'pl', now: 0 });
    const part = dpPartition('lonely-1', 2);
    const t0 = performance.now();
    for (let i = 0; i < 5000; i++) q.get(1, { partition: [1 - part, 2], consumer: 'r', epoch: 0, key: `g${i}`, now: 0 });
    const dt = performance.now() - t0;
    assert.ok(dt < 1000, `5000 empty gets against 20000 foreign pending samples took ${dt.toFixed(0)} ms`);
    assert.equal(q.get(5, { partition: [part, 2], consumer: 'r', epoch: 0, key: 'gl', now: 0 }).leases.length, part === 0 ? 5 : 1);
  });

  it('idempotency keys: a repeated key returns the first answer (or error) and mutates nothing', () => {
    const h = new Harness();
    for (let i = 0; i < 4; i++) h.put(`s${i}`);
    const r1 = h.q.get(2, { partition: [0, 1], consumer: 'r0', epoch: 0, key: 'get-1', now: 0 });
    const r2 = h.q.get(2, { partition: [0, 1], consumer: 'r0', epoch: 0, key: 'get-1', now: 5 });
    assert.equal(r1.repeated, false);
    assert.equal(r2.repeated, true);
    assert.deepEqual(r2.events, []);
    assert.deepEqual(r2.leases, r1.leases);
    assert.equal(h.q.inFlight(), 2, 'no second grant');
    const a1 = h.q.ack(r1.leases[0]!.leaseId, 0, { key: 'ack-1', now: 0 });
    const a2 = h.q.ack(r1.leases[0]!.leaseId, 0, { key: 'ack-1', now: 0 });
    assert.equal(a1.status, 'acked');
    assert.equal(a2.status, 'acked');
    assert.equal(a2.repeated, true);
    assert.equal(h.q.stats().acks, 1);
    // Another rank of the same step acks again with its own key: a harmless duplicate.
    const a3 = h.q.ack(r1.leases[0]!.leaseId, 0, { key: 'ack-other-rank', now: 0 });
    assert.equal(a3.status, 'duplicate');
    assert.deepEqual(a3.events, []);
    // The first error is the answer too, even after the state changed.
    const lid = r1.leases[1]!.leaseId;
    assert.throws(() => h.q.ack(lid, 9, { key: 'ack-2', now: 0 }), StaleEpochError);
    assert.throws(() => h.q.ack(lid, 9, { key: 'ack-2', now: 0 }), StaleEpochError);
    assert.throws(() => h.q.release(lid, 0, { key: 'ack-1', now: 0 }), /was used for ack/);
    assert.throws(() => h.q.ack(lid, 0, { key: '', now: 0 }), InvalidArgumentError);
    // Bounded cache: the oldest keys are forgotten.
    const q = new LeaseLedger({ keyCacheSize: 3 });
    for (let i = 0; i < 5; i++) q.put(ref(`x${i}`), { key: `put-${i}`, now: 0 });
    assert.equal(q.put(ref('x0', 2), { key: 'put-0', now: 0 }).status, 'replaced', 'evicted key is evaluated afresh');
    assert.equal(q.put(ref('x4', 2), { key: 'put-4', now: 0 }).repeated, true);
  });

  it('release does not charge a delivery; fail(retryable) does; fail(non-retryable) dead-letters', () => {
    const h = new Harness();
    h.put('a'); h.put('b');
    let [la] = h.get(1, 0, 1);
    assert.equal(la!.sampleId, 'a');
    for (let i = 0; i < 5; i++) {
      assert.equal(h.release(la!).status, 'released');
      [la] = h.get(2, 0, 1).filter((l) => l.sampleId === 'a').concat([]);
      if (!la) break;
      assert.equal(la.delivery, 1, 'releases are not charged');
      h.release(h.q.liveLeases().filter((l) => l.sampleId === 'b').map((l) => ({ ...l, ref: ref('b') }))[0]!);
    }
    assert.equal(h.q.state('a')!.deliveries, 0);
    // fail retryable: charged; reaching maxDeliveries (3) dead-letters.
    assert.equal(h.fail(la!, true).status, 'pending');
    assert.equal(h.q.state('a')!.deliveries, 1);
    [la] = h.get(5, 0, 1).filter((l) => l.sampleId === 'a');
    assert.equal(la!.delivery, 2);
    assert.equal(h.fail(la!, true).status, 'pending');
    [la] = h.get(5, 0, 1).filter((l) => l.sampleId === 'a');
    assert.equal(la!.delivery, 3);
    const f = h.fail(la!, true);
    assert.equal(f.status, 'dead');
    assert.deepEqual(f.events.map((e) => e.type), ['fail', 'dead']);
    assert.equal(h.q.state('a')!.state, 'dead');
    // fail non-retryable: dead at once.
    const lb = h.q.liveLeases().find((l) => l.sampleId === 'b') ?? h.get(5, 0, 1).find((l) => l.sampleId === 'b');
    const fb = h.q.fail(lb!.leaseId, lb!.epoch, false, { key: 'fb', now: 0, reason: 'poison' });
    h.log.push(...fb.events);
    assert.equal(fb.status, 'dead');
    assert.equal(h.q.state('b')!.state, 'dead');
    assert.equal(h.q.stats().dead, 2);
    assert.equal(h.q.depth(), 0);
    assert.throws(() => h.put('b', 2), /already dead/);
    assert.ok(auditEvents(h.log).ok);
  });

  it('renew extends a lease; expire reclaims overdue leases; stale acks are LeaseExpiredError', () => {
    const h = new Harness();
    h.put('a');
    const [l1] = h.get(1, 0, 1, { now: 0, leaseMs: 100 });
    const rn = h.rec(h.q.renew(l1!.leaseId, 0, { key: 'rn', now: 90, leaseMs: 100 }));
    assert.equal(rn.deadline, 190);
    assert.deepEqual(h.expire(150).expired, []);
    const ex = h.expire(190);
    assert.deepEqual(ex.expired.map((x) => x.leaseId), [l1!.leaseId]);
    assert.equal(h.q.state('a')!.state, 'pending');
    assert.equal(h.q.state('a')!.deliveries, 1, 'expiry is charged');
    assert.throws(() => h.ack(l1!), (e: unknown) => e instanceof LeaseExpiredError && /expired/.test((e as Error).message));
    const [l2] = h.get(1, 0, 1, { now: 200, leaseMs: 100 });
    assert.equal(l2!.delivery, 2);
    assert.throws(() => h.ack(l1!), (e: unknown) => e instanceof LeaseExpiredError && new RegExp(`now leased as ${l2!.leaseId}`).test((e as Error).message));
    assert.throws(() => h.q.renew(l1!.leaseId, 0, { key: 'rn2', now: 200 }), LeaseExpiredError);
    assert.throws(() => h.q.ack('L999', 0, { key: 'x', now: 0 }), LeaseExpiredError);
    // An ack after the deadline but before expire() reclaimed the lease still counts.
    assert.equal(h.ack(l2!, 10_000).status, 'acked');
    assert.deepEqual(h.expire(20_000).expired, []);
    // maxDeliveries through expiry.
    h.put('b');
    for (let i = 0; i < 3; i++) { h.get(1, 0, 1, { now: i * 1000, leaseMs: 10 }); h.expire(i * 1000 + 10); }
    assert.equal(h.q.state('b')!.state, 'dead');
    assert.equal(h.log.filter((e) => e.type === 'dead').length, 1);
    const au = auditEvents(h.log);
    assert.ok(au.ok, au.problems.join('\n'));
    assert.deepEqual([au.committed, au.consumed, au.dead], [2, 1, 1]);
  });

  it('revokeConsumer reclaims every live lease of a gone consumer at once (charged, logged, replayable)', () => {
    const h = new Harness();
    for (const id of ['a', 'b', 'c']) h.put(id);
    const mine = h.get(2, 0, 1, { consumer: 'rank-1', now: 0, leaseMs: 60_000 });
    const other = h.get(1, 0, 1, { consumer: 'rank-0', now: 0, leaseMs: 60_000 });
    const r = h.rec(h.q.revokeConsumer('rank-1', 10));
    assert.deepEqual(r.expired.map((x) => x.leaseId).sort(), mine.map((l) => l.leaseId).sort(), 'long before the deadline');
    for (const l of mine) {
      assert.equal(h.q.state(l.sampleId)!.state, 'pending');
      assert.equal(h.q.state(l.sampleId)!.deliveries, 1, 'charged like an expiry');
      assert.throws(() => h.ack(l), LeaseExpiredError, 'a late ack of the gone holder is refused');
    }
    assert.equal(h.q.state(other[0]!.sampleId)!.state, 'leased', 'other consumers keep theirs');
    assert.deepEqual(h.rec(h.q.revokeConsumer('rank-1', 20)).events, [], 'nothing left to revoke');
    assert.throws(() => h.q.revokeConsumer('', 0), InvalidArgumentError);
    // Fenced by epoch: a replacement reusing the consumer name holds leases of a later epoch.
    h.epoch(3, 1);
    const replacement = h.get(1, 0, 1, { consumer: 'rank-1', now: 30, leaseMs: 60_000 });
    assert.deepEqual(h.rec(h.q.revokeConsumer('rank-1', 40, 3)).expired, [], 'a revoke of what was granted before epoch 3 leaves the replacement\'s lease');
    assert.equal(h.q.state(replacement[0]!.sampleId)!.state, 'leased');
    assert.equal(h.rec(h.q.revokeConsumer('rank-1', 50, 4)).expired.length, 1);
    const again = LeaseLedger.replay(h.log, { leaseMs: 1000, maxDeliveries: 3 });
    assert.deepEqual(again.stats(), h.q.stats());
    assert.ok(auditEvents(h.log).ok);
  });

  it('epoch fencing: old-epoch get/renew refused, own-epoch ack of a live lease accepted', () => {
    const h = new Harness();
    for (let i = 0; i < 6; i++) h.put(`s${i}`);
    h.epoch(1, 1);
    const [a, b, c] = h.get(3, 0, 1, { epoch: 1 });
    assert.equal(a!.epoch, 1);
    assert.deepEqual(h.epoch(1, 1).events, [], 'same epoch again is a no-op');
    h.epoch(2, 1);
    assert.throws(() => h.get(1, 0, 1, { epoch: 1 }), (e: unknown) => e instanceof StaleEpochError && (e as StaleEpochError).detail!.ahead === false);
    assert.throws(() => h.get(1, 0, 1, { epoch: 3 }), (e: unknown) => e instanceof StaleEpochError && (e as StaleEpochError).detail!.ahead === true);
    assert.throws(() => h.get(1, 0, 2, { epoch: 2 }), /partitions by num 1/);
    assert.throws(() => h.q.renew(a!.leaseId, 1, { key: 'r', now: 0 }), StaleEpochError);
    assert.throws(() => h.q.ack(a!.leaseId, 2, { key: 'wrong-epoch', now: 0 }), StaleEpochError);
    assert.equal(h.ack(a!).status, 'acked', 'a lease finishes under its own epoch');
    assert.equal(h.release(b!).status, 'released');
    assert.equal(h.fail(c!, true).status, 'pending');
    assert.throws(() => h.epoch(1), StaleEpochError);
    assert.throws(() => h.q.setEpoch(2, { num: 4, key: 'e', now: 0 }), InvalidArgumentError);
    const rest = h.get(10, 0, 1, { epoch: 2 });
    assert.equal(rest.length, 5);
    assert.ok(rest.every((l) => l.epoch === 2));
    assert.ok(auditEvents(h.log).ok);
  });

  it('replay (also through the msgpack codec) rebuilds an identical ledger, keys included', () => {
    const h = new Harness(new LeaseLedger({ leaseMs: 50, maxDeliveries: 3 }));
    const r = rng(42);
    let now = 0;
    const leases: Lease[] = [];
    let epoch = 0;
    for (let step = 0; step < 3000; step++) {
      now += Math.floor(r() * 10);
      const x = r();
      try {
        if (x < 0.25) h.put(`s${Math.floor(r() * 400)}`, 1 + Math.floor(r() * 3), now);
        else if (x < 0.45) leases.push(...h.get(1 + Math.floor(r() * 4), Math.floor(r() * 2), 2, { now, epoch }));
        else if (x < 0.6 && leases.length) h.ack(leases.splice(Math.floor(r() * leases.length), 1)[0]!, now);
        else if (x < 0.67 && leases.length) h.release(leases.splice(Math.floor(r() * leases.length), 1)[0]!, now);
        else if (x < 0.72 && leases.length) h.fail(leases.splice(Math.floor(r() * leases.length), 1)[0]!, r() < 0.8, now);
        else if (x < 0.8 && leases.length) { const l = leases[Math.floor(r() * leases.length)]!; h.rec(h.q.renew(l.leaseId, l.epoch, { key: h.key(), now })); }
        else if (x < 0.95) h.expire(now);
        else if (x < 0.96) { epoch++; h.epoch(epoch, 2); }
      } catch (e) {
        assert.ok(e instanceof StaleGenerationError || e instanceof LeaseExpiredError || e instanceof StaleEpochError || e instanceof InvalidArgumentError, String(e));
      }
    }
    assert.ok(h.log.length > 1000);
    const types = new Set(h.log.map((e) => e.type));
    for (const t of ['put', 'lease', 'ack', 'release', 'fail', 'renew', 'expire', 'dead', 'epoch']) assert.ok(types.has(t as LedgerEvent['type']), `workload produced ${t}`);
    const snap = h.q.snapshot();
    assert.deepEqual(LeaseLedger.replay(h.log, { leaseMs: 50, maxDeliveries: 3 }).snapshot(), snap);
    const wire = h.log.map((e) => decodeMessage(encodeMessage(e as unknown as Record<string, unknown>)) as unknown as LedgerEvent);
    const q2 = LeaseLedger.replay(wire, { leaseMs: 50, maxDeliveries: 3 });
    assert.deepEqual(q2.snapshot(), snap);
    // Applying old events again is a no-op; a gap is refused.
    assert.equal(q2.apply(wire[5]!), false);
    assert.throws(() => q2.apply({ ...wire[5]!, seq: q2.lastSeq() + 2 }), /gap/);
    // Idempotency survives the restart: a retried get gets the same leases, not new ones.
    const lastLease = [...h.log].reverse().find((e) => e.type === 'lease')!;
    const again = q2.get(4, { partition: (lastLease as Extract<LedgerEvent, { type: 'lease' }>).partition, consumer: 'x', epoch: q2.currentEpoch(), key: lastLease.key!, now });
    assert.equal(again.repeated, true);
    assert.deepEqual(again.leases.map((l) => l.leaseId), (lastLease as Extract<LedgerEvent, { type: 'lease' }>).leases.map((g) => g.leaseId));
    // And the replayed ledger continues identically.
    const k = 'after-restart';
    h.put('new-one', 1, now); q2.put(ref('new-one'), { key: k, now });
    assert.equal(q2.stats().samples, h.q.stats().samples);
    const au = auditEvents(h.log);
    assert.ok(au.ok, au.problems.slice(0, 5).join('\n'));
    assert.equal(au.committed, au.consumed + au.dead + au.pending + au.leased);
  });

  it('auditEvents flags double leases, non-holder acks, double consumption and wrong partitions', () => {
    const h = new Harness();
    h.put('a'); h.put('b');
    h.get(2, 0, 1);
    const good = h.log.slice();
    assert.ok(auditEvents(good).ok);
    const base = good.length;
    const bad1: LedgerEvent[] = [...good, { seq: base + 1, at: 0, type: 'lease', epoch: 0, consumer: 'x', partition: [0, 1], leases: [{ leaseId: 'L99', sampleId: 'a', generation: 1, deadline: 1, delivery: 1 }] }];
    assert.match(auditEvents(bad1).problems.join(), /overlaps live lease/);
    const bad2: LedgerEvent[] = [...good, { seq: base + 1, at: 0, type: 'ack', leaseId: 'L77', sampleId: 'a', epoch: 0 }];
    assert.match(auditEvents(bad2).problems.join(), /holder of "a" is L1/);
    const bad3: LedgerEvent[] = [...good, { seq: base + 1, at: 0, type: 'ack', leaseId: 'L1', sampleId: 'a', epoch: 0 }, { seq: base + 2, at: 0, type: 'ack', leaseId: 'L1', sampleId: 'a', epoch: 0 }];
    assert.match(auditEvents(bad3).problems.join(), /consumed twice|holder/);
    const wrongPart = dpPartition('c', 2) === 0 ? 1 : 0;
    const bad4: LedgerEvent[] = [...good, { seq: base + 1, at: 0, type: 'put', ref: ref('c'), prevGeneration: null }, { seq: base + 2, at: 0, type: 'lease', epoch: 0, consumer: 'x', partition: [wrongPart, 2], leases: [{ leaseId: 'L3', sampleId: 'c', generation: 1, deadline: 1, delivery: 1 }] }];
    assert.match(auditEvents(bad4).problems.join(), /does not own it/);
    const r = auditEvents(good);
    assert.deepEqual([r.committed, r.leased, r.pending, r.complete], [2, 2, 0, false]);
    // apply() refuses the same inconsistencies.
    assert.throws(() => LeaseLedger.replay(bad1), InvalidArgumentError);
    assert.throws(() => LeaseLedger.replay(bad2), InvalidArgumentError);
  });

  it('re-partitions the same pending pool from num=2 to num=3, leasing each sample exactly once', () => {
    const h = new Harness(new LeaseLedger({ leaseMs: 1000, maxDeliveries: 10 }));
    const N = 300;
    for (let i = 0; i < N; i++) h.put(`ds:${i}`);
    h.epoch(1, 2);
    // Epoch 1, num 2: both ranks lease part of their partition; some get acked, some stay in flight.
    const old0 = h.get(40, 0, 2, { epoch: 1, now: 0 });
    const old1 = h.get(40, 1, 2, { epoch: 1, now: 0 });
    assert.ok(old0.every((l) => dpPartition(l.sampleId, 2) === 0) && old1.every((l) => dpPartition(l.sampleId, 2) === 1));
    for (const l of old0.slice(0, 20)) h.ack(l);
    for (const l of old1.slice(0, 10)) h.ack(l);
    const inflight = [...old0.slice(20), ...old1.slice(10)];
    // Reshard to 3 ranks.
    h.epoch(2, 3);
    assert.throws(() => h.get(10, 0, 2, { epoch: 1 }), StaleEpochError);
    // Of the old in-flight leases: a third finish and ack late, a third are released, a third expire.
    inflight.forEach((l, i) => { if (i % 3 === 0) h.ack(l, 10); else if (i % 3 === 1) h.release(l, 10); });
    const consumedBy = new Map<string, string>();
    for (const e of h.log) if (e.type === 'ack') consumedBy.set(e.sampleId, e.leaseId);
    let now = 20;
    for (let round = 0; round < 50 && h.q.stats().consumed < N; round++) {
      for (let i = 0; i < 3; i++) {
        for (const l of h.get(7, i, 3, { epoch: 2, now })) {
          assert.equal(dpPartition(l.sampleId, 3), i);
          assert.equal(l.epoch, 2);
          assert.ok(!consumedBy.has(l.sampleId), `${l.sampleId} leased after it was consumed`);
          h.ack(l, now);
          consumedBy.set(l.sampleId, l.leaseId);
        }
      }
      now += 400;
      h.expire(now); // reclaims the abandoned epoch-1 leases after their deadline
    }
    assert.equal(consumedBy.size, N);
    const st = h.q.stats();
    assert.deepEqual([st.consumed, st.pending, st.leased, st.dead], [N, 0, 0, 0]);
    const au = auditEvents(h.log);
    assert.ok(au.ok, au.problems.join('\n'));
    assert.deepEqual([au.committed, au.consumed, au.complete], [N, N, true]);
    // Every grant under epoch 2 respected num=3 (the audit checks partitions of every lease).
    assert.ok(h.log.some((e) => e.type === 'lease' && e.epoch === 2 && e.partition[1] === 3));
    assert.deepEqual(LeaseLedger.replay(h.log).snapshot(), h.q.snapshot());
  });

  it('validates arguments', () => {
    const q = new LeaseLedger();
    assert.throws(() => new LeaseLedger({ maxDeliveries: 0 }), InvalidArgumentError);
    assert.throws(() => q.get(1, { partition: [2, 2], consumer: 'r', epoch: 0, key: 'a', now: 0 }), InvalidArgumentError);
    assert.throws(() => q.get(-1, { partition: [0, 2], consumer: 'r', epoch: 0, key: 'b', now: 0 }), InvalidArgumentError);
    assert.throws(() => q.get(1, { partition: [0, 2], consumer: '', epoch: 0, key: 'c', now: 0 }), InvalidArgumentError);
    assert.throws(() => q.get(1, { partition: [0, 2], consumer: 'r', epoch: 0, key: 'd', now: Number.NaN }), InvalidArgumentError);
    assert.throws(() => q.expire(Number.NaN), InvalidArgumentError);
    assert.throws(() => q.apply({ type: 'nope', seq: 1, at: 0 } as unknown as LedgerEvent), InvalidArgumentError);
  });
});
