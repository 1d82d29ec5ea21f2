// Sample checksums that partial readers can verify. Every tensor is cut into blocks of whole
// rows (about 1 MiB each); the manifest lists each block's digest: BLAKE3 (manifest v 2,
// `alg: "blake3"`, hashed natively off the event loop at memory speed) or sha256 (v 1, what
// older writers and the Python producer write; still read). The sample's checksum is
// `sha256m:<sha256 of the canonical manifest JSON>` either way (the manifest is small). The manifest travels in the file
// header and is bound to the (MAC'd) ref by that checksum, so a reader of some tensors or
// some rows verifies exactly the blocks it reads, and a full reader verifies everything.
import { createHash } from 'node:crypto';
import { blake3 as nobleBlake3 } from '@noble/hashes/blake3.js';
import { blake3Blocks, blake3BlocksSync, nativeAvailable } from '../native/addon.ts';
import { ChecksumError, DecodeError } from '../errors.ts';
import { DTYPE_BYTES, numel, type Dtype } from '../tensor.ts';

export const DEFAULT_BLOCK_BYTES = 1 << 20;

export interface ManifestTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Rows (of the first dimension) per block; a rank-0 tensor is one block. */
  blockRows: number;
  /** Digest (hex, of the manifest's algorithm) of each block, in order. */
  digests: string[];
}

/** Block digest algorithm: v 1 manifests are sha256, v 2 name theirs (blake3). */
export type BlockAlg = 'sha256' | 'blake3';

export interface Manifest {
  v: 1 | 2;
  /** Present exactly when v is 2. */
  alg?: 'blake3';
  blockBytes: number;
  tensors: ManifestTensor[];
}

/** Rows of the first dimension (1 for a scalar). */
export function rowsOf(shape: readonly number[]): number {
  return shape.length === 0 ? 1 : shape[0]!;
}

function layout(dtype: Dtype, shape: readonly number[], blockBytes: number): { rows: number; rowBytes: number; blockRows: number; blocks: number } {
  const rows = rowsOf(shape);
  const total = numel(shape) * DTYPE_BYTES[dtype];
  const rowBytes = rows === 0 ? 0 : total / rows;
  const blockRows = rowBytes > 0 ? Math.max(1, Math.floor(blockBytes / rowBytes)) : Math.max(1, rows);
  const blocks = Math.max(1, Math.ceil(rows / blockRows));
  return { rows, rowBytes, blockRows, blocks };
}

export function algOf(m: Manifest): BlockAlg { return m.v === 2 ? 'blake3' : 'sha256'; }

/** Byte lengths of blocks [b0, b1) of a tensor (one block of all its bytes when rows are empty). */
function blockLens(dtype: Dtype, shape: readonly number[], blockBytes: number, b0: number, b1: number, total: number): number[] {
  const { rows, rowBytes, blockRows } = layout(dtype, shape, blockBytes);
  const lens: number[] = [];
  for (let b = b0; b < b1; b++) lens.push(rowBytes > 0 ? (Math.min(rows, (b + 1) * blockRows) - b * blockRows) * rowBytes : total);
  return lens;
}

/** Spans up to this size are hashed on the event loop (under a millisecond; the hop off it costs more). */
export const SYNC_HASH_BYTES = 1 << 20;

/**
 * Where the native addon is missing (the package installed without building it, e.g. an
 * embedder that only writes features), the same digests come from @noble/hashes' portable
 * BLAKE3, on the event loop and some 20× slower; the two are cross-checked in the tests.
 */
let portable: boolean | null = null;
function portableBlake3(bytes: Uint8Array, lens: number[]): string[] {
  let at = 0;
  return lens.map((n) => { const d = nobleBlake3(bytes.subarray(at, at + n)); at += n; return Buffer.from(d).toString('hex'); });
}

async function blake3Hex(bytes: Uint8Array, lens: number[]): Promise<string[]> {
  portable ??= !nativeAvailable();
  if (portable) return portableBlake3(bytes, lens);
  const total = lens.reduce((a, n) => a + n, 0);
  const d = total <= SYNC_HASH_BYTES ? blake3BlocksSync(bytes, lens) : await blake3Blocks(bytes, lens);
  return lens.map((_, b) => Buffer.from(d.buffer, d.byteOffset + 32 * b, 32).toString('hex'));
}

/** Test hook: the portable digests of `lens` consecutive blocks of `bytes`. */
export function portableBlockDigests(bytes: Uint8Array, lens: number[]): string[] { return portableBlake3(bytes, lens); }

