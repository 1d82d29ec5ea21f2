// A job across three hosts that share nothing but the network (issue 13, item 7): three
// network namespaces on one bridge (test/support/netns.ts), each with its own directories,
// its own NATS cluster member and its own `draftwire node` (TLS with the job's certificates,
// a secret, the data plane on its address, checkpoints in the replicated JetStream, every
// role allowed on every host). Host 1 starts first and holds the roles; each host runs one
// rank of a data-parallel world of three. Then, each in a fresh cluster: every process of the
// roles' host SIGKILLed (its NATS member, its node, its rank: the queue's host and the one that
// committed the checkpoints), one NATS server SIGKILLed (its node restarts it), a host cut off
// the network and healed, a host frozen (SIGSTOP) past its leases and woken; and, while the
// world reshards from DP 3 to 2, the roles' host SIGKILLed, a host cut off, the coordinator's
// host frozen, and the coordinator's NATS server SIGKILLed. After each, the
// chaos suite's invariants: every committed sample consumed exactly once or dead-lettered, no
// overlapping leases, the model's sample count equal to the ledger's, no sample file or
// process left behind.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CoordinatorClient } from '../../src/bus/clients.ts';
import type { ScaleReply } from '../../src/wire/protocol.ts';
import { sleep, until } from '../support/chaos.ts';
import { HostsJob } from '../support/hosts-job.ts';
import { Netns, requireNetns, type Host } from '../support/netns.ts';

