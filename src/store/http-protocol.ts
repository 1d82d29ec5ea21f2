// The HTTP data plane's pure logic (docs/wire.md "The HTTP data plane"): parsing a request
// target, choosing the byte ranges a GET sends from the sample file's safetensors header and
// manifest, the response frame, mapping errors to statuses, and the reader's side of the
// frame (verifying each block against the manifest as it streams into the destination
// buffers). No I/O here: src/store/http-server.ts and src/store/http-store.ts are the thin
// transports around it.
//
//   GET    /<storeId>/<sampleId>?g=<gen>[&names=a,b][&rows=r0:r1]   -> 200 frame
//   DELETE /<storeId>/<sampleId>?g=<gen>[&why=consumed|dead]        -> 200 {"freed": bool}
//   errors -> {code, message, retryable[, detail]} with the status of httpStatusOf
//
// Frame (the 200 body of a GET): u64 little-endian N || N bytes of JSON
//   {"v":1,"sampleId","generation","manifest":<the manifest JSON exactly as stored>,
//    "tensors":[{"name","dtype","shape","rows":[r0,r1],"blocks":[b0,b1],"bytes"}...]}
// then, tensor after tensor in the order asked, the bytes of blocks [b0, b1) of that tensor
// (whole checksum blocks, so the reader can verify each one; they cover rows [r0, r1)).
import { createHash, type Hash } from 'node:crypto';
import { ChecksumError, DecodeError, DraftwireError, InvalidArgumentError } from '../errors.ts';
import { FEATURE_NAME_RE, isId, type SampleRef } from '../wire/sampleref.ts';
import { algOf, blockSpan, checksumOfManifestJson, parseManifest, rowsOf, verifyBlocksAsync, type Manifest, type ManifestTensor } from './checksum.ts';
import type { SafetensorsHeader } from './safetensors.ts';
import { viewAs, type Tensor } from '../tensor.ts';

/** Longest request target accepted (path and query). */
export const MAX_TARGET_CHARS = 4096;
export const MAX_NAMES = 64;
/** Content type of a GET's frame. */
export const FRAME_CONTENT_TYPE = 'application/vnd.draftwire.sample-frame';

export type FreeWhy = 'consumed' | 'dead';

export type StoreRequest =
  | { op: 'get'; storeId: string; sampleId: string; generation: number; names: string[] | null; rows: [number, number] | null }
  | { op: 'free'; storeId: string; sampleId: string; generation: number; why: FreeWhy };

/** A 400 (405 for the method) that names the field of the request that is wrong. */
function bad(field: string, message: string): InvalidArgumentError {
  return new InvalidArgumentError(`bad request: ${message}`, { detail: { field } });
}

const GEN_RE = /^(0|[1-9][0-9]{0,15})$/;
const ROWS_RE = /^(0|[1-9][0-9]{0,15}):(0|[1-9][0-9]{0,15})$/;

function show(x: string): string {
  return JSON.stringify(x.length > 60 ? x.slice(0, 60) + '…' : x);
}

/**
 * Parses a request's method and target (as received: path and query, percent-encoded).
 * Throws InvalidArgumentError with detail.field naming what is wrong (method, path, storeId,
 * sampleId, query, g, names, rows, why, or an unknown query key).
 */
