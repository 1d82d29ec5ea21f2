// An external job's input in the pure ledger: producers open and end, the input closes, a
// new sample after the close is refused, replay rebuilds all of it, and the independent audit
// flags a log where a sample or a producer slipped in after the close. The close policy
// (src/ledger/input.ts) is checked on its own.
import assert from 'node:assert/strict';
import { InputClosedError, InvalidArgumentError } from '../../src/errors.ts';
import { LeaseLedger, auditEvents, type LedgerEvent } from '../../src/ledger/ledger.ts';
import { commitPressure, inputCloseReason, sampleBudgetOf } from '../../src/ledger/input.ts';
import { sampleRef } from '../support/store-fixtures.ts';

const ref = (id: string, gen = 1) => sampleRef({ sampleId: id, generation: gen, uri: `dir://store-a/${id}?g=${gen}` });

function harness() {
  const q = new LeaseLedger();
  const log: LedgerEvent[] = [];
  let k = 0;
  const rec = <T extends { events: LedgerEvent[] }>(r: T): T => { log.push(...r.events); return r; };
  return {
    q, log,
    put: (id: string, gen = 1) => rec(q.put(ref(id, gen), { key: `commit:${id}:${gen}`, now: 1 })),
    input: (p: string, state: 'open' | 'end', inc = 1) => rec(q.input(p, state, { key: `input:${p}:${state}:${inc}`, now: 2, incarnation: inc })),
    close: (why: 'producers' | 'samples') => rec(q.closeInput(why, { key: `close:${why}:${++k}`, now: 3 })),
  };
}

describe('the ledger: an external input (producers, close)', () => {
  it('records producers opening and ending; repeats are no-ops; an end needs no open', () => {
    const h = harness();
    assert.deepEqual(h.input('a', 'open'), { producer: 'a', state: 'open', events: h.log.slice(0, 1), repeated: false });
    assert.equal(h.input('a', 'open', 2).events.length, 0, 'an open producer opening again (a restart) changes nothing');
    assert.equal(h.input('a', 'open').repeated, true, 'the same key answers from the cache');
    h.input('b', 'end');
    assert.deepEqual(h.q.inputState(), { open: ['a'], ended: ['b'], closed: null });
    h.input('a', 'end');
    assert.deepEqual(h.q.inputState(), { open: [], ended: ['a', 'b'], closed: null }, 'ending does not close: the queue\'s policy decides');
    assert.throws(() => h.q.input('a', 'pause' as 'end', { key: 'x', now: 0, incarnation: 1 }), InvalidArgumentError);
    assert.throws(() => h.q.input('', 'open', { key: 'y', now: 0, incarnation: 1 }), /producer must be a non-empty string/);
  });

  it('after the close a new sample is refused (INPUT_CLOSED, not retryable); a retry of a committed one and a newer generation of a pending one are not', () => {
    const h = harness();
    h.put('s1');
    h.put('s2');
    const c = h.close('producers');
    assert.deepEqual({ reason: c.reason, samples: c.samples }, { reason: 'producers', samples: 2 });
    assert.equal(h.close('samples').events.length, 0, 'closing again is a no-op');
    assert.throws(() => h.put('s3'), (e: unknown) => e instanceof InputClosedError && e.code === 'INPUT_CLOSED' && !e.retryable && /"s3".*input is closed/.test(e.message));
    assert.equal(h.q.put(ref('s1'), { key: 'commit:s1:1', now: 5 }).status, 'added', 'the retry of a commit answers as the first time');
    assert.equal(h.put('s2', 2).status, 'replaced');
    assert.throws(() => h.input('late', 'open'), InputClosedError);
    assert.equal(h.input('late', 'end').state, 'ended', 'a late end is harmless');
    assert.equal(h.q.stats().samples, 2);
  });

  it('replay rebuilds producers and the close (and refuses a log that puts a new sample after it)', () => {
    const h = harness();
    h.input('a', 'open'); h.put('s1'); h.input('a', 'end'); h.close('producers');
    const r = LeaseLedger.replay(h.log);
    assert.deepEqual(r.snapshot(), h.q.snapshot());
    assert.throws(() => r.put(ref('s9'), { key: 'commit:s9:1', now: 9 }), InputClosedError);
    const bad = [...h.log, { seq: h.log.length + 1, at: 9, type: 'put', ref: ref('s9'), prevGeneration: null } as LedgerEvent];
    assert.throws(() => LeaseLedger.replay(bad), /after the input closed/);
  });

  it('the audit flags a new sample or a producer opening after the close, and a close that miscounts', () => {
    const h = harness();
    h.input('a', 'open'); h.put('s1'); h.input('a', 'end'); h.close('producers');
    assert.equal(auditEvents(h.log).ok, true);
    const n = h.log.length;
    const late: LedgerEvent[] = [
      ...h.log,
      { seq: n + 1, at: 9, type: 'put', ref: ref('s2'), prevGeneration: null },
      { seq: n + 2, at: 9, type: 'input', producer: 'b', state: 'open', incarnation: 1 },
    ];
    const a = auditEvents(late);
    assert.equal(a.ok, false);
    assert.ok(a.problems.some((p) => /new sample "s2" after the input closed/.test(p)), a.problems.join('\n'));
    assert.ok(a.problems.some((p) => /producer "b" opened after the input closed/.test(p)), a.problems.join('\n'));
    const miscount = h.log.map((e) => (e.type === 'close' ? { ...e, samples: 7 } : e));
    assert.ok(auditEvents(miscount).problems.some((p) => /closed at 7 samples, 1 were committed/.test(p)));
    const early: LedgerEvent[] = [
      { seq: 1, at: 1, type: 'input', producer: 'a', state: 'open', incarnation: 1 },
      { seq: 2, at: 2, type: 'close', reason: 'producers', samples: 0 },
    ];
    assert.ok(auditEvents(early).problems.some((p) => /while one was still open/.test(p)));
    const malformed = [{ seq: 1, at: 1, type: 'input', producer: 'a', state: 'paused', incarnation: 1 } as unknown as LedgerEvent];
    assert.ok(auditEvents(malformed).problems.some((p) => /malformed: input.state/.test(p)));
  });
});

