// Offline features (`run --features`): what the rollout does per row instead of a forward pass,
// read + check + write into the feature store (src/job/features-data.ts featureReader, then
// SharedDirFeatureStore.put: checksum, temp write, fsync, rename), in both layouts, next to a
// raw read of the same files into fresh buffers in the same run (the floor: the bytes must come
// off the disk once). Also read + check alone (no store), and the start-of-job scan that checks
// every file once (prepareFeatures). bf16 files of a 1B-class target (H = 2048) at T = 512:
// 8 MiB each. Reads come from the page cache in every case (each file was read before), so
// the figures compare the software path, not the device; the store's put pays an fsync.
// Each figure is the best of --reps runs (5). Also, for scale, the store's put alone of the same
// samples already in memory: the rollout's path costs that plus the read and check.
// Run: node --import tsx bench/features.bench.ts [--files N] [--tokens T] [--hidden H] [--reps R] [--json] [dir]
// --json: one JSON line per figure (bench/support/report.ts): MB/s of each path, against the raw
// read of the same layout's files.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeVocabFile, buildDraftVocab } from '../src/chat/vocab.ts';
import type { HfTargetConfig } from '../src/hf/config.ts';
import { hfTensorSpecs, hfWeightsFingerprint } from '../src/hf/weights.ts';
import { loadJobRows } from '../src/job/chat-data.ts';
import { featureReader, prepareFeatures } from '../src/job/features-data.ts';
import { featureEntries, type FeaturesLayout } from '../src/job/features.ts';
import type { HfTargetSpec } from '../src/job/target.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import { writeSafetensorsFile } from '../src/store/safetensors.ts';
import { f32ToBf16, tensor, type Tensor } from '../src/tensor.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Reporter, type Measured } from './support/report.ts';

const args = process.argv.slice(2);
const opt = (name: string, def: number) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : def; };
const report = Reporter.forBench(import.meta.url);
const FILES = opt('--files', 16), T = opt('--tokens', 512), H = opt('--hidden', 2048), V = 1024;
const base = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--')) ?? tmpdir();
const root = mkdtempSync(join(base, 'dw-bench-features-'));
process.env.DRAFTWIRE_LOG_LEVEL ??= 'error';

// A target directory whose only role here is its config and final norm (one layer, small V).
const config: HfTargetConfig = {
  architecture: 'LlamaForCausalLM', vocab: V, hidden: H, heads: H / 128, kvHeads: Math.max(1, H / 512), headDim: 128, intermediate: 64, layers: 1,
  ropeTheta: 500000, ropeScaling: null, rmsEps: 1e-5, tie: true, attentionBias: false, qkNorm: false, maxPositionEmbeddings: 8192, dtype: 'bfloat16',
  auxLayers: [0, 0, 0],
};

function noise(n: number, seed: number): Uint16Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; x[i] = s / 2 ** 31 - 1; }
  return f32ToBf16(x);
}

async function makeFiles(): Promise<{ target: HfTargetSpec; dirs: Record<FeaturesLayout, string> }> {
  const model = join(root, 'model');
  mkdirSync(model);
  const { globals, layers } = hfTensorSpecs(config);
  const w: Record<string, Tensor> = {};
  for (const s of [...globals, ...layers.flat()]) w[s.name] = tensor('bf16', s.shape, s.name.endsWith('norm.weight') ? f32ToBf16(new Float32Array(s.shape[0]!).fill(1)) : undefined);
  await writeSafetensorsFile(join(model, 'model.safetensors'), w);
  const target: HfTargetSpec = { kind: 'hf', dir: model, config, auxLayersInput: [1, 1, 1], weights: await hfWeightsFingerprint(model) };
  const dirs = { capture: join(root, 'capture'), speculators: join(root, 'speculators') };
  for (const d of Object.values(dirs)) mkdirSync(d);
  await writeVocabFile(join(dirs.capture, 'vocab.safetensors'), buildDraftVocab(new Float64Array(V).fill(1), 256));
  const ids = BigInt64Array.from({ length: T }, (_, t) => BigInt((t * 31) % V));
  const mask = Uint8Array.from({ length: T }, (_, t) => (t >= T / 4 && t < T - 1 ? 1 : 0));
  for (let i = 0; i < FILES; i++) {
    await writeSafetensorsFile(join(dirs.capture, `row-${i}.safetensors`), {
      input_ids: tensor('i64', [T], ids), loss_mask: tensor('u8', [T], mask),
      aux_hidden_state: tensor('bf16', [T, 3 * H], noise(T * 3 * H, i)), hidden_state: tensor('bf16', [T, H], noise(T * H, i + 1000)),
    }, { format: 'draftwire-capture/1', aux_layers: '0,0,0' });
    await writeSafetensorsFile(join(dirs.speculators, `hs_${i}.safetensors`), {
      token_ids: tensor('i64', [T], ids), hidden_states: tensor('bf16', [T, 4, H], noise(T * 4 * H, i + 2000)), loss_mask: tensor('u8', [T], mask),
    });
  }
  return { target, dirs };
}

