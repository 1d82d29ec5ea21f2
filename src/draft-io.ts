// Files of the `draftwire step` command: the draft config (JSON), the draft weights and one
// batch (safetensors), and the step's output file. Every reader validates everything the
// native step relies on (names, dtypes, shapes, ranges, finiteness) and fails with an
// InvalidArgumentError naming the key or tensor, with what was expected and what was found.
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from './errors.ts';
import { readSafetensorsFile, writeSafetensorsFile } from './safetensors.ts';
import { tensor, type Dtype, type Tensor } from './tensor.ts';

/** The draft model's sizes (the same fields as native.ts's DraftConfig). */
export interface DraftConfig {
  vocab: number;
  draftVocab: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  ttt: number;
  ropeTheta: number;
  rmsEps: number;
}

/** One batch as the native step takes it (native.ts's DraftBatch). */
export interface DraftBatch {
  ids: Int32Array;
  aux: Float32Array;
  last: Float32Array;
  mask: Uint8Array;
  batch: number;
  seq: number;
}

export type DraftWeights = Record<string, Float32Array | Int32Array>;

/** Trainable tensors, in docs/model-math.md order. */
export const TRAINABLE = ['fc', 'n_in', 'n_hid', 'q', 'k', 'v', 'o', 'n_post', 'gate', 'up', 'down', 'n_final', 'lm'] as const;
export const FROZEN = ['embed', 'target_head', 'd2t'] as const;

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
  return c;
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
  const H = c.hidden, d = c.hidden / c.heads;
  const f = (...shape: number[]) => ({ dtype: 'f32' as Dtype, shape });
  return {
    fc: f(H, 3 * H), n_in: f(H), n_hid: f(H),
    q: f(c.heads * d, 2 * H), k: f(c.kvHeads * d, 2 * H), v: f(c.kvHeads * d, 2 * H), o: f(H, c.heads * d),
    n_post: f(H), gate: f(c.intermediate, H), up: f(c.intermediate, H), down: f(H, c.intermediate),
    n_final: f(H), lm: f(c.draftVocab, H),
    embed: f(c.vocab, H), target_head: f(c.vocab, H), d2t: { dtype: 'i32', shape: [c.draftVocab] },
  };
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
