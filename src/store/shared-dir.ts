// SharedDirFeatureStore: producer and consumer are different processes (possibly different
// machines on a shared filesystem) sharing only a directory.
//
// Layout of <dir>:
//   .draftwire-store.json          marker {format, storeId, job, auth, mac?}; mac proves the secret
//   <id>.g<gen>.safetensors        one published sample generation (safetensors; metadata holds
//                                  the manifest of block checksums and the signed ref)
//   <id>.g<gen>.gone               tombstone {reason: released|aborted|superseded, ...}
//   <id>.gen                       last generation handed out for <id> (decimal)
//   <id>.lock                      per-sample O_EXCL lock, held by put and abort
//   .tmp-<pid>-<rand>              a write in progress (or abandoned: gc removes it)
//
// Publish: write .tmp-*, fsync, rename to the final name, fsync the directory. A reader sees
// the whole sample or nothing; a writer killed mid-write leaves only a temp file.
//
// Generations (strictly increasing per sampleId across processes and machines): under the
// sample's lock, gen = max(last + 1, Date.now()) where `last` is read from <id>.gen (written
// before the rename). The .gen record is removed by gc only when the sample has no file and
// no tombstone left and the record is older than the tombstone TTL, so a later re-put relies
// on the clock having advanced by more than any clock skew between writers (a hybrid clock).
// The same holds if a power cut empties the (not fsync'd) .gen record.
// A re-put supersedes the older generation: tombstone (reason superseded) + delete, so an
// old ref gets StaleGenerationError.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { constants as fsc } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { AuthPolicy } from '../wire/auth.ts';
import { FILE_MODE } from '../files.ts';
import {
  algOf, blockRuns, blockSpan, buildManifestAsync, checksumOfManifestJson, manifestJson, parseManifest, rowsOf, verifyBlocksAsync, type BlockAlg, type Manifest, type ManifestTensor,
} from './checksum.ts';
import {
  AuthError, BackpressureError, ChecksumError, DecodeError, DraftwireError, InvalidArgumentError, SampleGoneError, StaleGenerationError, StoreWriteError,
} from '../errors.ts';
import { encodeSafetensors, readHeader, type SafetensorsHeader } from './safetensors.ts';
import {
  FEATURE_NAME_RE, SAMPLE_DTYPES, checkId, dirUri, httpUri, isUriHost, parseSampleUri, validateSampleRef, type FeatureSpec, type Producer, type SampleDtype, type SampleRef,
} from '../wire/sampleref.ts';
import { DTYPE_BYTES, bytesOf, numel, viewAs, type Tensor } from '../tensor.ts';
import type { BackpressureState, FeatureStore, GcStats, GetOptions, PutOptions, StoreHealth, StoreUsage } from './feature-store.ts';

export const MARKER_FILE = '.draftwire-store.json';
const MARKER_FORMAT = 'draftwire-store/1';
const FILE_FORMAT = 'draftwire/1';
const DATA_RE = /^([A-Za-z0-9._:-]{1,200})\.g(0|[1-9][0-9]{0,15})\.safetensors$/;
const TOMB_RE = /^([A-Za-z0-9._:-]{1,200})\.g(0|[1-9][0-9]{0,15})\.gone$/;
const MAX_IO = 1 << 30;

/** Test seams for fault injection (kill mid-write, disk full). Hooks may throw or block. */
export interface StoreFaults {
  /** After each chunk written to the temp file. */
  afterChunk?(info: { tmpPath: string; written: number; total: number }): void | Promise<void>;
  /** After the temp file is complete and fsync'd, before the rename. */
  beforeRename?(info: { tmpPath: string; finalPath: string }): void | Promise<void>;
}

export interface SharedDirOptions {
  dir: string;
  storeId: string;
  job: string;
  auth: AuthPolicy;
  producer: Producer;
  /** put is refused (BackpressureError) when usage would exceed this (default: no limit). */
  highWatermarkBytes?: number;
  /** ...until usage falls to this (default 80% of high). */
  lowWatermarkBytes?: number;
  /** Tombstones (and then .gen records) are kept this long, ms (default 1 h). */
  tombstoneTtlMs?: number;
  /** Alias of tombstoneTtlMs. */
  tokenTtlMs?: number;
  /** Temp files older than this are abandoned writes, ms (default 10 min). */
  tempMaxAgeMs?: number;
  /** A lock file older than this is stale and broken, ms (default 60 s). */
  lockStaleMs?: number;
  /** put/abort give up waiting for a sample's lock after this, ms (default 10 s). */
  lockTimeoutMs?: number;
  /** Usage is rescanned from the directory at most this often, ms (default 1 s). */
  usageRefreshMs?: number;
  /** Create the directory and marker when missing (default true). */
  create?: boolean;
  /** fsync data and directory on publish (default true; false only for throwaway stores). */
  fsync?: boolean;
  /** Bytes per write call (default 16 MiB). */
  writeChunkBytes?: number;
  /** Checksum block size for new samples (default 1 MiB). */
  blockBytes?: number;
  /** Block digest of new samples (default blake3; sha256 writes the v 1 format older readers know). Both are read. */
  blockChecksum?: BlockAlg;
  /** Mode of created files (default FILE_MODE, 0o640: src/files.ts). */
  fileMode?: number;
  /**
   * The address of the node's HTTP server for this store (src/store/http-server.ts): refs put
   * carry `http://host:port/<storeId>/<sampleId>?g=<gen>` instead of `dir://…` (see advertiseAt).
   */
  advertise?: { host: string; port: number; tls?: boolean };
  faults?: StoreFaults;
}

/**
 * A published sample file opened for a reader that has no ref (the HTTP server): checked as
 * get checks it (no symlink, a regular file, not sparse, a bounded header in the Draftwire
 * format whose manifest parses and agrees with it). The caller closes `fh`.
 */
export interface SampleFile {
  fh: FileHandle;
  size: number;
  header: SafetensorsHeader;
  /** The manifest exactly as stored (its sha256 is the ref's checksum). */
  manifestJson: string;
  manifest: Manifest;
}

