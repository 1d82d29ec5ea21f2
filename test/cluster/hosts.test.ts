// A job across three hosts that share nothing but the network (issue 13, item 7): three
// network namespaces on one bridge (test/support/netns.ts), each with its own directories,
// its own NATS cluster member and its own `draftwire node` (TLS with the job's certificates,
// a secret, the data plane on its address, checkpoints in the replicated JetStream, every
// role allowed on every host). Host 1 starts first and holds the roles; each host runs one
// rank of a data-parallel world of three. Then, each in a fresh cluster: every process of the
// roles' host SIGKILLed (its NATS member, its node, its rank: the queue's host and the one that
// committed the checkpoints), one NATS server SIGKILLed (its node restarts it), a host cut off
// the network and healed, a host frozen (SIGSTOP) past its leases and woken. After each, the
// chaos suite's invariants: every committed sample consumed exactly once or dead-lettered, no
// overlapping leases, the model's sample count equal to the ledger's, no sample file or
// process left behind.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Bus } from '../../src/bus/bus.ts';
import { readRoleLeases } from '../../src/bus/role-lease.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readLedgerEvents } from '../../src/ledger/wal.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobRows, saveJobSpec, type JobSpec } from '../../src/job/spec.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { ROLES, type RankDone } from '../../src/wire/protocol.ts';
import { isAlive, sleep } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { Netns, requireNetns, type Host } from '../support/netns.ts';
import { runCli, type Child } from '../support/procs.ts';

const SECRET = 'cluster-hosts-test-secret-0123456789';
const auth = AuthPolicy.fromSecret(SECRET);
const env = { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_LOG_LEVEL: 'info' };

async function until<T>(what: string, ms: number, f: () => Promise<T | null | undefined | false>, out: () => string): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown = null;
  for (;;) {
    try { const v = await f(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${(last as Error).message})` : ''}\n${out().slice(-6000)}`);
    await sleep(200);
  }
}

/** One job on three fresh hosts. */
class HostsJob {
  readonly nodes = new Map<number, Child>();
  bus: Bus | null = null;
  readonly spec: JobSpec;
  private done: Promise<RankDone> | null = null;

  constructor(readonly net: Netns, name: string, readonly steps: number) {
    this.spec = { ...testSpec(name, { steps, batch: 4, dp: 3, leaseMs: 6000 }), checkpointStore: 'nats', roleTtlMs: 1500, rankDeadAfterMs: 10_000 };
  }

  output(): string {
    return [...this.nodes].map(([i, c]) => `--- host ${i}\n${c.output().slice(-2500)}`).join('\n');
  }

