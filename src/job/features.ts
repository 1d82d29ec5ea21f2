// Offline features: a directory of per-row hidden states some other process computed, read and
// checked one file at a time and turned into the job's samples (ids i32 [T], aux [T, 3H] and
// last [T, H] in the file's own float dtype, mask u8 [T]: docs/wire.md). Two layouts:
// - capture: what `draftwire capture` writes (src/job/capture.ts): <id>.safetensors with
//   input_ids I64 [T], loss_mask U8 [T], aux_hidden_state [T, 3H] and hidden_state [T, H]
//   (post-norm), beside vocab.safetensors;
// - speculators: vLLM speculators' data generation (vLLM's extract_hidden_states connector):
//   hs_<i>.safetensors with token_ids [T] (I64 or I32) and hidden_states [T, 4, H], slots 0..2
//   the aux layers low to high and slot 3 the last decoder layer's output BEFORE the final
//   norm (vLLM taps layer id num_hidden_layers as hidden_states + residual). `last` is that
//   slot under the target's final RMSNorm (its weight and eps), computed here; the loss mask
//   is the dataset row's (src/job/features-data.ts) unless the file carries loss_mask.
// A file longer than --max-len is cut to it (causal attention: the first positions' states do
// not depend on the ones cut), as a chat job cuts its conversations. Everything else wrong with
// a file is a FeaturesError naming the file and, in detail.reason, what was wrong: the caller
// dead-letters the file; nothing here trains on a file it has not fully checked.
import { open, type FileHandle } from 'node:fs/promises';
import { DecodeError, FeaturesError } from '../errors.ts';
import { upcastToF32 } from '../native/addon.ts';
import { readHeader, type SafetensorsHeader, type TensorEntry } from '../store/safetensors.ts';
import { f32ToBf16, f32ToF16, tensor, type Dtype, type Tensor } from '../tensor.ts';
import { MIN_SAMPLE_TOKENS } from '../wire/schema.ts';

export type FeaturesLayout = 'capture' | 'speculators';

/** The features part of a job spec (job.json "features"): where the files are and how to read them. */
export interface FeaturesSpec {
  dir: string;
  layout: FeaturesLayout;
  /** speculators: the JSONL dataset whose row i gave hs_i its loss mask; null when the files carry their own. */
  dataset: string | null;
}

/** The capture's draft vocabulary (d2t, t2d), beside its row files. */
export const CAPTURE_VOCAB = 'vocab.safetensors';
const HS_FILE = /^hs_(\d+)\.safetensors$/;
/** The sample ids the store takes (docs/wire.md); a capture's file stems are such ids. */
const SAMPLE_ID = /^[A-Za-z0-9._:-]{1,200}$/;
const FLOATS: readonly Dtype[] = ['f32', 'bf16', 'f16'];
/** A sample file's header is a few hundred bytes; a bigger one is not a features file. */
const MAX_HEADER = 1 << 20;

/** What a file must fit: the target's sizes, the job's longest sample, and for speculators files the final norm. */
export interface FeatureLimits {
  hidden: number;
  vocab: number;
  /** Longer files are cut to this many tokens. */
  maxLen: number;
  /** capture: the job's aux layers (output convention); a file whose metadata names others is refused. */
  auxLayers?: readonly number[];
  /** speculators: the target's final RMSNorm, applied to slot 3. */
  norm?: { weight: Float32Array; eps: number };
}

/** A checked file, cut to maxLen: its ids, its own loss mask when it has one, aux and last in the file's dtype. */
export interface FeatureFile {
  ids: Int32Array;
  mask: Uint8Array | null;
  aux: Tensor;
  last: Tensor;
  /** Tokens in the file (before the cut). */
  tokens: number;
  truncated: boolean;
}

/** One sample file of a directory: its name and the sample id it trains as. */
export interface FeatureEntry { name: string; id: string }

/** The layout a directory's file names say, or null when they say neither. */
export function detectLayout(names: readonly string[]): FeaturesLayout | null {
  if (names.includes(CAPTURE_VOCAB) || names.includes('capture.json')) return 'capture';
  if (names.some((n) => /^hs_\d+\.safetensors(\.zst)?$/.test(n))) return 'speculators';
  return null;
}

const byName = new Intl.Collator('en', { numeric: true }).compare;

/**
 * The directory's sample files in training order (capture: by name, numbers compared as
 * numbers; speculators: by index i), and the names that look like samples but cannot be read
 * as one, each with its reason. Other files (capture.json, data_config.json, locks) are not samples.
 */
