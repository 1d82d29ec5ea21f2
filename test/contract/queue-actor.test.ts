// The queue actor against a real nats-server, in its own process: leases by partition over
// NATS, a SIGKILL in the middle, and a restart that rebuilds the ledger (leases included)
// from the JetStream write-ahead log without losing or duplicating a sample.
import assert from 'node:assert/strict';
import type { LeaseMessage } from '../../actors/queue.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { QueueClient } from '../../src/bus/clients.ts';
import { InputClosedError, InvalidArgumentError, LeaseExpiredError } from '../../src/errors.ts';
import { auditEvents, type Lease } from '../../src/ledger/ledger.ts';
import { dpPartition } from '../../src/ledger/partition.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, waitForLine, type Child } from '../support/procs.ts';
import { sampleRef } from '../support/store-fixtures.ts';

const JOB = 'qjob';
const ref = (i: number) => sampleRef({ job: JOB, sampleId: `row-${String(i).padStart(4, '0')}`, generation: 1 });

describe('queue actor over NATS (real server, real process)', function () {
  this.timeout(90_000);
  const nats = withNats();
  let bus: Bus;
  let child: Child | null = null;

  const startQueueProcess = async (leaseMs = 30_000) => {
    child = spawnTs('test/support/queue-child.ts', [nats.url, JOB, '2', String(leaseMs)]);
    await waitForLine(child, 'ready');
  };

  before(async () => { bus = await Bus.connect({ servers: nats.url, job: JOB, auth: AuthPolicy.disabled(), name: 'test' }); });
  after(async () => { if (child) await killChild(child); await bus.close(); });

  /** A consumer of one partition: collects the leases published to it. */
  function consumer(name: string, index: number) {
    const got: Lease[] = [];
    const sub = bus.subscribe<LeaseMessage>(bus.subjects.part(2, index), (m) => { if (m.consumer === name) got.push(...m.leases); }, { dedupe: false });
    const credit = (max: number) => bus.request(bus.subjects.queue.credit, { consumer: name, partition: [index, 2], epoch: 1, max }, { timeoutMs: 3000, retries: 5 });
    return { got, sub, credit };
  }
  const until = async (cond: () => boolean, ms = 10_000) => {
    const end = Date.now() + ms;
    while (!cond()) { if (Date.now() > end) throw new Error('condition not met in time'); await new Promise((r) => setTimeout(r, 20)); }
  };
  const ack = (l: Lease) => bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, timeoutMs: 3000, retries: 10 });

  it('leases each sample once, by partition, across a SIGKILL and restart of the queue', async () => {
    await startQueueProcess();
    const N = 40;
    for (let i = 0; i < N; i++) {
      const r = await bus.request(bus.subjects.queue.commit, { ref: ref(i) }, { idempotencyKey: `commit:${i}`, retries: 5 });
      assert.equal(r.status, 'added');
    }
    const c0 = consumer('c0', 0), c1 = consumer('c1', 1);
    await bus.flush();
    const in0 = Array.from({ length: N }, (_, i) => ref(i).sampleId).filter((id) => dpPartition(id, 2) === 0).length;
    await c0.credit(5);
    await c1.credit(5);
    await until(() => c0.got.length === 5 && c1.got.length === 5);
    for (const l of c0.got) assert.equal(dpPartition(l.sampleId, 2), 0, `${l.sampleId} leased to partition 0`);
    for (const l of c1.got) assert.equal(dpPartition(l.sampleId, 2), 1, `${l.sampleId} leased to partition 1`);
    // Ack c0's first lease, hold the rest across the crash.
    await ack(c0.got[0]!);

    await killChild(child!, 'SIGKILL');
    await startQueueProcess();

    // Late acks of leases granted before the crash still count (the leases were replayed).
    for (const l of [...c0.got.slice(1), ...c1.got]) assert.equal((await ack(l)).status, 'acked');
    // A retried ack (same idempotency key) is answered, not applied twice.
    assert.equal((await ack(c0.got[0]!)).status, 'acked');
    // Re-committing a sample after the restart is a duplicate, not a second sample.
    assert.equal((await bus.request(bus.subjects.queue.commit, { ref: ref(0) }, { idempotencyKey: 'commit:again:0' })).status, 'duplicate');

    // Drain both partitions.
    const drain = async (c: ReturnType<typeof consumer>, total: number) => {
      while (c.got.length < total) {
        const before = c.got.length;
        await c.credit(Math.min(8, total - before));
        await until(() => c.got.length > before);
        for (const l of c.got.slice(before)) await ack(l);
      }
    };
    await drain(c0, in0);
    await drain(c1, N - in0);
    const all = [...c0.got, ...c1.got].map((l) => l.sampleId);
    assert.equal(new Set(all).size, N, 'every sample leased');
    assert.equal(all.length, N, 'no sample leased twice');

    const report = auditEvents(await readLedgerEvents(bus));
    assert.ok(report.ok, report.problems.join('\n'));
    assert.equal(report.committed, N);
    assert.equal(report.consumed, N);
    assert.equal(report.complete, true);
    c0.sub.unsubscribe(); c1.sub.unsubscribe();
  });

  it('rejects malformed and stale requests with typed errors and keeps serving', async () => {
    await assert.rejects(bus.request(bus.subjects.queue.credit, { consumer: 'x', partition: [2, 2], epoch: 1, max: 1 }, { retries: 0 }), InvalidArgumentError);
    await assert.rejects(bus.request(bus.subjects.queue.commit, { ref: { v: 2 } }, { retries: 0 }), (e: Error & { code?: string }) => e.code === 'DECODE');
    await assert.rejects(bus.request(bus.subjects.queue.ack, { leaseId: 'L-nope', epoch: 1 }, { retries: 0 }), LeaseExpiredError);
    const st = await bus.request(bus.subjects.queue.status, {}, { retries: 2 });
    assert.equal(st.consumed, 40);
    // This queue serves a job with its own rollout: it has no input for producers to open.
    await assert.rejects(bus.request(bus.subjects.queue.input, { producer: 'p', state: 'open', incarnation: 1 }, { retries: 0 }), (e: unknown) => e instanceof InvalidArgumentError && /--rollout external/.test(e.message));
    assert.equal(st.budget, null, 'a queue told no budget tells none');
  });

  it('an external input: producers\' state and the close survive a SIGKILL of the queue; after the close a new sample is refused', async () => {
    const job = 'qext';
    const b = await Bus.connect({ servers: nats.url, job, auth: AuthPolicy.disabled(), name: 'test-ext' });
    let c = spawnTs('test/support/queue-child.ts', [nats.url, job, '1', '30000', 'external:-:2']);
    try {
      await waitForLine(c, 'ready');
      const input = (producer: string, state: 'open' | 'end') => b.request(b.subjects.queue.input, { producer, state, incarnation: 7 }, { idempotencyKey: `input:${producer}:${state}:7`, retries: 5 });
      const commit = (id: string) => b.request(b.subjects.queue.commit, { ref: sampleRef({ job, sampleId: id, generation: 1 }) }, { idempotencyKey: `commit:${id}:1`, retries: 5 });
      await input('p1', 'open'); await input('p2', 'open');
      for (const id of ['a', 'b', 'c']) await commit(id);
      assert.deepEqual(await input('p1', 'end'), { producer: 'p1', state: 'ended', closed: false, committed: 3, budget: null });
      await killChild(c);
      c = spawnTs('test/support/queue-child.ts', [nats.url, job, '1', '30000', 'external:-:2']);
      await waitForLine(c, 'ready');
      const st = await b.request(b.subjects.queue.status, {}, { retries: 5 });
      assert.deepEqual(st.input, { open: ['p2'], ended: ['p1'], closed: null }, 'the restarted queue rebuilt the producers from its log');
      await commit('d');
      assert.deepEqual(await input('p2', 'end'), { producer: 'p2', state: 'ended', closed: true, committed: 4, budget: 4 });
      await assert.rejects(commit('e'), InputClosedError);
      assert.equal((await commit('d')).status, 'added', 'a retried commit (same key) of a committed sample gets its first answer');
      const report = auditEvents(await readLedgerEvents(b));
      assert.ok(report.ok, report.problems.join('\n'));
      assert.equal(report.committed, 4);
    } finally {
      await b.close();
      await killChild(c);
    }
  });

  it('re-leases a sample whose holder vanished, once its lease expires', async () => {
    await killChild(child!, 'SIGTERM');
    await startQueueProcess(300);
    await bus.request(bus.subjects.queue.commit, { ref: ref(1000) }, { idempotencyKey: 'commit:1000' });
    const idx = dpPartition(ref(1000).sampleId, 2);
    const zombie = consumer('zombie', idx);
    await bus.flush();
    await zombie.credit(1);
    await until(() => zombie.got.length === 1);
    const healthy = consumer('healthy', idx);
    await bus.flush();
    await healthy.credit(1);
    await until(() => healthy.got.length === 1, 5000); // granted after the zombie's lease expired
    assert.equal(healthy.got[0]!.sampleId, zombie.got[0]!.sampleId);
    assert.equal(healthy.got[0]!.delivery, 2);
    await assert.rejects(ack(zombie.got[0]!), LeaseExpiredError); // the zombie's ack is stale
    assert.equal((await ack(healthy.got[0]!)).status, 'acked');
    const report = auditEvents(await readLedgerEvents(bus));
    assert.ok(report.ok, report.problems.join('\n'));
    zombie.sub.unsubscribe(); healthy.sub.unsubscribe();
  });
});

