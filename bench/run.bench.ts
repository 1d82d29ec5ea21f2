// End-to-end samples/s of `draftwire run` (embedded NATS, rollout, queue, janitor, one rank
// process) against the rank's native step alone on batches of the same shape, measured in
// the same run: the gap is what the runtime costs (rollout, store, leases, acks).
//   node --import tsx bench/run.bench.ts [--size small] [--steps 60] [--batch 8] [--json]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stackBatch } from '../actors/rank.ts';
import { makeSample, syntheticPrompt } from '../actors/rollout.ts';
import { buildSpec, runJob } from '../cluster/commands/run.ts';
import { loadWeightsFile, writeInitialWeights } from '../src/checkpoint.ts';
import { saveJobSpec } from '../src/job.ts';
import { DraftModel, TargetModel } from '../src/native.ts';

const { values } = parseArgs({ options: { size: { type: 'string', default: 'small' }, steps: { type: 'string', default: '60' }, batch: { type: 'string', default: '8' }, json: { type: 'boolean', default: false } } });
process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';
const workdir = mkdtempSync(join(tmpdir(), 'draftwire-bench-run-'));
const opts = {
  workdir, size: values.size!, steps: Number(values.steps), batch: Number(values.batch), lr: 3e-3, clip: 1, weightDecay: 0, dp: 1, tp: 1, sp: 1,
  seed: 0, temperature: 0, evalEvery: 0, evalPrompts: 2, threads: 1, leaseMs: 30_000, storeHighMb: 256, progress: false, keepStore: false,
};
try {
  // Baseline: the step alone, in this process, on batches the target wrote.
  const spec = buildSpec({ ...opts, job: 'baseline' });
  const { mkdir } = await import('node:fs/promises');
  await mkdir(spec.runDir, { recursive: true });
  await saveJobSpec(spec);
  await writeInitialWeights(spec);
  const target = TargetModel.create(spec.target);
  const samples = [];
  for (let i = 0; i < spec.batch; i++) samples.push(await makeSample(target, spec, syntheticPrompt(spec.seed, i, spec.target.vocab, spec.promptLen), i));
  target.close();
  const batch = stackBatch(samples, spec.seqLen, spec.draft.hidden);
  const model = DraftModel.create(spec.draft, await loadWeightsFile(spec.initWeights, spec.draft), { threads: 1 });
  await model.step(batch, { lr: spec.lr, clip: spec.clip, weightDecay: 0, returnGrads: false });
  const t0 = performance.now();
  for (let i = 0; i < spec.steps; i++) await model.step(batch, { lr: spec.lr, clip: spec.clip, weightDecay: 0, returnGrads: false });
  const stepAlone = (spec.steps * spec.batch) / ((performance.now() - t0) / 1000);
  model.close();

  const s = await runJob({ ...opts, job: 'bench' });
  const trainSecs = s.stepMsMean !== null ? (s.stepMsMean * s.steps) / 1000 : NaN;
  const rows = [
    { what: 'rank step alone (baseline)', samplesPerSec: stepAlone },
    { what: 'draftwire run, whole job (incl. start-up, eval)', samplesPerSec: s.samplesPerSec },
    { what: 'draftwire run, steady state (samples / time in steps)', samplesPerSec: s.samples / trainSecs },
  ];
  if (values.json) console.log(JSON.stringify({ size: values.size, steps: s.steps, batch: opts.batch, seconds: s.seconds, rows }));
  else {
    console.log(`end-to-end run vs step alone: size ${values.size}, ${s.steps} steps x ${opts.batch} samples, 1 rank, 1 BLAS thread`);
    for (const r of rows) console.log(r.what.padEnd(56) + r.samplesPerSec.toFixed(1).padStart(10) + ' samples/s' + `  (${(100 * r.samplesPerSec / stepAlone).toFixed(0)}% of the step alone)`);
  }
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
