// Files of the `draftwire step` command: the draft config (JSON), the draft weights and one
// batch (safetensors), and the step's output file. Every reader validates everything the
// native step relies on (names, dtypes, shapes, ranges, finiteness) and fails with an
// InvalidArgumentError naming the key or tensor, with what was expected and what was found.
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.ts';
import { open } from 'node:fs/promises';
import { readHeader, readSafetensorsFile, writeSafetensorsFile } from '../store/safetensors.ts';
import { tensor, type Dtype, type Tensor } from '../tensor.ts';
// Only plain-JS parts of native.ts (it loads the addon lazily, on first native call).
import { TRAINABLE_NAMES, draftParamShapes, validateDraftConfig, type DraftBatch, type DraftConfig } from '../native/addon.ts';

export type { DraftBatch, DraftConfig };

export type DraftWeights = Record<string, Float32Array | Int32Array>;

/** Trainable tensors, in docs/model-math.md order. */
export const TRAINABLE: readonly string[] = TRAINABLE_NAMES;

const INT_KEYS = ['vocab', 'draftVocab', 'hidden', 'heads', 'kvHeads', 'intermediate', 'ttt'] as const;
const CONFIG_DEFAULTS = { ropeTheta: 10000, rmsEps: 1e-6 };
/** Sizes past this are certainly a mistake (and would overflow 32-bit index math natively). */
const MAX_DIM = 1 << 24;

/** Validates a parsed config object: every key known, every size a positive integer, the sizes consistent. */
export function parseDraftConfig(raw: unknown, where = 'config'): DraftConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new InvalidArgumentError(`${where}: expected a JSON object`);
  const obj = raw as Record<string, unknown>;
  const known = new Set<string>([...INT_KEYS, 'ropeTheta', 'rmsEps']);
  for (const key of Object.keys(obj)) {
    if (!known.has(key)) throw new InvalidArgumentError(`${where}: unknown key "${key}" (known: ${[...known].join(', ')})`, { detail: { key } });
  }
  const out: Record<string, number> = {};
  for (const key of INT_KEYS) {
    const v = obj[key];
    if (v === undefined) throw new InvalidArgumentError(`${where}: missing key "${key}"`, { detail: { key } });
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > MAX_DIM) {
      throw new InvalidArgumentError(`${where}: key "${key}" must be a positive integer ≤ ${MAX_DIM}, got ${JSON.stringify(v)}`, { detail: { key } });
    }
    out[key] = v;
  }
  for (const key of ['ropeTheta', 'rmsEps'] as const) {
    const v = obj[key] ?? CONFIG_DEFAULTS[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new InvalidArgumentError(`${where}: key "${key}" must be a positive finite number, got ${JSON.stringify(v)}`, { detail: { key } });
    }
    out[key] = v;
  }
  const c = out as unknown as DraftConfig;
  const bad = (key: string, msg: string) => new InvalidArgumentError(`${where}: key "${key}" ${msg}`, { detail: { key } });
  if (c.hidden % c.heads !== 0) throw bad('heads', `(${c.heads}) must divide hidden (${c.hidden})`);
  if ((c.hidden / c.heads) % 2 !== 0) throw bad('heads', `gives head dim ${c.hidden / c.heads} = hidden/heads, which must be even (RoPE)`);
  if (c.heads % c.kvHeads !== 0) throw bad('kvHeads', `(${c.kvHeads}) must divide heads (${c.heads})`);
  if (c.draftVocab > c.vocab) throw bad('draftVocab', `(${c.draftVocab}) must not exceed vocab (${c.vocab})`);
  if (c.ttt > 64) throw bad('ttt', `(${c.ttt}) must be ≤ 64`);
  if (c.rmsEps > 1) throw bad('rmsEps', `(${c.rmsEps}) must be ≤ 1`);
  return validateDraftConfig(c); // the native side's own rules, should they ever be stricter
}