export function featureEntries(names: readonly string[], layout: FeaturesLayout): { entries: FeatureEntry[]; rejected: { file: string; reason: string }[] } {
  const entries: (FeatureEntry & { index: number })[] = [], rejected: { file: string; reason: string }[] = [];
  const seen = new Map<number, string>();
  for (const name of names) {
    if (name.startsWith('.')) continue; // temp files of a writer
    if (layout === 'speculators' && /^hs_\d+\.safetensors\.zst$/.test(name)) {
      rejected.push({ file: name, reason: 'zstd-compressed (vLLM\'s online connector): decompress it first (zstd -d)' });
      continue;
    }
    if (!name.endsWith('.safetensors') || (layout === 'capture' && name === CAPTURE_VOCAB)) continue;
    const id = name.slice(0, -'.safetensors'.length);
    if (layout === 'speculators') {
      const m = HS_FILE.exec(name);
      if (!m) { rejected.push({ file: name, reason: 'not named hs_<index>.safetensors (speculators layout)' }); continue; }
      const index = Number(m[1]);
      const twin = seen.get(index);
      if (twin !== undefined || !Number.isSafeInteger(index)) { rejected.push({ file: name, reason: `row index ${m[1]} is also ${twin ?? 'out of range'}` }); continue; }
      seen.set(index, name);
      entries.push({ name, id, index });
    } else {
      if (!SAMPLE_ID.test(id) || id === '.' || id === '..') { rejected.push({ file: name, reason: 'the file name is not a usable sample id ([A-Za-z0-9._:-], at most 200 characters)' }); continue; }
      entries.push({ name, id, index: 0 });
    }
  }
  entries.sort((a, b) => a.index - b.index || byName(a.name, b.name));
  return { entries: entries.map(({ name, id }) => ({ name, id })), rejected };
}

/** A bad file: the message names it, detail.reason says what was wrong (for its dead letter). */
export function badFile(file: string, reason: string, cause?: unknown): FeaturesError {
  return new FeaturesError(`${file}: ${reason}`, { detail: { file, reason }, ...(cause === undefined ? {} : { cause }) });
}

/** Reads and checks one file of the layout; a FeaturesError (detail.reason) for anything wrong with it. */
export async function readFeatureFile(path: string, layout: FeaturesLayout, lim: FeatureLimits): Promise<FeatureFile> {
  let fh: FileHandle;
  try { fh = await open(path, 'r'); } catch (e) { throw badFile(path, `cannot be opened (${(e as NodeJS.ErrnoException).code ?? String(e)})`, e); }
  try {
    let h: SafetensorsHeader;
    try { h = await readHeader(fh, path, MAX_HEADER, { allowBool: true }); } catch (e) {
      if (e instanceof DecodeError) throw badFile(path, `not a readable safetensors file: ${e.message.startsWith(`${path}: `) ? e.message.slice(path.length + 2) : e.message}`, e);
      throw e;
    }
    return layout === 'capture' ? await readCapture(fh, h, path, lim) : await readSpeculators(fh, h, path, lim);
  } finally {
    await fh.close();
  }
}

function entry(h: SafetensorsHeader, path: string, name: string, dtypes: readonly Dtype[], layout: string): TensorEntry {
  const e = h.entries.get(name);
  if (!e) throw badFile(path, `no tensor "${name}" (a ${layout} file has ${layout === 'capture' ? 'input_ids, loss_mask, aux_hidden_state, hidden_state' : 'token_ids, hidden_states'}; this one has ${[...h.entries.keys()].map((k) => /^[A-Za-z0-9._-]{1,64}$/.test(k) ? k : '?').join(', ') || 'none'})`);
  const dt = e.bool ? 'bool' : e.dtype;
  if ((e.bool && name !== 'loss_mask') || !dtypes.includes(e.dtype)) throw badFile(path, `"${name}" is ${dt}; expected ${dtypes.join(' or ')}`);
  return e;
}

function shapeIs(path: string, e: TensorEntry, want: number[], dims: string): void {
  if (e.shape.length !== want.length || e.shape.some((d, i) => d !== want[i])) {
    throw badFile(path, `"${e.name}" has shape [${e.shape.join(', ')}]; expected ${dims} = [${want.join(', ')}]`);
  }
}

/** T of the file from its ids tensor: a 1-D tensor of at least MIN_SAMPLE_TOKENS. */
function tokensOf(path: string, e: TensorEntry): number {
  if (e.shape.length !== 1) throw badFile(path, `"${e.name}" has shape [${e.shape.join(', ')}]; expected [T]`);
  const T = e.shape[0]!;
  if (T < MIN_SAMPLE_TOKENS) throw badFile(path, `"${e.name}" has ${T} token(s); a sample needs at least ${MIN_SAMPLE_TOKENS}`);
  return T;
}

