// How fast a job recovers when the machine holding its roles dies. Three `draftwire node`
// processes on one nats-server, every one allowed every role; node a holds them all. Mid-job
// node a and everything under it get SIGKILL (its machine dies). Figures:
// - kill -> the next lease granted (the new queue's first lease message on a partition subject),
//   against the role lease's ttl (the wait a takeover cannot beat) and the steady gap between
//   lease messages before the kill, both from the same run;
// - kill -> the first step of the re-formed world (world rank 0's first metrics at a newer
//   epoch), against the rank-dead-after deadline (the orphaned rank is respawned once its
//   silence passes it). Two jobs: node a holds only the roles (the ranks train on; the
//   lease figure is the takeover), then node a holds the roles and rank 0 (the world re-forms).
//   node --import tsx bench/failover.bench.ts [--ttl 1500] [--dead-after 3000] [--json]
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { writeInitialWeights } from '../src/job/checkpoint.ts';
import { jobFile, saveJobSpec } from '../src/job/spec.ts';
import { ROLES, STORAGE, type RoleLeaseRecord, type StepMetrics } from '../src/wire/protocol.ts';
import { descendants, until } from '../test/support/chaos.ts';
import { testSpec } from '../test/support/jobs.ts';
import { startNats } from '../test/support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../test/support/procs.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { ttl: { type: 'string', default: '1500' }, 'dead-after': { type: 'string', default: '3000' }, json: { type: 'boolean', default: false } } });
const ttl = Number(values.ttl), deadAfter = Number(values['dead-after']);
const report = Reporter.forBench(import.meta.url);
const env = { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' };


const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

/**
 * One job of three nodes; `victim` (node a) holds every role and, when `withRank`, rank 0
 * (rank 1 on b; c hosts rank 0 otherwise, and nothing with `withRank`). Returns, from the
 * SIGKILL of node a's processes, when the next lease message and the first step of a newer
 * epoch were seen, with the steady lease gap and step time before it.
 */
async function scenario(name: string, withRank: boolean) {
  const nats = await startNats();
  const spec = { ...testSpec(name, { size: 'small', steps: 400, batch: 4, dp: 2, leaseMs: 8000 }), roleTtlMs: ttl, rankDeadAfterMs: deadAfter };
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
    start('a', withRank ? '0' : '');
    await until('node a to hold the roles', 60_000, async () => (await kv.get<RoleLeaseRecord>(STORAGE.roleKey('queue')))?.value.node === 'a', { everyMs: 5 });
    start('b', '1');
    start('c', withRank ? '' : '0');
    await until('20 steps', 300_000, () => steps.length >= 20, { everyMs: 5 });
    const before = steps.slice(-10);
    const last = leaseAt.slice(-20);
    const gaps = last.slice(1).map((t, i) => t - last[i]!);
    const epochBefore = before.at(-1)!.epoch;
    const a = nodes.get('a')!;
    const victims = [a.proc.pid!, ...descendants(a.proc.pid!).map((p) => p.pid)];
    const t0 = performance.now();
    for (const pid of victims) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    nodes.delete('a');
    const lease = await until('a lease after the kill', 120_000, () => leaseAt.find((t) => t > t0), { everyMs: 5 });
    const step = await until('a step after the kill', 300_000, () => steps.find((x) => x.at > t0 && (!withRank || x.epoch > epochBefore)), { everyMs: 5 });
    return { lease: lease - t0, step: step.at - t0, gap: median(gaps), stepMs: median(before.map((x) => x.stepMs)) };
  } finally {
    for (const c of nodes.values()) await killChild(c);
    await bus.close();
    await nats.stop();
    rmSync(dirname(spec.runDir), { recursive: true, force: true });
  }
}

const roles = await scenario('failover-roles', false);
const host = await scenario('failover-host', true);
const ttlFig = report.add({ name: 'role lease ttl (configured)', value: ttl, unit: 'ms' });
report.add({ name: 'host of the roles (no rank) SIGKILLed -> next lease granted', value: roles.lease, unit: 'ms', baseline: ttlFig });
report.add({ name: 'host of the roles (no rank) SIGKILLed -> next step', value: roles.step, unit: 'ms', baseline: ttlFig });
report.add({ name: 'lease message gap before the kill (median)', value: roles.gap, unit: 'ms' });
const stepFig = report.add({ name: 'step time before the kill (median, world rank 0)', value: host.stepMs, unit: 'ms' });
const deadFig = report.add({ name: 'rank dead after (configured)', value: deadAfter, unit: 'ms' });
report.add({ name: 'host of the roles and rank 0 SIGKILLed -> first step of the re-formed world', value: host.step, unit: 'ms', baseline: deadFig, stepMs: stepFig.value });
report.context({ size: 'small', dp: 2, batch: 4, ttlMs: ttl, rankDeadAfterMs: deadAfter });
report.log(`failover bench: 3 node agents on one nats-server, DP 2 (small, batch 4), role ttl ${ttl} ms, rank dead after ${deadAfter} ms`);
report.log(`host of the roles (no rank) SIGKILLed -> next lease granted          ${roles.lease.toFixed(0).padStart(6)} ms (ttl ${ttl} ms; lease gap before ${roles.gap.toFixed(1)} ms)`);
report.log(`host of the roles (no rank) SIGKILLed -> next step                   ${roles.step.toFixed(0).padStart(6)} ms`);
report.log(`host of the roles and rank 0 SIGKILLed -> first step, re-formed world ${host.step.toFixed(0).padStart(6)} ms (step before ${host.stepMs.toFixed(1)} ms; rank dead after ${deadAfter} ms)`);
report.end();
