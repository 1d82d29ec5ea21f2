// The safetensors file format (8-byte little-endian header length, JSON header, raw
// little-endian tensor bytes), so PyTorch tooling can read and write what Draftwire stores.
// Readers validate every field: a truncated or hostile file is a DecodeError, never a crash.
import { open, type FileHandle } from 'node:fs/promises';
import { DecodeError, InvalidArgumentError } from '../errors.ts';
import { DTYPE_BYTES, bytesOf, isDtype, numel, viewAs, type Dtype, type Tensor } from '../tensor.ts';
import { openForWrite, writeAtomic } from '../files.ts';

const FILE_DTYPE: Record<Dtype, string> = { f32: 'F32', f64: 'F64', bf16: 'BF16', f16: 'F16', i32: 'I32', i64: 'I64', u8: 'U8' };
const FROM_FILE_DTYPE: Record<string, Dtype> = Object.fromEntries(Object.entries(FILE_DTYPE).map(([k, v]) => [v, k as Dtype]));
export const MAX_HEADER_BYTES = 64 * 1024 * 1024;

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte range relative to the start of the data section. */
  begin: number;
  end: number;
  /** Stored as BOOL (read as u8 holding 0 or 1; only when the reader allows it). */
  bool?: true;
}

export interface SafetensorsHeader {
  /** Byte offset of the data section in the file (8 + header length). */
  dataStart: number;
  entries: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

export interface EncodeOptions {
  /** These u8 tensors (0 or 1 each) are written as dtype BOOL. */
  bool?: readonly string[];
}

/** Serializes tensors (in the order given) into header bytes plus the tensors' own bytes, for writev. */
export function encodeSafetensors(tensors: Record<string, Tensor>, metadata: Record<string, string> = {}, opts: EncodeOptions = {}): Uint8Array[] {
  const bool = new Set(opts.bool ?? []);
  for (const name of bool) {
    const t = tensors[name];
    if (!t || t.dtype !== 'u8') throw new InvalidArgumentError(`tensor "${name}": only a u8 tensor can be written as BOOL`);
    if ((t.data as Uint8Array).some((v) => v > 1)) throw new InvalidArgumentError(`tensor "${name}": a BOOL tensor holds only 0 and 1`);
  }
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new InvalidArgumentError('tensor name "__metadata__" is reserved');
    if (!isDtype(t.dtype)) throw new InvalidArgumentError(`tensor "${name}": unknown dtype ${String(t.dtype)}`);
    const bytes = bytesOf(t);
    if (bytes.byteLength !== numel(t.shape) * DTYPE_BYTES[t.dtype]) {
      throw new InvalidArgumentError(`tensor "${name}": ${bytes.byteLength} bytes do not fit ${t.dtype}[${t.shape}]`);
    }
    header[name] = { dtype: bool.has(name) ? 'BOOL' : FILE_DTYPE[t.dtype], shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    offset += bytes.byteLength;
    parts.push(bytes);
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // align the data section to 8 bytes
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  return [head, ...parts];
}

export function encodeSafetensorsBuffer(tensors: Record<string, Tensor>, metadata?: Record<string, string>, opts?: EncodeOptions): Buffer {
  return Buffer.concat(encodeSafetensors(tensors, metadata, opts));
}

/** A tensor name for a message: quoted when it is a plain feature name, else not at all. */
function label(name: string): string {
  return /^[A-Za-z0-9._/-]{1,64}$/.test(name) ? `"${name}"` : '(name not shown)';
}

/** Parses and validates the JSON header; `fileBytes` (when known) bounds every offset. */
export function parseHeader(json: Buffer, fileBytes: number | null, where: string, opts: { allowBool?: boolean } = {}): SafetensorsHeader {
  let raw: unknown;
  try { raw = JSON.parse(json.toString('utf8')); } catch { throw new DecodeError(`${where}: safetensors header is not valid JSON`); }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new DecodeError(`${where}: safetensors header is not an object`);
  const dataStart = 8 + json.byteLength;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Object.values(v).some((x) => typeof x !== 'string')) {
        throw new DecodeError(`${where}: __metadata__ must map strings to strings`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const isBool = opts.allowBool === true && e?.dtype === 'BOOL';
    const dtype = isBool ? 'u8' : typeof e?.dtype === 'string' ? FROM_FILE_DTYPE[e.dtype] : undefined;
    // Error messages never quote what the file says (it may not be ours: DESIGN, the store):
    // a dtype is named only when it is one we know, a name only when it is a plain one.
    if (!dtype) throw new DecodeError(`${where}: tensor ${label(name)} has an unsupported dtype`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new DecodeError(`${where}: tensor ${label(name)} has an invalid shape`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]) {
      throw new DecodeError(`${where}: tensor ${label(name)} has invalid data_offsets`);
    }
    const shape = e.shape as number[];
    const [begin, end] = off as [number, number];
    if (end - begin !== numel(shape) * DTYPE_BYTES[dtype]) {
      throw new DecodeError(`${where}: tensor ${label(name)} spans ${end - begin} bytes but ${dtype}[${shape}] needs ${numel(shape) * DTYPE_BYTES[dtype]}`);
    }
    if (fileBytes !== null && dataStart + end > fileBytes) throw new DecodeError(`${where}: tensor ${label(name)} runs past the end of the file (truncated?)`);
    entries.set(name, isBool ? { name, dtype, shape, begin, end, bool: true } : { name, dtype, shape, begin, end });
  }
  return { dataStart, entries, metadata };
}

function headerLength(first8: Uint8Array, fileBytes: number, where: string, maxHeaderBytes = MAX_HEADER_BYTES): number {
  if (first8.byteLength < 8) throw new DecodeError(`${where}: too short to be a safetensors file`);
  const n = Buffer.from(first8.buffer, first8.byteOffset, 8).readBigUInt64LE(0);
  // Not the value itself: those are the file's first 8 bytes (of whatever file it is).
  const bound = Math.min(MAX_HEADER_BYTES, maxHeaderBytes, fileBytes - 8);
  if (n > BigInt(bound)) throw new DecodeError(`${where}: header length exceeds the file (${fileBytes} bytes) or the ${Math.min(MAX_HEADER_BYTES, maxHeaderBytes)}-byte bound`);
  return Number(n);
}

function checkBool(e: TensorEntry, bytes: Uint8Array, where: string): void {
  if (e.bool && bytes.some((v) => v > 1)) throw new DecodeError(`${where}: BOOL tensor ${label(e.name)} holds a byte other than 0 or 1`);
}

/** Decodes a whole in-memory file. Tensors are views into `buf` unless `copy` is set; BOOL tensors (u8) only with `allowBool`. */
export function decodeSafetensors(buf: Uint8Array, opts: { copy?: boolean; where?: string; allowBool?: boolean } = {}): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const where = opts.where ?? 'buffer';
  const n = headerLength(buf, buf.byteLength, where);
  const h = parseHeader(Buffer.from(buf.buffer, buf.byteOffset + 8, n), buf.byteLength, where, { allowBool: opts.allowBool });
  const tensors: Record<string, Tensor> = {};
  for (const e of h.entries.values()) {
    const slice = buf.subarray(h.dataStart + e.begin, h.dataStart + e.end);
    checkBool(e, slice, where);
    tensors[e.name] = { dtype: e.dtype, shape: e.shape, data: viewAs(e.dtype, opts.copy ? new Uint8Array(slice) : slice) };
  }
  return { tensors, metadata: h.metadata };
}

/** Reads and parses the header; `maxHeaderBytes` bounds what is allocated for it (checked before allocating). */
export async function readHeader(fh: FileHandle, where: string, maxHeaderBytes = MAX_HEADER_BYTES, opts: { allowBool?: boolean } = {}): Promise<SafetensorsHeader> {
  const { size } = await fh.stat();
  const first = Buffer.alloc(8);
  await fh.read(first, 0, 8, 0);
  const n = headerLength(size >= 8 ? first : first.subarray(0, size), size, where, maxHeaderBytes);
  const json = Buffer.alloc(n);
  const { bytesRead } = await fh.read(json, 0, n, 8);
  if (bytesRead !== n) throw new DecodeError(`${where}: header truncated`);
  return parseHeader(json, size, where, opts);
}

export interface ReadOptions {
  /** Only these tensors (all when omitted); a missing name is an error. */
  names?: readonly string[];
  /** Only rows [start, end) of the first dimension of every tensor read. */
  rows?: readonly [number, number];
  /** Read BOOL tensors (as u8, every byte checked to be 0 or 1); otherwise BOOL is an unsupported dtype. */
  allowBool?: boolean;
}

/** Reads some or all tensors of a file into fresh (private) buffers. */
export async function readSafetensorsFile(path: string, opts: ReadOptions = {}): Promise<{ tensors: Record<string, Tensor>; metadata: Record<string, string> }> {
  const fh = await open(path, 'r');
  try {
    const h = await readHeader(fh, path, MAX_HEADER_BYTES, { allowBool: opts.allowBool });
    const names = opts.names ?? [...h.entries.keys()];
    const tensors: Record<string, Tensor> = {};
    for (const name of names) {
      const e = h.entries.get(name);
      if (!e) throw new InvalidArgumentError(`${path}: no tensor named "${name}" (has ${[...h.entries.keys()].join(', ')})`);
      let { begin, end } = e;
      let shape = e.shape;
      if (opts.rows) {
        const [r0, r1] = opts.rows;
        const rowsTotal = shape[0] ?? 0;
        if (shape.length === 0 || !Number.isInteger(r0) || !Number.isInteger(r1) || r0 < 0 || r1 < r0 || r1 > rowsTotal) {
          throw new InvalidArgumentError(`${path}: rows [${r0}, ${r1}) are outside tensor "${name}" with shape [${shape}]`);
        }
        const rowBytes = rowsTotal === 0 ? 0 : (end - begin) / rowsTotal;
        begin += r0 * rowBytes;
        end = e.begin + r1 * rowBytes;
        shape = [r1 - r0, ...shape.slice(1)];
      }
      const bytes = new Uint8Array(end - begin);
      const { bytesRead } = await fh.read(bytes, 0, bytes.byteLength, h.dataStart + begin);
      if (bytesRead !== bytes.byteLength) throw new DecodeError(`${path}: tensor "${name}" truncated`);
      checkBool(e, bytes, path);
      tensors[name] = { dtype: e.dtype, shape, data: viewAs(e.dtype, bytes) };
    }
    return { tensors, metadata: h.metadata };
  } finally {
    await fh.close();
  }
}

/**
 * Writes a file with the job's FILE_MODE; `atomic`: through a temp file, fsync'd and renamed
 * over `path` (a reader or a crash sees the old file or the whole new one). Not atomic: in
 * place (the feature store adds its own temp + fsync + rename on top).
 */
export async function writeSafetensorsFile(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>, opts: EncodeOptions & { atomic?: boolean } = {}): Promise<number> {
  const parts = encodeSafetensors(tensors, metadata, opts);
  if (opts.atomic) await writeAtomic(path, (fh) => fh.writev(parts), { fsync: true });
  else {
    const fh = await openForWrite(path);
    try { await fh.writev(parts); } finally { await fh.close(); }
  }
  return parts.reduce((n, p) => n + p.byteLength, 0);
}