/** Rows [0, rows) of a tensor, read whole (one read returns at most ~2 GiB: loop). */
async function readRows(fh: FileHandle, h: SafetensorsHeader, e: TensorEntry, rows: number, path: string): Promise<Uint8Array> {
  const rowBytes = (e.end - e.begin) / e.shape[0]!, bytes = new Uint8Array(rows * rowBytes);
  for (let got = 0; got < bytes.byteLength;) {
    const { bytesRead } = await fh.read(bytes, got, Math.min(bytes.byteLength - got, 1 << 30), h.dataStart + e.begin + got);
    if (bytesRead === 0) throw badFile(path, `"${e.name}" is truncated`);
    got += bytesRead;
  }
  return bytes;
}

function idsOf(path: string, e: TensorEntry, bytes: Uint8Array, V: number): Int32Array {
  const n = bytes.byteLength / (e.dtype === 'i64' ? 8 : 4), out = new Int32Array(n);
  const src = e.dtype === 'i64' ? new BigInt64Array(bytes.buffer, bytes.byteOffset, n) : new Int32Array(bytes.buffer, bytes.byteOffset, n);
  for (let t = 0; t < n; t++) {
    const x = Number(src[t]!);
    if (!(x >= 0 && x < V)) throw badFile(path, `"${e.name}"[${t}] = ${String(src[t])} is outside the target's vocabulary [0, ${V})`);
    out[t] = x;
  }
  return out;
}

function maskOf(path: string, e: TensorEntry, bytes: Uint8Array): Uint8Array {
  const i = bytes.findIndex((v) => v > 1);
  if (i >= 0) throw badFile(path, `"${e.name}"[${i}] is ${bytes[i]}; a loss mask holds 0 or 1`);
  return bytes;
}

/** Index of the first NaN or ±inf (raw words of the dtype), or -1. */
export function firstNonFinite(dtype: Dtype, bytes: Uint8Array): number {
  if (dtype === 'f32') {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let i = 0; i < u.length; i++) if ((u[i]! & 0x7f800000) === 0x7f800000) return i;
    return -1;
  }
  const u = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2), exp = dtype === 'bf16' ? 0x7f80 : 0x7c00;
  // Two half words at a time: a lane's exponent bits plus its lowest exponent bit carry into the
  // lane's top bit only when they are all ones (no carry reaches the next lane); then find which.
  const aligned = bytes.byteOffset % 4 === 0 ? Math.floor(u.length / 2) : 0;
  const w = aligned > 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, aligned) : new Uint32Array(0), mask = exp * 0x10001, low = (exp & -exp) * 0x10001;
  for (let j = 0; j < w.length; j++) if ((((w[j]! & mask) + low) & 0x80008000) !== 0) return (u[2 * j]! & exp) === exp ? 2 * j : 2 * j + 1;
  for (let i = 2 * aligned; i < u.length; i++) if ((u[i]! & exp) === exp) return i;
  return -1;
}

function floatsOf(path: string, e: TensorEntry, bytes: Uint8Array, rowWidth: number): Float32Array | Uint16Array {
  const i = firstNonFinite(e.dtype, bytes);
  if (i >= 0) throw badFile(path, `"${e.name}" holds a non-finite value (NaN or inf) at token ${Math.floor(i / rowWidth)}`);
  return e.dtype === 'f32' ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4) : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
}

async function readCapture(fh: FileHandle, h: SafetensorsHeader, path: string, lim: FeatureLimits): Promise<FeatureFile> {
  const H = lim.hidden;
  const ids = entry(h, path, 'input_ids', ['i64', 'i32'], 'capture'), mask = entry(h, path, 'loss_mask', ['u8'], 'capture');
  const aux = entry(h, path, 'aux_hidden_state', FLOATS, 'capture'), last = entry(h, path, 'hidden_state', FLOATS, 'capture');
  const T = tokensOf(path, ids);
  shapeIs(path, mask, [T], '[T]');
  shapeIs(path, aux, [T, 3 * H], `[T, 3H] (H = ${H}, the target's hidden size)`);
  shapeIs(path, last, [T, H], `[T, H] (H = ${H})`);
  const layers = h.metadata.aux_layers;
  if (lim.auxLayers && layers !== undefined && layers !== lim.auxLayers.join(',')) {
    throw badFile(path, `captured at aux layers ${/^[\d,]{1,64}$/.test(layers) ? layers : '(unreadable)'} (its metadata); the job trains on ${lim.auxLayers.join(',')}`);
  }
  const n = Math.min(T, lim.maxLen);
  return {
    ids: idsOf(path, ids, await readRows(fh, h, ids, n, path), lim.vocab),
    mask: maskOf(path, mask, await readRows(fh, h, mask, n, path)),
    aux: tensor(aux.dtype, [n, 3 * H], floatsOf(path, aux, await readRows(fh, h, aux, n, path), 3 * H)),
    last: tensor(last.dtype, [n, H], floatsOf(path, last, await readRows(fh, h, last, n, path), H)),
    tokens: T, truncated: n < T,
  };
}