export function parseStoreRequest(method: string, target: string): StoreRequest {
  const op = method === 'GET' ? 'get' : method === 'DELETE' ? 'free' : null;
  if (!op) throw bad('method', `method ${show(String(method))} is not served (GET reads a sample, DELETE frees one)`);
  if (typeof target !== 'string' || target.length > MAX_TARGET_CHARS) throw bad('path', `the request target exceeds ${MAX_TARGET_CHARS} characters`);
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const query = q < 0 ? null : target.slice(q + 1);
  const segs = path.split('/');
  if (segs.length !== 3 || segs[0] !== '' || path.includes('%') || target.includes('#')) throw bad('path', `the path must be /<storeId>/<sampleId>, got ${show(path)}`);
  const [, storeId, sampleId] = segs as [string, string, string];
  if (!isId(storeId)) throw bad('storeId', `storeId must match [A-Za-z0-9._:-]{1,200} (not "." or ".."), got ${show(storeId)}`);
  if (!isId(sampleId) || sampleId.startsWith('.')) throw bad('sampleId', `sampleId must match [A-Za-z0-9._:-]{1,200} and not start with ".", got ${show(sampleId)}`);
  if (query === null || query === '') throw bad('g', 'the query must name the generation: ?g=<gen>');
  const allowed = op === 'get' ? ['g', 'names', 'rows'] : ['g', 'why'];
  const fields = new Map<string, string>();
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (!allowed.includes(key)) throw bad(/^[A-Za-z0-9_-]{1,32}$/.test(key) ? key : 'query', `unknown query field ${show(key)} (${method} takes ${allowed.join(', ')})`);
    if (eq < 0) throw bad(key, `query field "${key}" has no value`);
    if (fields.has(key)) throw bad(key, `query field "${key}" is given twice`);
    let value: string;
    try { value = decodeURIComponent(part.slice(eq + 1)); } catch { throw bad(key, `query field "${key}" is not valid percent-encoding`); }
    fields.set(key, value);
  }
  const g = fields.get('g');
  if (g === undefined) throw bad('g', 'the query must name the generation: g=<gen>');
  if (!GEN_RE.test(g) || !Number.isSafeInteger(Number(g))) throw bad('g', `g must be a generation (an unsigned integer below 2^53), got ${show(g)}`);
  const generation = Number(g);
  if (op === 'free') {
    const why = fields.get('why') ?? 'consumed';
    if (why !== 'consumed' && why !== 'dead') throw bad('why', `why must be consumed or dead, got ${show(why)}`);
    return { op, storeId, sampleId, generation, why };
  }
  let names: string[] | null = null;
  const n = fields.get('names');
  if (n !== undefined) {
    names = n.split(',');
    if (names.length > MAX_NAMES) throw bad('names', `at most ${MAX_NAMES} names`);
    for (const name of names) if (!FEATURE_NAME_RE.test(name)) throw bad('names', `tensor name ${show(name)} must match [A-Za-z0-9._:/-]{1,128}`);
    if (new Set(names).size !== names.length) throw bad('names', 'a tensor is named twice');
  }
  let rows: [number, number] | null = null;
  const r = fields.get('rows');
  if (r !== undefined) {
    const m = ROWS_RE.exec(r);
    if (!m || !Number.isSafeInteger(Number(m[1])) || !Number.isSafeInteger(Number(m[2])) || Number(m[1]) > Number(m[2])) throw bad('rows', `rows must be r0:r1 with 0 <= r0 <= r1, got ${show(r)}`);
    rows = [Number(m[1]), Number(m[2])];
  }
  return { op, storeId, sampleId, generation, names, rows };
}

/** The request target a client sends (the inverse of parseStoreRequest). */
export function storeRequestTarget(storeId: string, sampleId: string, generation: number, o: { names?: readonly string[] | null; rows?: readonly [number, number] | null; why?: FreeWhy } = {}): string {
  let t = `/${storeId}/${sampleId}?g=${generation}`;
  if (o.names) t += `&names=${o.names.map(encodeURIComponent).join(',')}`;
  if (o.rows) t += `&rows=${o.rows[0]}:${o.rows[1]}`;
  if (o.why && o.why !== 'consumed') t += `&why=${o.why}`;
  return t;
}

/** The status a typed error travels with. */
export function httpStatusOf(e: unknown): number {
  if (!(e instanceof DraftwireError)) return 500;
  switch (e.code) {
    case 'AUTH': return 401;
    case 'INVALID_ARGUMENT': return e.detail?.field === 'method' ? 405 : 400;
    case 'SAMPLE_GONE': return 404;
    case 'STALE_GENERATION': return 410;
    case 'BACKPRESSURE': case 'STORE_WRITE': case 'UNAVAILABLE': return 503;
    default: return 500;
  }
}

export interface FrameTensor { name: string; dtype: string; shape: number[]; rows: [number, number]; blocks: [number, number]; bytes: number }
export interface FrameHeader { v: 1; sampleId: string; generation: number; manifest: string; tensors: FrameTensor[] }

export interface ResponsePlan {
  /** The frame's length prefix and JSON header. */
  head: Buffer;
  /** Byte ranges of the file to send after `head`, in order. */
  ranges: { offset: number; length: number }[];
  /** head + every range. */
  contentLength: number;
}

/**
 * What a GET sends: for every tensor asked (all, in manifest order, when none are named),
 * the whole checksum blocks spanning the rows asked (all when none), located in the file by
 * its safetensors header. InvalidArgumentError (field names or rows) for a tensor the sample
 * lacks or rows outside a tensor.
 */
