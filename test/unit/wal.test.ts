// The WAL's replay rules without NATS: the per-type event validators (events.ts) against a
// real ledger's events and mutations of them, and classifyWal's verdicts on bad, replayed and
// skipped records. The same over a real server: test/contract/wal.test.ts.
import assert from 'node:assert/strict';
import { LeaseLedger, auditEvents, type LedgerEvent } from '../../src/ledger/ledger.ts';
import { ledgerEventProblem } from '../../src/ledger/events.ts';
import { classifyWal, WAL_RECORD, WAL_SKIP, type WalEntry } from '../../src/ledger/wal.ts';
import { AuthError } from '../../src/errors.ts';
import { decodeMessage, encodeMessage } from '../../src/wire/sampleref.ts';
import { sampleRef } from '../support/store-fixtures.ts';

/** One event of every type, from a real ledger (through msgpack, as the WAL holds them). */
function realLog(): LedgerEvent[][] {
  const q = new LeaseLedger({ leaseMs: 100, maxDeliveries: 1 });
  const recs: LedgerEvent[][] = [];
  const r = (x: { events: LedgerEvent[] }) => { if (x.events.length) recs.push(decodeMessage(encodeMessage({ e: x.events })).e as LedgerEvent[]); };
  r(q.setEpoch(1, { num: 1, key: 'e1', now: 0 }));
  for (const id of ['a', 'b', 'c', 'd']) r(q.put(sampleRef({ sampleId: id, generation: 1, uri: `dir://s/${id}?g=1` }), { key: `p${id}`, now: 0 }));
  const ls = q.get(4, { partition: [0, 1], consumer: 'r0', epoch: 1, key: 'g1', now: 0 });
  r(ls);
  const [la, lb, lc] = ls.leases;
  r(q.renew(la!.leaseId, 1, { key: 'n1', now: 1 }));
  r(q.ack(la!.leaseId, 1, { key: 'a1', now: 2 }));
  r(q.release(lb!.leaseId, 1, { key: 'r1', now: 2 }));
  r(q.fail(lc!.leaseId, 1, true, { key: 'f1', now: 2, reason: 'boom' }));
  r(q.expire(10_000));
  return recs;
}

const entries = (recs: unknown[][]): WalEntry[] => recs.map((events, i) => ({ seq: i + 1, obj: { f: WAL_RECORD, events } }));

