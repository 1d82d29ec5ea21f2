// One job on fresh network-namespace hosts (test/support/netns.ts), as test/cluster/ and
// bench/cluster.bench.ts run it: each host with its own directories, certificates, job file,
// NATS cluster member and `draftwire node` (TLS, a secret, the data plane on its address,
// checkpoints in the replicated JetStream, every role allowed on every host, one rank each).
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Bus } from '../../src/bus/bus.ts';
import { readRoleLeases } from '../../src/bus/role-lease.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readLedgerEvents, readWal } from '../../src/ledger/wal.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobRows, saveJobSpec, type JobSpec } from '../../src/job/spec.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { ROLES, type RankDone, type StepMetrics } from '../../src/wire/protocol.ts';
import { isAlive, sleep, until } from './chaos.ts';
import { testSpec } from './jobs.ts';
import type { Netns, Host } from './netns.ts';
import { runCli, type Child } from './procs.ts';

const SECRET = 'cluster-hosts-test-secret-0123456789';
const auth = AuthPolicy.fromSecret(SECRET);
const env = { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_LOG_LEVEL: 'info' };


/** One job on three fresh hosts. */
export class HostsJob {
  readonly nodes = new Map<number, Child>();
  bus: Bus | null = null;
  readonly spec: JobSpec;
  private done: Promise<RankDone> | null = null;
  /** World rank 0's step reports, as they arrive (time in ms, performance.now()). */
  readonly metrics: { at: number; m: StepMetrics }[] = [];

  constructor(readonly net: Netns, name: string, readonly steps: number, o: { size?: 'tiny' | 'small'; batch?: number; checkpointEvery?: number } = {}) {
    this.spec = { ...testSpec(name, { steps, batch: o.batch ?? 4, dp: net.hosts.length, leaseMs: 6000, size: o.size ?? 'tiny', checkpointEvery: o.checkpointEvery ?? 1 }), checkpointStore: 'nats', roleTtlMs: 1500, rankDeadAfterMs: 10_000 };
  }

  output(): string {
    const nodes = [...this.nodes].map(([i, c]) => `--- host ${i}\n${c.output().slice(-2500)}`);
    return [...nodes, ...this.rankLogs().map(({ title, text }) => `${title} (its last lines)\n${text.slice(-1200)}`)].join('\n');
  }

  /** Every host's rank logs. */
  private rankLogs(): { title: string; text: string }[] {
    return this.net.hosts.flatMap((h) => {
      const run = join(h.dir, 'run');
      let logs: string[] = [];
      try { logs = readdirSync(run).filter((f) => /^rank-\d+\.log$/.test(f)); } catch { /* no run directory */ }
      return logs.map((f) => ({ title: `--- host ${h.index} ${f}`, text: readFileSync(join(run, f), 'utf8') }));
    });
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
    this.bus = await until('a client of the cluster', 90_000, () => Bus.connect({ servers: hosts.map((h) => `tls://${h.addr}:4222`), job: this.spec.job, auth, tls, name: 'test' }), { out: () => this.output() });
    const bus = this.bus;
    this.done = new Promise((resolve) => { bus.subscribe<RankDone>(bus.subjects.rankDone, (m) => resolve(m), { dedupe: false }); });
    bus.subscribe<StepMetrics>(bus.subjects.metrics, (m) => { this.metrics.push({ at: performance.now(), m }); }, { dedupe: false });
    await until('every role held', 120_000, async () => (await this.holders()).every((r) => r.node !== null), { out: () => this.output() });
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

  /** Dumps the nodes' output and every host's rank logs to DRAFTWIRE_TEST_DUMP (debugging a scenario's timeline). */
  dump(): void {
    if (!process.env.DRAFTWIRE_TEST_DUMP) return;
    const nodes = [...this.nodes].map(([i, c]) => `--- host ${i}\n${c.output()}`);
    const ranks = this.rankLogs().map(({ title, text }) => `${title}\n${text}`);
    const steps = this.metrics.map(({ m }) => `${new Date(m.at).toISOString()} step=${m.step} epoch=${m.epoch} dp=${m.dp} samples=${m.samples} stepMs=${m.stepMs} waitMs=${m.waitMs} fetchMs=${m.fetchMs ?? '-'}`);
    writeFileSync(`${process.env.DRAFTWIRE_TEST_DUMP}.${this.spec.job}`, [...nodes, ...ranks, '--- world rank 0\'s step reports', ...steps].join('\n'));
  }

  /** The world's progress: the step world rank 0 reported last (from the coordinator's status). */
  async waitStep(step: number): Promise<void> {
    const bus = this.bus!;
    await until(`step ${step} trained by every rank`, 180_000, async () => {
      const st = await bus.request<{ members: { member: boolean; step: number }[] }>(bus.subjects.coord.status, {}, { timeoutMs: 2000, retries: 0 });
      return st.members.filter((m) => m.member && m.step >= step).length === this.net.hosts.length;
    }, { out: () => this.output() });
  }

  /** Waits for the end; checks the invariants of the chaos suite; returns the audit. */
  async finish(o: { allowDead?: boolean } = {}): Promise<ReturnType<typeof auditEvents>> {
    const bus = this.bus!;
    const done = await until('the job to finish (world rank 0 wrote its final checkpoint)', 240_000, () => Promise.race([this.done!, sleep(500).then(() => null)]), { out: () => this.output() });
    // Right after a host's SIGKILL the JetStream meta leader may still be re-electing: the
    // Bus's reader waits that out itself (Bus.readAll), as `draftwire audit` does.
    const events = await readLedgerEvents(bus);
    if (process.env.DRAFTWIRE_TEST_DUMP) {
      const wal = await readWal(bus);
      writeFileSync(`${process.env.DRAFTWIRE_TEST_DUMP}.${this.spec.job}.wal`, wal.records.map((r) => `${r.streamSeq} ${JSON.stringify(r.events)}`).join('\n'));
    }
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
    }), { out: () => this.output() });
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

