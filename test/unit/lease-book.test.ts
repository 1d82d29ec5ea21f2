import assert from 'node:assert/strict';
import { newerEpochAnnounced } from '../../trainer/announcement.ts';
import { LeaseBook } from '../../trainer/lease-book.ts';
import type { Lease } from '../../src/ledger/events.ts';
import { createLogger } from '../../src/log.ts';
import type { Tensor } from '../../src/tensor.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import type { FeatureStore } from '../../src/store/feature-store.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { makeSample } from '../support/store-fixtures.ts';

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

describe('lease book: reading the features', () => {
  it('reads each held sample once, several at a time, when reads are asked for concurrently (a prefetch and a collect)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dw-book-'));
    const store = await SharedDirFeatureStore.attach({ dir, storeId: 'book', job: 'book', auth: AuthPolicy.disabled(), producer: { node: 'n', actor: 'a', incarnation: 1 } });
    try {
      // The real store, its get() counted: how many reads of each sample, and how many at once.
      const reads = new Map<string, number>();
      let now = 0, most = 0;
      const counted = Object.create(store) as FeatureStore;
      counted.get = async (ref, o) => {
        reads.set(ref.sampleId, (reads.get(ref.sampleId) ?? 0) + 1);
        most = Math.max(most, ++now);
        try { return await store.get(ref, o); } finally { now--; }
      };
      const b = new LeaseBook({ bus: null as never, store: counted, log: createLogger('test.lease-book') });
      const ids = Array.from({ length: 10 }, (_, i) => `s${i}`);
      const refs = await Promise.all(ids.map((id, i) => store.put(id, makeSample(i + 1, 8, 16))));
      b.receive(refs.slice(0, 6).map((ref) => ({ ...lease(ref.sampleId), ref })), 1);
      const first = b.fetchNew();
      b.receive(refs.slice(6).map((ref) => ({ ...lease(ref.sampleId), ref })), 1); // arrive while the first pass reads
      await Promise.all([first, b.fetchNew(), b.fetchNew()]);
      assert.deepEqual(ids.map((id) => reads.get(id)), ids.map(() => 1), 'each sample read exactly once');
      assert.ok(most > 1 && most <= 4, `reads overlap, at most 4 at once (saw ${most})`);
      assert.deepEqual(b.ready().map((h) => h.lease.sampleId), ids, 'all ready, in the order they were leased');
      assert.deepEqual(b.ready()[3]!.tensors!.ids!.data, makeSample(4, 8, 16).ids!.data, 'the features are the sample\'s');
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('lease book: samples a committed checkpoint holds (the skip list)', () => {
  it('a held lease of a skip-listed sample is neither usable nor read: it is only acked', async () => {
    let reads = 0;
    const counted = { get: async () => { reads++; return {} as Record<string, Tensor>; } } as unknown as FeatureStore;
    const b = new LeaseBook({ bus: null as never, store: counted, log: createLogger('test.lease-book') });
    const [done, fresh] = [lease('in-checkpoint'), lease('new')];
    b.trainedSkip.add('in-checkpoint');
    b.receive([done, fresh], 1);
    assert.deepEqual(usableIds(b), [fresh.leaseId]);
    await b.fetchNew();
    assert.equal(reads, 1, 'only the sample to train is read');
    assert.deepEqual(b.ready().map((h) => h.lease.leaseId), [fresh.leaseId]);
    assert.ok(b.held.has(done.leaseId), 'still held, for the ack');
    b.trainedSkip.delete('in-checkpoint'); // acked and gone from the list: an ordinary sample again
    assert.deepEqual(usableIds(b), [done.leaseId, fresh.leaseId].sort());
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
