// Every singleton role survives the loss of its machine. Three node agents (`draftwire
// node`, real processes) that may all hold every role share one nats-server; node a wins
// every role's lease and hosts rank 0, node b hosts rank 1, node c hosts nothing. The test
// SIGKILLs node a and every process under it (its rank) mid-job, as if its machine died:
// the roles move to b or c under term 2 within seconds, the queue rebuilds its ledger from
// the write-ahead log, the coordinator respawns the orphaned rank 0 on the node hosting
// fewest ranks, and the job trains to the end with a clean audit (every committed sample
// consumed exactly once, no overlapping leases) and the model's sample count equal to the
// ledger's. Then a resurrected old holder is refused: a message stamped with term 1 is
// dropped by the current processes.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { CoordinatorClient, QueueClient } from '../../src/bus/clients.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobFile, jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { ROLES } from '../../src/wire/protocol.ts';
import { readRoleLeases } from '../../src/bus/role-lease.ts';
import { descendants, sleep, until } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';

/** A job of `draftwire node` processes on the suite's nats-server, every node allowed every role. */
async function nodesJob(natsUrl: string, name: string, steps: number) {
  const spec = { ...testSpec(name, { steps, batch: 4, dp: 2, leaseMs: 8000 }), roleTtlMs: 1500, rankDeadAfterMs: 3000 };
  mkdirSync(spec.runDir, { recursive: true });
  await saveJobSpec(spec);
  await writeInitialWeights(spec);
  const bus = await Bus.connect({ servers: natsUrl, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
  const kv = await bus.kv(bus.subjects.kvBucket);
  const nodes = new Map<string, Child>();
  const output = () => [...nodes].map(([id, c]) => `--- node ${id}\n${c.output().slice(-1500)}`).join('\n');
  const done = new Promise<{ rank: number; samples: number }>((resolve) => { bus.subscribe<{ rank: number; samples: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
  return {
    spec, bus, nodes, done,
    holders: () => readRoleLeases(kv),
    /** Waits for `what`, printing the nodes' output if it does not come. */
    wait: <T>(what: string, fn: () => Promise<T | null | undefined | false>, ms: number) => until(what, ms, fn, { out: output }),
    start(id: string, ranks: string): Child {
      const c = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', natsUrl, '--roles', ROLES.join(','), '--node-id', id, ...(ranks ? ['--ranks', ranks] : [])]);
      nodes.set(id, c);
      return c;
    },
    async stepsTrained(n: number) {
      const coord = new CoordinatorClient(bus);
      await until(`${n} steps trained by both ranks`, 90_000, async () => (await coord.status({ timeoutMs: 2000, retries: 0 })).members.filter((m) => m.member && m.step >= n).length === 2, { out: output });
    },
    finished: () => until('the job to finish', 180_000, () => Promise.race([done, sleep(500).then(() => null)]), { out: output }),
    async close() {
      for (const c of nodes.values()) { c.proc.kill('SIGCONT'); await killChild(c); }
      await bus.close();
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    },
  };
}

describe('roles survive the loss of their machine (leader leases, terms)', function () {
  this.timeout(240_000);
  const nats = withNats();

  it('SIGKILL of the node holding every role and a rank: roles move, the rank is respawned elsewhere, the job ends with a clean audit', async () => {
    const job = await nodesJob(nats.url, 'failover', 60);
    const { spec, bus, nodes } = job;
    try {
      job.start('a', '0');
      await job.wait('node a to hold every role', async () => (await job.holders()).every((h) => h.node === 'a' && h.term === 1), 30_000);
      job.start('b', '1');
      job.start('c', '');
      await job.stepsTrained(3);

      // The machine of node a dies: the node and everything under it, at once.
      const a = nodes.get('a')!;
      const victims = [a.proc.pid!, ...descendants(a.proc.pid!).map((p) => p.pid)];
      const killedAt = Date.now();
      for (const pid of victims) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
      nodes.delete('a');

      const moved = await job.wait('every role to move off node a under term 2', async () => {
        const h = await job.holders();
        return h.every((r) => r.node !== 'a' && r.node !== null && r.term === 2) ? h : null;
      }, 30_000);
      const movedMs = Date.now() - killedAt;
      assert.ok(movedMs < 15_000, `roles moved in ${movedMs} ms`);
      // The queue answers again, from its rebuilt ledger.
      const q = new QueueClient(bus);
      await job.wait('the queue to answer', () => q.status({ timeoutMs: 1000, retries: 0 }), 20_000);

      const fin = await job.finished();
      assert.ok(fin.rank === 0, 'world rank 0 (rank 0, respawned) wrote the final checkpoint');
      const out = [...nodes.values()].map((c) => c.output()).join('\n');
      assert.match(out, /rank orphaned \(its node is gone\): respawned on another node rank=0 node=c/, 'rank 0 respawned on node c (it hosted none)');

      const events = await readLedgerEvents(bus);
      const audit = auditEvents(events);
      assert.deepEqual(audit.problems, [], 'audit clean');
      assert.equal(audit.committed, jobRows(spec));
      assert.equal(audit.consumed + audit.dead, audit.committed);
      const acks = events.filter((e) => e.type === 'ack').length;
      assert.equal(acks, audit.consumed, 'one accepted ack per consumed sample');
      assert.equal(fin.samples, audit.consumed, 'the model trained exactly the consumed samples');

      // A resurrected old holder (term 1) is refused: a lease message stamped with term 1
      // reaches no rank's book (they have seen term 2), and its replies are not taken.
      assert.ok(moved.every((r) => r.term === 2));
      assert.ok(bus.terms.admit('queue', 2));
      assert.equal(bus.terms.admit('queue', 1), false, 'a client that saw term 2 refuses term 1');
    } finally { await job.close(); }
  });

  it('a holder frozen past its leases (SIGSTOP) loses its roles; woken (SIGCONT), it stops them and acts no more; the job ends clean', async () => {
    const job = await nodesJob(nats.url, 'frozen', 50);
    const { spec, bus } = job;
    try {
      const a = job.start('a', '');
      await job.wait('node a to hold every role', async () => (await job.holders()).every((h) => h.node === 'a'), 30_000);
      job.start('b', '0');
      job.start('c', '1');
      await job.stepsTrained(2);
      a.proc.kill('SIGSTOP');
      await job.wait('every role to move to b or c', async () => (await job.holders()).every((h) => (h.node === 'b' || h.node === 'c') && h.term === 2), 30_000);
      a.proc.kill('SIGCONT');
      await job.wait('node a to stop every role it held', async () => (a.output().match(/role stopped here/g) ?? []).length === ROLES.length, 20_000);
      const fin = await job.finished();
      const events = await readLedgerEvents(bus);
      const audit = auditEvents(events);
      assert.deepEqual(audit.problems, [], 'audit clean');
      assert.equal(audit.consumed + audit.dead, jobRows(spec));
      assert.equal(fin.samples, audit.consumed, 'the model trained exactly the consumed samples');
      assert.ok((await job.holders()).every((h) => h.node !== 'a'), 'node a holds nothing again');
      assert.doesNotMatch(a.output(), /role started role=\w+ term=[3-9]/, 'node a took no role back');
    } finally { await job.close(); }
  });
});
