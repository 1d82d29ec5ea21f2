// End-to-end samples/s of `draftwire run` (embedded NATS, rollout, queue, janitor, one rank
// process) against the rank's native step alone on batches of the same shape, measured in
// the same run: the gap is what the runtime costs (rollout, store, leases, acks). Also the
// target alone, as the rollout drives it (one call per chunk of rows, aux/last from the
// decoding pass) and as it used to (generate, then forward, one sample at a time), and the
// rollout actor alone (target, store writes and queue commits; no rank consuming).
//   node --import tsx bench/run.bench.ts [--size small] [--steps 60] [--batch 8] [--checkpoint-every n] [--json]
// --json: one JSON line per figure (bench/support/report.ts), each against the rank's step alone.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stackBatch } from '../src/job/batch.ts';
import { ROLLOUT_CHUNK } from '../actors/rollout.ts';
import { syntheticSource } from '../actors/rollout-sources.ts';
import { targetVocab } from '../src/job/target.ts';
import { syntheticPrompt } from '../src/job/prompts.ts';
import { buildSpec, runJob } from '../cluster/commands/run.ts';
import { loadWeightsFile, writeInitialWeights } from '../src/job/checkpoint.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { QueueClient } from '../src/bus/clients.ts';
import { saveJobSpec } from '../src/job/spec.ts';
import { startNatsServer } from '../cluster/nats-launcher.ts';
import { NodeAgent, ROLES } from '../cluster/node.ts';
import { DraftModel, TargetModel, type TargetConfig } from '../src/native/addon.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: {
  size: { type: 'string', default: 'small' }, steps: { type: 'string', default: '60' }, batch: { type: 'string', default: '8' },
  'checkpoint-every': { type: 'string' }, json: { type: 'boolean', default: false },
} });
process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';
const report = Reporter.forBench(import.meta.url);
const workdir = mkdtempSync(join(tmpdir(), 'draftwire-bench-run-'));
const opts = {
  workdir, size: values.size!, steps: Number(values.steps), batch: Number(values.batch), lr: 3e-3, clip: 1, weightDecay: 0, dp: 1, tp: 1, sp: 1,
  seed: 0, temperature: 0, evalEvery: 0, evalPrompts: 2, threads: 1, leaseMs: 30_000, storeHighMb: 256, progress: false, keepStore: false,
  ...(values['checkpoint-every'] ? { checkpointEvery: Number(values['checkpoint-every']) } : {}),
};
try {
  // Baseline: the step alone, in this process, on batches the target wrote.
  const spec = buildSpec({ ...opts, job: 'baseline' });
  const { mkdir } = await import('node:fs/promises');
  await mkdir(spec.runDir, { recursive: true });
  await saveJobSpec(spec);
  await writeInitialWeights(spec);
  const target = TargetModel.create(spec.target as TargetConfig, { threads: 1 });
  const rowsOf = (r0: number, n: number) => Array.from({ length: n }, (_, i) => r0 + i);
  const promptOf = (r: number) => syntheticPrompt(spec.seed, r, targetVocab(spec.target), spec.promptLen);
  const source = syntheticSource(target, spec);
  const samples = await source.compute(rowsOf(0, spec.batch));
  // The target alone: 64 rows as the rollout produces them (chunks), and the old way.
  const targetRate = async (fn: (r0: number) => Promise<number>): Promise<number> => {
    await fn(0);
    const t = performance.now();
    let n = 0;
    while (n < 64) n += await fn(1000 + n);
    return n / ((performance.now() - t) / 1000);
  };
  const chunked = await targetRate(async (r0) => (await source.compute(rowsOf(r0, ROLLOUT_CHUNK))).length);
  const sourceF32 = syntheticSource(target, { ...spec, featureDtype: 'f32' });
  const chunkedF32 = await targetRate(async (r0) => (await sourceF32.compute(rowsOf(r0, ROLLOUT_CHUNK))).length);
  const sampleKiB = (x: Record<string, { data: ArrayBufferView }>) => Object.values(x).reduce((n, t) => n + t.data.byteLength, 0) / 1024;
  const kib = { bf16: sampleKiB(samples[0]!), f32: sampleKiB((await sourceF32.compute([0]))[0]!) };
  const twoPass = await targetRate(async (r0) => {
    const ids = await target.generate(promptOf(r0), spec.seqLen - spec.promptLen);
    await target.forward(ids, 1, spec.seqLen);
    return 1;
  });
  target.close();
  const batch = stackBatch(samples, spec.seqLen, spec.draft.hidden);
  const model = DraftModel.create(spec.draft, await loadWeightsFile(spec.initWeights, spec.draft), { threads: 1 });
  await model.step(batch, { lr: spec.lr, clip: spec.clip, weightDecay: 0, returnGrads: false });
  const t0 = performance.now();
  for (let i = 0; i < spec.steps; i++) await model.step(batch, { lr: spec.lr, clip: spec.clip, weightDecay: 0, returnGrads: false });
  const stepAlone = (spec.steps * spec.batch) / ((performance.now() - t0) / 1000);
  model.close();

  // The rollout alone: a node with every role but no rank; rows/s from the first commit to the last.
  const rolloutAlone = await (async () => {
    const rs = buildSpec({ ...opts, job: 'rollout-only' });
    await mkdir(rs.runDir, { recursive: true });
    await saveJobSpec(rs);
    const nats = await startNatsServer({});
    let node: NodeAgent | null = null;
    try {
      node = await NodeAgent.start({ spec: rs, nats: nats.url, nodeId: 'local', roles: ROLES, auth: AuthPolicy.disabled() });
      const rows = rs.steps * rs.batch;
      let depth = 0, first = 0;
      const end = Date.now() + 300_000;
      while (depth < rows && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 20));
        depth = (await new QueueClient(node.bus).status({ timeoutMs: 2000, retries: 2 })).depth;
        if (!first && depth > 0) first = performance.now();
      }
      return depth / ((performance.now() - first) / 1000);
    } finally {
      await node?.stop();
      await nats.stop();
    }
  })();

  const s = await runJob({ ...opts, job: 'bench' });
  const trainSecs = s.stepMsMean !== null ? (s.stepMsMean * s.steps) / 1000 : NaN;
  // name: the figure's (stable from run to run); what: the human row's.
  const rows = [
    { name: 'target: rollout chunks (fused aux/last), bf16 features', what: `target: rollout chunks of ${ROLLOUT_CHUNK} (fused aux/last), bf16 features (${kib.bf16.toFixed(1)} KiB/sample)`, samplesPerSec: chunked, extra: { chunk: ROLLOUT_CHUNK, sampleKiB: kib.bf16 } },
    { name: 'target: rollout chunks (fused aux/last), f32 features', what: `target: the same, f32 features (${kib.f32.toFixed(1)} KiB/sample)`, samplesPerSec: chunkedF32, extra: { chunk: ROLLOUT_CHUNK, sampleKiB: kib.f32 } },
    { what: 'target: generate + forward, one sample at a time', samplesPerSec: twoPass },
    { what: 'rollout actor alone (target + puts + commits)', samplesPerSec: rolloutAlone },
    { what: 'rank step alone (baseline)', samplesPerSec: stepAlone },
    { what: 'draftwire run, whole job (incl. start-up, eval)', samplesPerSec: s.samplesPerSec },
    { what: 'draftwire run, steady state (samples / time in steps)', samplesPerSec: s.samples / trainSecs },
  ];
  report.context({ size: values.size!, steps: s.steps, batch: opts.batch, checkpointEvery: opts.checkpointEvery ?? null });
  const baseline = { name: 'rank step alone (baseline)', value: stepAlone, unit: 'samples/s' };
  for (const r of rows) report.add({ name: r.name ?? r.what, value: r.samplesPerSec, unit: 'samples/s', baseline: r.what === baseline.name ? null : baseline, ...r.extra });
  report.log(`end-to-end run vs step alone: size ${values.size}, ${s.steps} steps x ${opts.batch} samples, 1 rank, 1 BLAS thread`);
  for (const r of rows) report.log(r.what.padEnd(56) + r.samplesPerSec.toFixed(1).padStart(10) + ' samples/s' + `  (${(100 * r.samplesPerSec / stepAlone).toFixed(0)}% of the step alone)`);
  report.end();
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