export function planSampleResponse(file: { header: SafetensorsHeader; manifest: Manifest; manifestJson: string }, req: { sampleId: string; generation: number; names: readonly string[] | null; rows: readonly [number, number] | null }): ResponsePlan {
  const { header, manifest } = file;
  const byName = new Map<string, ManifestTensor>(manifest.tensors.map((t) => [t.name, t]));
  const names = req.names ?? manifest.tensors.map((t) => t.name);
  const tensors: FrameTensor[] = [];
  const ranges: { offset: number; length: number }[] = [];
  let body = 0;
  for (const name of names) {
    const t = byName.get(name);
    const e = header.entries.get(name);
    if (!t || !e) throw bad('names', `sample "${req.sampleId}" has no tensor ${show(name)} (has ${manifest.tensors.map((x) => x.name).join(', ')})`);
    const rows = rowsOf(t.shape);
    let [r0, r1] = [0, rows];
    if (req.rows) {
      [r0, r1] = req.rows;
      if (t.shape.length === 0 || r1 > rows) throw bad('rows', `rows ${r0}:${r1} are outside tensor "${name}" with shape [${t.shape.join(', ')}]`);
    }
    const span = blockSpan(t, manifest.blockBytes, r0, r1);
    const length = span.byte1 - span.byte0;
    tensors.push({ name, dtype: t.dtype, shape: [...t.shape], rows: [r0, r1], blocks: [span.b0, span.b1], bytes: length });
    if (length > 0) ranges.push({ offset: header.dataStart + e.begin + span.byte0, length });
    body += length;
  }
  const frame: FrameHeader = { v: 1, sampleId: req.sampleId, generation: req.generation, manifest: file.manifestJson, tensors };
  const json = Buffer.from(JSON.stringify(frame), 'utf8');
  const head = Buffer.alloc(8 + json.byteLength);
  head.writeBigUInt64LE(BigInt(json.byteLength), 0);
  json.copy(head, 8);
  return { head, ranges, contentLength: head.byteLength + body };
}

/** The most frame header a reader accepts for this ref (the manifest: a 64-hex digest per block, at most one block per row, plus slack). */
export function frameHeaderBound(ref: SampleRef): number {
  let rows = 0;
  for (const f of Object.values(ref.features)) rows += f.shape.length === 0 ? 1 : Math.max(1, f.shape[0]!);
  return 64 * 1024 + 96 * rows + 512 * Object.keys(ref.features).length;
}

// `span` (blake3 manifests) holds the whole blocks, verified natively in end(); otherwise the
// blocks are sha256'd as they stream and only rows [r0, r1) are kept, in dest.
interface Want { t: ManifestTensor; r0: number; r1: number; b0: number; b1: number; rowBytes: number; blockRows: number; rows: number; dest: Uint8Array; span: Uint8Array | null; shape: number[] }

/**
 * The reader's side of a GET's frame: feed it the body as it arrives (push), then end().
 * It checks the frame's header against the ref (the manifest's sha256 is the ref's
 * checksum, its tensors are the ref's features, the ranges are the ones asked), hashes every
 * block as it streams and copies the rows asked straight into exactly-sized private
 * destination buffers (no whole-sample intermediate copy). ChecksumError for a block or
 * manifest that does not match, DecodeError for a frame that is malformed, truncated or too
 * long. Nothing is returned before every block is verified.
 */
export class FrameReader {
  private readonly bound: number;
  private headLen = -1;
  private head: Buffer | null = null;
  private headFill = 0;
  private readonly prefix = Buffer.alloc(8);
  private prefixFill = 0;
  private wants: Want[] | null = null;
  private ti = 0;
  private block = 0;
  /** Tensor-relative byte position of the next byte of the current tensor. */
  private pos = 0;
  private hash: Hash | null = null;
  /** Set by the manifest: blocks are hashed in end() (blake3), not as they stream (sha256). */
  private deferred = false;
  private blockBytes = 0;
  private done = false;
  private readonly where: string;

  /** `names` null: every tensor, in the manifest's order (what the server sends when none are named). */
  constructor(private readonly ref: SampleRef, private names: readonly string[] | null, private readonly rows: readonly [number, number] | null, private readonly verify = true) {
    this.bound = frameHeaderBound(ref);
    this.where = `sample "${ref.sampleId}" generation ${ref.generation} from ${ref.uri.split('/').slice(0, 3).join('/')}`;
  }

