// An external job (`run --rollout external`) fed by in-process producers through the library
// (store put + queue commit, P concurrent producers), against the rank's step alone on the same
// samples and the producers' own rate into a queue with no consumer, all in one run: the gap
// is what the runtime costs when the hidden states come from elsewhere (no target here).
//   node --import tsx bench/external.bench.ts [--size small] [--samples 480] [--batch 8] [--producers 4] [--checkpoint-every 1] [--json]
// --json: one JSON line per figure (bench/support/report.ts), each against the rank's step alone.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stackBatch } from '../src/job/batch.ts';
import { syntheticSource, type Sample } from '../actors/rollout-sources.ts';
import { buildSpec, runJob } from '../cluster/commands/run.ts';
import { loadWeightsFile, writeInitialWeights } from '../src/job/checkpoint.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { QueueClient } from '../src/bus/clients.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import { saveJobSpec, type JobSpec } from '../src/job/spec.ts';
import { startNatsServer } from '../cluster/nats-launcher.ts';
import { NodeAgent } from '../cluster/node.ts';
import { DraftModel, TargetModel, type TargetConfig } from '../src/native/addon.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: {
  size: { type: 'string', default: 'small' }, samples: { type: 'string', default: '480' }, batch: { type: 'string', default: '8' },
  producers: { type: 'string', default: '4' }, json: { type: 'boolean', default: false }, 'checkpoint-every': { type: 'string', default: '1' },
} });
process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';
// The bench measures the runtime without auth (its MAC costs are bench/bus.bench.ts's): the job and the producers agree on none.
delete process.env.DRAFTWIRE_SECRET;
delete process.env.DRAFTWIRE_SECRET_FILE;
const N = Number(values.samples), P = Number(values.producers);
const report = Reporter.forBench(import.meta.url);
const workdir = mkdtempSync(join(tmpdir(), 'draftwire-bench-external-'));
const opts = {
  workdir, size: values.size!, batch: Number(values.batch), lr: 3e-3, clip: 1, weightDecay: 0, dp: 1, tp: 1, sp: 1,
  seed: 0, temperature: 0, evalEvery: 0, evalPrompts: 2, threads: 1, leaseMs: 30_000, storeHighMb: 512, progress: false, keepStore: false,
  checkpointEvery: Number(values['checkpoint-every']),
};

/**
 * P producers commit `samples` (cycled to n) as fast as the queue takes them; samples/s from the
 * first put to the last commit. `prefill`: every sample is put first, then all are committed
 * at once (queue.commits): the job's rank finds the whole job in the store.
 */
async function produce(spec: JobSpec, url: string, samples: Sample[], n: number, tag: string, prefill = false): Promise<number> {
  const auth = AuthPolicy.disabled();
  const bus = await Bus.connect({ servers: url, job: spec.job, auth, name: `bench-${tag}` });
  const stores = await Promise.all(Array.from({ length: P }, (_, p) => SharedDirFeatureStore.attach({
    dir: spec.storeDir, storeId: spec.storeId, job: spec.job, auth, producer: { node: 'bench', actor: `p${p}`, incarnation: 1 },
  })));
  const q = new QueueClient(bus);
  const t0 = performance.now();
  let next = 0;
  await Promise.all(stores.map(async (store, p) => {
    await q.input({ producer: `p${p}`, state: 'open', incarnation: 1 }).catch(() => null); // a queue with no input refuses: fine
    const refs = [];
    for (let i = next++; i < n; i = next++) {
      const ref = await store.put(`${tag}-${String(i).padStart(6, '0')}`, samples[i % samples.length]!);
      if (prefill) refs.push(ref); else await q.commit(ref);
    }
    for (const r of prefill ? await q.commitMany(refs) : []) if (r instanceof Error) throw r;
  }));
  const secs = (performance.now() - t0) / 1000;
  await Promise.all(stores.map((_, p) => q.input({ producer: `p${p}`, state: 'end', incarnation: 1 }).catch(() => null)));
  await bus.close();
  return n / secs;
}

async function natsOf(runDir: string): Promise<string> {
  for (;;) {
    const f = join(runDir, 'run.json');
    if (existsSync(f)) { try { return (JSON.parse(readFileSync(f, 'utf8')) as { nats: string }).nats; } catch { /* being written */ } }
    await new Promise((r) => setTimeout(r, 50));
  }
}

