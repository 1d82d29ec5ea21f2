// Collectives between training ranks: Gloo over TCP (native/src/collectives/comm_gloo.cc), rendezvous
// through NATS KV served from here, one dedicated native thread per communicator.
//
//   const comm = await Communicator.connect({ rank, size, kv: await bus.kv('dw_job'), prefix: `job/epoch${e}` });
//   await comm.allReduce(grads, 'sum');           // in place, off the event loop
//   const tp = await comm.subgroup(layout.tpGroup(), 'tp');
//   model.attach(comm.nativeHandle());            // native code: dw::unwrapComm(handle)
//
// Every rank must issue the same collectives, with the same sizes, in the same order. Calls
// on one communicator run in call order (they queue). A buffer handed to a call must not be
// touched (or transferred) until the call settles. Failures (a dead or stuck peer past
// timeoutMs, a closed group) reject with CollectiveError carrying the native message and the
// caller's stack; after one the communicator is broken for good: close it and rebuild the
// world under a new prefix (a prefix is one rendezvous: use a fresh one per attempt).

import { setTimeout as sleep } from 'node:timers/promises';
import type { BusKv } from '../bus/bus.ts';
import { CollectiveError, DecodeError, DraftwireError, InvalidArgumentError, NativeError } from '../errors.ts';
import { collectivesBinding, type RawCommHandle, type RawCommStoreFn } from './addon.ts';

export type ReduceOpName = 'sum' | 'max';

export interface ConnectOptions {
  rank: number;
  size: number;
  /** KV bucket the ranks rendezvous in (every rank the same). */
  kv: BusKv;
  /** Namespace of this world in the bucket: unique per world and attempt. */
  prefix: string;
  /** Bound on every collective's waits (default 30 000). */
  timeoutMs?: number;
  /** Bound on waiting for the other ranks to show up, here and in subgroup() (default 60 000). */
  connectTimeoutMs?: number;
  /** Network interface to listen on (e.g. 'eth0'); else `hostname`. */
  iface?: string;
  /** Address to listen on and publish (default 127.0.0.1: single host). */
  hostname?: string;
  /**
   * Cancels the rendezvous: connect() then rejects with CollectiveError at once instead of
   * waiting for ranks that will not come (e.g. the world was superseded by a newer epoch).
   */
  signal?: AbortSignal;
}

// ------------------------------------------------------------------------------------------
// KV keys: the native side names keys as '/'-separated paths (`<prefix>/<gloo key>`). Each
// segment keeps [A-Za-z0-9_-], escapes every other byte of its UTF-8 as `=HH` (an empty
// segment is `=`), and segments are joined with '.', so keys are valid NATS KV keys (no
// leading/trailing '.', no empty tokens) and one world's keys share a subject prefix.
// Injective: '.' and '=' only appear as separator and escape.

const PLAIN = /^[A-Za-z0-9_-]$/;

export function encodeKvKey(path: string): string {
  if (typeof path !== 'string' || path.length === 0) throw new InvalidArgumentError('KV key path must be a non-empty string');
  return path.split('/').map((seg) => {
    if (seg.length === 0) return '=';
    let out = '';
    for (const ch of seg) {
      if (PLAIN.test(ch)) { out += ch; continue; }
      for (const b of Buffer.from(ch, 'utf8')) out += '=' + b.toString(16).toUpperCase().padStart(2, '0');
    }
    return out;
  }).join('.');
}

export function decodeKvKey(key: string): string {
  return key.split('.').map((seg) => {
    if (seg === '=') return '';
    const bytes: number[] = [];
    for (let i = 0; i < seg.length;) {
      if (seg[i] === '=') {
        const h = seg.slice(i + 1, i + 3);
        if (!/^[0-9A-F]{2}$/.test(h)) throw new DecodeError(`bad escape in KV key ${JSON.stringify(key)}`);
        bytes.push(parseInt(h, 16));
        i += 3;
      } else {
        bytes.push(seg.charCodeAt(i));
        i += 1;
      }
    }
    return Buffer.from(bytes).toString('utf8');
  }).join('/');
}

const MAX_VALUE_BYTES = 64 * 1024;

/** The rendezvous store the native side calls: NATS KV, 'get' polls until the key exists. */
/** What a rendezvous (or a connect) cancelled by `signal` rejects with. */
const cancelledBy = (signal: AbortSignal | undefined) => new CollectiveError(`rendezvous cancelled: ${String(signal?.reason ?? 'aborted')}`);

