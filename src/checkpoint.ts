// Weight files of a job, all safetensors so they load elsewhere (PyTorch, `draftwire step`):
// - init weights: frozen target tensors (embed, target_head), the draft-vocab map d2t and
//   the seeded trainable tensors, written once by `draftwire run` and read by every rank;
// - the checkpoint: trainable tensors + d2t, the config and step in __metadata__, and the
//   AdamW moments beside it in <name>.optim.safetensors.
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { readDraftWeights, type DraftWeights } from './draft-io.ts';
import { DecodeError, InvalidArgumentError } from './errors.ts';
import type { JobSpec } from './job.ts';
import { draftParamShapes, initDraftWeights, TargetModel, TRAINABLE_NAMES, type DraftConfig, type DraftModel, type OptimizerState } from './native.ts';
import { readSafetensorsFile, writeSafetensorsFile } from './safetensors.ts';
import { tensor, type Tensor } from './tensor.ts';
import { syntheticPrompt } from '../actors/rollout.ts';

export const CHECKPOINT_FORMAT = 'draftwire-eagle3/1';

export async function loadWeightsFile(path: string, c: DraftConfig): Promise<DraftWeights> {
  return readDraftWeights(path, c);
}

function f32(name: string, shape: number[], data: Float32Array): [string, Tensor] {
  return [name, tensor('f32', shape, data)];
}

/**
 * The draft vocabulary: the Vd target tokens the target itself generates most often over
 * calibration prompts (as EAGLE3 builds d2t from token frequencies), ties by lower id, padded
 * with the lowest unused ids. Sorted ascending so the map is stable. The prompts decode 32 at a
 * time (TargetModel.generateBatch); 128 of them give ~7k tokens at the small preset, enough
 * to rank a 1024-token vocabulary (16 covered ~58% of the generated tokens, 128 ~97%).
 */
export async function calibrateD2t(target: TargetModel, spec: JobSpec, prompts = 128): Promise<Int32Array> {
  const V = spec.target.vocab, Vd = spec.draft.draftVocab;
  const counts = new Float64Array(V);
  for (let i0 = 0; i0 < prompts; i0 += 32) {
    const idx = Array.from({ length: Math.min(32, prompts - i0) }, (_, j) => i0 + j);
    const seqs = await target.generateBatch(idx.map((i) => syntheticPrompt(spec.seed ^ 0xca11b, i, V, spec.promptLen)),
      spec.seqLen - spec.promptLen, { temperature: spec.temperature, seeds: idx.map((i) => 7919 * i + 1) });
    for (const ids of seqs) for (let t = spec.promptLen; t < ids.length; t++) counts[ids[t]!]!++;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => counts[b]! - counts[a]! || a - b);
  return Int32Array.from(order.slice(0, Vd).sort((a, b) => a - b));
}

/** Writes the job's initial weights (frozen + d2t + seeded trainable) to spec.initWeights. */
export async function writeInitialWeights(spec: JobSpec): Promise<void> {
  const target = TargetModel.create(spec.target, { threads: spec.threads });
  try {
    const { embed, target_head } = target.frozen();
    const d2t = await calibrateD2t(target, spec);
    const w = initDraftWeights(spec.draft, spec.seed, { embed, target_head, d2t });
    const shapes = draftParamShapes(spec.draft);
    const tensors: Record<string, Tensor> = {};
    for (const [name, data] of Object.entries(w)) {
      tensors[name] = name === 'd2t' ? tensor('i32', shapes[name]!, data as Int32Array) : tensor('f32', shapes[name]!, data as Float32Array);
    }
    await writeSafetensorsFile(spec.initWeights, tensors, { format: CHECKPOINT_FORMAT, config: JSON.stringify(spec.draft), step: '0' });
  } finally {
    target.close();
  }
}

/** Writes the trained draft (and its optimizer state beside it). */
export async function writeCheckpoint(path: string, spec: JobSpec, model: DraftModel, d2t: Int32Array, step: number): Promise<void> {
  const shapes = draftParamShapes(spec.draft);
  const w = model.weights();
  const meta = { format: CHECKPOINT_FORMAT, config: JSON.stringify(spec.draft), step: String(step), job: spec.job };
  const tensors = Object.fromEntries(TRAINABLE_NAMES.map((n) => f32(n, shapes[n]!, w[n]!)));
  tensors.d2t = tensor('i32', [d2t.length], d2t);
  await writeSafetensorsFile(path, tensors, meta);
  const opt = model.optimizerState();
  const moments: Record<string, Tensor> = {};
  for (const n of TRAINABLE_NAMES) {
    moments[`m.${n}`] = tensor('f32', shapes[n]!, opt.m[n]!);
    moments[`v.${n}`] = tensor('f32', shapes[n]!, opt.v[n]!);
  }
  await writeSafetensorsFile(path.replace(/\.safetensors$/, '') + '.optim.safetensors', moments, { ...meta, adamStep: String(opt.step) });
}