const REPS = opt('--reps', 5);

/** Seconds of the fastest of REPS runs of fn (rep = its index): shared machines drift, the best run is the software's. */
async function seconds(fn: (rep: number) => Promise<unknown>): Promise<number> {
  let best = Infinity;
  for (let rep = 0; rep < REPS; rep++) {
    const t0 = performance.now();
    await fn(rep);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

const rows: { layout: string; path: string; filesPerSec: number; mbPerSec: number; ofRaw: number }[] = [];
try {
  const { target, dirs } = await makeFiles();
  const store = await SharedDirFeatureStore.attach({
    dir: join(root, 'store'), storeId: 'bench', job: 'bench', auth: AuthPolicy.fromSecret('bench-secret-0123456789abcdef'),
    producer: { node: 'n', actor: 'bench', incarnation: 1 }, highWatermarkBytes: 2 ** 40,
  });
  for (const layout of ['capture', 'speculators'] as const) {
    const dir = dirs[layout];
    const entries = featureEntries(await readdir(dir), layout).entries;
    const paths = entries.map((e) => join(dir, e.name));
    let bytes = 0;
    for (const p of paths) bytes += (await stat(p)).size;
    const read = await featureReader({ dir, layout, dataset: null }, target, 8192);
    const prepare = (runDir: string) => prepareFeatures({
      dir, layout, targetDir: target.dir, config, maxLen: 8192, onBadRow: 'skip', evalRows: 0, evalMaxNew: 8, evalPrompts: 1, runDir, draftVocab: 256,
    });
    // A first scan warms the page cache and the code, and writes the job's rows, which the reader checks each file against.
    mkdirSync(join(root, `warm-${layout}`));
    const jobRows = await loadJobRows((await prepare(join(root, `warm-${layout}`))).chat);
    const raw = await seconds(async () => { for (const p of paths) await readFile(p); });
    const check = await seconds(async () => { for (const r of jobRows) await read(r); });
    const put = await seconds(async (rep) => {
      for (const r of jobRows) { const ref = await store.put(`${r.id}-${rep}`, await read(r)); await store.release(ref); }
    });
    const samples = await Promise.all(jobRows.map((r) => read(r)));
    const putAlone = await seconds(async (rep) => {
      for (const [k, r] of jobRows.entries()) { const ref = await store.put(`${r.id}-alone-${rep}`, samples[k]!); await store.release(ref); }
    });
    const prep = await seconds(async (rep) => { mkdirSync(join(root, `run-${layout}-${rep}`)); await prepare(join(root, `run-${layout}-${rep}`)); });
    const add = (path: string, s: number) => rows.push({ layout, path, filesPerSec: FILES / s, mbPerSec: bytes / s / 2 ** 20, ofRaw: raw / s });
    add('raw read into fresh buffers (baseline)', raw);
    add('read + check (featureReader, no store)', check);
    add('read + check + store put (the rollout, per row)', put);
    add('store put alone, of the same samples in memory (for scale)', putAlone);
    add('start-of-job scan: every file checked (prepareFeatures)', prep);
  }
  await store.gc(Date.now() + 1e9);
} finally {
  rmSync(root, { recursive: true, force: true });
}
report.context({ files: FILES, tokens: T, hidden: H, reps: REPS });
const raw: Record<string, Measured> = {};
for (const r of rows) {
  const f = report.add({ name: `${r.layout}: ${r.path}`, value: r.mbPerSec, unit: 'MB/s', baseline: raw[r.layout] ?? null, layout: r.layout, mbPerFile: r.mbPerSec / r.filesPerSec });
  raw[r.layout] ??= f; // each layout's first row is its raw read
}
report.log(`${FILES} files per layout, T = ${T}, H = ${H}, bf16 (${((T * 4 * H * 2) / 2 ** 20).toFixed(1)} MiB of features each); page cache warm; store put fsyncs; best of ${REPS}`);
report.markdown(['layout', 'path', 'files/s', 'MB/s', 'of the raw read'], rows.map((r) => [r.layout, r.path, r.filesPerSec.toFixed(1), r.mbPerSec.toFixed(0), `${(100 * r.ofRaw).toFixed(0)}%`]), 2);
report.end();
