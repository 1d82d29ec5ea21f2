// Weight files of a job, all safetensors so they load elsewhere (PyTorch, `draftwire step`):
// - init weights: frozen target tensors (embed, target_head), the draft-vocab map d2t and
//   the seeded trainable tensors, written once by `draftwire run` and read by every rank;
// - the checkpoint: trainable tensors + d2t, the config and step in __metadata__, and the
//   AdamW moments beside it in <name>.optim.safetensors.
import { open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { makeDir, openForWrite } from '../files.ts';
import { join } from 'node:path';
import { readDraftWeights, type DraftWeights } from './draft-io.ts';
import { DecodeError, InvalidArgumentError, StaleEpochError } from '../errors.ts';
import type { JobSpec } from './spec.ts';
import { draftParamShapes, initDraftWeights, TRAINABLE_NAMES, type TargetModel, type DraftConfig, type DraftModel, type OptimizerState } from '../native/addon.ts';
import { readSafetensorsFile, writeSafetensorsFile } from '../store/safetensors.ts';
import { tensor, type Tensor } from '../tensor.ts';
import { syntheticPrompt } from './prompts.ts';
import { readJobVocab } from './chat-data.ts';
import { specForgeInit } from './draft-init.ts';
import { importDraft } from './import-draft.ts';
import { openTarget } from './target.ts';

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
  const V = spec.draft.vocab, Vd = spec.draft.draftVocab;
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

/**
 * Writes the job's initial weights (frozen + d2t + seeded trainable) to spec.initWeights. A chat
 * job takes d2t from the vocabulary written when it started and initialises as SpecForge does;
 * the synthetic job calibrates d2t on its target.
 */
export async function writeInitialWeights(spec: JobSpec): Promise<void> {
  const target = await openTarget(spec.target, spec.threads);
  try {
    const { embed, target_head } = target.frozen();
    const w = spec.chat
      ? specForgeInit(spec.draft, spec.seed, { embed, target_head, d2t: (await readJobVocab(spec.chat, spec.draft.vocab, spec.draft.draftVocab)).draftIds })
      : initDraftWeights(spec.draft, spec.seed, { embed, target_head, d2t: await calibrateD2t(target, spec) });
    if (spec.initFrom) Object.assign(w, (await importDraft(spec.initFrom, spec.draft)).weights); // a draft trained elsewhere
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

/** A model's trainable state, full-shape: what a checkpoint holds and what a DP group broadcasts. */
export interface ModelState { weights: Record<string, Float32Array>; optimizer: OptimizerState }

/** The full state of a model (a collective over its TP group when sharded). */
export async function modelState(model: DraftModel): Promise<ModelState> {
  if (model.shard) return { weights: await model.gatherWeights(), optimizer: await model.gatherOptimizerState() };
  return { weights: model.weights(), optimizer: model.optimizerState() };
}

type SafetensorsParts = { tensors: Record<string, Tensor>; metadata: Record<string, string> };

/** The two safetensors of a checkpoint: the weights (with d2t and the config) and the AdamW moments. */
export function checkpointTensors(spec: JobSpec, state: ModelState, d2t: Int32Array, step: number, samples?: number): { weights: SafetensorsParts; optim: SafetensorsParts } {
  const shapes = draftParamShapes(spec.draft);
  const w = state.weights;
  const meta: Record<string, string> = { format: CHECKPOINT_FORMAT, config: JSON.stringify(spec.draft), step: String(step), job: spec.job };
  if (samples !== undefined) meta.samples = String(samples);
  const tensors = Object.fromEntries(TRAINABLE_NAMES.map((n) => f32(n, shapes[n]!, w[n]!)));
  tensors.d2t = tensor('i32', [d2t.length], d2t);
  const opt = state.optimizer;
  const moments: Record<string, Tensor> = {};
  for (const n of TRAINABLE_NAMES) {
    moments[`m.${n}`] = tensor('f32', shapes[n]!, opt.m[n]!);
    moments[`v.${n}`] = tensor('f32', shapes[n]!, opt.v[n]!);
  }
  return { weights: { tensors, metadata: meta }, optim: { tensors: moments, metadata: { ...meta, adamStep: String(opt.step) } } };
}

/**
 * Writes the trained draft (and its optimizer state beside it); `samples`: real samples
 * trained into it. Each file atomically (fsync'd temp, renamed), the optimizer state first:
 * whoever sees the weights file (a user's export, a serving engine, a test) sees it whole,
 * with its optimizer state already there.
 */
export async function writeCheckpoint(path: string, spec: JobSpec, state: ModelState, d2t: Int32Array, step: number, samples?: number): Promise<void> {
  const c = checkpointTensors(spec, state, d2t, step, samples);
  await writeSafetensorsFile(path.replace(/\.safetensors$/, '') + '.optim.safetensors', c.optim.tensors, c.optim.metadata, { atomic: true });
  await writeSafetensorsFile(path, c.weights.tensors, c.weights.metadata, { atomic: true });
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
  /** The epoch of the world that wrote it: a writer from an older epoch (a zombie) never replaces it. */
  epoch: number;
  /** Real samples trained into these weights since the job started. */
  samples: number;
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

async function readManifest(path: string): Promise<RankCheckpointManifest | null> {
  let text: string;
  try { text = await readFile(path, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let x: unknown;
  try { x = JSON.parse(text); } catch { throw new DecodeError(`${path} is not valid JSON`); }
  return parseManifest(x, path);
}

/** A manifest checked for its shape (DecodeError naming `where` otherwise). */
export function parseManifest(x: unknown, where: string): RankCheckpointManifest {
  const m = x as RankCheckpointManifest;
  if (!m || typeof m !== 'object' || m.format !== 'draftwire-rank-checkpoint/1' || !Number.isInteger(m.step) || !Array.isArray(m.window) || !Array.isArray(m.trained)
    || typeof m.weights !== 'string' || typeof m.optim !== 'string') {
    throw new DecodeError(`${where}: not a draftwire rank checkpoint manifest`);
  }
  m.epoch = Number.isInteger(m.epoch) ? m.epoch : 0;
  m.samples = Number.isInteger(m.samples) ? m.samples : 0;
  return m;
}

/**
 * Writes a rank checkpoint and commits it (temp + fsync + rename of the manifest). Refused
 * with StaleEpochError when the committed one comes from a newer epoch: a rank frozen and
 * resumed (a zombie) must not roll the job back.
 */
export async function writeRankCheckpoint(spec: JobSpec, state: ModelState, d2t: Int32Array, step: number, window: CheckpointLease[], epoch = 0, samples = 0): Promise<RankCheckpointManifest> {
  const dir = checkpointDir(spec);
  await makeDir(dir);
  const path = join(dir, 'latest.json');
  const refuseIfNewer = async () => {
    const cur = await readManifest(path);
    if (cur && cur.epoch > epoch) throw new StaleEpochError(`checkpoint of step ${step} at epoch ${epoch} refused: the committed one is from epoch ${cur.epoch} (step ${cur.step})`, { detail: { epoch, current: cur.epoch } });
    return cur;
  };
  const previous = await refuseIfNewer();
  const base = `step-${String(step).padStart(8, '0')}-e${epoch}`;
  const weights = join(dir, `${base}.safetensors`);
  await writeCheckpoint(weights, spec, state, d2t, step);
  const optim = join(dir, `${base}.optim.safetensors`);
  const m: RankCheckpointManifest = {
    format: 'draftwire-rank-checkpoint/1', job: spec.job, step, epoch, samples, weights: `${base}.safetensors`, optim: `${base}.optim.safetensors`,
    window, trained: [...new Set(window.map((l) => l.sampleId))], at: Date.now(),
  };
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await openForWrite(tmp);
  try { await fh.writeFile(JSON.stringify(m)); await fh.sync(); } finally { await fh.close(); }
  await refuseIfNewer().catch(async (e: unknown) => { await rm(tmp, { force: true }); throw e; });
  await rename(tmp, path);
  await fsyncPath(dir);
  // Older checkpoints are garbage now, except the one just replaced: a reader that read the
  // previous manifest may still be opening its files.
  const keep = new Set([base, previous?.weights.replace(/\.safetensors$/, '')]);
  for (const f of await readdir(dir)) {
    if (f.startsWith('step-') && !keep.has(f.replace(/(\.optim)?\.safetensors$/, '')) && parseInt(f.slice(5), 10) <= step) await rm(join(dir, f), { force: true });
    else if (f.startsWith('latest.json.tmp-')) await rm(join(dir, f), { force: true });
  }
  return m;
}

export interface LoadedRankCheckpoint { manifest: RankCheckpointManifest; weights: Record<string, Float32Array | Int32Array>; optimizer: OptimizerState }

/** The committed manifest alone (no tensors), or null. */
export function latestManifest(spec: JobSpec): Promise<RankCheckpointManifest | null> {
  return readManifest(join(checkpointDir(spec), 'latest.json'));
}

// A data-parallel world checkpoints together: every rank writes its part (the leases it
// trained since the last checkpoint, and samples trained but not acked), then world rank 0
// writes the weights and a manifest naming every part's leases, and commits it.
export interface WindowPart { window: CheckpointLease[]; skipped: string[] }

const partPath = (spec: JobSpec, step: number, epoch: number, index: number) => join(checkpointDir(spec), 'parts', `step-${step}-e${epoch}-r${index}.json`);

export async function writeWindowPart(spec: JobSpec, step: number, epoch: number, index: number, part: WindowPart): Promise<void> {
  const path = partPath(spec, step, epoch, index);
  await makeDir(join(checkpointDir(spec), 'parts'));
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await openForWrite(tmp);
  try { await fh.writeFile(JSON.stringify(part)); await fh.sync(); } finally { await fh.close(); }
  await rename(tmp, path);
}

/** Every part of a world of `size` ranks (all must exist: the ranks wrote them before a barrier); removes them. */
export async function takeWindowParts(spec: JobSpec, step: number, epoch: number, size: number): Promise<CheckpointLease[]> {
  const out: CheckpointLease[] = [];
  for (let i = 0; i < size; i++) {
    const path = partPath(spec, step, epoch, i);
    let p: WindowPart;
    try { p = JSON.parse(await readFile(path, 'utf8')) as WindowPart; } catch (e) {
      throw new DecodeError(`checkpoint part ${path} unreadable: ${(e as Error).message}`);
    }
    out.push(...p.window, ...p.skipped.map((sampleId) => ({ leaseId: '', sampleId, epoch: 0 })));
  }
  for (let i = 0; i < size; i++) await rm(partPath(spec, step, epoch, i), { force: true });
  return out;
}

/** The latest committed rank checkpoint of the job, or null when there is none. */
export async function loadRankCheckpoint(spec: JobSpec, init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null> {
  // A commit may replace the manifest (and, one commit later, remove these files) while we
  // read: read again from the newer manifest.
  for (let attempt = 0; ; attempt++) {
    try { return await loadRankCheckpointOnce(spec, init); } catch (e) {
      if (attempt >= 5 || (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

async function loadRankCheckpointOnce(spec: JobSpec, init: Record<string, Float32Array | Int32Array>): Promise<LoadedRankCheckpoint | null> {
  const dir = checkpointDir(spec);
  const m = await readManifest(join(dir, 'latest.json'));
  if (!m) return null;
  if (m.job !== spec.job) throw new InvalidArgumentError(`checkpoint ${join(dir, 'latest.json')} belongs to job ${m.job}, not ${spec.job}`);
  return checkpointFrom(m, await readSafetensorsFile(join(dir, m.weights)), await readSafetensorsFile(join(dir, m.optim)), init);
}

/** A loaded checkpoint from its manifest and its two safetensors (wherever they were stored). */
export function checkpointFrom(m: RankCheckpointManifest, w: SafetensorsParts, o: SafetensorsParts, init: Record<string, Float32Array | Int32Array>): LoadedRankCheckpoint {
  const weights: Record<string, Float32Array | Int32Array> = { ...init };
  for (const n of TRAINABLE_NAMES) {
    const t = w.tensors[n];
    if (!t || !(t.data instanceof Float32Array)) throw new DecodeError(`checkpoint ${m.weights}: tensor ${n} missing or not f32`);
    weights[n] = t.data;
  }
  const optimizer: OptimizerState = { step: Number(o.metadata.adamStep ?? m.step), m: {}, v: {} };
  for (const n of TRAINABLE_NAMES) {
    const mm = o.tensors[`m.${n}`], vv = o.tensors[`v.${n}`];
    if (!mm || !vv) throw new DecodeError(`checkpoint ${m.optim}: moments of ${n} missing`);
    optimizer.m[n] = mm.data as Float32Array;
    optimizer.v[n] = vv.data as Float32Array;
  }
  return { manifest: m, weights, optimizer };
}
