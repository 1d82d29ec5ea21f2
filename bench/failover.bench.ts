// How fast a job recovers when the machine holding its roles dies. Three `draftwire node`
// processes on one nats-server, every one allowed every role: node a holds them all and hosts
// rank 0, node b hosts rank 1, node c nothing. Mid-job node a and everything under it get
// SIGKILL (its machine dies). Figures:
// - kill -> the next lease granted (the new queue's first lease message on a partition subject),
//   against the role lease's ttl (the wait a takeover cannot beat) and the steady gap between
//   lease messages before the kill, both from the same run;
// - kill -> the first step of the re-formed world (world rank 0's first metrics at a newer
//   epoch), against the step time before the kill.
//   node --import tsx bench/failover.bench.ts [--ttl 1500] [--dead-after 3000] [--json]
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { writeInitialWeights } from '../src/job/checkpoint.ts';
import { jobFile, saveJobSpec } from '../src/job/spec.ts';
import { ROLES, STORAGE, type RoleLeaseRecord, type StepMetrics } from '../src/wire/protocol.ts';
import { descendants, sleep } from '../test/support/chaos.ts';
import { testSpec } from '../test/support/jobs.ts';
import { startNats } from '../test/support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../test/support/procs.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { ttl: { type: 'string', default: '1500' }, 'dead-after': { type: 'string', default: '3000' }, json: { type: 'boolean', default: false } } });
const ttl = Number(values.ttl), deadAfter = Number(values['dead-after']);
const report = Reporter.forBench(import.meta.url);
const env = { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' };

async function until<T>(what: string, fn: () => T | null | undefined | false | Promise<T | null | undefined | false>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await Promise.resolve(fn()).catch(() => null);
    if (v) return v;
    if (Date.now() > end) throw new Error(`failover bench: timed out waiting for ${what}`);
    await sleep(5);
  }
}

const nats = await startNats();
const spec = { ...testSpec('failover', { size: 'small', steps: 400, batch: 4, dp: 2, leaseMs: 8000 }), roleTtlMs: ttl, rankDeadAfterMs: deadAfter };
const nodes = new Map<string, Child>();
const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'bench' });
try {
  mkdirSync(spec.runDir, { recursive: true });
  await saveJobSpec(spec);
  await writeInitialWeights(spec);
  const kv = await bus.kv(bus.subjects.kvBucket);
  const leaseAt: number[] = [];
  const steps: { at: number; epoch: number; stepMs: number }[] = [];
  bus.subscribe(`dw.${spec.job}.part.>`, () => { leaseAt.push(performance.now()); }, { dedupe: false });
  bus.subscribe<StepMetrics>(bus.subjects.metrics, (m) => { steps.push({ at: performance.now(), epoch: m.epoch ?? 0, stepMs: m.stepMs }); }, { dedupe: false });
  const start = (id: string, ranks: string) => nodes.set(id, spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--nats', nats.url, '--roles', ROLES.join(','), '--node-id', id, ...(ranks ? ['--ranks', ranks] : [])], env));
  start('a', '0');
  await until('node a to hold the roles', async () => (await kv.get<RoleLeaseRecord>(STORAGE.roleKey('queue')))?.value.node === 'a', 60_000);
  start('b', '1');
  start('c', '');
  await until('20 steps', () => steps.length >= 20, 300_000);
  const before = steps.slice(-10);
  const gaps = leaseAt.slice(-20).slice(1).map((t, i) => t - leaseAt.slice(-20)[i]!);
  const epochBefore = before.at(-1)!.epoch;
  const a = nodes.get('a')!;
  const victims = [a.proc.pid!, ...descendants(a.proc.pid!).map((p) => p.pid)];
  const t0 = performance.now();
  for (const pid of victims) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  nodes.delete('a');
  const firstLease = await until('a lease after the kill', () => leaseAt.find((t) => t > t0), 120_000);
  const firstStep = await until('a step of the re-formed world', () => steps.find((s) => s.at > t0 && s.epoch > epochBefore), 300_000);
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const ttlFig = report.add({ name: 'role lease ttl (configured)', value: ttl, unit: 'ms' });
  report.add({ name: 'host of the queue SIGKILLed -> next lease granted', value: firstLease - t0, unit: 'ms', baseline: ttlFig });
  report.add({ name: 'lease message gap before the kill (median)', value: median(gaps), unit: 'ms' });
  const stepFig = report.add({ name: 'step time before the kill (median, world rank 0)', value: median(before.map((s) => s.stepMs)), unit: 'ms' });
  report.add({ name: 'host SIGKILLed -> first step of the re-formed world', value: firstStep.at - t0, unit: 'ms', baseline: stepFig, rankDeadAfterMs: deadAfter });
  report.context({ size: 'small', dp: 2, batch: 4, ttlMs: ttl, rankDeadAfterMs: deadAfter });
  report.log(`failover bench: 3 node agents on one nats-server, DP 2, role ttl ${ttl} ms, rank dead after ${deadAfter} ms`);
  report.log(`host of the queue SIGKILLed -> next lease granted      ${(firstLease - t0).toFixed(0)} ms (ttl ${ttl} ms; lease gap before ${median(gaps).toFixed(1)} ms)`);
  report.log(`host SIGKILLed -> first step of the re-formed world    ${(firstStep.at - t0).toFixed(0)} ms (step before ${median(before.map((s) => s.stepMs)).toFixed(1)} ms)`);
  report.end();
} finally {
  for (const c of nodes.values()) await killChild(c);
  await bus.close();
  await nats.stop();
  rmSync(dirname(spec.runDir), { recursive: true, force: true });
}