async function readSpeculators(fh: FileHandle, h: SafetensorsHeader, path: string, lim: FeatureLimits): Promise<FeatureFile> {
  if (!lim.norm) throw new FeaturesError('speculators features need the target\'s final norm (FeatureLimits.norm)');
  const H = lim.hidden;
  const ids = entry(h, path, 'token_ids', ['i64', 'i32'], 'speculators'), hs = entry(h, path, 'hidden_states', FLOATS, 'speculators');
  const T = tokensOf(path, ids);
  if (hs.shape.length === 3 && hs.shape[0] === T && hs.shape[2] === H && hs.shape[1] !== 4) {
    throw badFile(path, `"hidden_states" has ${hs.shape[1]} layer slots; expected 4 (three aux layers and the final hidden state: speculators' default layer ids, or --target-layer-ids of three with --include-last-layer)`);
  }
  shapeIs(path, hs, [T, 4, H], `[T, 4, H] (H = ${H}, the target's hidden size)`);
  const maskE = h.entries.has('loss_mask') ? entry(h, path, 'loss_mask', ['u8'], 'speculators') : null;
  if (maskE) shapeIs(path, maskE, [T], '[T]');
  const n = Math.min(T, lim.maxLen);
  const raw = floatsOf(path, hs, await readRows(fh, h, hs, n, path), 4 * H);
  return {
    ids: idsOf(path, ids, await readRows(fh, h, ids, n, path), lim.vocab),
    mask: maskE ? maskOf(path, maskE, await readRows(fh, h, maskE, n, path)) : null,
    aux: tensor(hs.dtype, [n, 3 * H], auxSlots(raw, n, H)),
    last: tensor(hs.dtype, [n, H], finalNormed(raw, hs.dtype, n, H, lim.norm)),
    tokens: T, truncated: n < T,
  };
}

/** Slots 0..2 of [T, 4, H], side by side per token: [T, 3H] (the same words, no conversion). */
export function auxSlots<A extends Float32Array | Uint16Array>(hs: A, T: number, H: number): A {
  const out = new (hs.constructor as new (n: number) => A)(T * 3 * H);
  for (let t = 0; t < T; t++) out.set(hs.subarray(t * 4 * H, t * 4 * H + 3 * H), t * 3 * H);
  return out;
}

/**
 * RMSNorm(slot 3; weight, eps) per token, in f32 (as transformers' LlamaRMSNorm normalises in
 * f32), rounded once to the file's dtype: the post-norm state the target head takes.
 */
export function finalNormed(hs: Float32Array | Uint16Array, dtype: Dtype, T: number, H: number, norm: { weight: Float32Array; eps: number }): Float32Array | Uint16Array {
  const x = new Float32Array(T * H);
  if (hs instanceof Float32Array) for (let t = 0; t < T; t++) x.set(hs.subarray(t * 4 * H + 3 * H, (t + 1) * 4 * H), t * H);
  else {
    const words = new Uint16Array(T * H);
    for (let t = 0; t < T; t++) words.set(hs.subarray(t * 4 * H + 3 * H, (t + 1) * 4 * H), t * H);
    upcastToF32(words, dtype as 'bf16' | 'f16', x);
  }
  const w = norm.weight;
  for (let t = 0; t < T; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    let ss = 0;
    for (let i = 0; i < H; i++) ss += row[i]! * row[i]!;
    const r = 1 / Math.sqrt(Math.fround(ss / H) + norm.eps);
    for (let i = 0; i < H; i++) row[i] = w[i]! * Math.fround(row[i]! * r);
  }
  return dtype === 'f32' ? x : dtype === 'bf16' ? f32ToBf16(x) : f32ToF16(x);
}

/**
 * Why a file's ids (after the cut) are not the expected ones, or null when they are. `full`:
 * `want` is the row's whole tokenization (the dataset's), of which a file its producer cut is
 * a prefix but which no file is longer than; else `want` is the job's stored (cut) row.
 */
export function idsMismatch(file: FeatureFile, want: ArrayLike<number>, what: string, full: boolean): string | null {
  const n = full ? file.tokens : file.ids.length;
  if (full ? n > want.length : n !== want.length) return `the file has ${n} tokens but ${what} has ${want.length}`;
  for (let t = 0; t < file.ids.length; t++) {
    if (file.ids[t] !== want[t]) return `its token ids differ from ${what} at position ${t} (file ${file.ids[t]}, expected ${want[t]})`;
  }
  return null;
}

/** The loss mask a sample trains with: the first T entries, and never the last position (nothing after it to predict). */
export function trainingMask(mask: ArrayLike<number>, T: number): Uint8Array {
  const out = Uint8Array.from({ length: T }, (_, t) => (mask[t] ? 1 : 0));
  out[T - 1] = 0;
  return out;
}