/** Reads and validates a config JSON file. */
export async function readDraftConfig(path: string): Promise<DraftConfig> {
  const text = await readInput(path, 'config');
  let raw: unknown;
  try { raw = JSON.parse(text.toString('utf8')); } catch (e) {
    throw new InvalidArgumentError(`config ${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseDraftConfig(raw, `config ${path}`);
}

/** Expected dtype and shape of every weight tensor (trainable and frozen). */
export function draftWeightSpecs(c: DraftConfig): Record<string, { dtype: Dtype; shape: number[] }> {
  const out: Record<string, { dtype: Dtype; shape: number[] }> = {};
  for (const [name, shape] of Object.entries(draftParamShapes(c))) out[name] = { dtype: name === 'd2t' ? 'i32' : 'f32', shape };
  return out;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function checkTensor(where: string, name: string, t: Tensor | undefined, dtype: Dtype, shape: number[] | null): Tensor {
  if (!t) throw new InvalidArgumentError(`${where}: missing tensor "${name}" (expected ${dtype}[${shape ?? '…'}])`, { detail: { tensor: name } });
  if (t.dtype !== dtype) {
    throw new InvalidArgumentError(`${where}: tensor "${name}" has dtype ${t.dtype}, expected ${dtype}`, { detail: { tensor: name, expected: dtype, got: t.dtype } });
  }
  if (shape && !sameShape(t.shape, shape)) {
    throw new InvalidArgumentError(`${where}: tensor "${name}" has shape [${t.shape}], expected [${shape}]`, { detail: { tensor: name, expected: shape, got: t.shape } });
  }
  return t;
}

function checkFinite(where: string, name: string, a: Float32Array): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) {
      throw new InvalidArgumentError(`${where}: tensor "${name}" has a non-finite value (${a[i]}) at flat index ${i}`, { detail: { tensor: name, index: i } });
    }
  }
}

/** Validates decoded weight tensors against the config. */
export function validateDraftWeights(tensors: Record<string, Tensor>, c: DraftConfig, where = 'weights'): DraftWeights {
  const specs = draftWeightSpecs(c);
  for (const name of Object.keys(tensors)) {
    if (!(name in specs)) throw new InvalidArgumentError(`${where}: unexpected tensor "${name}" (expected ${Object.keys(specs).join(', ')})`, { detail: { tensor: name } });
  }
  const out: DraftWeights = {};
  for (const [name, spec] of Object.entries(specs)) {
    const t = checkTensor(where, name, tensors[name], spec.dtype, spec.shape);
    if (spec.dtype === 'f32') checkFinite(where, name, t.data as Float32Array);
    out[name] = t.data as Float32Array | Int32Array;
  }
  const d2t = out.d2t as Int32Array;
  const seen = new Set<number>();
  for (let j = 0; j < d2t.length; j++) {
    const id = d2t[j];
    if (id < 0 || id >= c.vocab) throw new InvalidArgumentError(`${where}: tensor "d2t"[${j}] = ${id} is outside the vocabulary [0, ${c.vocab})`, { detail: { tensor: 'd2t', index: j } });
    if (seen.has(id)) throw new InvalidArgumentError(`${where}: tensor "d2t" maps target id ${id} twice (at ${j}); ids must be distinct`, { detail: { tensor: 'd2t', index: j } });
    seen.add(id);
  }
  return out;
}

/** Validates decoded batch tensors against the config. */
export function validateDraftBatch(tensors: Record<string, Tensor>, c: DraftConfig, where = 'batch'): DraftBatch {
  const known = new Set(['ids', 'aux', 'last', 'mask']);
  for (const name of Object.keys(tensors)) {
    if (!known.has(name)) throw new InvalidArgumentError(`${where}: unexpected tensor "${name}" (expected ids, aux, last, mask)`, { detail: { tensor: name } });
  }
  const ids = checkTensor(where, 'ids', tensors.ids, 'i32', null);
  if (ids.shape.length !== 2 || ids.shape[0] < 1 || ids.shape[1] < 1) {
    throw new InvalidArgumentError(`${where}: tensor "ids" has shape [${ids.shape}], expected [B, T] with B, T ≥ 1`, { detail: { tensor: 'ids', got: ids.shape } });
  }
  const [B, T] = ids.shape;
  const aux = checkTensor(where, 'aux', tensors.aux, 'f32', [B, T, 3 * c.hidden]);
  const last = checkTensor(where, 'last', tensors.last, 'f32', [B, T, c.hidden]);
  const mask = checkTensor(where, 'mask', tensors.mask, 'u8', [B, T]);
  const idv = ids.data as Int32Array;
  for (let i = 0; i < idv.length; i++) {
    if (idv[i] < 0 || idv[i] >= c.vocab) {
      throw new InvalidArgumentError(`${where}: tensor "ids" has token id ${idv[i]} at [${Math.floor(i / T)}, ${i % T}], outside the vocabulary [0, ${c.vocab})`, { detail: { tensor: 'ids', index: i } });
    }
  }
  checkFinite(where, 'aux', aux.data as Float32Array);
  checkFinite(where, 'last', last.data as Float32Array);
  const mv = mask.data as Uint8Array;
  for (let i = 0; i < mv.length; i++) {
    if (mv[i] > 1) throw new InvalidArgumentError(`${where}: tensor "mask" has value ${mv[i]} at [${Math.floor(i / T)}, ${i % T}], expected 0 or 1`, { detail: { tensor: 'mask', index: i } });
  }
  return { ids: idv, aux: aux.data as Float32Array, last: last.data as Float32Array, mask: mv, batch: B, seq: T };
}

// ------------------------------------------------------------------------------------------
// Sharded steps: each rank's slice of a batch (DESIGN.md §3). DP rank dpIdx owns samples
// [dpIdx·B/dp, (dpIdx+1)·B/dp); SP rank spIdx owns positions [t0, t0+T/sp), t0 = spIdx·T/sp,
// of aux, and gets ids, last and mask for span = min(T/sp + K, T − t0) positions from t0: the
// TTT shift reads the token, target and weight of position t+1+k (k < K) for its last rows.
// TP ranks of one (sp, dp) cell get the same slice.

export interface BatchSlice { sp: number; dp: number; spIdx: number; dpIdx: number }

/** Why a batch of B samples × T positions cannot be split sp × dp ways, or null. */
export function batchSplitError(B: number, T: number, sp: number, dp: number): string | null {
  if (B % dp !== 0) return `the batch has ${B} samples, which dp = ${dp} does not divide (data parallelism splits the samples)`;
  if (T % sp !== 0) return `the sequence has ${T} positions, which sp = ${sp} does not divide (sequence parallelism splits the positions)`;
  return null;
}

/** Samples, first position, owned positions and span of a rank's slice. */
export function sliceGeometry(B: number, T: number, s: BatchSlice, ttt: number): { b0: number; nb: number; t0: number; nt: number; span: number } {
  const why = batchSplitError(B, T, s.sp, s.dp);
  if (why) throw new InvalidArgumentError(why);
  const nb = B / s.dp, nt = T / s.sp, t0 = s.spIdx * nt;
  return { b0: s.dpIdx * nb, nb, t0, nt, span: Math.min(nt + ttt, T - t0) };
}

/** A rank's slice of a whole batch (copies), as DraftModel.step takes it on a sharded model. */
export function sliceBatch(b: DraftBatch, s: BatchSlice, ttt: number, hidden: number): DraftBatch {
  const { batch: B, seq: T } = b;
  const g = sliceGeometry(B, T, s, ttt);
  const H = hidden;
  const ids = new Int32Array(g.nb * g.span), mask = new Uint8Array(g.nb * g.span);
  const last = new Float32Array(g.nb * g.span * H), aux = new Float32Array(g.nb * g.nt * 3 * H);
  for (let i = 0; i < g.nb; i++) {
    const src = (g.b0 + i) * T + g.t0;
    ids.set(b.ids.subarray(src, src + g.span), i * g.span);
    mask.set(b.mask.subarray(src, src + g.span), i * g.span);
    last.set(b.last.subarray(src * H, (src + g.span) * H), i * g.span * H);
    aux.set(b.aux.subarray(src * 3 * H, (src + g.nt) * 3 * H), i * g.nt * 3 * H);
  }
  // lengths are global (true lengths of whole samples): a slice keeps its samples' own
  const lengths = b.lengths ? b.lengths.slice(g.b0, g.b0 + g.nb) : undefined;
  return { ids, aux, last, mask, batch: g.nb, seq: g.nt, ...(lengths ? { lengths } : {}) };
}

/** [B, T] of a batch file, from its header (ids must be i32 [B, T] with B, T ≥ 1). */
export async function readDraftBatchShape(path: string): Promise<{ B: number; T: number }> {
  let fh;
  try { fh = await open(path, 'r'); } catch (e) { throw fileError(e, path, 'batch'); }
  try {
    const e = (await readHeader(fh, path)).entries.get('ids');
    const where = `batch ${path}`;
    checkTensor(where, 'ids', e ? { dtype: e.dtype, shape: e.shape, data: new Uint8Array(0) } : undefined, 'i32', null);
    if (e!.shape.length !== 2 || e!.shape[0] < 1 || e!.shape[1] < 1) {
      throw new InvalidArgumentError(`${where}: tensor "ids" has shape [${e!.shape}], expected [B, T] with B, T ≥ 1`, { detail: { tensor: 'ids', got: e!.shape } });
    }
    return { B: e!.shape[0]!, T: e!.shape[1]! };
  } finally {
    await fh.close();
  }
}

/**
 * Reads a rank's slice of a batch file, touching only the bytes of that slice: every tensor's
 * name, dtype and shape is checked against the whole batch, the values (id range, mask 0/1,
 * finiteness) within the slice (each position belongs to some rank's slice).
 */
export async function readDraftBatchSlice(path: string, c: DraftConfig, s: BatchSlice): Promise<{ batch: DraftBatch; B: number; T: number }> {
  const where = `batch ${path}`;
  let fh;
  try { fh = await open(path, 'r'); } catch (e) { throw fileError(e, path, 'batch'); }
  try {
    const h = await readHeader(fh, path);
    const known = new Set(['ids', 'aux', 'last', 'mask']);
    for (const name of h.entries.keys()) {
      if (!known.has(name)) throw new InvalidArgumentError(`${where}: unexpected tensor "${name}" (expected ids, aux, last, mask)`, { detail: { tensor: name } });
    }
    const entry = (name: string, dtype: Dtype, shape: number[] | null) => {
      const e = h.entries.get(name);
      checkTensor(where, name, e ? { dtype: e.dtype, shape: e.shape, data: new Uint8Array(0) } : undefined, dtype, shape);
      return e!;
    };
    const ide = entry('ids', 'i32', null);
    if (ide.shape.length !== 2 || ide.shape[0] < 1 || ide.shape[1] < 1) {
      throw new InvalidArgumentError(`${where}: tensor "ids" has shape [${ide.shape}], expected [B, T] with B, T ≥ 1`, { detail: { tensor: 'ids', got: ide.shape } });
    }
    const [B, T] = ide.shape as [number, number];
    const H = c.hidden;
    const auxe = entry('aux', 'f32', [B, T, 3 * H]), laste = entry('last', 'f32', [B, T, H]), maske = entry('mask', 'u8', [B, T]);
    const g = sliceGeometry(B, T, s, c.ttt);
    // bytes of positions [t, t + n) of sample b of a tensor with `w` elements of `bytes` per position
    const read = async (e: typeof ide, w: number, bytes: number, dst: Uint8Array, b: number, t: number, n: number) => {
      const off = h.dataStart + e.begin + (b * T + t) * w * bytes, len = n * w * bytes;
      const { bytesRead } = await fh.read(dst, 0, len, off);
      if (bytesRead !== len) throw new InvalidArgumentError(`${where}: tensor "${e.name}" is truncated`);
    };
    const ids = new Int32Array(g.nb * g.span), mask = new Uint8Array(g.nb * g.span);
    const last = new Float32Array(g.nb * g.span * H), aux = new Float32Array(g.nb * g.nt * 3 * H);
    const u8 = (a: Int32Array | Float32Array | Uint8Array, from: number, n: number) => new Uint8Array(a.buffer, a.byteOffset + from * a.BYTES_PER_ELEMENT, n * a.BYTES_PER_ELEMENT);
    for (let i = 0; i < g.nb; i++) {
      const b = g.b0 + i;
      await read(ide, 1, 4, u8(ids, i * g.span, g.span), b, g.t0, g.span);
      await read(maske, 1, 1, u8(mask, i * g.span, g.span), b, g.t0, g.span);
      await read(laste, H, 4, u8(last, i * g.span * H, g.span * H), b, g.t0, g.span);
      await read(auxe, 3 * H, 4, u8(aux, i * g.nt * 3 * H, g.nt * 3 * H), b, g.t0, g.nt);
    }
    const at = (i: number, n: number) => `[${g.b0 + Math.floor(i / n)}, ${g.t0 + (i % n)}]`;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] >= c.vocab) throw new InvalidArgumentError(`${where}: tensor "ids" has token id ${ids[i]} at ${at(i, g.span)}, outside the vocabulary [0, ${c.vocab})`, { detail: { tensor: 'ids' } });
      if (mask[i] > 1) throw new InvalidArgumentError(`${where}: tensor "mask" has value ${mask[i]} at ${at(i, g.span)}, expected 0 or 1`, { detail: { tensor: 'mask' } });
    }
    for (let i = 0; i < last.length; i++) {
      if (!Number.isFinite(last[i])) throw new InvalidArgumentError(`${where}: tensor "last" has a non-finite value (${last[i]}) at ${at(Math.floor(i / H), g.span)}`, { detail: { tensor: 'last' } });
    }
    for (let i = 0; i < aux.length; i++) {
      if (!Number.isFinite(aux[i])) throw new InvalidArgumentError(`${where}: tensor "aux" has a non-finite value (${aux[i]}) at ${at(Math.floor(i / (3 * H)), g.nt)}`, { detail: { tensor: 'aux' } });
    }
    return { batch: { ids, aux, last, mask, batch: g.nb, seq: g.nt }, B, T };
  } finally {
    await fh.close();
  }
}

async function readInput(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw fileError(e, path, what);
  }
}

function fileError(e: unknown, path: string, what: string): Error {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new InvalidArgumentError(`${what} ${path}: no such file`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new InvalidArgumentError(`${what} ${path}: permission denied`, { cause: e });
  if (code === 'EISDIR') return new InvalidArgumentError(`${what} ${path}: is a directory`, { cause: e });
  return e instanceof Error ? e : new Error(String(e));
}

async function readTensors(path: string, what: string): Promise<Record<string, Tensor>> {
  try {
    return (await readSafetensorsFile(path)).tensors;
  } catch (e) {
    throw fileError(e, path, what);
  }
}

export async function readDraftWeights(path: string, c: DraftConfig): Promise<DraftWeights> {
  return validateDraftWeights(await readTensors(path, 'weights'), c, `weights ${path}`);
}

export async function readDraftBatch(path: string, c: DraftConfig): Promise<DraftBatch> {
  return validateDraftBatch(await readTensors(path, 'batch'), c, `batch ${path}`);
}

export interface StepOutput {
  loss: number;
  gradNorm: number;
  ploss: ArrayLike<number>;
  acc: ArrayLike<number>;
  grads: Record<string, Float32Array>;
  /** Updated trainable weights (when a learning rate was given), else null. */
  updated: Record<string, Float32Array> | null;
}

/** The tensors of a step's output file: loss, grad_norm, ploss, acc, grad.<name>, new.<name>. */
export function stepOutputTensors(c: DraftConfig, out: StepOutput): Record<string, Tensor> {
  const specs = draftWeightSpecs(c);
  const t: Record<string, Tensor> = {
    loss: tensor('f32', [1], Float32Array.of(out.loss)),
    grad_norm: tensor('f32', [1], Float32Array.of(out.gradNorm)),
    ploss: tensor('f32', [c.ttt], Float32Array.from(out.ploss)),
    acc: tensor('f32', [c.ttt], Float32Array.from(out.acc)),
  };
  for (const name of TRAINABLE) {
    const g = out.grads[name];
    if (!g) throw new InvalidArgumentError(`step output: no gradient for "${name}"`);
    t[`grad.${name}`] = tensor('f32', specs[name].shape, g);
  }
  if (out.updated) {
    for (const name of TRAINABLE) {
      const w = out.updated[name];
      if (!w) throw new InvalidArgumentError(`step output: no updated weights for "${name}"`);
      t[`new.${name}`] = tensor('f32', specs[name].shape, w);
    }
  }
  return t;
}

export async function writeStepOutput(path: string, c: DraftConfig, out: StepOutput): Promise<number> {
  const tensors = stepOutputTensors(c, out);
  try {
    return await writeSafetensorsFile(path, tensors, { format: 'draftwire-step-v1' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException)?.code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR' || code === 'ENOTDIR') {
      throw new InvalidArgumentError(`out ${path}: cannot write (${code})`, { cause: e });
    }
    throw e;
  }
}