function kvStore(kv: BusKv, signal?: AbortSignal): RawCommStoreFn {
  const cancelled = () => cancelledBy(signal);
  return async (op, key, value, timeoutMs) => {
    if (signal?.aborted) throw cancelled();
    const k = encodeKvKey(key);
    if (op === 'set') {
      if (!(value instanceof Uint8Array) || value.length > MAX_VALUE_BYTES) throw new InvalidArgumentError(`rendezvous value for ${key} must be bytes (<= ${MAX_VALUE_BYTES})`);
      await kv.put(k, value);
      return null;
    }
    if (op === 'del') { await kv.delete(k); return null; }
    const deadline = Date.now() + timeoutMs;
    for (let pause = 2; ; pause = Math.min(pause * 2, 100)) {
      const e = await kv.get<unknown>(k);
      if (e) {
        if (!(e.value instanceof Uint8Array)) throw new DecodeError(`rendezvous value at ${key} is not bytes`);
        return e.value;
      }
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await sleep(Math.min(pause, left));
      if (signal?.aborted) throw cancelled();
    }
  };
}

/**
 * The native connect, or a CollectiveError as soon as `signal` aborts. Past the rendezvous
 * (where the store sees the signal) Gloo may block connecting to the published address of a
 * peer that died meanwhile (no reset from a machine that is gone: TCP retries for minutes),
 * long after the world it was for was superseded; the communicator it yields late is closed.
 */
function unlessAborted(p: Promise<RawCommHandle>, signal?: AbortSignal): Promise<RawCommHandle> {
  if (!signal) return p;
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      reject(cancelledBy(signal));
      p.then((late) => late.close(), () => {}).catch(() => {});
    };
    if (signal.aborted) { onAbort(); return; }
    signal.addEventListener('abort', onAbort, { once: true });
    p.then((v) => { signal.removeEventListener('abort', onAbort); resolve(v); }, (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e); });
  });
}

// ------------------------------------------------------------------------------------------
// Errors: native code COLLECTIVE → CollectiveError, INVALID_ARGUMENT → InvalidArgumentError,
// else NativeError; the stack is the caller's (captured before the hop to the native thread).

function convert(err: unknown, callerStack: string | undefined): Error {
  if (err instanceof DraftwireError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  const e = code === 'COLLECTIVE' ? new CollectiveError(msg, { cause: err })
    : code === 'INVALID_ARGUMENT' ? new InvalidArgumentError(msg, { cause: err })
      : new NativeError(msg, { cause: err });
  if (callerStack) e.stack = `${e.name}: ${msg}\n${callerStack.split('\n').slice(1).join('\n')}`;
  return e;
}

async function call<T>(holder: Error, fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (err) { throw convert(err, holder.stack); }
}

function isInt(x: unknown, lo: number, hi: number): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= lo && x <= hi;
}

// ------------------------------------------------------------------------------------------

export class Communicator {
  private raw: RawCommHandle | null;
  readonly rank: number;
  readonly size: number;

  private constructor(raw: RawCommHandle) {
    const info = raw.info();
    if (!info) throw new NativeError('communicator handle is not connected');
    this.raw = raw;
    this.rank = info.rank;
    this.size = info.size;
  }

  /** Joins the world: resolves once all `size` ranks connected (or rejects with CollectiveError). */
  static async connect(o: ConnectOptions): Promise<Communicator> {
    const holder = new Error();
    return call(holder, async () => {
      if (typeof o !== 'object' || o === null) throw new InvalidArgumentError('connect options must be an object');
      if (!isInt(o.size, 1, 1 << 20)) throw new InvalidArgumentError(`size must be a positive integer (got ${String(o.size)})`);
      if (!isInt(o.rank, 0, o.size - 1)) throw new InvalidArgumentError(`rank must be an integer in [0, ${o.size - 1}] (got ${String(o.rank)})`);
      if (typeof o.prefix !== 'string' || o.prefix.length === 0 || o.prefix.length > 200) throw new InvalidArgumentError('prefix must be a non-empty string (<= 200 characters)');
      if (!o.kv || typeof o.kv.get !== 'function') throw new InvalidArgumentError('kv must be a BusKv');
      for (const f of ['timeoutMs', 'connectTimeoutMs'] as const) {
        if (o[f] !== undefined && !isInt(o[f], 1, 2 ** 31)) throw new InvalidArgumentError(`${f} must be a positive integer (got ${String(o[f])})`);
      }
      const raw = await unlessAborted(collectivesBinding().commConnect({
        rank: o.rank, size: o.size, prefix: o.prefix, timeoutMs: o.timeoutMs, connectTimeoutMs: o.connectTimeoutMs,
        hostname: o.hostname, iface: o.iface,
      }, kvStore(o.kv, o.signal)), o.signal);
      return new Communicator(raw);
    });
  }

  /** An in-process world of n ranks as threads sharing memory (ThreadComm): for tests. */
  static threadWorld(n: number, opts: { timeoutMs?: number } = {}): Communicator[] {
    if (!isInt(n, 1, 1024)) throw new InvalidArgumentError(`n must be an integer in [1, 1024] (got ${String(n)})`);
    const t = opts.timeoutMs ?? 30_000;
    if (!isInt(t, 1, 2 ** 31)) throw new InvalidArgumentError(`timeoutMs must be a positive integer (got ${String(t)})`);
    return collectivesBinding().commThreadWorld(n, t).map((h) => new Communicator(h));
  }

