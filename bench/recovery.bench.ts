// Recovery and resharding figures of a real `draftwire run` (embedded NATS, one rank process):
// - samples/s at DP 1, with a checkpoint every step (the exactly-once default) and every 10;
// - time to recover from a rank SIGKILL: kill -> the replacement's first committed step;
// - reshard stall: `draftwire scale` -> the first step committed under the new epoch, and the
//   steps lost (retrained) by it;
// - time to recover from a nats-server SIGKILL (restart on the same store + reconnect).
// DP 2 and 4, a DP 1 -> 2 reshard and a rank kill in a DP 2 world: bench/elastic.bench.ts.
//   node --import tsx bench/recovery.bench.ts [--size tiny|small] [--steps 40] [--batch 8] [--json]
// --json: one JSON line per figure (bench/support/report.ts); the samples/s with a checkpoint every
// step against the same with one every 10.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ChaosJob, ledgerOf, newWorkdir, sleep } from '../test/support/chaos.ts';
import { Reporter, type Measured } from './support/report.ts';

/** Samples granted more than once in the job's ledger: an upper bound on the work a fault cost (held or trained). */
function regranted(runDir: string): number {
  const n = new Map<string, number>();
  for (const e of ledgerOf(runDir)) if (e.type === 'lease') for (const g of e.leases) n.set(g.sampleId, (n.get(g.sampleId) ?? 0) + 1);
  return [...n.values()].filter((c) => c > 1).length;
}

const { values } = parseArgs({ options: { size: { type: 'string', default: 'small' }, steps: { type: 'string', default: '40' }, batch: { type: 'string', default: '8' }, json: { type: 'boolean', default: false } } });
const steps = Number(values.steps), batch = Number(values.batch);
const workdir = newWorkdir();
const env = { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' };
const job = (name: string, extra: string[] = []) => new ChaosJob({ workdir, job: name, steps, batch, leaseMs: 5000, env, extra: ['--size', values.size!, ...extra] });

async function waitAbove(j: ChaosJob, step: number): Promise<number> {
  while (j.checkpointStep() <= step) { if (j.proc.exitCode !== null) throw new Error(`job ended: ${j.stderr.slice(-2000)}`); await sleep(5); }
  return performance.now();
}

const report = Reporter.forBench(import.meta.url);
const rows: Record<string, number | string>[] = [];
/** A row of the human table and its figure: named `name` (default the row's text), its unit the row's up to ' ('. */
const row = (what: string, value: number, unit: string, o: { name?: string; baseline?: Measured | null; [k: string]: unknown } = {}): Measured => {
  rows.push({ what, value, unit });
  const { name = what, ...rest } = o;
  return report.add({ name, value, unit: unit.split(' (')[0]!, ...rest });
};
try {
  const rates: { every: number; from: number; wall: number; whole: number }[] = [];
  for (const every of [1, 10]) {
    const j = job(`sps-${every}`, ['--checkpoint-every', String(every)]);
    await j.waitStep(every, 600_000);
    const from = j.checkpointStep(), tFrom = performance.now();
    while (j.checkpointStep() < steps && j.proc.exitCode === null) await sleep(5);
    const tTo = performance.now();
    const r = await j.finish(600_000);
    if (r.code !== 0) throw new Error(j.stderr.slice(-2000));
    const s = r.summary;
    rates.push({ every, from, wall: ((steps - from) * batch) / ((tTo - tFrom) / 1000), whole: s.samplesPerSec });
  }
  // In the rows' order (every 1, then 10); every step's figures against every 10's.
  const wall10 = { name: 'samples/s, DP 1, checkpoint every 10 (wall, after its first checkpoint)', value: rates[1]!.wall, unit: 'samples/s' };
  const whole10 = { name: 'samples/s, DP 1, checkpoint every 10 (whole run incl. start-up)', value: rates[1]!.whole, unit: 'samples/s' };
  for (const { every, from, wall, whole } of rates) {
    row(`samples/s, DP 1, checkpoint every ${every} (steps ${from}..${steps}, wall)`, wall, 'samples/s (rollout, leases, step, checkpoint, acks)',
      { name: `samples/s, DP 1, checkpoint every ${every} (wall, after its first checkpoint)`, baseline: every === 10 ? null : wall10, checkpointEvery: every, fromStep: from });
    row(`samples/s, DP 1, checkpoint every ${every} (whole run incl. start-up)`, whole, 'samples/s', { baseline: every === 10 ? null : whole10, checkpointEvery: every });
  }

  {
    const j = job('kill-rank');
    const at = Math.floor(steps / 3);
    await j.waitStep(at);
    const pid = await j.waitRank();
    const before = j.checkpointStep();
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    const t1 = await waitAbove(j, before);
    const r = await j.finish(600_000);
    if (r.code !== 0) throw new Error(j.stderr.slice(-2000));
    row('rank SIGKILL -> next step committed (respawn, resume, re-lease)', t1 - t0, 'ms');
    row('samples re-leased after the rank kill (held or trained, not checkpointed)', regranted(j.runDir), `samples (batch ${batch}; checkpoint every 1)`);
  }

  {
    const j = job('reshard');
    const at = Math.floor(steps / 3);
    await j.waitStep(at);
    const before = j.checkpointStep();
    const t0 = performance.now();
    const r0 = spawnSync(process.execPath, ['bin/draftwire.js', 'scale', '--job', 'reshard', '--workdir', workdir, '--dp', '1', '--json'], { encoding: 'utf8' });
    if (r0.status !== 0) throw new Error(r0.stderr);
    const tScale = performance.now();
    const after = j.checkpointStep();
    const t1 = await waitAbove(j, Math.max(before, after));
    const r = await j.finish(600_000);
    if (r.code !== 0) throw new Error(j.stderr.slice(-2000));
    row('reshard stall: scale CLI started -> first step at the new epoch (DP 1 -> 1)', t1 - t0, `ms (of which the CLI process ${(tScale - t0).toFixed(0)} ms)`);
    row('reshard stall: epoch bumped -> first step at the new epoch', t1 - tScale, 'ms');
    row('samples re-leased by the reshard (released unused, none retrained)', regranted(j.runDir), 'samples');
  }

  {
    const j = job('kill-nats');
    const at = Math.floor(steps / 3);
    await j.waitStep(at);
    const before = j.checkpointStep();
    const pid = j.natsPid()!;
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    // before + 1 may already be on disk (a checkpoint needs no NATS): wait for a step whose
    // leases were granted after the kill.
    const t1 = await waitAbove(j, before + 1);
    const r = await j.finish(600_000);
    if (r.code !== 0) throw new Error(j.stderr.slice(-2000));
    row('nats-server SIGKILL -> a step leased after it committed (restart + reconnect)', t1 - t0, 'ms');
  }

  report.context({ size: values.size!, steps, batch });
  report.log(`recovery bench: size ${values.size}, ${steps} steps x ${batch} samples, 1 rank, 1 BLAS thread`);
  for (const r of rows) report.log(String(r.what).padEnd(72) + Number(r.value).toFixed(1).padStart(10) + ' ' + r.unit);
  report.log('DP 2 / DP 4, reshards that change the width, a rank kill in a DP 2 world: bench/elastic.bench.ts');
  report.end();
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