describe('the input policy (when an external input closes; the budget the ranks are told)', () => {
  const ext = (samples: number | null, producers: number) => ({ kind: 'external' as const, samples, producers });
  const st = (open: string[], ended: string[], closed: { reason: 'producers' | 'samples'; samples: number } | null = null) => ({ open, ended, closed });
  it('closes on the sample cap, or once enough producers ended and none is open', () => {
    assert.equal(inputCloseReason(ext(5, 1), st(['a'], []), 5), 'samples');
    assert.equal(inputCloseReason(ext(5, 1), st(['a'], []), 4), null);
    assert.equal(inputCloseReason(ext(null, 2), st(['b'], ['a']), 9), null, 'one of two ended, the other open');
    assert.equal(inputCloseReason(ext(null, 2), st([], ['a']), 9), null, 'fewer producers ended than --producers');
    assert.equal(inputCloseReason(ext(null, 2), st([], ['a', 'b']), 9), 'producers');
    assert.equal(inputCloseReason(ext(null, 1), st([], ['a'], { reason: 'producers', samples: 9 }), 9), null, 'closed already');
    assert.equal(inputCloseReason({ kind: 'fixed', samples: 8 }, st([], ['a']), 9), null, 'a fixed job never closes');
    assert.equal(inputCloseReason(null, st([], ['a']), 9), null);
  });
  it('the budget: fixed, null while open, the count committed once closed', () => {
    assert.equal(sampleBudgetOf({ kind: 'fixed', samples: 8 }, st([], [])), 8);
    assert.equal(sampleBudgetOf(ext(5, 1), st(['a'], [])), null);
    assert.equal(sampleBudgetOf(ext(null, 1), st([], ['a'], { reason: 'producers', samples: 3 })), 3);
    assert.equal(sampleBudgetOf(null, st([], [])), null);
  });
});

describe('backpressure on an external input (bytes committed and not consumed, against the store watermarks)', () => {
  const ext = { kind: 'external' as const, samples: null, producers: 1, highBytes: 1000, lowBytes: 600 };
  it('refuses a new sample that would pass the high mark, and keeps refusing until the low mark', () => {
    assert.deepEqual(commitPressure(ext, false, 900, 50), { pressured: false, refuse: false });
    assert.deepEqual(commitPressure(ext, false, 900, 200), { pressured: true, refuse: true });
    assert.deepEqual(commitPressure(ext, true, 700, 10), { pressured: true, refuse: true }, 'above the low mark: still refused');
    assert.deepEqual(commitPressure(ext, true, 600, 10), { pressured: false, refuse: false }, 'drained to the low mark');
    assert.deepEqual(commitPressure(ext, false, 0, 5000), { pressured: false, refuse: false }, 'one big sample still goes into an empty store');
    assert.deepEqual(commitPressure({ kind: 'fixed', samples: 8 }, true, 1e9, 1e9), { pressured: false, refuse: false }, 'the rollout\'s own store pushes back instead');
  });
  it('the ledger counts the bytes of samples not finished: put adds, a replacement swaps, an ack or a dead letter frees', () => {
    const q = new LeaseLedger({ maxDeliveries: 1 });
    const r = (id: string, gen: number, bytes: number) => sampleRef({ sampleId: id, generation: gen, uri: `dir://store-a/${id}?g=${gen}`, bytes });
    q.put(r('a', 1, 100), { key: 'p1', now: 1 });
    q.put(r('b', 1, 50), { key: 'p2', now: 1 });
    q.put(r('b', 2, 70), { key: 'p3', now: 1 });
    assert.equal(q.liveBytes(), 170);
    const [la, lb] = q.get(2, { partition: [0, 1], consumer: 'r', epoch: 0, key: 'g', now: 2 }).leases;
    q.ack(la!.leaseId, 0, { key: 'a1', now: 3 });
    q.fail(lb!.leaseId, 0, false, { key: 'f1', now: 3, reason: 'bad' });
    assert.equal(q.liveBytes(), 0);
  });
});