  private handle(): RawCommHandle {
    if (!this.raw) throw new CollectiveError(`communicator (rank ${this.rank} of ${this.size}) is closed`);
    return this.raw;
  }

  private run<T>(fn: (h: RawCommHandle) => Promise<T>): Promise<T> {
    const holder = new Error();
    return call(holder, async () => fn(this.handle()));
  }

  /** In place: every rank ends with op over all ranks' buf. */
  allReduce<T extends Float32Array | Float64Array>(buf: T, op: ReduceOpName = 'sum'): Promise<T> {
    return this.run(async (h) => { await h.allReduce(buf, op); return buf; });
  }

  /** [rank 0's buf, rank 1's buf, ...] on every rank. */
  allGather(buf: Float32Array): Promise<Float32Array> { return this.run((h) => h.allGather(buf)); }

  /** buf has size·n elements; rank r gets the sum over ranks of buf[r·n .. (r+1)·n). */
  reduceScatter(buf: Float32Array): Promise<Float32Array> { return this.run((h) => h.reduceScatter(buf)); }

  /** In place: every rank ends with root's buf. */
  broadcast(buf: Float32Array, root: number): Promise<Float32Array> {
    return this.run(async (h) => { await h.broadcast(buf, root); return buf; });
  }

  barrier(): Promise<void> { return this.run((h) => h.barrier()); }

  /**
   * A communicator over some of this one's ranks (listed in order; the caller must be one).
   * Every member calls it with the same ranks and tag; groups with different tags or members
   * rendezvous separately, and calling again with the same ones builds a new group.
   */
  subgroup(ranks: number[], tag: string): Promise<Communicator> {
    return this.run(async (h) => {
      if (!Array.isArray(ranks) || ranks.length === 0) throw new InvalidArgumentError('subgroup ranks must be a non-empty array');
      if (typeof tag !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(tag)) throw new InvalidArgumentError(`subgroup tag must be 1..64 characters of [A-Za-z0-9_.:-] (got ${JSON.stringify(tag)})`);
      return new Communicator(await h.subgroup(ranks, tag));
    });
  }

  /**
   * Releases this handle after the calls already queued (native code holding the
   * communicator keeps it open). Idempotent.
   */
  async close(): Promise<void> {
    const raw = this.raw;
    this.raw = null;
    if (raw) await raw.close();
  }

  get closed(): boolean { return this.raw === null; }

  /**
   * The native CommHandle, for native code: `std::shared_ptr<dw::Comm> c = dw::unwrapComm(v)`
   * (native/src/napi/napi_comm.h). Opaque to JS.
   */
  nativeHandle(): object { return this.handle(); }

  /** @internal Breaks an in-process (threadWorld) group: pending and later calls fail. */
  abortForTest(why: string): boolean { return this.handle().abort(why); }
}

// ------------------------------------------------------------------------------------------
// Mirror of ShardLayout in native/src/collectives/comm.h: rank = ((dpIdx·sp) + spIdx)·tp + tpIdx.

export class ShardLayout {
  private constructor(
    readonly tp: number, readonly sp: number, readonly dp: number,
    readonly tpIdx: number, readonly spIdx: number, readonly dpIdx: number,
  ) {}

  static of(rank: number, tp: number, sp: number, dp: number): ShardLayout {
    for (const [k, v] of Object.entries({ tp, sp, dp })) {
      if (!isInt(v, 1, 1 << 20)) throw new InvalidArgumentError(`${k} must be a positive integer (got ${String(v)})`);
    }
    if (!isInt(rank, 0, tp * sp * dp - 1)) throw new InvalidArgumentError(`rank must be in [0, ${tp * sp * dp - 1}] (got ${String(rank)})`);
    return new ShardLayout(tp, sp, dp, rank % tp, Math.floor(rank / tp) % sp, Math.floor(rank / (tp * sp)));
  }

  get world(): number { return this.tp * this.sp * this.dp; }
  get rank(): number { return (this.dpIdx * this.sp + this.spIdx) * this.tp + this.tpIdx; }
  /** World ranks of this rank's TP / SP / DP group, in index order. */
  tpGroup(): number[] { return Array.from({ length: this.tp }, (_, i) => (this.dpIdx * this.sp + this.spIdx) * this.tp + i); }
  spGroup(): number[] { return Array.from({ length: this.sp }, (_, i) => (this.dpIdx * this.sp + i) * this.tp + this.tpIdx); }
  dpGroup(): number[] { return Array.from({ length: this.dp }, (_, i) => (i * this.sp + this.spIdx) * this.tp + this.tpIdx); }
}

/** Native memcpy bandwidth in GB/s (bytes copied per second), for benchmarks. */
export function memcpyBandwidth(bytes: number, reps: number): number {
  return collectivesBinding().memcpyBench(bytes, reps);
}

/** Whether the addon was built with Gloo (otherwise connect() fails with CollectiveError). */
export function haveGloo(): boolean { return collectivesBinding().blasInfo().gloo; }