/** sha256 digests of one tensor's bytes (the v 1 writer: wire vectors, old-format fixtures). */
export function tensorManifest(name: string, dtype: Dtype, shape: number[], bytes: Uint8Array, blockBytes = DEFAULT_BLOCK_BYTES): ManifestTensor {
  const { rows, rowBytes, blockRows, blocks } = layout(dtype, shape, blockBytes);
  const digests: string[] = [];
  for (let b = 0; b < blocks; b++) {
    const r0 = b * blockRows;
    const r1 = Math.min(rows, r0 + blockRows);
    const slice = rowBytes > 0 ? bytes.subarray(r0 * rowBytes, r1 * rowBytes) : bytes;
    digests.push(createHash('sha256').update(slice).digest('hex'));
  }
  return { name, dtype, shape: [...shape], blockRows, digests };
}

export function buildManifest(tensors: { name: string; dtype: Dtype; shape: number[]; bytes: Uint8Array }[], blockBytes = DEFAULT_BLOCK_BYTES): Manifest {
  return { v: 1, blockBytes, tensors: tensors.map((t) => tensorManifest(t.name, t.dtype, t.shape, t.bytes, blockBytes)) };
}

/** The canonical JSON of a manifest (fixed key order; `alg` only in v 2, after `v`). */
export function manifestJson(m: Manifest): string {
  return JSON.stringify({
    v: m.v, ...(m.v === 2 ? { alg: 'blake3' } : {}), blockBytes: m.blockBytes,
    tensors: m.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, blockRows: t.blockRows, digests: t.digests })),
  });
}

export function checksumOfManifestJson(json: string): string {
  return 'sha256m:' + createHash('sha256').update(json, 'utf8').digest('hex');
}

/** Parses manifest JSON from a file header; DecodeError when malformed. */
export function parseManifest(json: string, where: string): Manifest {
  let raw: unknown;
  try { raw = JSON.parse(json); } catch { throw new DecodeError(`${where}: manifest is not JSON`); }
  const m = raw as Manifest;
  const ok = m !== null && typeof m === 'object' && ((m.v === 1 && m.alg === undefined) || (m.v === 2 && m.alg === 'blake3')) && Number.isSafeInteger(m.blockBytes) && m.blockBytes > 0 && Array.isArray(m.tensors)
    && m.tensors.every((t) => t && typeof t.name === 'string' && typeof t.dtype === 'string' && t.dtype in DTYPE_BYTES
      && Array.isArray(t.shape) && t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)
      && Number.isSafeInteger(t.blockRows) && t.blockRows >= 1 && Array.isArray(t.digests)
      && t.digests.every((d) => typeof d === 'string' && /^[0-9a-f]{64}$/.test(d))
      && t.digests.length === layout(t.dtype, t.shape, m.blockBytes).blocks && t.blockRows === layout(t.dtype, t.shape, m.blockBytes).blockRows);
  if (!ok) throw new DecodeError(`${where}: manifest is malformed`);
  return m;
}

/** The block range covering rows [r0, r1) and its byte range within the tensor. */
export function blockSpan(t: ManifestTensor, blockBytes: number, r0: number, r1: number): { b0: number; b1: number; byte0: number; byte1: number; rowBytes: number } {
  const { rows, rowBytes, blockRows, blocks } = layout(t.dtype, t.shape, blockBytes);
  if (rowBytes === 0) return { b0: 0, b1: blocks, byte0: 0, byte1: 0, rowBytes };
  const b0 = Math.floor(r0 / blockRows);
  const b1 = r1 === r0 ? b0 : Math.ceil(r1 / blockRows);
  return { b0, b1, byte0: b0 * blockRows * rowBytes, byte1: Math.min(rows, b1 * blockRows) * rowBytes, rowBytes };
}

/**
 * Blocks [b0, b1) cut into runs of whole blocks of about maxBytes each, with each run's byte
 * offset and length relative to the start of block b0 (so a reader can hash one run while it
 * reads the next).
 */
export function blockRuns(t: ManifestTensor, blockBytes: number, b0: number, b1: number, maxBytes: number): { b0: number; b1: number; off: number; len: number }[] {
  const { rows, rowBytes, blockRows } = layout(t.dtype, t.shape, blockBytes);
  if (rowBytes === 0) return [{ b0, b1, off: 0, len: 0 }];
  const per = Math.max(1, Math.floor(maxBytes / (blockRows * rowBytes)));
  const start = b0 * blockRows * rowBytes;
  const runs: { b0: number; b1: number; off: number; len: number }[] = [];
  for (let b = b0; b < b1; b += per) {
    const e = Math.min(b1, b + per);
    const off = b * blockRows * rowBytes - start;
    runs.push({ b0: b, b1: e, off, len: Math.min(rows, e * blockRows) * rowBytes - start - off });
  }
  return runs;
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));
/** Hashing yields to the event loop after about this many bytes (so heartbeats keep flowing). */
export const YIELD_BYTES = 8 << 20;

