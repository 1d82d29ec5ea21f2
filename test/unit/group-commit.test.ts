// GroupCommit (src/ledger/group-commit.ts) against an in-memory log: records in order, each
// fenced on the one before (the first after a reset on a seq, the later ones on the previous
// record's id), waiters told only once everything before them is durable, one failure failing
// every later record (another writer's record between two of ours included), reset after a
// rebuild.
import { strict as assert } from 'node:assert';
import { GroupCommit, type AppendFence } from '../../src/ledger/group-commit.ts';
import type { LedgerEvent } from '../../src/ledger/events.ts';

const ev = (seq: number) => ({ seq, type: 'epoch', key: `k${seq}`, at: 0, epoch: seq, num: 1 }) as unknown as LedgerEvent;
const turn = () => new Promise((r) => setImmediate(r));

/** A log that holds appends until release(); checks the fence like JetStream's expected last seq and last msg id. */
function fakeLog() {
  const records: LedgerEvent[][] = [];
  const ids: string[] = [];
  const held: { events: LedgerEvent[]; fence: AppendFence; expected: number; resolve: (s: number) => void; reject: (e: Error) => void }[] = [];
  return {
    records, held,
    append: (events: LedgerEvent[], fence: AppendFence) => new Promise<number>((resolve, reject) => {
      held.push({ events, fence, expected: 'seq' in fence.after ? fence.after.seq : -1, resolve, reject });
    }),
    /** Puts a held record in the log without answering its append yet. */
    land(h: { events: LedgerEvent[]; fence: AppendFence }) { records.push(h.events); ids.push(h.fence.msgId); },
    /** Another writer's record (an old holder of the queue role). */
    intrude() { records.push([ev(99)]); ids.push('intruder'); },
    release(fail = false) {
      const h = held.shift()!;
      const after = h.fence.after;
      const ok = 'seq' in after ? after.seq === records.length : ids.at(-1) === after.msgId;
      if (fail || !ok) { h.reject(new Error(`wrong last ${'seq' in after ? `seq ${after.seq}` : 'msg id'}`)); return; }
      records.push(h.events); ids.push(h.fence.msgId); h.resolve(records.length);
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

  it('pipelines records, each fenced on the one before; a waiter waits for every earlier record', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxInFlight: 2 });
    const told: number[] = [];
    for (let i = 1; i <= 3; i++) { gc.write([ev(i)]); gc.then({ durable: () => told.push(i), lost: () => {} }); await turn(); }
    assert.deepEqual(log.held.map((h) => h.fence.after), [{ seq: 0 }, { msgId: log.held[0]!.fence.msgId }], 'two in flight, the second naming the first');
    // The second record's ack first: its waiter still waits for the first.
    const [first, second] = log.held.splice(0, 2);
    log.land(first!); log.land(second!);
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
    assert.deepEqual(lost, ['lost: wrong last seq 0', 'lost: wrong last seq 0'], 'the second record\'s waiter is lost with the first');
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

  it('another writer between two pipelined records: both of ours fail, nothing of ours lands on top of it', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxInFlight: 2 });
    const told: string[] = [];
    gc.write([ev(1)]); gc.then({ durable: () => told.push('d1'), lost: () => told.push('l1') }); await turn();
    gc.write([ev(2)]); gc.then({ durable: () => told.push('d2'), lost: () => told.push('l2') }); await turn();
    assert.equal(log.held.length, 2);
    log.intrude(); // takes seq 1, the one our first record expected to follow at 0
    log.release(); await turn(); // ours refused
    log.release(); await turn(); // the second would fit after seq 1 by number: refused by id
    assert.deepEqual(told, ['l1', 'l2']);
    assert.equal(log.records.length, 1, 'only the other writer\'s record is in the log');
    assert.deepEqual(log.records[0], [ev(99)]);
    await gc.idle();
    gc.reset(log.records.length);
    gc.write([ev(3)]); await turn();
    assert.deepEqual(log.held[0]!.fence.after, { seq: 1 }, 'after a reset: fenced on the seq the rebuild read');
    assert.notEqual(log.held[0]!.fence.msgId.split('.')[0], 'intruder');
    log.release(); await turn();
    assert.equal(log.records.length, 2);
  });

  it('splits a batch at maxEvents', async () => {
    const log = fakeLog();
    const gc = new GroupCommit({ append: log.append, maxEvents: 2, maxInFlight: 8 });
    gc.write([ev(1), ev(2), ev(3), ev(4), ev(5)]); await turn();
    assert.deepEqual(log.held.map((h) => h.events.length), [2, 2, 1]);
  });
});
