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
import { ROLES, STORAGE, type RoleLeaseRecord } from '../../src/wire/protocol.ts';
import { descendants, sleep } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../support/procs.ts';

async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, ms: number, out: () => string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; node output:\n${out().slice(-4000)}`);
    await sleep(100);
  }
}

describe('roles survive the loss of their machine (leader leases, terms)', function () {
  this.timeout(240_000);
  const nats = withNats();

  it('SIGKILL of the node holding every role and a rank: roles move, the rank is respawned elsewhere, the job ends with a clean audit', async () => {
    const spec = { ...testSpec('failover', { steps: 60, batch: 4, dp: 2, leaseMs: 8000 }), roleTtlMs: 1500, rankDeadAfterMs: 3000 };
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    const kv = await bus.kv(bus.subjects.kvBucket);
    const holders = async () => Object.fromEntries(await Promise.all(ROLES.map(async (r) => [r, (await kv.get<RoleLeaseRecord>(STORAGE.roleKey(r)))?.value ?? null] as const)));
    const nodes = new Map<string, Child>();
    const output = () => [...nodes].map(([id, c]) => `--- node ${id}\n${c.output().slice(-1500)}`).join('\n');
    const start = (id: string, ranks: string) => {
      const c = spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', ROLES.join(','), '--node-id', id, ...(ranks ? ['--ranks', ranks] : [])]);
      nodes.set(id, c);
      return c;
    };
    try {
      const done = new Promise<{ rank: number; samples: number }>((resolve) => { bus.subscribe<{ rank: number; samples: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
      start('a', '0');
      await waitFor('node a to hold every role', async () => Object.values(await holders()).every((h) => h?.node === 'a' && h.term === 1), 30_000, output);
      start('b', '1');
      start('c', '');
      const coord = new CoordinatorClient(bus);
      await waitFor('a few steps trained by both ranks', async () => {
        const st = await coord.status({ timeoutMs: 2000, retries: 0 });
        return st.members.filter((m) => m.member && m.step >= 3).length === 2;
      }, 90_000, output);

      // The machine of node a dies: the node and everything under it, at once.
      const a = nodes.get('a')!;
      const victims = [a.proc.pid!, ...descendants(a.proc.pid!).map((p) => p.pid)];
      const killedAt = Date.now();
      for (const pid of victims) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
      nodes.delete('a');

      const moved = await waitFor('every role to move off node a under term 2', async () => {
        const h = await holders();
        return Object.values(h).every((r) => r && r.node !== 'a' && r.node !== null && r.term === 2) ? h : null;
      }, 30_000, output);
      const movedMs = Date.now() - killedAt;
      assert.ok(movedMs < 15_000, `roles moved in ${movedMs} ms`);
      // The queue answers again, from its rebuilt ledger.
      const q = new QueueClient(bus);
      await waitFor('the queue to answer', () => q.status({ timeoutMs: 1000, retries: 0 }), 20_000, output);

      const fin = await waitFor('the job to finish', () => Promise.race([done, sleep(500).then(() => null)]), 180_000, output);
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
      assert.ok(Object.values(moved).every((r) => r!.term === 2));
      assert.ok(bus.terms.admit('queue', 2));
      assert.equal(bus.terms.admit('queue', 1), false, 'a client that saw term 2 refuses term 1');
    } finally {
      for (const c of nodes.values()) await killChild(c);
      await bus.close();
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });

  it('a holder frozen past its leases (SIGSTOP) loses its roles; woken (SIGCONT), it stops them and acts no more; the job ends clean', async () => {
    const spec = { ...testSpec('frozen', { steps: 50, batch: 4, dp: 2, leaseMs: 8000 }), roleTtlMs: 1500, rankDeadAfterMs: 3000 };
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    const kv = await bus.kv(bus.subjects.kvBucket);
    const holders = async () => Promise.all(ROLES.map(async (r) => (await kv.get<RoleLeaseRecord>(STORAGE.roleKey(r)))?.value ?? null));
    const nodes = new Map<string, Child>();
    const output = () => [...nodes].map(([id, c]) => `--- node ${id}\n${c.output().slice(-1500)}`).join('\n');
    const start = (id: string, ranks: string) => {
      nodes.set(id, spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', ROLES.join(','), '--node-id', id, ...(ranks ? ['--ranks', ranks] : [])]));
    };
    try {
      const done = new Promise<{ rank: number; samples: number }>((resolve) => { bus.subscribe<{ rank: number; samples: number }>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
      start('a', '');
      await waitFor('node a to hold every role', async () => (await holders()).every((h) => h?.node === 'a'), 30_000, output);
      start('b', '0');
      start('c', '1');
      const coord = new CoordinatorClient(bus);
      await waitFor('a few steps trained', async () => (await coord.status({ timeoutMs: 2000, retries: 0 })).members.filter((m) => m.member && m.step >= 2).length === 2, 90_000, output);
      const a = nodes.get('a')!;
      a.proc.kill('SIGSTOP');
      await waitFor('every role to move to b or c', async () => (await holders()).every((h) => h && (h.node === 'b' || h.node === 'c') && h.term === 2), 30_000, output);
      a.proc.kill('SIGCONT');
      await waitFor('node a to stop every role it held', async () => (a.output().match(/role stopped here/g) ?? []).length === ROLES.length, 20_000, output);
      const fin = await waitFor('the job to finish', () => Promise.race([done, sleep(500).then(() => null)]), 180_000, output);
      const events = await readLedgerEvents(bus);
      const audit = auditEvents(events);
      assert.deepEqual(audit.problems, [], 'audit clean');
      assert.equal(audit.consumed + audit.dead, jobRows(spec));
      assert.equal(fin.samples, audit.consumed, 'the model trained exactly the consumed samples');
      assert.ok((await holders()).every((h) => h!.node !== 'a'), 'node a holds nothing again');
      assert.doesNotMatch(a.output(), /role started role=\w+ term=[3-9]/, 'node a took no role back');
    } finally {
      for (const c of nodes.values()) { c.proc.kill('SIGCONT'); await killChild(c); }
      await bus.close();
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });
});