// ------------------------------------------------------------------------------------------
// Rank checkpoints (exactly-once training across rank crashes)
//
// A rank writes <runDir>/ckpt/step-<N>.safetensors (+ .optim.safetensors) and then commits
// it by renaming <runDir>/ckpt/latest.json.tmp over latest.json (fsync'd): the manifest is
// the single commit point, so a crash at any moment leaves the previous checkpoint whole.
// The manifest names the leases (and sample ids) of the steps trained since the previous
// checkpoint: the rank acks them only after the manifest is durable, so a crash loses only
// steps that were never acked (their leases expire and are re-leased and retrained), and a
// sample whose ack did not make it is recognised (by id) and acked without training again.

export interface CheckpointLease { leaseId: string; sampleId: string; epoch: number }

export interface RankCheckpointManifest {
  format: 'draftwire-rank-checkpoint/1';
  job: string;
  step: number;
  weights: string;
  optim: string;
  /** Leases of the steps since the previous checkpoint (acked after this manifest is durable). */
  window: CheckpointLease[];
  /** Every sample id trained into these weights since the previous checkpoint. */
  trained: string[];
  at: number;
}

export function checkpointDir(spec: JobSpec): string {
  return join(spec.runDir, 'ckpt');
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}

/** Writes a rank checkpoint and commits it (temp + fsync + rename of the manifest). */
export async function writeRankCheckpoint(spec: JobSpec, model: DraftModel, d2t: Int32Array, step: number, window: CheckpointLease[]): Promise<RankCheckpointManifest> {
  const dir = checkpointDir(spec);
  await mkdir(dir, { recursive: true });
  const base = `step-${String(step).padStart(8, '0')}`;
  const weights = join(dir, `${base}.safetensors`);
  await writeCheckpoint(weights, spec, model, d2t, step);
  const optim = join(dir, `${base}.optim.safetensors`);
  await fsyncPath(weights);
  await fsyncPath(optim);
  const m: RankCheckpointManifest = {
    format: 'draftwire-rank-checkpoint/1', job: spec.job, step, weights: `${base}.safetensors`, optim: `${base}.optim.safetensors`,
    window, trained: [...new Set(window.map((l) => l.sampleId))], at: Date.now(),
  };
  const path = join(dir, 'latest.json');
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  try { await fh.writeFile(JSON.stringify(m)); await fh.sync(); } finally { await fh.close(); }
  await rename(tmp, path);
  await fsyncPath(dir);
  // Older checkpoints are garbage now.
  for (const f of await readdir(dir)) {
    if (f.startsWith('step-') && !f.startsWith(base + '.')) await rm(join(dir, f), { force: true });
    else if (f.startsWith('latest.json.tmp-')) await rm(join(dir, f), { force: true });
  }
  return m;
}

export interface LoadedRankCheckpoint { manifest: RankCheckpointManifest; weights: Record<string, Float32Array | Int32Array>; optimizer: OptimizerState }

/** The latest committed rank checkpoint of the job, or null when there is none. */
export async function loadRankCheckpoint(spec: JobSpec, init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null> {
  const dir = checkpointDir(spec);
  let text: string;
  try { text = await readFile(join(dir, 'latest.json'), 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let m: RankCheckpointManifest;
  try { m = JSON.parse(text) as RankCheckpointManifest; } catch { throw new DecodeError(`${join(dir, 'latest.json')} is not valid JSON`); }
  if (m.format !== 'draftwire-rank-checkpoint/1' || !Number.isInteger(m.step) || !Array.isArray(m.window) || !Array.isArray(m.trained)) {
    throw new DecodeError(`${join(dir, 'latest.json')}: not a draftwire rank checkpoint manifest`);
  }
  if (m.job !== spec.job) throw new InvalidArgumentError(`checkpoint ${join(dir, 'latest.json')} belongs to job ${m.job}, not ${spec.job}`);
  const w = await readSafetensorsFile(join(dir, m.weights));
  const weights: Record<string, Float32Array | Int32Array> = { ...init };
  for (const n of TRAINABLE_NAMES) {
    const t = w.tensors[n];
    if (!t || !(t.data instanceof Float32Array)) throw new DecodeError(`checkpoint ${m.weights}: tensor ${n} missing or not f32`);
    weights[n] = t.data;
  }
  const o = await readSafetensorsFile(join(dir, m.optim));
  const optimizer: OptimizerState = { step: Number(o.metadata.adamStep ?? m.step), m: {}, v: {} };
  for (const n of TRAINABLE_NAMES) {
    const mm = o.tensors[`m.${n}`], vv = o.tensors[`v.${n}`];
    if (!mm || !vv) throw new DecodeError(`checkpoint ${m.optim}: moments of ${n} missing`);
    optimizer.m[n] = mm.data as Float32Array;
    optimizer.v[n] = vv.data as Float32Array;
  }
  return { manifest: m, weights, optimizer };
}