  /** Bytes the whole body must have, known once the header is read (else null). */
  expectedLength(): number | null {
    if (!this.wants) return null;
    return 8 + this.headLen + this.wants.reduce((n, w) => n + this.spanBytes(w), 0);
  }

  private spanBytes(w: Want): number {
    return w.rowBytes === 0 ? 0 : (Math.min(w.rows, w.b1 * w.blockRows) - w.b0 * w.blockRows) * w.rowBytes;
  }

  push(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.byteLength) {
      if (this.prefixFill < 8) {
        const n = Math.min(8 - this.prefixFill, chunk.byteLength - off);
        this.prefix.set(chunk.subarray(off, off + n), this.prefixFill);
        this.prefixFill += n; off += n;
        if (this.prefixFill === 8) {
          const len = this.prefix.readBigUInt64LE(0);
          if (len > BigInt(this.bound)) throw new DecodeError(`${this.where}: the frame header is over the ${this.bound}-byte bound for this ref`);
          this.headLen = Number(len);
          this.head = Buffer.alloc(this.headLen);
          if (this.headLen === 0) this.startData();
        }
        continue;
      }
      if (!this.wants) {
        const n = Math.min(this.headLen - this.headFill, chunk.byteLength - off);
        this.head!.set(chunk.subarray(off, off + n), this.headFill);
        this.headFill += n; off += n;
        if (this.headFill === this.headLen) this.startData();
        continue;
      }
      if (this.done) throw new DecodeError(`${this.where}: the frame runs past its last block`);
      off += this.data(chunk, off);
    }
  }

  private startData(): void {
    let h: FrameHeader;
    try { h = JSON.parse(this.head!.toString('utf8')) as FrameHeader; } catch { throw new DecodeError(`${this.where}: the frame header is not JSON`); }
    const ref = this.ref;
    if (!h || typeof h !== 'object' || h.v !== 1 || typeof h.manifest !== 'string' || !Array.isArray(h.tensors)) throw new DecodeError(`${this.where}: the frame header is malformed`);
    if (h.sampleId !== ref.sampleId || h.generation !== ref.generation) throw new DecodeError(`${this.where}: the server sent another sample or generation`);
    // The manifest is authenticated by the (MAC'd) ref's checksum; everything else follows from it.
    if (checksumOfManifestJson(h.manifest) !== ref.checksum) throw new ChecksumError(`${this.where}: the served manifest does not match the ref's checksum ${ref.checksum} (corrupted or replaced)`, { detail: { sampleId: ref.sampleId, generation: ref.generation } });
    const m = parseManifest(h.manifest, this.where);
    this.deferred = this.verify && algOf(m) === 'blake3';
    this.blockBytes = m.blockBytes;
    if (m.tensors.length !== Object.keys(ref.features).length) throw new ChecksumError(`${this.where}: the manifest's tensors are not the ref's features`);
    const byName = new Map<string, ManifestTensor>();
    for (const t of m.tensors) {
      const f = ref.features[t.name];
      if (!f || f.dtype !== t.dtype || f.shape.join() !== t.shape.join()) throw new ChecksumError(`${this.where}: tensor "${t.name}" of the manifest does not match the ref`);
      byName.set(t.name, t);
    }
    const names = this.names ?? m.tensors.map((t) => t.name);
    this.names = names;
    if (h.tensors.length !== names.length) throw new DecodeError(`${this.where}: the frame holds ${h.tensors.length} tensors, ${names.length} were asked for`);
    const wants: Want[] = [];
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      const t = byName.get(name);
      if (!t) throw new InvalidArgumentError(`get: sample "${ref.sampleId}" has no tensor "${name}"`);
      const rows = rowsOf(t.shape);
      const [r0, r1] = this.rows ?? [0, rows];
      const span = blockSpan(t, m.blockBytes, r0, r1);
      const ft = h.tensors[i]!;
      const blockRows = t.blockRows;
      const w: Want = { t, r0, r1, b0: span.b0, b1: span.b1, rowBytes: span.rowBytes, blockRows, rows, dest: new Uint8Array(0), span: null, shape: this.rows ? [r1 - r0, ...t.shape.slice(1)] : [...t.shape] };
      if (!ft || ft.name !== name || !Array.isArray(ft.rows) || ft.rows[0] !== r0 || ft.rows[1] !== r1 || !Array.isArray(ft.blocks) || ft.blocks[0] !== span.b0 || ft.blocks[1] !== span.b1 || ft.bytes !== this.spanBytes(w)) {
        throw new DecodeError(`${this.where}: the frame's entry for tensor "${name}" disagrees with the manifest`);
      }
      if (this.deferred) w.span = new Uint8Array(this.spanBytes(w));
      else w.dest = new Uint8Array((r1 - r0) * span.rowBytes);
      wants.push(w);
    }
    this.wants = wants;
    this.ti = 0;
    this.enterTensor();
  }

  private enterTensor(): void {
    for (;;) {
      const w = this.wants![this.ti];
      if (!w) { this.done = true; return; }
      this.block = w.b0;
      this.pos = w.rowBytes === 0 ? 0 : w.b0 * w.blockRows * w.rowBytes;
      if (this.settle()) return;
      this.ti++;
    }
  }

  private blockEnd(w: Want, b: number): number {
    return w.rowBytes === 0 ? 0 : Math.min(w.rows, (b + 1) * w.blockRows) * w.rowBytes;
  }

  /** Finishes empty blocks at the cursor; false when the current tensor has no block left. */
  private settle(): boolean {
    const w = this.wants![this.ti]!;
    while (this.block < w.b1) {
      if (this.pos < this.blockEnd(w, this.block)) {
        if (this.verify && !this.deferred && !this.hash) this.hash = createHash('sha256');
        return true;
      }
      this.finishBlock(w);
    }
    return false;
  }

  private finishBlock(w: Want): void {
    if (this.verify && !this.deferred) {
      const got = (this.hash ?? createHash('sha256')).digest('hex');
      if (got !== w.t.digests[this.block]) throw new ChecksumError(`${this.where}: tensor "${w.t.name}" block ${this.block} does not match its checksum (corrupted)`, { detail: { tensor: w.t.name, block: this.block, sampleId: this.ref.sampleId, generation: this.ref.generation } });
    }
    this.hash = null;
    this.block++;
  }

  /** Consumes bytes of the current block from chunk[off...]; returns how many. */
  private data(chunk: Uint8Array, off: number): number {
    const w = this.wants![this.ti]!;
    const end = this.blockEnd(w, this.block);
    const take = Math.min(end - this.pos, chunk.byteLength - off);
    const piece = chunk.subarray(off, off + take);
    if (w.span) w.span.set(piece, this.pos - w.b0 * w.blockRows * w.rowBytes);
    else {
      if (this.verify) this.hash!.update(piece);
      const d0 = w.r0 * w.rowBytes, d1 = w.r1 * w.rowBytes;
      const lo = Math.max(this.pos, d0), hi = Math.min(this.pos + take, d1);
      if (hi > lo) w.dest.set(piece.subarray(lo - this.pos, hi - this.pos), lo - d0);
    }
    this.pos += take;
    if (this.pos === end) {
      this.finishBlock(w);
      if (!this.settle()) { this.ti++; this.enterTensor(); }
    }
    return take;
  }

  /** The tensors, once the whole frame arrived and verified; DecodeError when it is short. */
  async end(): Promise<Record<string, Tensor>> {
    if (!this.wants || !this.done) throw new DecodeError(`${this.where}: the response ended early (truncated)`);
    const out: Record<string, Tensor> = {};
    for (const w of this.wants) {
      if (!w.span) continue;
      await verifyBlocksAsync(w.t, this.blockBytes, w.b0, w.b1, w.span, this.where, 'blake3').catch((e: unknown) => {
        throw e instanceof ChecksumError ? new ChecksumError(e.message, { detail: { ...(e.detail as object), sampleId: this.ref.sampleId, generation: this.ref.generation } }) : e;
      });
      const lo = (w.r0 - w.b0 * w.blockRows) * w.rowBytes;
      const hi = lo + (w.r1 - w.r0) * w.rowBytes;
      // A row range inside the blocks is copied out, so the caller does not hold the rest.
      w.dest = lo === 0 && hi === w.span.byteLength ? w.span : w.span.slice(lo, hi);
    }
    for (const w of this.wants) out[w.t.name] = { dtype: w.t.dtype, shape: w.shape, data: viewAs(w.t.dtype, w.dest) };
    return out;
  }
}