describe('queue actor supervision (real process, failpoint)', function () {
  this.timeout(60_000);
  const nats = withNats();

  it('rebuilds the queue\'s ledger from its log after a failed append; the retried request gets one answer', async () => {
    const job = 'qsup';
    // The 3rd append throws: its waiters are told their requests were lost, and the next
    // request finds the queue rebuilding its ledger from the log.
    const child = spawnTs('test/support/queue-child.ts', [nats.url, job, '1'], { ...process.env, DRAFTWIRE_FAILPOINTS: 'queue.before-persist=throw@3' });
    const bus = await Bus.connect({ servers: nats.url, job, auth: AuthPolicy.disabled(), name: 'test' });
    try {
      await waitForLine(child, 'ready');
      // persist #1 is the epoch event; commits 0 and 1 are #2 and #3 (the crash).
      for (let i = 0; i < 4; i++) {
        const r = await bus.request(bus.subjects.queue.commit, { ref: sampleRef({ job, sampleId: `s-${i}`, generation: 1 }) }, { idempotencyKey: `commit:s-${i}`, retries: 5, timeoutMs: 3000 })
          .catch((e: Error) => bus.request(bus.subjects.queue.commit, { ref: sampleRef({ job, sampleId: `s-${i}`, generation: 1 }) }, { idempotencyKey: `commit:s-${i}`, retries: 5, timeoutMs: 3000 }).then((x) => ({ ...x, retriedAfter: e.message })));
        assert.ok(['added', 'duplicate'].includes(r.status), JSON.stringify(r));
      }
      assert.match(child.output(), /failpoint queue.before-persist: throw/);
      const st = await bus.request(bus.subjects.queue.status, {}, { retries: 3 });
      assert.equal(st.rebuilds, 1, 'rebuilt once from the log');
      assert.equal(st.samples, 4, 'four samples, none lost or doubled');
      const report = auditEvents(await readLedgerEvents(bus));
      assert.ok(report.ok, report.problems.join('\n'));
      assert.equal(report.committed, 4);
    } finally {
      await bus.close();
      await killChild(child);
    }
  });

  // The write-ahead rule under concurrency: no reply before its events are in the log. A
  // SIGKILL before the 6th append (its events never logged) or right after it (logged, not
  // answered), with 8 producers' batches in flight and the log's appends pipelined.
  for (const point of ['queue.before-persist', 'queue.after-persist']) {
    it(`SIGKILL at ${point} with commits in flight: every answered commit is in the log; recommitting after the restart commits each once`, async () => {
      const job = point.includes('before') ? 'qwalb' : 'qwala';
      const child = spawnTs('test/support/queue-child.ts', [nats.url, job, '1'], { ...process.env, DRAFTWIRE_FAILPOINTS: `${point}=kill@6` });
      const bus = await Bus.connect({ servers: nats.url, job, auth: AuthPolicy.disabled(), name: 'test' });
      let restarted: Child | null = null;
      try {
        await waitForLine(child, 'ready');
        const q = new QueueClient(bus);
        const refs = (p: number, k: number) => Array.from({ length: 4 }, (_, j) => sampleRef({ job, sampleId: `p${p}-${k}-${j}`, generation: 1 }));
        const answered = new Map<string, string>();
        const sent: string[] = [];
        let dead = false;
        void child.exited.then(() => { dead = true; });
        await Promise.all(Array.from({ length: 8 }, async (_, p) => {
          for (let k = 0; !dead && k < 50; k++) {
            const batch = refs(p, k);
            sent.push(...batch.map((r) => r.sampleId));
            const res = await q.commitMany(batch, { timeoutMs: 1500, retries: 0 }).catch(() => null);
            if (res) for (const [j, r] of res.entries()) if (!(r instanceof Error)) answered.set(batch[j]!.sampleId, r.status);
          }
        }));
        assert.equal(await child.exited, 128, 'the queue process was SIGKILLed by the failpoint');
        assert.match(child.output(), new RegExp(`failpoint ${point.replace('.', '\\.')}: kill`));
        assert.ok(answered.size >= 4, `some commits were answered before the kill (${answered.size})`);
        const logged = new Set((await readLedgerEvents(bus)).flatMap((e) => (e.type === 'put' ? [e.ref.sampleId] : [])));
        for (const [id, status] of answered) assert.ok(logged.has(id), `commit of ${id} was answered "${status}" but is not in the log`);
        // A new incarnation over the same log: a retried commit the log holds gets its first
        // answer again (the idempotency key's result is rebuilt from the log), the rest is added.
        restarted = spawnTs('test/support/queue-child.ts', [nats.url, job, '1']);
        await waitForLine(restarted, 'ready');
        const again = await q.commitMany(sent.map((id) => sampleRef({ job, sampleId: id, generation: 1 })), { timeoutMs: 5000, retries: 3 });
        for (const [i, r] of again.entries()) {
          assert.ok(!(r instanceof Error), String(r));
          assert.equal(r.status, 'added', sent[i]);
        }
        const report = auditEvents(await readLedgerEvents(bus));
        assert.ok(report.ok, report.problems.join('\n'));
        assert.equal(report.committed, sent.length, 'every sample committed once');
      } finally {
        await bus.close();
        await killChild(child, 'SIGKILL');
        if (restarted) await killChild(restarted);
      }
    });
  }
});