  /** Certificates, a job file and the initial weights in every host's own directory; then the nodes. */
  async start(): Promise<void> {
    const hosts = this.net.hosts;
    const certs = join(this.net.root, 'certs-made');
    const made = await runCli(['certs', '--out', certs, '--hosts', hosts.map((h) => h.addr).join(',')]);
    assert.equal(made.code, 0, made.stderr);
    const firstDir = join(hosts[0]!.dir, 'run');
    for (const h of hosts) {
      const run = join(h.dir, 'run');
      mkdirSync(join(h.dir, 'certs'), { recursive: true });
      for (const f of ['ca.pem', `${h.addr}.pem`, `${h.addr}.key`]) copyFileSync(join(certs, f), join(h.dir, 'certs', f));
      const spec = { ...this.spec, runDir: run, storeDir: join(h.dir, 'store'), initWeights: join(run, 'init.safetensors') };
      mkdirSync(run, { recursive: true });
      await saveJobSpec(spec);
      if (h === hosts[0]) await writeInitialWeights(spec);
      else copyFileSync(join(firstDir, 'init.safetensors'), spec.initWeights);
    }
    const routes = hosts.map((h) => `nats-route://${h.addr}:6222`).join(',');
    const start = (h: Host) => {
      const c = this.net.run(h, process.execPath, ['bin/draftwire.js', 'node', '--job-file', join(h.dir, 'run', 'job.json'), '--node-id', `h${h.index}`,
        '--nats-cluster', '--nats-listen', `${h.addr}:4222`, '--cluster-listen', `${h.addr}:6222`, '--routes', routes, '--nats-store', join(h.dir, 'nats'),
        '--tls-ca', join(h.dir, 'certs', 'ca.pem'), '--tls-cert', join(h.dir, 'certs', `${h.addr}.pem`), '--tls-key', join(h.dir, 'certs', `${h.addr}.key`),
        '--listen', `${h.addr}:7000`, '--store-dir', join(h.dir, 'store'), '--roles', ROLES.join(','), '--ranks', String(h.index - 1)], env);
      this.nodes.set(h.index, c);
    };
    for (const h of hosts) start(h);
    const tls = { ca: join(certs, 'ca.pem'), cert: join(certs, `${hosts[0]!.addr}.pem`), key: join(certs, `${hosts[0]!.addr}.key`) };
    this.bus = await until('a client of the cluster', 90_000, () => Bus.connect({ servers: hosts.map((h) => `tls://${h.addr}:4222`), job: this.spec.job, auth, tls, name: 'test' }), () => this.output());
    const bus = this.bus;
    this.done = new Promise((resolve) => { bus.subscribe<RankDone>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
    await until('every role held', 120_000, async () => (await this.holders()).every((r) => r.node !== null), () => this.output());
  }

  async holders() {
    const bus = this.bus!;
    return readRoleLeases(await bus.kv(bus.subjects.kvBucket));
  }

  /** The host whose node holds `role` now. */
  async hostOf(role: string): Promise<Host> {
    const node = (await this.holders()).find((r) => r.role === role)?.node;
    const h = this.net.hosts.find((x) => `h${x.index}` === node);
    if (!h) throw new Error(`no host holds ${role} (${node})`);
    return h;
  }

  /** Dumps the nodes' output to DRAFTWIRE_TEST_DUMP (debugging a scenario's timeline). */
  dump(): void {
    if (process.env.DRAFTWIRE_TEST_DUMP) writeFileSync(`${process.env.DRAFTWIRE_TEST_DUMP}.${this.spec.job}`, [...this.nodes].map(([i, c]) => `--- host ${i}\n${c.output()}`).join('\n'));
  }

  /** The world's progress: the step world rank 0 reported last (from the coordinator's status). */
  async waitStep(step: number): Promise<void> {
    const bus = this.bus!;
    await until(`step ${step} trained by all three ranks`, 180_000, async () => {
      const st = await bus.request<{ members: { member: boolean; step: number }[] }>(bus.subjects.coord.status, {}, { timeoutMs: 2000, retries: 0 });
      return st.members.filter((m) => m.member && m.step >= step).length === 3;
    }, () => this.output());
  }

  /** Waits for the end; checks the invariants of the chaos suite; returns the audit. */
  async finish(o: { allowDead?: boolean } = {}): Promise<ReturnType<typeof auditEvents>> {
    const bus = this.bus!;
    const done = await until('the job to finish (world rank 0 wrote its final checkpoint)', 240_000, () => Promise.race([this.done!, sleep(500).then(() => null)]), () => this.output());
    const events = await readLedgerEvents(bus);
    const audit = auditEvents(events);
    assert.deepEqual(audit.problems, [], 'audit clean: consumed once or dead, no overlapping leases, no accepted stale ack');
    assert.equal(audit.committed, jobRows(this.spec), 'every sample of the job committed');
    assert.equal(audit.consumed + audit.dead, audit.committed, 'every committed sample consumed or dead-lettered');
    if (!o.allowDead) assert.equal(audit.dead, 0, 'nothing dead-lettered');
    assert.equal(events.filter((e) => e.type === 'ack').length, audit.consumed, 'one accepted ack per consumed sample');
    assert.equal(done.samples, audit.consumed, 'the model trained exactly the consumed samples');
    // Nothing left behind: every host's store frees what it wrote once consumed or dead.
    await until('every host\'s store empty of samples', 30_000, async () => this.net.hosts.every((h) => {
      let files: string[] = [];
      try { files = readdirSync(join(h.dir, 'store')); } catch { /* a dead host's store stays as it was */ }
      return files.filter((f) => f.endsWith('.safetensors')).length === 0 || !this.nodes.has(h.index);
    }), () => this.output());
    return audit;
  }

  async stop(): Promise<void> {
    await this.bus?.close().catch(() => {});
    const pids = this.net.hosts.flatMap((h) => this.net.pidsOf(h));
    for (const h of this.net.hosts) this.net.signalHost(h, 'SIGCONT');
    for (const c of this.nodes.values()) c.proc.kill('SIGTERM');
    await Promise.race([Promise.all([...this.nodes.values()].map((c) => c.exited)), sleep(15_000)]);
    await this.net.destroy();
    for (const pid of pids) assert.ok(!isAlive(pid), `process ${pid} outlived its host`);
  }
}

describe('a job across three hosts that share nothing but the network (network namespaces)', function () {
  this.timeout(400_000);
  before(function () {
    if (process.env.DRAFTWIRE_SKIP_NETNS === '1') this.skip();
    requireNetns();
  });

  const scenario = (name: string, steps: number, fault: (job: HostsJob) => Promise<void>, o: { allowDead?: boolean } = {}) => async () => {
    const job = new HostsJob(Netns.create(3), name, steps);
    try {
      await job.start();
      await fault(job);
      await job.finish(o);
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
    }, () => job.output());
    await until('the dead host\'s rank respawned on another host', 60_000, async () => /rank orphaned \(its node is gone\): respawned on another node/.test(job.output()), () => job.output());
  }, { allowDead: true }));

  it('one NATS server SIGKILLed: its node restarts it on its store; the job goes on', scenario('killnats', 60, async (job) => {
    await job.waitStep(3);
    const h2 = job.net.hosts[1]!;
    const nats = job.net.pidsOf(h2).filter((pid) => { try { return /nats-server/.test(readFileText(`/proc/${pid}/cmdline`)) && !/\/bin\/sh/.test(readFileText(`/proc/${pid}/cmdline`)); } catch { return false; } });
    assert.equal(nats.length, 1, 'one nats-server on host 2');
    process.kill(nats[0]!, 'SIGKILL');
    await until('host 2\'s node restarting its member', 30_000, async () => /restart/i.test(job.nodes.get(2)!.output()), () => job.output());
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
});

const readFileText = (p: string): string => readFileSync(p, 'utf8').replace(/\0/g, ' ');
