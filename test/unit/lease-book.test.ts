import assert from 'node:assert/strict';
import { newerEpochAnnounced } from '../../trainer/announcement.ts';
import { LeaseBook } from '../../trainer/lease-book.ts';
import type { Lease } from '../../src/ledger/events.ts';
import { createLogger } from '../../src/log.ts';
import type { Tensor } from '../../src/tensor.ts';

// receive/usable/ready/trained/restore keep the book's state and never call the queue or the
// store: the book is built without them (null), so a call that did would fail the test.
const book = () => new LeaseBook({ bus: null as never, store: null as never, log: createLogger('test.lease-book') });

let n = 0;
const lease = (sampleId: string, epoch = 1, leaseId = `L${++n}`): Lease => ({
  leaseId, sampleId, epoch, consumer: 'rank-0', deadline: Date.now() + 60_000, delivery: 1,
  ref: { sampleId } as unknown as Lease['ref'],
});
const read = (b: LeaseBook) => { for (const h of b.held.values()) h.tensors = {} as Record<string, Tensor>; };
const usableIds = (b: LeaseBook) => b.usable().map((h) => h.lease.leaseId).sort();

describe('lease book: pushes from the queue', () => {
  it('takes new leases of the rank\'s epoch or newer', () => {
    const b = book();
    const [x, y] = [lease('a', 1), lease('b', 2)];
    assert.equal(b.receive([x, y], 1), 2);
    assert.deepEqual(usableIds(b), [x.leaseId, y.leaseId].sort());
  });

  it('a newer lease of a sample supersedes the older one', () => {
    const b = book();
    const [old, cur] = [lease('a'), lease('a')];
    b.receive([old], 1);
    b.receive([cur], 1);
    assert.deepEqual(usableIds(b), [cur.leaseId]);
  });
});

describe('lease book: replayed pushes are harmless', () => {
  it('ignores a replay of a lease it holds, keeping its features read and its entry', () => {
    const b = book();
    const x = lease('a');
    b.receive([x], 1);
    read(b);
    const entry = b.held.get(x.leaseId);
    assert.equal(b.receive([{ ...x }], 1), 0);
    assert.equal(b.held.get(x.leaseId), entry);
    assert.equal(b.ready().length, 1, 'the features read are not dropped by the replay');
  });

  it('a replay during a step does not keep the trained lease held (it would be trained again)', () => {
    const b = book();
    const x = lease('a');
    b.receive([x], 1);
    read(b);
    const step = b.ready();
    b.inStep = step.map((h) => h.lease);
    b.receive([{ ...x }], 1); // replayed while the step computes
    b.trained(step);
    assert.equal(b.held.size, 0);
    assert.deepEqual(b.window.map((l) => l.leaseId), [x.leaseId]);
  });

  it('ignores a replay of a lease already trained, and after its checkpoint acked it', () => {
    const b = book();
    const x = lease('a');
    b.receive([x], 1);
    read(b);
    b.trained(b.ready());
    assert.equal(b.receive([{ ...x }], 1), 0);
    assert.equal(b.usable().length, 0);
    b.window = []; // the checkpoint committed and the lease was acked
    assert.equal(b.receive([{ ...x }], 1), 0);
    assert.equal(b.usable().length, 0, 'an acked lease replayed is not trained again');
  });

  it('ignores a replay of a superseded lease (it must not displace the newer one)', () => {
    const b = book();
    const [old, cur] = [lease('a'), lease('a')];
    b.receive([old], 1);
    b.receive([cur], 1);
    assert.equal(b.receive([{ ...old }], 1), 0);
    assert.deepEqual(usableIds(b), [cur.leaseId]);
  });

  it('ignores a replay of a lease put back after a lost step (restore) and then given back', () => {
    const b = book();
    const x = lease('a');
    b.receive([x], 1);
    read(b);
    b.trained(b.ready());
    b.window = [];
    b.restore([x]);
    assert.deepEqual(usableIds(b), [x.leaseId]);
    b.held.clear(); // released
    assert.equal(b.receive([{ ...x }], 1), 0);
    assert.equal(b.held.size, 0);
  });

  it('ignores leases of an older epoch, and malformed entries, but takes the rest of the push', () => {
    const b = book();
    const [old, bad, cur] = [lease('a', 2), { sampleId: 'b' } as unknown as Lease, lease('c', 3)];
    assert.equal(b.receive([old, bad, cur], 3), 1);
    assert.deepEqual(usableIds(b), [cur.leaseId]);
  });
});

describe('ctl.epoch announcements: replays are harmless', () => {
  it('acts only on an epoch newer than the rank\'s', () => {
    assert.equal(newerEpochAnnounced({ epoch: 4 }, 3), 4);
    assert.equal(newerEpochAnnounced({ epoch: 3 }, 3), null, 'the current epoch again');
    assert.equal(newerEpochAnnounced({ epoch: 2 }, 3), null, 'an older epoch replayed');
  });

  it('ignores malformed announcements', () => {
    for (const m of [null, undefined, 7, 'x', {}, { epoch: '9' }, { epoch: 4.5 }, { epoch: Number.NaN }]) {
      assert.equal(newerEpochAnnounced(m, 3), null, JSON.stringify(m));
    }
  });
});