try {
  // The samples: the synthetic target's, written once (bf16, as engines produce them).
  const base = buildSpec({ ...opts, job: 'baseline', steps: 1 });
  await mkdir(base.runDir, { recursive: true });
  await saveJobSpec(base);
  await writeInitialWeights(base);
  const target = TargetModel.create(base.target as TargetConfig, { threads: 1 });
  const samples = await syntheticSource(target, base).compute(Array.from({ length: 32 }, (_, i) => i));
  target.close();
  const bytes = Object.values(samples[0]!).reduce((n, t) => n + t.data.byteLength, 0);

  // Baseline 1: the step alone on batches of these samples.
  const model = DraftModel.create(base.draft, await loadWeightsFile(base.initWeights, base.draft), { threads: 1 });
  const batch = stackBatch(samples.slice(0, base.batch), base.seqLen, base.draft.hidden);
  const step = () => model.step(batch, { lr: base.lr, clip: base.clip, weightDecay: 0, returnGrads: false });
  await step();
  const steps = Math.ceil(N / base.batch), t0 = performance.now();
  for (let i = 0; i < steps; i++) await step();
  const stepAlone = (steps * base.batch) / ((performance.now() - t0) / 1000);
  model.close();

  // Baseline 2: the producers alone, into a queue no rank consumes (a node with queue and janitor only).
  const ps = buildSpec({ ...opts, job: 'producers-only', rollout: 'external' });
  await mkdir(ps.runDir, { recursive: true });
  await saveJobSpec(ps);
  const nats = await startNatsServer({});
  let producersAlone = NaN;
  try {
    const node = await NodeAgent.start({ spec: ps, nats: nats.url, nodeId: 'local', roles: ['queue', 'janitor', 'coordinator'], auth: AuthPolicy.disabled() });
    try { producersAlone = await produce(ps, nats.url, samples, N, 'alone'); } finally { await node.stop(); }
  } finally { await nats.stop(); }

  // The external job: `draftwire run --rollout external --samples N`, producers in this process.
  const job = runJob({ ...opts, job: 'external', rollout: 'external', samples: N });
  const fed = produce(buildSpec({ ...opts, job: 'external', rollout: 'external', samples: N }), await natsOf(join(workdir, 'external')), samples, N, 'ext');
  const [s, producerRate] = await Promise.all([job, fed]);
  const trainSecs = s.stepMsMean !== null ? (s.stepMsMean * s.steps) / 1000 : NaN;
  // The same job with every sample in the store before the first lease: what the runtime
  // around the rank's step costs (leases, reads, batching, the world's agreement, acks).
  const pf = { ...opts, job: 'prefilled', rollout: 'external' as const, samples: N };
  const [filled] = await Promise.all([runJob(pf), natsOf(join(workdir, 'prefilled')).then((url) => produce(buildSpec(pf), url, samples, N, 'pre', true))]);
  const rows = [
    { what: 'rank step alone (baseline)', samplesPerSec: stepAlone },
    { what: `${P} producers alone (put + commit, no consumer)`, samplesPerSec: producersAlone },
    { what: `${P} producers into the external job`, samplesPerSec: producerRate },
    { what: 'external job, whole (incl. start-up, eval)', samplesPerSec: s.samplesPerSec },
    { what: 'external job, steady state (samples / time in steps)', samplesPerSec: s.samples / trainSecs },
    { what: 'pre-filled store: the rank from its first step to its last', samplesPerSec: filled.trainSamplesPerSec ?? NaN },
    // The step's own time inside the job (the batch stacked, then computed): below the step
    // alone only by what the node's processes on the same cores take from it.
    { what: 'pre-filled store: samples / time in steps', samplesPerSec: filled.stepMsMean ? (filled.samples / filled.steps) / (filled.stepMsMean / 1000) : NaN },
  ];
  report.context({ size: values.size!, samples: s.samples, batch: opts.batch, producers: P, sampleBytes: bytes, audit: s.audit.ok && filled.audit.ok });
  const [alone, ...rest] = rows.map((r) => ({ name: r.what, value: r.samplesPerSec, unit: 'samples/s' }));
  const baseline = report.add(alone!);
  for (const f of rest) report.add({ ...f, baseline });
  report.log(`external job vs step alone: size ${values.size}, ${s.samples} samples of ${(bytes / 1024).toFixed(1)} KiB (bf16 features), batch ${opts.batch}, 1 rank, audit ${s.audit.ok && filled.audit.ok ? 'clean' : 'PROBLEMS'}`);
  for (const r of rows) report.log(r.what.padEnd(56) + r.samplesPerSec.toFixed(1).padStart(10) + ' samples/s' + `  (${(100 * r.samplesPerSec / stepAlone).toFixed(0)}% of the step alone)`);
  report.end();
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
