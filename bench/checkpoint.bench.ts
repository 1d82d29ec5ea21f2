// Rank checkpoints in the job's JetStream (`checkpointStore: nats`, src/job/checkpoint-store.ts)
// against the raw JetStream object store of the same server in the same run: one checkpoint's
// weights and AdamW moments (safetensors, MAC'd objects, the manifest's compare-and-set,
// older objects deleted) written and loaded back, next to a plain put and get of the same
// bytes through nats.js's object store (no MAC, no safetensors, no manifest). And the run
// directory's store against a raw write + fsync of the same bytes.
//   node --import tsx bench/checkpoint.bench.ts [--size small|demo] [--reps 3] [--json]
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { SIZES } from '../cluster/presets.ts';
import { Bus } from '../src/bus/bus.ts';
import { modelState } from '../src/job/checkpoint.ts';
import { DirCheckpointStore, NatsCheckpointStore, type CheckpointStore } from '../src/job/checkpoint-store.ts';
import { DraftModel, initDraftWeights } from '../src/native/addon.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { testSpec } from '../test/support/jobs.ts';
import { startNats } from '../test/support/nats-server.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { size: { type: 'string', default: 'demo' }, reps: { type: 'string', default: '3' }, json: { type: 'boolean', default: false } } });
const preset = SIZES[values.size!];
if (!preset) throw new Error(`--size must be one of ${Object.keys(SIZES).join(', ')}`);
const reps = Number(values.reps);
const report = Reporter.forBench(import.meta.url);
const auth = AuthPolicy.fromSecret('checkpoint-bench-secret-0123456789abcdef');
const nats = await startNats({ auth: auth.natsCredentials()! });
const best = (xs: number[]) => Math.min(...xs);

async function timeStore(store: CheckpointStore, state: Awaited<ReturnType<typeof modelState>>, d2t: Int32Array, init: Record<string, Float32Array | Int32Array>) {
  const w: number[] = [], r: number[] = [];
  for (let i = 0; i < reps; i++) {
    let t0 = performance.now();
    await store.writeRankCheckpoint(state, d2t, i + 1, [], 1, 0);
    w.push(performance.now() - t0);
    t0 = performance.now();
    await store.loadRankCheckpoint(init);
    r.push(performance.now() - t0);
  }
  return { write: best(w), read: best(r) };
}

try {
  const spec = { ...testSpec('ckptbench', { size: values.size as 'demo' }), checkpointStore: 'nats' as const };
  const w = initDraftWeights(preset.draft, 1);
  const d2t = Int32Array.from({ length: preset.draft.draftVocab }, (_, i) => i);
  w.d2t = d2t;
  const model = DraftModel.create(preset.draft, w);
  const state = await modelState(model);
  const bytes = 3 * Object.values(state.weights).reduce((s, t) => s + t.byteLength, 0); // weights, m, v
  const mb = bytes / 2 ** 20;

  const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'ckpt-bench' });
  const viaNats = await timeStore(new NatsCheckpointStore(spec, bus), state, d2t, w);
  await bus.close();

  // The raw object store: the same bytes in two objects, put then get.
  const nc = await connect({ servers: nats.url, ...auth.natsCredentials()! });
  const os = await new Objm(jetstream(nc)).create('raw_ckpt_bench');
  const blobs = [new Uint8Array(bytes / 3), new Uint8Array((2 * bytes) / 3)].map((b) => { for (let i = 0; i < b.length; i += 4096) b[i] = i & 255; return b; });
  const rawW: number[] = [], rawR: number[] = [];
  for (let i = 0; i < reps; i++) {
    let t0 = performance.now();
    for (const [j, b] of blobs.entries()) await os.putBlob({ name: `o${j}` }, b);
    rawW.push(performance.now() - t0);
    t0 = performance.now();
    for (let j = 0; j < blobs.length; j++) await os.getBlob(`o${j}`);
    rawR.push(performance.now() - t0);
  }
  await nc.close();

  // The run directory's store against one raw write + fsync of the same bytes.
  const dirSpec = { ...spec, checkpointStore: 'dir' as const };
  const viaDir = await timeStore(new DirCheckpointStore(dirSpec), state, d2t, w);
  const scratch = mkdtempSync(join(tmpdir(), 'dw-ckpt-raw-'));
  const rawDir: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    for (const [j, b] of blobs.entries()) { const fd = openSync(join(scratch, `o${j}`), 'w'); writeSync(fd, b); fsyncSync(fd); closeSync(fd); }
    rawDir.push(performance.now() - t0);
  }
  rmSync(scratch, { recursive: true, force: true });
  rmSync(spec.runDir, { recursive: true, force: true });

  const ctx = { size: values.size!, mb: Number(mb.toFixed(1)), reps };
  const rw = report.add({ name: 'raw JetStream object store put', value: best(rawW), unit: 'ms', ...ctx });
  const rr = report.add({ name: 'raw JetStream object store get', value: best(rawR), unit: 'ms', ...ctx });
  const rd = report.add({ name: 'raw write+fsync', value: best(rawDir), unit: 'ms', ...ctx });
  report.add({ name: 'checkpoint write (JetStream)', value: viaNats.write, unit: 'ms', baseline: rw, ...ctx });
  report.add({ name: 'checkpoint load (JetStream)', value: viaNats.read, unit: 'ms', baseline: rr, ...ctx });
  report.add({ name: 'checkpoint write (run directory)', value: viaDir.write, unit: 'ms', baseline: rd, ...ctx });
  report.add({ name: 'checkpoint load (run directory)', value: viaDir.read, unit: 'ms', ...ctx });
  report.context(ctx);
  const rate = (ms: number) => `${(mb / (ms / 1000)).toFixed(0)} MB/s`;
  report.log(`checkpoint bench: ${values.size} draft, ${mb.toFixed(1)} MiB (weights + AdamW m, v), best of ${reps}, one nats-server (auth on, file storage, 1 replica)`);
  report.log(`JetStream  write ${viaNats.write.toFixed(0).padStart(6)} ms (${rate(viaNats.write)})   raw object put ${best(rawW).toFixed(0).padStart(6)} ms (${rate(best(rawW))})`);
  report.log(`JetStream  load  ${viaNats.read.toFixed(0).padStart(6)} ms (${rate(viaNats.read)})   raw object get ${best(rawR).toFixed(0).padStart(6)} ms (${rate(best(rawR))})`);
  report.log(`directory  write ${viaDir.write.toFixed(0).padStart(6)} ms (${rate(viaDir.write)})   raw write+fsync ${best(rawDir).toFixed(0).padStart(6)} ms (${rate(best(rawDir))})`);
  report.log(`directory  load  ${viaDir.read.toFixed(0).padStart(6)} ms (${rate(viaDir.read)})`);
  report.end();
} finally {
  await nats.stop();
}