interface Marker { format: string; storeId: string; job: string; auth: boolean; mac?: string }
interface Tombstone { reason: 'released' | 'aborted' | 'superseded'; detail?: string; by?: number; at: number }

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

async function readIfExists(path: string): Promise<string | null> {
  try { return await readFile(path, 'utf8'); } catch (e) { if (errCode(e) === 'ENOENT') return null; throw e; }
}

async function unlinkIfExists(path: string): Promise<boolean> {
  try { await unlink(path); return true; } catch (e) { if (errCode(e) === 'ENOENT') return false; throw e; }
}

async function statIfExists(path: string): Promise<import('node:fs').Stats | null> {
  try { return await stat(path); } catch (e) { if (errCode(e) === 'ENOENT') return null; throw e; }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function markerMac(auth: AuthPolicy, storeId: string, job: string): string {
  return Buffer.from(auth.mac(Buffer.from(`draftwire/v1/store-marker\0${storeId}\0${job}`, 'utf8'))).toString('hex');
}

/** Files sparser than this (on-disk bytes + slack < half the size) are refused by get. */
const SPARSE_SLACK = 1 << 20;

/**
 * The most header a sample file of this ref can have: the manifest (a 64-hex digest per
 * block, at most one block per row), the signed ref and slack. Bounds the header allocation.
 */
function headerBound(r: SampleRef): number {
  let rows = 0;
  for (const f of Object.values(r.features)) rows += f.shape.length === 0 ? 1 : Math.max(1, f.shape[0]!);
  return 64 * 1024 + 96 * rows + 256 * Object.keys(r.features).length;
}

async function readFull(fh: FileHandle, buf: Uint8Array, position: number, where: string): Promise<void> {
  let off = 0;
  while (off < buf.byteLength) {
    const n = Math.min(MAX_IO, buf.byteLength - off);
    const { bytesRead } = await fh.read(buf, off, n, position + off);
    if (bytesRead === 0) throw new DecodeError(`${where}: file truncated`);
    off += bytesRead;
  }
}

/** A verified read this large is cut into runs of about this size: run k is hashed while run k + 1 is read. */
const PIPELINE_BYTES = 8 << 20;

/** Reads blocks [span.b0, span.b1) of tensor t into buf (from file offset `at`), verifying them as it goes. */
async function readVerified(fh: FileHandle, buf: Uint8Array, at: number, t: ManifestTensor, m: Manifest, span: { b0: number; b1: number }, where: string): Promise<void> {
  const pending: Promise<void>[] = [];
  try {
    for (const run of blockRuns(t, m.blockBytes, span.b0, span.b1, PIPELINE_BYTES)) {
      const part = buf.subarray(run.off, run.off + run.len);
      await readFull(fh, part, at + run.off, where);
      const p = verifyBlocksAsync(t, m.blockBytes, run.b0, run.b1, part, where, algOf(m));
      p.catch(() => undefined); // observed below, by Promise.all; this only marks it handled meanwhile
      pending.push(p);
    }
  } finally {
    await Promise.allSettled(pending); // never leave a hash running over a buffer we drop
  }
  await Promise.all(pending);
}

export class SharedDirFeatureStore implements FeatureStore {
  readonly storeId: string;
  readonly job: string;
  readonly dir: string;
  readonly highWatermarkBytes: number;
  readonly lowWatermarkBytes: number;
  private readonly auth: AuthPolicy;
  private readonly producer: Producer;
  private readonly o: Required<Omit<SharedDirOptions, 'faults' | 'highWatermarkBytes' | 'lowWatermarkBytes' | 'tokenTtlMs' | 'advertise'>> & { faults: StoreFaults };
  private advertised: { host: string; port: number; tls: boolean } | null = null;
  private pressured = false;
  private usageCache: { bytes: number; samples: number; at: number } | null = null;
  private closed = false;

  private constructor(o: SharedDirOptions) {
    this.dir = o.dir;
    this.storeId = o.storeId;
    this.job = o.job;
    this.auth = o.auth;
    this.producer = o.producer;
    this.highWatermarkBytes = o.highWatermarkBytes ?? Number.POSITIVE_INFINITY;
    this.lowWatermarkBytes = o.lowWatermarkBytes ?? (Number.isFinite(this.highWatermarkBytes) ? Math.floor(this.highWatermarkBytes * 0.8) : Number.POSITIVE_INFINITY);
    this.o = {
      ...o,
      tombstoneTtlMs: o.tombstoneTtlMs ?? o.tokenTtlMs ?? 3_600_000,
      tempMaxAgeMs: o.tempMaxAgeMs ?? 600_000,
      lockStaleMs: o.lockStaleMs ?? 60_000,
      lockTimeoutMs: o.lockTimeoutMs ?? 10_000,
      usageRefreshMs: o.usageRefreshMs ?? 1000,
      create: o.create ?? true,
      fsync: o.fsync ?? true,
      writeChunkBytes: o.writeChunkBytes ?? 16 * 1024 * 1024,
      blockBytes: o.blockBytes ?? 1 << 20,
      blockChecksum: o.blockChecksum ?? 'blake3',
      fileMode: o.fileMode ?? FILE_MODE,
      faults: o.faults ?? {},
    };
  }

  /**
   * Opens (creating when allowed) the store in `dir`. The marker binds the directory to one
   * storeId and job; when it was created with auth, attaching needs the same secret
   * (AuthError otherwise, and also when auth is on here but the store was made without it).
   */
  static async attach(o: SharedDirOptions): Promise<SharedDirFeatureStore> {
    if (!o || typeof o.dir !== 'string' || o.dir === '') throw new InvalidArgumentError('attach: dir must be a non-empty path');
    checkId(o.storeId, 'storeId');
    checkId(o.job, 'job');
    if (!(o.auth instanceof AuthPolicy)) throw new InvalidArgumentError('attach: auth must be an AuthPolicy (AuthPolicy.disabled() for none)');
    if (!o.producer) throw new InvalidArgumentError('attach: producer {node, actor, incarnation} is required');
    checkId(o.producer.node, 'producer.node');
    checkId(o.producer.actor, 'producer.actor');
    if (!Number.isSafeInteger(o.producer.incarnation) || o.producer.incarnation < 0) throw new InvalidArgumentError('producer.incarnation must be a non-negative integer');
    const s = new SharedDirFeatureStore(o);
    if (o.advertise) s.advertiseAt(o.advertise.host, o.advertise.port, { tls: o.advertise.tls === true });
    if (!(s.lowWatermarkBytes <= s.highWatermarkBytes) || s.lowWatermarkBytes < 0) {
      throw new InvalidArgumentError(`watermarks must satisfy 0 <= low (${s.lowWatermarkBytes}) <= high (${s.highWatermarkBytes})`);
    }
    await s.openMarker();
    return s;
  }

  /**
   * From now on refs put here carry `http://host:port/<storeId>/<sampleId>?g=<gen>` (`https`
   * with tls): the address at which this node's HTTP server (src/store/http-server.ts) serves this store.
   */
  advertiseAt(host: string, port: number, o: { tls?: boolean } = {}): void {
    if (!isUriHost(host)) throw new InvalidArgumentError(`advertise: host ${JSON.stringify(String(host).slice(0, 60))} must be a DNS name, an IPv4 address or a bracketed IPv6 address`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`advertise: port must be 1..65535, got ${String(port)}`);
    this.advertised = { host, port, tls: o.tls === true };
  }

  /** The advertised address (host:port), or null when refs are dir:// ones. */
  get advertisedAt(): string | null {
    return this.advertised ? `${this.advertised.host}:${this.advertised.port}` : null;
  }

  /** Whether `ref` names a sample of this store (its storeId, and this node's address when it serves over HTTP). */
  owns(ref: SampleRef): boolean {
    let u;
    try { u = parseSampleUri(ref.uri); } catch { return false; }
    if (u.storeId !== this.storeId) return false;
    return u.scheme === 'dir' ? true : u.scheme === (this.advertised?.tls ? 'https' : 'http') && `${u.host}:${u.port}` === this.advertisedAt;
  }

  private uriOf(sampleId: string, gen: number): string {
    return this.advertised ? httpUri(this.advertised.host, this.advertised.port, this.storeId, sampleId, gen, this.advertised.tls) : dirUri(this.storeId, sampleId, gen);
  }

  private async openMarker(): Promise<void> {
    const path = join(this.dir, MARKER_FILE);
    const mine: Marker = { format: MARKER_FORMAT, storeId: this.storeId, job: this.job, auth: this.auth.enabled };
    if (this.auth.enabled) mine.mac = markerMac(this.auth, this.storeId, this.job);
    let text = await readIfExists(path).catch((e) => { throw new InvalidArgumentError(`cannot read store marker ${path}: ${errCode(e) ?? e}`); });
    if (text === null) {
      if (!this.o.create) throw new InvalidArgumentError(`${this.dir} is not a Draftwire store (no ${MARKER_FILE}) and create is off`);
      await mkdir(this.dir, { recursive: true });
      const tmp = join(this.dir, `.tmp-${process.pid}-${randomBytes(8).toString('hex')}`);
      const fh = await open(tmp, 'wx', this.o.fileMode);
      try { await fh.writeFile(JSON.stringify(mine)); if (this.o.fsync) await fh.sync(); } finally { await fh.close(); }
      try {
        // link() fails if the marker appeared meanwhile: first creator wins, others read it.
        await link(tmp, path);
      } catch (e) {
        if (errCode(e) !== 'EEXIST') { await unlinkIfExists(tmp); throw new InvalidArgumentError(`cannot create store marker in ${this.dir}: ${errCode(e) ?? e}`); }
      }
      await unlinkIfExists(tmp);
      await this.syncDir();
      text = await readFile(path, 'utf8');
    }
    let m: Marker;
    try { m = JSON.parse(text) as Marker; } catch { throw new DecodeError(`store marker ${path} is not JSON`); }
    if (m.format !== MARKER_FORMAT) throw new DecodeError(`store marker ${path} has unknown format ${JSON.stringify(m.format)}`);
    if (m.storeId !== this.storeId) throw new InvalidArgumentError(`${this.dir} holds store "${m.storeId}", not "${this.storeId}"`);
    if (m.job !== this.job) throw new InvalidArgumentError(`${this.dir} belongs to job "${m.job}", not "${this.job}"`);
    if (m.auth !== true && m.auth !== false) throw new DecodeError(`store marker ${path} is malformed`);
    if (m.auth !== this.auth.enabled) throw new AuthError();
    if (m.auth) this.auth.verifyMac(Buffer.from(`draftwire/v1/store-marker\0${this.storeId}\0${this.job}`, 'utf8'), typeof m.mac === 'string' && /^[0-9a-f]{64}$/.test(m.mac) ? Buffer.from(m.mac, 'hex') : undefined);
  }

  // ---------------------------------------------------------------- paths

  private dataPath(id: string, gen: number): string { return join(this.dir, `${id}.g${gen}.safetensors`); }
  private tombPath(id: string, gen: number): string { return join(this.dir, `${id}.g${gen}.gone`); }
  private genPath(id: string): string { return join(this.dir, `${id}.gen`); }
  private lockPath(id: string): string { return join(this.dir, `${id}.lock`); }
  private tmpPath(): string { return join(this.dir, `.tmp-${process.pid}-${randomBytes(8).toString('hex')}`); }

  /** Sample ids become file names here; a leading dot would collide with temp/marker files. */
  private checkSampleId(id: unknown): string {
    checkId(id, 'sampleId');
    if ((id as string).startsWith('.')) throw new InvalidArgumentError(`sampleId ${JSON.stringify(id)} must not start with "." in a shared-directory store`);
    return id as string;
  }

  private checkOpen(): void {
    if (this.closed) throw new InvalidArgumentError(`store "${this.storeId}" is closed`);
  }

  private async syncDir(): Promise<void> {
    if (!this.o.fsync) return;
    const fh = await open(this.dir, 'r');
    try { await fh.sync(); } catch (e) { if (errCode(e) !== 'EINVAL' && errCode(e) !== 'EISDIR') throw e; } finally { await fh.close(); }
  }

  private async readGen(id: string): Promise<number | null> {
    const t = await readIfExists(this.genPath(id));
    if (t === null) return null;
    // Written without fsync: after a power loss it may be empty. Then the clock alone orders
    // the next generation, and gc reclaims any older generation left behind.
    const n = Number(t.trim());
    return t.trim() !== '' && Number.isSafeInteger(n) && n >= 0 ? n : null;
  }

  /**
   * Writes a small file atomically (temp + rename), not fsync'd: generation records and
   * tombstones only refine answers (see readGen and missing), so losing one to a power cut
   * is harmless, and skipping their fsync keeps put/release at one data + one dir fsync.
   */
  private async writeSmall(path: string, text: string): Promise<void> {
    const tmp = this.tmpPath();
    try {
      const fh = await open(tmp, 'wx', this.o.fileMode);
      try { await fh.writeFile(text); } finally { await fh.close(); }
      await rename(tmp, path);
    } catch (e) {
      await unlinkIfExists(tmp).catch(() => undefined);
      throw e;
    }
  }

  private async withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const path = this.lockPath(id);
    const start = Date.now();
    let wait = 1;
    for (;;) {
      try {
        const fh = await open(path, 'wx', this.o.fileMode);
        try {
          await fh.writeFile(`${hostname()} ${process.pid} ${Date.now()}\n`);
        } catch (e) {
          // The holder line only helps others break the lock of a dead writer. On a full disk
          // hold the lock without it (abort and release must work there); otherwise give the
          // lock back rather than leave it behind.
          if (errCode(e) !== 'ENOSPC') {
            await fh.close().catch(() => undefined);
            await unlinkIfExists(path).catch(() => undefined);
            throw e;
          }
        }
        await fh.close();
        break;
      } catch (e) {
        if (errCode(e) !== 'EEXIST') throw new StoreWriteError(`cannot create lock ${path}: ${errCode(e) ?? e}`, { cause: e });
      }
      const st = await statIfExists(path);
      if (st && (Date.now() - st.mtimeMs > this.o.lockStaleMs || await this.holderIsDead(path))) {
        // Break a stale lock: rename is atomic, so only one breaker wins.
        const aside = join(this.dir, `.stale-${process.pid}-${randomBytes(6).toString('hex')}`);
        try { await rename(path, aside); await unlinkIfExists(aside); } catch (e) { if (errCode(e) !== 'ENOENT') throw e; }
        continue;
      }
      if (Date.now() - start > this.o.lockTimeoutMs) {
        throw new StoreWriteError(`sample "${id}" is locked by another writer (${path}) for over ${this.o.lockTimeoutMs} ms`, { detail: { sampleId: id } });
      }
      await sleep(wait);
      wait = Math.min(50, wait * 2);
    }
    try {
      return await fn();
    } finally {
      await unlinkIfExists(path).catch(() => undefined);
    }
  }

  /** True when the lock was taken by a process of this host that no longer exists. */
  private async holderIsDead(path: string): Promise<boolean> {
    const text = await readIfExists(path).catch(() => null);
    const m = text === null ? null : /^(\S+) (\d+) \d+\n$/.exec(text);
    if (!m || m[1] !== hostname()) return false;
    const pid = Number(m[2]);
    if (pid === process.pid) return false;
    try { process.kill(pid, 0); return false; } catch (e) { return errCode(e) === 'ESRCH'; }
  }

  private async tombstone(id: string, gen: number, t: Tombstone): Promise<void> {
    await this.writeSmall(this.tombPath(id, gen), JSON.stringify({ sampleId: id, generation: gen, ...t }));
  }

  /** Tombstones then deletes one generation's file; returns the bytes freed (0 if none). */
  private async retire(id: string, gen: number, t: Tombstone): Promise<number> {
    const st = await statIfExists(this.dataPath(id, gen));
    if (!st) return 0;
    try {
      await this.tombstone(id, gen, t);
    } catch (e) {
      // Freeing space must not need space: on a full disk the file goes without its tombstone
      // (a get of the old ref then reports it gone, or stale when a newer generation exists).
      if (errCode(e) !== 'ENOSPC') throw e;
    }
    const gone = await unlinkIfExists(this.dataPath(id, gen));
    if (gone && this.usageCache) { this.usageCache.bytes -= st.size; this.usageCache.samples--; }
    return gone ? st.size : 0;
  }

  // ---------------------------------------------------------------- capacity

  private async scanUsage(): Promise<{ bytes: number; samples: number; tombstones: number; tempFiles: number }> {
    let bytes = 0, samples = 0, tombstones = 0, tempFiles = 0;
    for (const name of await readdir(this.dir)) {
      const isData = DATA_RE.test(name);
      const isTmp = name.startsWith('.tmp-');
      if (TOMB_RE.test(name)) tombstones++;
      if (!isData && !isTmp) continue;
      const st = await statIfExists(join(this.dir, name));
      if (!st) continue;
      bytes += st.size;
      if (isData) samples++; else tempFiles++;
    }
    this.usageCache = { bytes, samples, at: Date.now() };
    this.updatePressure(bytes);
    return { bytes, samples, tombstones, tempFiles };
  }

  private updatePressure(bytes: number): void {
    if (bytes >= this.highWatermarkBytes) this.pressured = true;
    else if (bytes <= this.lowWatermarkBytes) this.pressured = false;
  }

  async usage(): Promise<StoreUsage> {
    this.checkOpen();
    const u = await this.scanUsage();
    return { bytes: u.bytes, samples: u.samples };
  }

  /** Pressure state; rescans the directory at most every usageRefreshMs (cheap to poll per put). */
  async backpressure(): Promise<BackpressureState> {
    this.checkOpen();
    if (!this.usageCache || Date.now() - this.usageCache.at >= this.o.usageRefreshMs) await this.scanUsage();
    else this.updatePressure(this.usageCache.bytes);
    return { pressured: this.pressured, usageBytes: this.usageCache!.bytes, highWatermarkBytes: this.highWatermarkBytes, lowWatermarkBytes: this.lowWatermarkBytes };
  }

  private async admit(bytes: number): Promise<void> {
    if (!Number.isFinite(this.highWatermarkBytes)) return;
    const fresh = !this.usageCache || Date.now() - this.usageCache.at >= this.o.usageRefreshMs;
    if (fresh) await this.scanUsage();
    const check = () => {
      const used = this.usageCache!.bytes;
      if (used + bytes > this.highWatermarkBytes) this.pressured = true;
      else if (used <= this.lowWatermarkBytes) this.pressured = false;
      return this.pressured;
    };
    if (check() && !fresh) { await this.scanUsage(); }
    if (check()) {
      const used = this.usageCache!.bytes;
      throw new BackpressureError(`store "${this.storeId}" is over its watermark: ${used} bytes used + ${bytes} requested, high ${this.highWatermarkBytes}, resumes at ${this.lowWatermarkBytes}`, { detail: { usageBytes: used, requestedBytes: bytes, highWatermarkBytes: this.highWatermarkBytes, lowWatermarkBytes: this.lowWatermarkBytes } });
    }
  }

  // ---------------------------------------------------------------- put

  async put(sampleId: string, tensors: Record<string, Tensor>, opts: PutOptions = {}): Promise<SampleRef> {
    this.checkOpen();
    this.checkSampleId(sampleId);
    if (tensors === null || typeof tensors !== 'object') throw new InvalidArgumentError('put: tensors must be a map of name to tensor');
    const entries = Object.entries(tensors);
    if (entries.length === 0) throw new InvalidArgumentError(`put "${sampleId}": a sample needs at least one tensor`);
    if (entries.length > 64) throw new InvalidArgumentError(`put "${sampleId}": at most 64 tensors`);
    const features: Record<string, FeatureSpec> = {};
    const items: { name: string; dtype: SampleDtype; shape: number[]; bytes: Uint8Array }[] = [];
    let dataBytes = 0;
    for (const [name, t] of entries) {
      if (!FEATURE_NAME_RE.test(name)) throw new InvalidArgumentError(`put "${sampleId}": tensor name ${JSON.stringify(name)} must match [A-Za-z0-9._:/-]{1,128}`);
      if (!t || !(SAMPLE_DTYPES as readonly string[]).includes(t.dtype)) throw new InvalidArgumentError(`put "${sampleId}": tensor "${name}" has dtype ${String(t?.dtype)}; a sample holds ${SAMPLE_DTYPES.join(', ')}`);
      if (!Array.isArray(t.shape) || t.shape.length > 8 || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new InvalidArgumentError(`put "${sampleId}": tensor "${name}" has an invalid shape`);
      const bytes = bytesOf(t);
      if (bytes.byteLength !== numel(t.shape) * DTYPE_BYTES[t.dtype]) throw new InvalidArgumentError(`put "${sampleId}": tensor "${name}" has ${bytes.byteLength} bytes, ${t.dtype}[${t.shape}] needs ${numel(t.shape) * DTYPE_BYTES[t.dtype]}`);
      features[name] = { dtype: t.dtype as SampleDtype, shape: [...t.shape] };
      items.push({ name, dtype: t.dtype as SampleDtype, shape: [...t.shape], bytes });
      dataBytes += bytes.byteLength;
    }
    const numTokens = opts.numTokens ?? (tensors.ids ? rowsOf(tensors.ids.shape) : rowsOf(items[0]!.shape));
    if (!Number.isSafeInteger(numTokens) || numTokens < 0) throw new InvalidArgumentError(`put "${sampleId}": numTokens must be a non-negative integer`);
    if (opts.generation !== undefined && (!Number.isSafeInteger(opts.generation) || opts.generation < 1)) throw new InvalidArgumentError(`put "${sampleId}": generation must be a positive integer`);
    const createdAt = opts.createdAt ?? Date.now();

    await this.admit(dataBytes);
    const manifest = await buildManifestAsync(items, this.o.blockBytes, this.o.blockChecksum);
    const mjson = manifestJson(manifest);
    const checksum = checksumOfManifestJson(mjson);

    return this.withLock(sampleId, async () => {
      const last = (await this.readGen(sampleId)) ?? 0;
      let gen: number;
      if (opts.generation !== undefined) {
        if (opts.generation <= last) throw new StaleGenerationError(`put "${sampleId}" generation ${opts.generation}: generation ${last} was already handed out`, { detail: { sampleId, generation: opts.generation, current: last } });
        gen = opts.generation;
      } else {
        gen = Math.max(last + 1, Date.now());
      }
      const ref = this.auth.signRef(validateSampleRef({
        v: 1, job: this.job, sampleId, generation: gen, uri: this.uriOf(sampleId, gen), features, numTokens,
        bytes: dataBytes, checksum, producer: { ...this.producer }, createdAt,
      }));
      const refJson = JSON.stringify({ ...ref, mac: ref.mac ? Buffer.from(ref.mac).toString('hex') : undefined });
      const parts = encodeSafetensors(Object.fromEntries(items.map((it) => [it.name, tensors[it.name]!])), {
        format: FILE_FORMAT, 'draftwire.manifest': mjson, 'draftwire.ref': refJson,
      });
      // Record the generation first: a crash after this only burns a number.
      try { await this.writeSmall(this.genPath(sampleId), `${gen}\n`); } catch (e) { throw this.writeError(sampleId, 'record the generation of', e); }
      const size = await this.publish(sampleId, this.dataPath(sampleId, gen), parts);
      if (this.usageCache) { this.usageCache.bytes += size; this.usageCache.samples++; this.updatePressure(this.usageCache.bytes); }
      if (last > 0) {
        await this.retire(sampleId, last, { reason: 'superseded', by: gen, at: Date.now() }).catch(() => undefined); // gc finishes it otherwise
      }
      return ref;
    });
  }

  private writeError(sampleId: string, what: string, e: unknown): DraftwireError {
    if (e instanceof DraftwireError) return e;
    const code = errCode(e) ?? 'EIO';
    return new StoreWriteError(`could not ${what} sample "${sampleId}" in ${this.dir}: ${code}${code === 'ENOSPC' ? ' (disk full)' : ''}; nothing was published`, { cause: e, detail: { sampleId, errno: code } });
  }

  /** temp write + fsync + rename + dir fsync. Returns the file size. */
  private async publish(sampleId: string, finalPath: string, parts: Uint8Array[]): Promise<number> {
    const tmpPath = this.tmpPath();
    const total = parts.reduce((n, p) => n + p.byteLength, 0);
    let fh: FileHandle | null = null;
    try {
      fh = await open(tmpPath, 'wx', this.o.fileMode);
      let written = 0;
      const chunk = this.o.writeChunkBytes;
      for (const p of parts) {
        for (let off = 0; off < p.byteLength; off += chunk) {
          const n = Math.min(chunk, p.byteLength - off);
          let done = 0;
          while (done < n) {
            const { bytesWritten } = await fh.write(p, off + done, n - done, written + done);
            if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
            done += bytesWritten;
          }
          written += n;
          await this.o.faults.afterChunk?.({ tmpPath, written, total });
        }
      }
      if (this.o.fsync) await fh.sync();
      await fh.close();
      fh = null;
      await this.o.faults.beforeRename?.({ tmpPath, finalPath });
      await rename(tmpPath, finalPath);
    } catch (e) {
      if (fh) await fh.close().catch(() => undefined);
      await unlinkIfExists(tmpPath).catch(() => undefined);
      throw this.writeError(sampleId, 'write', e);
    }
    try { await this.syncDir(); } catch (e) {
      // Published but maybe not durable: take it back rather than report a half-truth.
      await unlinkIfExists(finalPath).catch(() => undefined);
      throw this.writeError(sampleId, 'sync the directory for', e);
    }
    return total;
  }

  // ---------------------------------------------------------------- get

  private checkRef(ref: SampleRef, op: string): SampleRef {
    const r = validateSampleRef(ref);
    const u = parseSampleUri(r.uri);
    // An http ref names this store's id too (its node serves it from its own directory).
    if (u.scheme === 'tcp' || u.storeId !== this.storeId) throw new InvalidArgumentError(`${op}: ref ${r.uri} does not belong to store dir://${this.storeId}`);
    if (r.job !== this.job) throw new InvalidArgumentError(`${op}: ref is for job "${r.job}", this store serves "${this.job}"`);
    this.auth.verifyRef(r);
    return r;
  }

  /** A file at a sample's path that is not one: names the sample and what is wrong, never the file's content. */
  private notASampleFile(r: SampleRef, what: string): DecodeError {
    return new DecodeError(`sample "${r.sampleId}" generation ${r.generation}: its store file ${what}; refused`, { detail: { sampleId: r.sampleId, generation: r.generation } });
  }

  /** Explains why a ref's file is missing: StaleGenerationError or SampleGoneError. */
  private async missing(id: string, g: number): Promise<never> {
    const t = await readIfExists(this.tombPath(id, g));
    if (t !== null) {
      let tomb: Partial<Tombstone> = {};
      try { tomb = JSON.parse(t) as Tombstone; } catch { /* treat as gone */ }
      if (tomb.reason === 'superseded') throw new StaleGenerationError(`sample "${id}" generation ${g} was superseded by generation ${tomb.by ?? '?'}`, { detail: { sampleId: id, generation: g, current: tomb.by ?? null } });
      throw new SampleGoneError(`sample "${id}" generation ${g} was ${tomb.reason ?? 'released'}${tomb.detail ? ` (${tomb.detail})` : ''}`, { detail: { sampleId: id, generation: g, reason: tomb.reason ?? null } });
    }
    const cur = await this.readGen(id);
    if (cur !== null && cur > g) throw new StaleGenerationError(`sample "${id}" generation ${g} is not current (generation ${cur} is)`, { detail: { sampleId: id, generation: g, current: cur } });
    throw new SampleGoneError(`sample "${id}" generation ${g} is gone (reclaimed, or never published in ${this.dir})`, { detail: { sampleId: id, generation: g } });
  }

  async get(ref: SampleRef, opts: GetOptions = {}): Promise<Record<string, Tensor>> {
    this.checkOpen();
    const r = this.checkRef(ref, 'get');
    const path = this.dataPath(r.sampleId, r.generation);
    // What the ref declares bounds everything read for it (checked before any allocation).
    const declared = Object.values(r.features).reduce((n, f) => n + numel(f.shape) * DTYPE_BYTES[f.dtype], 0);
    if (declared !== r.bytes) throw new DecodeError(`sample "${r.sampleId}" generation ${r.generation}: the ref declares ${r.bytes} bytes but its features hold ${declared}`, { detail: { sampleId: r.sampleId, generation: r.generation } });
    let fh: FileHandle;
    try {
      // Never through a symlink: a link out of the store would serve (and, in an error,
      // describe) a file that is not a sample.
      fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      if (errCode(e) === 'ENOENT') return this.missing(r.sampleId, r.generation);
      if (errCode(e) === 'ELOOP') throw this.notASampleFile(r, 'is a symbolic link');
      throw e;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw this.notASampleFile(r, 'is not a regular file');
      const maxHeader = headerBound(r);
      if (st.size > 8 + maxHeader + declared) throw this.notASampleFile(r, `is ${st.size} bytes, more than its ref declares (${declared} bytes of tensors and at most ${maxHeader} of header)`);
      // A sparse file reads as zeros it does not hold: allocate only for bytes on disk.
      if (st.blocks * 512 + SPARSE_SLACK < st.size / 2) throw this.notASampleFile(r, `is sparse (${st.blocks * 512} of its ${st.size} bytes are on disk)`);
      const h = await readHeader(fh, path, maxHeader);
      const mjson = h.metadata['draftwire.manifest'];
      if (h.metadata.format !== FILE_FORMAT || typeof mjson !== 'string') throw new DecodeError(`${path}: not a Draftwire sample file`);
      if (checksumOfManifestJson(mjson) !== r.checksum) throw new ChecksumError(`${path}: manifest does not match the ref's checksum ${r.checksum} (corrupted or replaced)`, { detail: { sampleId: r.sampleId, generation: r.generation } });
      const m: Manifest = parseManifest(mjson, path);
      const byName = new Map<string, ManifestTensor>(m.tensors.map((t) => [t.name, t]));
      // The manifest is authenticated (via ref.checksum); the header must agree with it.
      if (byName.size !== h.entries.size || m.tensors.length !== Object.keys(r.features).length) throw new ChecksumError(`${path}: tensor list does not match the manifest`);
      for (const t of m.tensors) {
        const e = h.entries.get(t.name);
        const f = r.features[t.name];
        if (!e || !f || e.dtype !== t.dtype || f.dtype !== t.dtype || e.shape.join() !== t.shape.join() || f.shape.join() !== t.shape.join()) {
          throw new ChecksumError(`${path}: tensor "${t.name}" does not match the manifest`);
        }
      }
      const names = opts.names ?? m.tensors.map((t) => t.name);
      if (!Array.isArray(names)) throw new InvalidArgumentError('get: names must be an array');
      for (const n of names) if (!byName.has(n)) throw new InvalidArgumentError(`get: sample "${r.sampleId}" has no tensor "${n}" (has ${m.tensors.map((t) => t.name).join(', ')})`);
      const verify = opts.verify ?? true;
      const out: Record<string, Tensor> = {};
      for (const name of names) {
        const t = byName.get(name)!;
        const e = h.entries.get(name)!;
        const rows = rowsOf(t.shape);
        let r0 = 0, r1 = rows;
        if (opts.rows) {
          [r0, r1] = opts.rows;
          if (t.shape.length === 0 || !Number.isSafeInteger(r0) || !Number.isSafeInteger(r1) || r0 < 0 || r1 < r0 || r1 > rows) {
            throw new InvalidArgumentError(`get: rows [${r0}, ${r1}) are outside tensor "${name}" with shape [${t.shape}]`);
          }
        }
        const span = blockSpan(t, m.blockBytes, r0, r1);
        const buf = new Uint8Array(span.byte1 - span.byte0);
        if (verify) await readVerified(fh, buf, h.dataStart + e.begin + span.byte0, t, m, span, path);
        else await readFull(fh, buf, h.dataStart + e.begin + span.byte0, path);
        const lo = r0 * span.rowBytes - span.byte0;
        const hi = r1 * span.rowBytes - span.byte0;
        let bytes = lo === 0 && hi === buf.byteLength ? buf : buf.subarray(lo, hi);
        if (!opts.view && bytes !== buf) bytes = new Uint8Array(bytes);
        const shape = opts.rows ? [r1 - r0, ...t.shape.slice(1)] : [...t.shape];
        out[name] = { dtype: t.dtype, shape, data: viewAs(t.dtype, bytes) };
      }
      return out;
    } catch (e) {
      if (e instanceof DraftwireError) throw e;
      throw new DecodeError(`${path}: ${(e as Error).message}`, { cause: e });
    } finally {
      await fh.close();
    }
  }

  /**
   * Opens generation `generation` of a sample for a reader without its ref (the HTTP server):
   * SampleGoneError / StaleGenerationError when it is not there, DecodeError (naming the sample,
   * never quoting the file) when the file is not a sample file, ChecksumError when its header
   * disagrees with its manifest. Allocates at most `maxHeaderBytes` for the header (default
   * 16 MiB). The data bytes are the caller's to verify (the reader holds the ref's checksum).
   */
  async openForRead(sampleId: string, generation: number, maxHeaderBytes = 16 << 20): Promise<SampleFile> {
    this.checkOpen();
    this.checkSampleId(sampleId);
    if (!Number.isSafeInteger(generation) || generation < 0) throw new InvalidArgumentError(`generation must be a non-negative integer, got ${String(generation)}`);
    const r = { sampleId, generation } as SampleRef;
    let fh: FileHandle;
    try {
      fh = await open(this.dataPath(sampleId, generation), fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      if (errCode(e) === 'ENOENT') return this.missing(sampleId, generation);
      if (errCode(e) === 'ELOOP') throw this.notASampleFile(r, 'is a symbolic link');
      throw e;
    }
    const where = `sample "${sampleId}" generation ${generation}`;
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw this.notASampleFile(r, 'is not a regular file');
      if (st.blocks * 512 + SPARSE_SLACK < st.size / 2) throw this.notASampleFile(r, `is sparse (${st.blocks * 512} of its ${st.size} bytes are on disk)`);
      let header: SafetensorsHeader;
      try { header = await readHeader(fh, where, maxHeaderBytes); } catch (e) { throw e instanceof DraftwireError ? this.notASampleFile(r, 'is not a safetensors file') : e; }
      const mjson = header.metadata['draftwire.manifest'];
      if (header.metadata.format !== FILE_FORMAT || typeof mjson !== 'string') throw this.notASampleFile(r, 'is not a Draftwire sample file');
      let manifest: Manifest;
      try { manifest = parseManifest(mjson, where); } catch { throw this.notASampleFile(r, 'has a malformed manifest'); }
      if (manifest.tensors.length !== header.entries.size) throw new ChecksumError(`${where}: tensor list does not match the manifest`, { detail: { sampleId, generation } });
      for (const t of manifest.tensors) {
        const e = header.entries.get(t.name);
        if (!e || e.dtype !== t.dtype || e.shape.join() !== t.shape.join()) throw new ChecksumError(`${where}: tensor "${t.name}" does not match the manifest`, { detail: { sampleId, generation } });
      }
      return { fh, size: st.size, header, manifestJson: mjson, manifest };
    } catch (e) {
      await fh.close();
      if (e instanceof DraftwireError) throw e;
      throw new DecodeError(`${where}: ${errCode(e) ?? 'unreadable'}`, { cause: e });
    }
  }

  // ---------------------------------------------------------------- release / abort

  /**
   * release() for a caller holding only the sample id and generation (the HTTP server's
   * DELETE, already authenticated): frees exactly that generation. True if bytes were freed.
   */
  async releaseGeneration(sampleId: string, generation: number): Promise<boolean> {
    this.checkOpen();
    this.checkSampleId(sampleId);
    if (!Number.isSafeInteger(generation) || generation < 0) throw new InvalidArgumentError(`generation must be a non-negative integer, got ${String(generation)}`);
    try {
      return (await this.retire(sampleId, generation, { reason: 'released', at: Date.now() })) > 0;
    } catch (e) {
      throw this.writeError(sampleId, 'release', e);
    }
  }

  async release(ref: SampleRef): Promise<boolean> {
    this.checkOpen();
    const r = this.checkRef(ref, 'release');
    try {
      return (await this.retire(r.sampleId, r.generation, { reason: 'released', at: Date.now() })) > 0;
    } catch (e) {
      throw this.writeError(r.sampleId, 'release', e);
    }
  }

  async abort(sampleId: string, reason: string, opts: { generation?: number } = {}): Promise<boolean> {
    this.checkOpen();
    this.checkSampleId(sampleId);
    if (opts.generation !== undefined && !(Number.isSafeInteger(opts.generation) && opts.generation >= 0)) throw new InvalidArgumentError(`abort ${sampleId}: generation must be a non-negative integer, got ${String(opts.generation)}`);
    const detail = String(reason ?? '').slice(0, 500);
    return this.withLock(sampleId, async () => {
      const g = await this.readGen(sampleId);
      if (g === null || (opts.generation !== undefined && g !== opts.generation)) return false;
      try {
        return (await this.retire(sampleId, g, { reason: 'aborted', detail, at: Date.now() })) > 0;
      } catch (e) {
        throw this.writeError(sampleId, 'abort', e);
      }
    });
  }

  async held(): Promise<{ sampleId: string; generation: number }[]> {
    this.checkOpen();
    const out: { sampleId: string; generation: number }[] = [];
    for (const name of await readdir(this.dir)) {
      const m = DATA_RE.exec(name);
      if (m) out.push({ sampleId: m[1]!, generation: Number(m[2]) });
    }
    return out;
  }

  // ---------------------------------------------------------------- gc / health

  async gc(now: number = Date.now()): Promise<GcStats> {
    this.checkOpen();
    const t0 = Date.now();
    const stats: GcStats = { scanned: 0, tempFiles: 0, tempBytes: 0, tombstones: 0, locks: 0, genRecords: 0, reclaimed: 0, reclaimedBytes: 0, durationMs: 0 };
    const names = await readdir(this.dir);
    stats.scanned = names.length;
    const data = new Map<string, number[]>();
    const tombs = new Map<string, Set<number>>();
    const gens: string[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      let m: RegExpExecArray | null;
      if ((m = DATA_RE.exec(name))) {
        const list = data.get(m[1]!) ?? [];
        list.push(Number(m[2]));
        data.set(m[1]!, list);
      } else if ((m = TOMB_RE.exec(name))) {
        const st = await statIfExists(path);
        if (st && now - st.mtimeMs > this.o.tombstoneTtlMs && await unlinkIfExists(path)) { stats.tombstones++; continue; }
        const set = tombs.get(m[1]!) ?? new Set<number>();
        set.add(Number(m[2]));
        tombs.set(m[1]!, set);
      } else if (name.startsWith('.tmp-') || name.startsWith('.stale-')) {
        const st = await statIfExists(path);
        if (st && now - st.mtimeMs > this.o.tempMaxAgeMs && await unlinkIfExists(path)) { stats.tempFiles++; stats.tempBytes += st.size; }
      } else if (name.endsWith('.lock')) {
        const st = await statIfExists(path);
        if (st && now - st.mtimeMs > this.o.lockStaleMs && await unlinkIfExists(path)) stats.locks++;
      } else if (name.endsWith('.gen')) {
        gens.push(name.slice(0, -4));
      }
    }
    // Leftovers: a generation with its own tombstone (crash between tombstone and delete), or
    // older than a newer published generation (crash before superseding).
    for (const [id, list] of data) {
      list.sort((a, b) => a - b);
      const newest = list[list.length - 1]!;
      for (const g of list) {
        const own = tombs.get(id)?.has(g) ?? false;
        if (!own && g === newest) continue;
        const st = await statIfExists(this.dataPath(id, g));
        if (!st || now - st.mtimeMs <= Math.min(this.o.tempMaxAgeMs, this.o.lockStaleMs)) continue;
        const freed = own
          ? (await unlinkIfExists(this.dataPath(id, g)) ? st.size : 0)
          : await this.retire(id, g, { reason: 'superseded', by: newest, at: now });
        if (freed > 0) { stats.reclaimed++; stats.reclaimedBytes += freed; }
      }
    }
    for (const id of gens) {
      if (data.has(id) || tombs.has(id)) continue;
      const path = this.genPath(id);
      const st = await statIfExists(path);
      if (st && now - st.mtimeMs > this.o.tombstoneTtlMs && await unlinkIfExists(path)) stats.genRecords++;
    }
    this.usageCache = null;
    stats.durationMs = Date.now() - t0;
    return stats;
  }

  async health(): Promise<StoreHealth> {
    const base = { storeId: this.storeId, kind: 'dir', highWatermarkBytes: this.highWatermarkBytes, lowWatermarkBytes: this.lowWatermarkBytes };
    if (this.closed) return { ...base, ok: false, bytes: 0, samples: 0, tombstones: 0, tempFiles: 0, pressured: this.pressured, error: 'closed' };
    try {
      const u = await this.scanUsage();
      return { ...base, ok: true, ...u, pressured: this.pressured };
    } catch (e) {
      return { ...base, ok: false, bytes: 0, samples: 0, tombstones: 0, tempFiles: 0, pressured: this.pressured, error: `${errCode(e) ?? (e as Error).message}` };
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