describe('a job across three hosts that share nothing but the network (network namespaces)', function () {
  this.timeout(400_000);
  before(function () {
    if (process.env.DRAFTWIRE_SKIP_NETNS === '1') this.skip();
    requireNetns();
  });

  const scenario = (name: string, steps: number, fault: (job: HostsJob) => Promise<void>, o: { allowDead?: boolean; then?: (job: HostsJob) => void } = {}) => async () => {
    const job = new HostsJob(Netns.create(3), name, steps);
    try {
      await job.start();
      await fault(job);
      await job.finish(o);
      o.then?.(job);
    } finally { job.dump(); await job.stop(); }
  };

  it('trains across the three hosts to the end: TLS, a secret, features over HTTP, checkpoints in JetStream, clean audit', scenario('hosts', 30, async (job) => {
    await job.waitStep(2);
    const rank0 = job.nodes.get(1)!.output();
    assert.match(rank0, /control plane ready .*clusterSize=3 replicas=3 tls=true/);
  }));

  it('every process of the queue\'s host SIGKILLed (its NATS member, node and rank): its roles move, its rank is respawned elsewhere', scenario('killhost', 60, async (job) => {
    await job.waitStep(4);
    const victim = await job.hostOf('queue');
    const itsRoles = (await job.holders()).filter((r) => r.node === `h${victim.index}`);
    const killed = job.net.signalHost(victim, 'SIGKILL');
    assert.ok(killed.length >= 3, `node, NATS member and rank of host ${victim.index}: ${killed.length} processes`);
    job.nodes.delete(victim.index);
    await until('the queue host\'s roles moved to the other hosts under a newer term', 60_000, async () => {
      const now = await job.holders();
      return itsRoles.every((r) => { const n = now.find((x) => x.role === r.role)!; return n.node !== null && n.node !== `h${victim.index}` && n.term! > r.term!; });
    }, { out: () => job.output() });
    await until('the dead host\'s rank respawned on another host', 60_000, async () => /rank orphaned \(its node is gone\): respawned on another node/.test(job.output()), { out: () => job.output() });
  }, { allowDead: true }));

  it('one NATS server SIGKILLed: its node restarts it on its store; the job goes on', scenario('killnats', 60, async (job) => {
    await job.waitStep(3);
    const h2 = job.net.hosts[1]!;
    process.kill(natsServerOf(job, h2), 'SIGKILL');
    await until('host 2\'s node restarting its member', 30_000, async () => /restart/i.test(job.nodes.get(2)!.output()), { out: () => job.output() });
  }));

  it('a host cut off the network (link down) past its leases, then healed', scenario('linkdown', 60, async (job) => {
    await job.waitStep(3);
    const h3 = job.net.hosts[2]!;
    job.net.setLink(h3, false);
    await sleep(9000);
    job.net.setLink(h3, true);
  }, { allowDead: true }));

  it('a host frozen (SIGSTOP of all its processes) past its leases, then woken', scenario('frozen', 60, async (job) => {
    await job.waitStep(3);
    const h2 = job.net.hosts[1]!;
    job.net.signalHost(h2, 'SIGSTOP');
    await sleep(9000);
    job.net.signalHost(h2, 'SIGCONT');
  }, { allowDead: true }));

  // The same faults while the world changes width: `scale` to DP 2 sent as the fault strikes
  // (a reshard retires rank 2, and the world re-forms under 2 partitions around the fault).
  const reshard = (job: HostsJob): Promise<ScaleReply | Error> =>
    new CoordinatorClient(job.bus!).scale(2, { timeoutMs: 10_000, retries: 6 }).catch((e: Error) => e);
  const reshardedTo2 = async (job: HostsJob, asked: Promise<ScaleReply | Error>) => {
    const r = await asked;
    // A reply lost with the coordinator's host is fine if a later epoch partitions by 2.
    await until('an epoch of 2 partitions', 60_000, async () => {
      const st = await new CoordinatorClient(job.bus!).status({ timeoutMs: 2000, retries: 0 }).catch(() => null);
      return (st?.epoch?.partitions ?? 0) === 2;
    }, { out: () => `${job.output()}\nthe scale request: ${r instanceof Error ? `${r.name} ${(r as { code?: string }).code ?? ''}: ${r.message}` : JSON.stringify(r)}` });
  };

  // The host holding the queue (and the rollout's store) dies as the world shrinks: its roles
  // move, JetStream loses a member, the world re-forms at DP 2 on the two survivors.
  it('every process of the roles\' host SIGKILLed while the world reshards from DP 3 to 2', scenario('killhostscale', 60, async (job) => {
    await job.waitStep(4);
    const victim = await job.hostOf('queue');
    const asked = reshard(job);
    await sleep(300);
    const killed = job.net.signalHost(victim, 'SIGKILL');
    assert.ok(killed.length >= 3, `node, NATS member and rank of host ${victim.index}: ${killed.length} processes`);
    job.nodes.delete(victim.index);
    await reshardedTo2(job, asked);
  }, {
    allowDead: true,
    // The survivors waited the failover out: no rank process died (each death spends a restart).
    then: (job) => { for (const [i, c] of job.nodes) assert.doesNotMatch(c.output(), /rank died/, `no rank died on host ${i}`); },
  }));

  it('a host cut off the network while the world reshards from DP 3 to 2, then healed', scenario('linkdownscale', 60, async (job) => {
    await job.waitStep(3);
    const h2 = job.net.hosts[1]!;
    const asked = reshard(job);
    job.net.setLink(h2, false);
    await sleep(9000);
    job.net.setLink(h2, true);
    await reshardedTo2(job, asked);
  }, { allowDead: true }));

  it('the coordinator\'s host frozen (SIGSTOP) while the world reshards from DP 3 to 2, then woken', scenario('frozenscale', 60, async (job) => {
    await job.waitStep(3);
    const victim = await job.hostOf('coordinator');
    const asked = reshard(job);
    await sleep(200);
    job.net.signalHost(victim, 'SIGSTOP');
    await sleep(9000);
    job.net.signalHost(victim, 'SIGCONT');
    await reshardedTo2(job, asked);
  }, { allowDead: true }));

  it('the coordinator\'s NATS server SIGKILLed while the world reshards from DP 3 to 2: its node restarts it', scenario('killnatsscale', 60, async (job) => {
    await job.waitStep(3);
    const victim = await job.hostOf('coordinator');
    const asked = reshard(job);
    await sleep(200);
    process.kill(natsServerOf(job, victim), 'SIGKILL');
    await until('the node restarting its NATS member', 30_000, async () => /restart/i.test(job.nodes.get(victim.index)!.output()), { out: () => job.output() });
    await reshardedTo2(job, asked);
  }, { allowDead: true }));
});

const readFileText = (p: string): string => readFileSync(p, 'utf8').replace(/\0/g, ' ');
/** The pid of the one nats-server running on host `h`. */
function natsServerOf(job: HostsJob, h: Host): number {
  const nats = job.net.pidsOf(h).filter((pid) => { try { return /nats-server/.test(readFileText(`/proc/${pid}/cmdline`)) && !/\/bin\/sh/.test(readFileText(`/proc/${pid}/cmdline`)); } catch { return false; } });
  assert.equal(nats.length, 1, `one nats-server on host ${h.index}`);
  return nats[0]!;
}