describe('WAL replay rules (no NATS)', () => {
  it('a real ledger log validates, event by event, every type', () => {
    const recs = realLog();
    const types = new Set(recs.flat().map((e) => e.type));
    assert.deepEqual([...types].sort(), ['ack', 'dead', 'epoch', 'expire', 'fail', 'lease', 'put', 'release', 'renew']);
    for (const e of recs.flat()) assert.equal(ledgerEventProblem(e), null, JSON.stringify(e));
    const w = classifyWal(entries(recs));
    assert.deepEqual(w.bad, []);
    assert.equal(w.events.length, recs.flat().length);
    assert.equal(auditEvents(w.events, w).ok, true);
    // A signed ref as ledger.jsonl holds it (mac in hex) is the same ref; a broken mac is not.
    const put = recs.flat().find((e) => e.type === 'put')! as Extract<LedgerEvent, { type: 'put' }>;
    assert.equal(ledgerEventProblem({ ...put, ref: { ...put.ref, mac: 'ab'.repeat(32) } }), null);
    assert.match(ledgerEventProblem({ ...put, ref: { ...put.ref, mac: 'zz' } })!, /put\.ref: .*mac/);
  });

  it('every field of every event, dropped or mistyped, is refused by name (never a TypeError), and the audit reports it', () => {
    const recs = realLog();
    let cases = 0;
    for (let r = 0; r < recs.length; r++) {
      for (let i = 0; i < recs[r]!.length; i++) {
        const ev = recs[r]![i] as unknown as Record<string, unknown>;
        for (const k of Object.keys(ev)) {
          if (k === 'key') continue; // optional
          for (const v of [undefined, 'x', -1, 1.5, [], { a: 1 }, true]) {
            const bad = { ...ev, [k]: v };
            if (v === undefined) delete bad[k];
            if (JSON.stringify(bad[k]) === JSON.stringify(ev[k])) continue;
            const p = ledgerEventProblem(bad);
            // Some mutations stay valid (a number where any number goes, a string reason): fine only then.
            if (p === null) { assert.ok(typeof v === typeof ev[k], `${ev.type}.${k} = ${JSON.stringify(v)} accepted`); continue; }
            cases++;
            // Appended (as a forger would), a copy of record r with the one event mutated.
            const forged = recs[r]!.map((e, n) => (n === i ? bad : e));
            const mutated = [...recs, forged];
            const w = classifyWal(entries(mutated));
            assert.deepEqual(w.bad.map((b) => b.streamSeq), [recs.length + 1], `${ev.type}.${k} = ${JSON.stringify(v)}`);
            assert.equal(w.events.length, recs.flat().length, 'the good records still replay');
            assert.match(w.bad[0]!.reason, new RegExp(`event ${i + 1} of`));
            const a = auditEvents(w.events, w);
            assert.equal(a.ok, false);
            // The audit of raw events (a ledger.jsonl) does not throw on it either.
            assert.doesNotThrow(() => auditEvents(mutated.flat() as LedgerEvent[]));
            assert.equal(auditEvents(mutated.flat() as LedgerEvent[]).ok, false);
          }
        }
      }
    }
    assert.ok(cases > 100, `${cases} mutations refused`);
    // Nested shapes: a lease grant and an expired lease of the wrong shape.
    const lease = recs.flat().find((e) => e.type === 'lease')!;
    assert.match(ledgerEventProblem({ ...lease, leases: [{ leaseId: 'L1' }] })!, /lease\.leases\[0\]\.sampleId is missing/);
    assert.match(ledgerEventProblem({ ...lease, leases: 5 })!, /lease\.leases is the number 5, not an array/);
    assert.match(ledgerEventProblem({ ...lease, partition: [1, 1] })!, /partition/);
    assert.match(ledgerEventProblem({ ...lease, type: 'bogus' })!, /unknown event type/);
    assert.match(ledgerEventProblem(null)!, /not a map/);
  });

  it('a replayed record is a duplicate (reported, ignored); a record rewriting or skipping ledger seqs is bad', () => {
    const recs = realLog();
    const e = entries(recs);
    const copy = { seq: e.length + 1, obj: structuredClone(e[1]!.obj) };
    const w = classifyWal([...e, copy]);
    assert.deepEqual(w.bad, []);
    assert.deepEqual(w.duplicates, [{ streamSeq: copy.seq, original: 2, events: [recs[1]![0]!.seq, recs[1]!.at(-1)!.seq] }]);
    assert.equal(auditEvents(w.events, w).ok, true, 'the replayed copy does not break a clean audit');
    // Before: the raw events with the copy appended are a broken ledger to the audit.
    assert.equal(auditEvents([...recs.flat(), ...recs[1]!]).ok, false);
    // Same ledger seq, other content: bad.
    const rewrite = { seq: e.length + 1, obj: { f: WAL_RECORD, events: [{ ...recs[1]![0]!, at: 12345 }] } };
    assert.match(classifyWal([...e, rewrite]).bad[0]!.reason, /rewrites ledger events #2\.\.#2.*stream seq 2/);
    // A gap in ledger seqs: bad.
    const last = recs.flat().at(-1)!.seq;
    const gap = { seq: e.length + 1, obj: { f: WAL_RECORD, events: [{ ...recs[0]![0]!, seq: last + 5 }] } };
    assert.match(classifyWal([...e, gap]).bad[0]!.reason, new RegExp(`start at #${last + 5}, but the log so far ends at #${last}`));
  });

  it('a skip record makes replay ignore the record it names; the audit lists it as skipped', () => {
    const e = entries(realLog());
    const n = e.length;
    const withBad: WalEntry[] = [...e.slice(0, 2), { seq: 3, error: new AuthError() }, ...e.slice(2).map((x) => ({ ...x, seq: x.seq + 1 }))];
    let w = classifyWal(withBad);
    assert.deepEqual(w.bad, [{ streamSeq: 3, reason: 'failed its MAC (authentication failed)' }]);
    withBad.push({ seq: n + 2, obj: { f: WAL_SKIP, skip: 3, reason: 'forged', at: 1 } });
    w = classifyWal(withBad);
    assert.deepEqual(w.bad, []);
    assert.deepEqual(w.skipped, [{ streamSeq: 3, reason: 'forged', skipStreamSeq: n + 2, at: 1 }]);
    const a = auditEvents(w.events, w);
    assert.equal(a.ok, true, a.problems.join('; '));
    assert.equal(w.kinds.get(n + 2), 'skip');
    // A skip record of the wrong shape is itself bad, and skips nothing.
    w = classifyWal([...withBad.slice(0, -1), { seq: n + 2, obj: { f: WAL_SKIP, skip: 3, reason: '', at: 1 } }]);
    assert.deepEqual(w.bad.map((b) => b.streamSeq), [3, n + 2]);
  });
});
