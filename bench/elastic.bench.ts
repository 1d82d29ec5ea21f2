// Elastic data parallelism of a real `draftwire run` (embedded NATS, rank processes, Gloo):
// - samples/s at DP 1, 2 and 4, steady state (acks in the ledger from 20% of the data to the
//   end) and step side (samples over the time world rank 0 spent in steps, all-reduce
//   included), next to the single-rank native step alone on the same batch shape, in this
//   process (the baseline). The wall figure includes the rollout, which runs the target model
//   on the same cores: on a machine with few cores it bounds the job (run.bench.ts measures
//   the rollout alone); DP k cannot beat k x the step alone, nor the cores it has;
// - reshard stall: `draftwire scale --dp 2` on a DP 1 job -> the first checkpoint of the new
//   world (new rank processes start, the group forms, the state is broadcast), and the samples
//   granted more than once because of it;
// - recovery from a SIGKILL of one rank of a DP 2 world -> the first checkpoint of the
//   re-formed world (revert, regroup, respawn, broadcast).
//   node --import tsx bench/elastic.bench.ts [--size tiny|small] [--steps 30] [--batch 8] [--json]
// --json: one JSON line per figure (bench/support/report.ts); the samples/s figures against the step alone.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SIZES, targetConfig } from '../cluster/presets.ts';
import { DraftModel, initDraftWeights, TargetModel } from '../src/native/addon.ts';
import { ChaosJob, ledgerOf, newWorkdir, sleep } from '../test/support/chaos.ts';
import { Reporter, type Measured } from './support/report.ts';

const { values } = parseArgs({ options: { size: { type: 'string', default: 'small' }, steps: { type: 'string', default: '30' }, batch: { type: 'string', default: '8' }, json: { type: 'boolean', default: false } } });
const steps = Number(values.steps), batch = Number(values.batch);
const preset = SIZES[values.size!];
if (!preset) throw new Error(`unknown --size ${values.size}`);
const workdir = newWorkdir();
const env = { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' };
const job = (name: string, extra: string[] = []) => new ChaosJob({ workdir, job: name, steps, batch, leaseMs: 5000, deadAfterMs: 3000, env, extra: ['--size', values.size!, ...extra] });

/** The committed world checkpoint: step and epoch (0, 0 when none). */
function committed(j: ChaosJob): { step: number; epoch: number } {
  try { const m = JSON.parse(readFileSync(join(j.runDir, 'ckpt', 'latest.json'), 'utf8')) as { step: number; epoch?: number }; return { step: m.step, epoch: m.epoch ?? 0 }; } catch { return { step: 0, epoch: 0 }; }
}
async function waitFor(j: ChaosJob, cond: (c: { step: number; epoch: number }) => boolean): Promise<number> {
  while (!cond(committed(j))) { if (j.proc.exitCode !== null) throw new Error(`job ended: ${j.stderr.slice(-2000)}`); await sleep(5); }
  return performance.now();
}
async function finish(j: ChaosJob) {
  const r = await j.finish(900_000);
  if (r.code !== 0 || !r.summary?.audit?.ok) throw new Error(`job ${j.o.job} failed (exit ${r.code}): ${j.stderr.slice(-2000)}`);
  return r.summary;
}
function regranted(runDir: string): number {
  const n = new Map<string, number>();
  for (const e of ledgerOf(runDir)) if (e.type === 'lease') for (const g of e.leases) n.set(g.sampleId, (n.get(g.sampleId) ?? 0) + 1);
  return [...n.values()].filter((c) => c > 1).length;
}
/** Acks per second from the ack that finished 20% of the data to the last one. */
function steadyRate(runDir: string): number {
  const at = ledgerOf(runDir).filter((e) => e.type === 'ack').map((e) => (e as { at: number }).at).sort((a, b) => a - b);
  const i0 = Math.floor(at.length * 0.2);
  return (at.length - 1 - i0) / ((at.at(-1)! - at[i0]!) / 1000);
}

/** The baseline: the single-rank step alone on one batch of the job's shape (random features). */
async function stepAlone(): Promise<number> {
  const target = TargetModel.create(targetConfig(preset!, 0), { threads: 1 });
  const frozen = { ...target.frozen(), d2t: Int32Array.from({ length: preset!.draft.draftVocab }, (_, i) => i) };
  target.close();
  const model = DraftModel.create(preset!.draft, initDraftWeights(preset!.draft, 1, frozen), { threads: 1 });
  const T = preset!.seqLen, H = preset!.draft.hidden;
  let s = 7;
  const rnd = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32 - 0.5; };
  const b = {
    ids: Int32Array.from({ length: batch * T }, () => Math.floor((rnd() + 0.5) * preset!.draft.vocab)),
    aux: Float32Array.from({ length: batch * T * 3 * H }, rnd), last: Float32Array.from({ length: batch * T * H }, rnd),
    mask: new Uint8Array(batch * T).fill(1), batch, seq: T,
  };
  const o = { lr: 3e-3, clip: 1, weightDecay: 0, returnGrads: false };
  await model.step(b, o);
  const n = 20, t0 = performance.now();
  for (let i = 0; i < n; i++) await model.step(b, o);
  const rate = (n * batch) / ((performance.now() - t0) / 1000);
  model.close();
  return rate;
}

