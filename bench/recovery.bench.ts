// Recovery and resharding figures of a real `draftwire run` (embedded NATS, one rank process):
// - samples/s at DP 1, with a checkpoint every step (the exactly-once default) and every 10;
// - time to recover from a rank SIGKILL: kill -> the replacement's first committed step;
// - reshard stall: `draftwire scale` -> the first step committed under the new epoch, and the
//   steps lost (retrained) by it;
// - time to recover from a nats-server SIGKILL (restart on the same store + reconnect).
// DP 2 and 4, a DP 1 -> 2 reshard and a rank kill in a DP 2 world: bench/elastic.bench.ts.
//   node --import tsx bench/recovery.bench.ts [--size tiny|small] [--steps 40] [--batch 8] [--json]
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ChaosJob, ledgerOf, newWorkdir, sleep } from '../test/support/chaos.ts';

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

const rows: Record<string, number | string>[] = [];
try {
  for (const every of [1, 10]) {
    const j = job(`sps-${every}`, ['--checkpoint-every', String(every)]);
    await j.waitStep(every, 600_000);
    const from = j.checkpointStep(), tFrom = performance.now();
    while (j.checkpointStep() < steps && j.proc.exitCode === null) await sleep(5);
    const tTo = performance.now();
    const r = await j.finish(600_000);
    if (r.code !== 0) throw new Error(j.stderr.slice(-2000));
    const s = r.summary;
    rows.push({ what: `samples/s, DP 1, checkpoint every ${every} (steps ${from}..${steps}, wall)`, value: ((steps - from) * batch) / ((tTo - tFrom) / 1000), unit: 'samples/s (rollout, leases, step, checkpoint, acks)' });
    rows.push({ what: `samples/s, DP 1, checkpoint every ${every} (whole run incl. start-up)`, value: s.samplesPerSec, unit: 'samples/s' });
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
    rows.push({ what: 'rank SIGKILL -> next step committed (respawn, resume, re-lease)', value: t1 - t0, unit: 'ms' });
    rows.push({ what: 'samples re-leased after the rank kill (held or trained, not checkpointed)', value: regranted(j.runDir), unit: `samples (batch ${batch}; checkpoint every 1)` });
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
    rows.push({ what: 'reshard stall: scale CLI started -> first step at the new epoch (DP 1 -> 1)', value: t1 - t0, unit: `ms (of which the CLI process ${(tScale - t0).toFixed(0)} ms)` });
    rows.push({ what: 'reshard stall: epoch bumped -> first step at the new epoch', value: t1 - tScale, unit: 'ms' });
    rows.push({ what: 'samples re-leased by the reshard (released unused, none retrained)', value: regranted(j.runDir), unit: 'samples' });
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
    rows.push({ what: 'nats-server SIGKILL -> a step leased after it committed (restart + reconnect)', value: t1 - t0, unit: 'ms' });
  }

  if (values.json) console.log(JSON.stringify({ size: values.size, steps, batch, rows }));
  else {
    console.log(`recovery bench: size ${values.size}, ${steps} steps x ${batch} samples, 1 rank, 1 BLAS thread`);
    for (const r of rows) console.log(String(r.what).padEnd(72) + Number(r.value).toFixed(1).padStart(10) + ' ' + r.unit);
    console.log('DP 2 / DP 4, reshards that change the width, a rank kill in a DP 2 world: bench/elastic.bench.ts');
  }
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
