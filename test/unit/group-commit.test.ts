// GroupCommit (src/ledger/group-commit.ts) against an in-memory log: records in order with the
// chained expected seq, waiters told only once everything before them is durable, one failure
// failing every later record, reset after a rebuild.
import { strict as assert } from 'node:assert';
import { GroupCommit } from '../../src/ledger/group-commit.ts';
import type { LedgerEvent } from '../../src/ledger/events.ts';

const ev = (seq: number) => ({ seq, type: 'epoch', key: `k${seq}`, at: 0, epoch: seq, num: 1 }) as unknown as LedgerEvent;
const turn = () => new Promise((r) => setImmediate(r));

/** A log that holds appends until release(); checks the fence like JetStream's expected last seq. */
function fakeLog() {
  const records: LedgerEvent[][] = [];
  const held: { events: LedgerEvent[]; expected: number; resolve: (s: number) => void; reject: (e: Error) => void }[] = [];
  return {
    records, held,
    append: (events: LedgerEvent[], expected: number) => new Promise<number>((resolve, reject) => { held.push({ events, expected, resolve, reject }); }),
    release(fail = false) {
      const h = held.shift()!;
      if (fail || h.expected !== records.length) { h.reject(new Error(`wrong last seq ${h.expected}`)); return; }
      records.push(h.events); h.resolve(records.length);
    },
  };
}

describe('group commit of the write-ahead log', () => {
  it('gathers the writes of one turn into one record; waiters wait for it', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append });
    const told: string[] = [];
    for (let i = 1; i <= 5; i++) { gc.write([ev(i)]); gc.then({ durable: () => told.push(`r${i}`), lost: () => told.push('lost') }); }
    await turn();
    assert.equal(log.held.length, 1, 'one append for the five writes');
    assert.equal(log.held[0]!.events.length, 5);
    assert.deepEqual(told, [], 'no reply before the record is durable');
    log.release(); await turn();
    assert.deepEqual(told, ['r1', 'r2', 'r3', 'r4', 'r5']);
    let now = false; gc.then({ durable: () => { now = true; }, lost: () => {} });
    assert.ok(now, 'nothing pending: a waiter is told at once');
  });

  it('pipelines records with chained expected seqs; a waiter waits for every earlier record', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxInFlight: 2 });
    const told: number[] = [];
    for (let i = 1; i <= 3; i++) { gc.write([ev(i)]); gc.then({ durable: () => told.push(i), lost: () => {} }); await turn(); }
    assert.deepEqual(log.held.map((h) => h.expected), [0, 1], 'two in flight, the second expecting the first');
    // The second record's ack first: its waiter still waits for the first.
    const [first, second] = log.held.splice(0, 2);
    log.records.push(first!.events, second!.events);
    second!.resolve(2); await turn();
    assert.deepEqual(told, []);
    first!.resolve(1); await turn();
    assert.deepEqual(told, [1, 2]);
    assert.equal(log.held.length, 1, 'the third record went out once there was room');
    log.release(); await turn();
    assert.deepEqual(told, [1, 2, 3]);
    assert.equal(gc.stats.records, 3);
  });

  it('a failed append loses its waiters and every later one; reset after the rebuild', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxInFlight: 2, lostError: (e) => new Error(`lost: ${(e as Error).message}`) });
    const lost: string[] = [];
    gc.write([ev(1)]); gc.then({ durable: () => lost.push('durable1'), lost: (e) => lost.push(e.message) }); await turn();
    gc.write([ev(2)]); gc.then({ durable: () => lost.push('durable2'), lost: (e) => lost.push(e.message) }); await turn();
    log.release(true); await turn();
    assert.deepEqual(lost, ['lost: wrong last seq 0', 'lost: wrong last seq 0']);
    assert.ok(gc.failed);
    assert.throws(() => gc.write([ev(3)]), /lost/);
    let idle = false; void gc.idle().then(() => { idle = true; });
    await turn(); assert.ok(!idle, 'idle waits for the append still in flight');
    log.release(); await turn(); await turn();
    assert.ok(idle);
    gc.reset(log.records.length);
    assert.equal(gc.failed, null);
    gc.write([ev(3)]); await turn();
    assert.equal(log.held[0]!.expected, log.records.length);
  });

  it('splits a batch at maxEvents', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxEvents: 2, maxInFlight: 8 });
    gc.write([ev(1), ev(2), ev(3), ev(4), ev(5)]); await turn();
    assert.deepEqual(log.held.map((h) => h.events.length), [2, 2, 1]);
  });
});