const report = Reporter.forBench(import.meta.url);
const rows: { what: string; value: number; unit: string }[] = [];
/** The step alone: the baseline of every samples/s figure. */
let baseFig: Measured | null = null;
/** A row of the human table, and its figure (its unit: the row's, up to the first ' (', ' = ' or ';'). */
const row = (what: string, value: number, unit: string, extra: Record<string, number> = {}): Measured => {
  rows.push({ what, value, unit });
  const u = unit.split(/ \(| = |;/)[0]!;
  return report.add({ name: what, value, unit: u, baseline: u === 'samples/s' ? baseFig : null, ...extra });
};
try {
  const base = await stepAlone();
  baseFig = row('baseline: single-rank native step alone (this process)', base, 'samples/s');
  for (const dp of [1, 2, 4]) {
    const j = job(`dp${dp}`, ['--dp', String(dp)]);
    const s = await finish(j);
    const rate = steadyRate(j.runDir);
    row(`DP ${dp}: steady state (ledger acks, 20%..100% of the data)`, rate, `samples/s = ${(rate / base * 100).toFixed(0)}% of the step alone; ${s.steps} steps`, { dp, jobSteps: s.steps });
    const inSteps = s.samples / (s.steps * s.stepMsMean / 1000);
    row(`DP ${dp}: step side (samples / time in steps of world rank 0)`, inSteps, `samples/s = ${(inSteps / base * 100).toFixed(0)}% of the step alone`, { dp });
    row(`DP ${dp}: whole run incl. start-up and evaluation`, s.samplesPerSec, 'samples/s', { dp });
  }
  {
    const j = job('scale-up');
    await waitFor(j, (c) => c.step >= Math.floor(steps / 4));
    const t0 = performance.now();
    const r = spawnSync(process.execPath, ['bin/draftwire.js', 'scale', '--job', 'scale-up', '--workdir', workdir, '--dp', '2', '--json'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    const tScale = performance.now();
    const to = (JSON.parse(r.stdout) as { to: { epoch: number } }).to.epoch;
    const t1 = await waitFor(j, (c) => c.epoch >= to && c.step > 0);
    await finish(j);
    row('reshard stall DP 1 -> 2: scale CLI started -> first checkpoint of the new world', t1 - t0, `ms (the CLI process ${(tScale - t0).toFixed(0)} ms of it)`);
    row('reshard stall DP 1 -> 2: epoch bumped -> first checkpoint of the new world', t1 - tScale, 'ms (rank processes start, group forms, state broadcast)');
    row('samples granted more than once by the reshard (released unused)', regranted(j.runDir), 'samples (0 retrained: the world checkpoints before it re-forms)');
  }
  {
    const j = job('kill-dp2', ['--dp', '2']);
    await waitFor(j, (c) => c.step >= Math.floor(steps / 4));
    const pid = j.track().filter((p) => p.args.includes('rank-main.ts') && p.args.includes('--rank 1 ')).at(-1)!.pid;
    const e0 = committed(j).epoch;
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    const t1 = await waitFor(j, (c) => c.epoch > e0);
    await finish(j);
    row('DP 2, SIGKILL of one rank -> first checkpoint of the re-formed world', t1 - t0, 'ms (revert, regroup, respawn, broadcast)');
    row('samples granted more than once after the kill (held or trained, not checkpointed)', regranted(j.runDir), 'samples');
  }
  report.context({ size: values.size!, steps, batch, cores: cpus().length });
  report.log(`elastic bench: size ${values.size}, ${steps} steps x ${batch} samples per rank, 1 BLAS thread per rank, ${cpus().length} cores`);
  for (const r of rows) report.log(r.what.padEnd(84) + r.value.toFixed(1).padStart(10) + ' ' + r.unit);
  report.end();
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