/**
 * The manifest of a sample, hashed off the event loop: BLAKE3 natively (the default), or
 * sha256 here in runs of YIELD_BYTES with a yield between (so heartbeats keep flowing).
 */
export async function buildManifestAsync(tensors: { name: string; dtype: Dtype; shape: number[]; bytes: Uint8Array }[], blockBytes = DEFAULT_BLOCK_BYTES, alg: BlockAlg = 'blake3'): Promise<Manifest> {
  if (alg === 'blake3') {
    const out = await Promise.all(tensors.map(async (t): Promise<ManifestTensor> => {
      const { blocks, blockRows } = layout(t.dtype, t.shape, blockBytes);
      const digests = await blake3Hex(t.bytes, blockLens(t.dtype, t.shape, blockBytes, 0, blocks, t.bytes.byteLength));
      return { name: t.name, dtype: t.dtype, shape: [...t.shape], blockRows, digests };
    }));
    return { v: 2, alg: 'blake3', blockBytes, tensors: out };
  }
  const out: ManifestTensor[] = [];
  let since = 0;
  for (const t of tensors) {
    const { rows, rowBytes, blockRows, blocks } = layout(t.dtype, t.shape, blockBytes);
    const digests: string[] = [];
    for (let b = 0; b < blocks; b++) {
      const r0 = b * blockRows;
      const slice = rowBytes > 0 ? t.bytes.subarray(r0 * rowBytes, Math.min(rows, r0 + blockRows) * rowBytes) : t.bytes;
      digests.push(createHash('sha256').update(slice).digest('hex'));
      since += slice.byteLength;
      if (since >= YIELD_BYTES) { since = 0; await tick(); }
    }
    out.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], blockRows, digests });
  }
  return { v: 1, blockBytes, tensors: out };
}

/** verifyBlocks off the event loop: BLAKE3 natively, sha256 in runs of YIELD_BYTES with yields. */
export async function verifyBlocksAsync(t: ManifestTensor, blockBytes: number, b0: number, b1: number, bytes: Uint8Array, where: string, alg: BlockAlg = 'sha256'): Promise<void> {
  if (alg === 'blake3') {
    const got = await blake3Hex(bytes, blockLens(t.dtype, t.shape, blockBytes, b0, b1, bytes.byteLength));
    for (let i = 0; i < got.length; i++) if (got[i] !== t.digests[b0 + i]) throw corrupted(t, b0 + i, where);
    return;
  }
  const { rows, rowBytes, blockRows } = layout(t.dtype, t.shape, blockBytes);
  let off = 0;
  let b = b0;
  while (b < b1) {
    // A run of blocks of about YIELD_BYTES, verified synchronously, then a yield.
    let end = b;
    let n = 0;
    while (end < b1 && (n === 0 || n < YIELD_BYTES)) {
      n += rowBytes > 0 ? (Math.min(rows, (end + 1) * blockRows) - end * blockRows) * rowBytes : bytes.byteLength;
      end++;
    }
    verifyBlocks(t, blockBytes, b, end, bytes.subarray(off, off + n), where);
    off += n;
    b = end;
    if (b < b1) await tick();
  }
}

function corrupted(t: ManifestTensor, block: number, where: string): ChecksumError {
  return new ChecksumError(`${where}: tensor "${t.name}" block ${block} does not match its checksum (corrupted)`, { detail: { tensor: t.name, block } });
}

/** Verifies blocks [b0, b1) of a tensor's sha256 (v 1) manifest, given their bytes (contiguous). Throws ChecksumError. */
export function verifyBlocks(t: ManifestTensor, blockBytes: number, b0: number, b1: number, bytes: Uint8Array, where: string): void {
  const { rows, rowBytes, blockRows } = layout(t.dtype, t.shape, blockBytes);
  let off = 0;
  for (let b = b0; b < b1; b++) {
    const n = rowBytes > 0 ? (Math.min(rows, (b + 1) * blockRows) - b * blockRows) * rowBytes : bytes.byteLength;
    const got = createHash('sha256').update(bytes.subarray(off, off + n)).digest('hex');
    if (got !== t.digests[b]) throw corrupted(t, b, where);
    off += n;
  }
}
