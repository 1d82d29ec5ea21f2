// THE NATS boundary: the Bus, and the only module the rest of Draftwire imports it from.
// Bus = BusCore (bus-core.ts: connection, sealing, publish/request/subscribe; the wire
// format is described there) + the JetStream side here (streams, KV buckets). Only bus*.ts
// and nats-errors.ts import the NATS client. What moved out (subjects, wire errors, faults,
// BusKv) is re-exported below, so imports of '…/src/bus.ts' stay as they were.

import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  jetstream, jetstreamManager, DeliverPolicy, JetStreamApiError, JetStreamApiCodes, StorageType, DiscardPolicy, RetentionPolicy,
  type JetStreamClient, type JetStreamManager, type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { ConflictError, DecodeError, DraftwireError, InvalidArgumentError, TimeoutError, UnavailableError } from '../errors.ts';
import { AuthPolicy } from '../wire/auth.ts';
import { subjects, checkSubject } from '../wire/subjects.ts';
import type { ErrorCtor } from '../wire/error-codec.ts';
import { mapNatsError, isNatsTimeout, isNoResponders } from './nats-errors.ts';
import { BusCore, sleep, type BusConnectOptions } from './core.ts';
import { BusKv } from './kv.ts';

export { subjects, type JobSubjects } from '../wire/subjects.ts';
export { errorToWire, errorFromWire, type WireError } from '../wire/error-codec.ts';
export { faultsFromEnv, type BusFaults } from './faults.ts';
export { BusKv, type KvValue, type KvChange, type KvWatch } from './kv.ts';
export { sealRecordBytes, openRecordBytes } from './core.ts';
export type { MsgMeta, Handler, SubscribeOptions, RequestOptions, BusConnectOptions, BusStats, BusSubscription } from './core.ts';

export interface StreamOptions {
  storage?: 'file' | 'memory';
  maxAgeMs?: number;
  maxBytes?: number;
  maxMsgs?: number;
  /** Window in which a repeated msgId is a duplicate (default 2 min). */
  duplicateWindowMs?: number;
  replicas?: number;
}

export interface AppendOptions {
  /** Fails with ConflictError unless the stream's last sequence is this. */
  expectedLastSeq?: number;
  /** Dedupe id (default: a fresh UUID, so our own retries never duplicate). */
  msgId?: string;
  timeoutMs?: number;
  retries?: number;
}

export interface StreamRecord<T = unknown> { seq: number; subject: string; obj: T; /** Only with readAll's yieldInvalid: why this record did not open. */ error?: DraftwireError }

// ---------------------------------------------------------------------------------------

export class Bus extends BusCore {
  private readonly jsTimeoutMs: number;
  private js_: JetStreamClient | null = null;
  private jsm_: JetStreamManager | null = null;
  private kvm_: Kvm | null = null;
  private readonly kvs = new Map<string, Promise<BusKv>>();

  private constructor(nc: NatsConnection, o: BusConnectOptions, auth: AuthPolicy) {
    super(nc, o, auth);
    this.jsTimeoutMs = o.jsTimeoutMs ?? 5000;
  }

  static async connect(o: BusConnectOptions): Promise<Bus> {
    subjects(o.job); // validates the job id
    const auth = o.auth ?? AuthPolicy.disabled();
    const creds = o.credentials !== undefined ? o.credentials : auth.natsCredentials();
    const reconnect = o.reconnect ?? true;
    const servers = Array.isArray(o.servers) ? o.servers : [o.servers];
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers,
        name: o.name ?? `draftwire-${o.job}`,
        ...(creds ? { user: creds.user, pass: creds.pass } : {}),
        reconnect,
        maxReconnectAttempts: reconnect ? -1 : 0,
        reconnectTimeWait: o.reconnectTimeWaitMs ?? 250,
        reconnectJitter: 50,
        timeout: o.connectTimeoutMs ?? 5000,
        waitOnFirstConnect: false,
        // Wrong credentials are fatal, not something to retry forever.
        ignoreAuthErrorAbort: false,
      });
    } catch (e) {
      throw mapNatsError(e, `connect to ${servers.join(',')}`);
    }
    return new Bus(nc, o, auth);
  }

  // ------------------------------------------------------------------ JetStream

  /** Run a JetStream operation once connected; retry idempotent ones on timeout/no-responders. */
  private async jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean, retries = 3): Promise<T> {
    let last: unknown;
    for (let attempt = 0; attempt <= (idempotent ? retries : 0); attempt++) {
      if (attempt > 0) await sleep(Math.min(1000, 50 * 2 ** (attempt - 1)));
      if (this.nc.isClosed()) throw new UnavailableError(`${what}: the NATS connection is closed`);
      await this.waitConnected(this.jsTimeoutMs);
      try {
        return await fn();
      } catch (e) {
        last = e;
        const m = mapNatsError(e, what);
        if (!(m instanceof TimeoutError) && !(m instanceof UnavailableError && (isNoResponders(e) || /503|no responders/i.test(String((e as Error)?.message))))) throw m;
      }
    }
    throw mapNatsError(last, what);
  }

  private js(): JetStreamClient {
    if (!this.js_) this.js_ = jetstream(this.nc, { timeout: this.jsTimeoutMs });
    return this.js_;
  }

  private async jsm(): Promise<JetStreamManager> {
    if (!this.jsm_) {
      this.jsm_ = await this.jsOp('JetStream', () => jetstreamManager(this.nc, { timeout: this.jsTimeoutMs, checkAPI: false }), true);
    }
    return this.jsm_;
  }

  /** Open (creating if missing) a KV bucket. */
  kv(bucket: string, opts: { history?: number; storage?: 'file' | 'memory'; replicas?: number } = {}): Promise<BusKv> {
    if (typeof bucket !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(bucket)) return Promise.reject(new InvalidArgumentError(`invalid KV bucket name ${JSON.stringify(bucket)}`));
    let p = this.kvs.get(bucket);
    if (!p) {
      p = (async () => {
        if (!this.kvm_) this.kvm_ = new Kvm(this.js());
        const kvm = this.kvm_;
        const kv = await this.jsOp(`open KV bucket ${bucket}`, () => kvm.create(bucket, {
          history: opts.history ?? 1,
          storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
          replicas: opts.replicas ?? 1,
          timeout: this.jsTimeoutMs,
        }), true);
        return new BusKv(this, bucket, kv);
      })();
      this.kvs.set(bucket, p);
      p.catch(() => this.kvs.delete(bucket));
    }
    return p;
  }

  /** @internal */ _sealKv(bucket: string, key: string, obj: unknown, version: number): Uint8Array { return this.sealRecord(`kv:${bucket}:${key}`, obj, version); }
  /** @internal */ _openKv(bucket: string, key: string, bytes: Uint8Array): { value: unknown; version: number } { return this.openVersionedRecord(`kv:${bucket}:${key}`, bytes); }
  /** @internal */ _js(): JetStreamClient { return this.js(); }
  /** @internal */ _jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean): Promise<T> { return this.jsOp(what, fn, idempotent); }

  /** Create the stream if missing; widen its subjects if it lacks some. Idempotent. */
  async ensureStream(name: string, streamSubjects: string[], opts: StreamOptions = {}): Promise<void> {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(name)) throw new InvalidArgumentError(`invalid stream name ${JSON.stringify(name)}`);
    if (!Array.isArray(streamSubjects) || streamSubjects.length === 0) throw new InvalidArgumentError('ensureStream needs at least one subject');
    streamSubjects.forEach((s) => checkSubject(s, true));
    const jsm = await this.jsm();
    const existing = await this.jsOp(`stream ${name}`, async () => {
      try { return await jsm.streams.info(name); } catch (e) {
        if ((e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) || (e instanceof Error && /stream not found/i.test(e.message))) return null;
        throw e;
      }
    }, true);
    if (existing) {
      const have = new Set(existing.config.subjects ?? []);
      const missing = streamSubjects.filter((s) => !have.has(s));
      if (missing.length) await this.jsOp(`update stream ${name}`, () => jsm.streams.update(name, { subjects: [...have, ...missing] }), true);
      return;
    }
    const cfg: Partial<StreamConfig> & { name: string } = {
      name,
      subjects: streamSubjects,
      storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.New, // never silently drop unread records at a limit
      num_replicas: opts.replicas ?? 1,
      max_age: Math.floor((opts.maxAgeMs ?? 0) * 1e6),
      max_bytes: opts.maxBytes ?? -1,
      max_msgs: opts.maxMsgs ?? -1,
      duplicate_window: Math.floor((opts.duplicateWindowMs ?? 120_000) * 1e6),
    };
    try {
      await this.jsOp(`create stream ${name}`, () => jsm.streams.add(cfg), false);
    } catch (e) {
      // Lost a creation race: fine if it exists now.
      try { await jsm.streams.info(name); return; } catch { /* report the original */ }
      throw mapNatsError(e, `create stream ${name}`);
    }
  }

  /** JetStream publish (MAC'd record); returns the stream sequence. Retries are deduped by msgId. */
  async append(subject: string, obj: unknown, opts: AppendOptions = {}): Promise<number> {
    return (await this.appendAck(subject, obj, opts)).seq;
  }

  /**
   * append() that also says whether the server saw this msgId already (within the stream's
   * duplicate window): then `seq` is the original record's, and nothing was written. The
   * duplicate check comes before the expected-last-seq check, so a retried conditional
   * append whose first ack was lost returns the original seq instead of a conflict.
   */
  async appendAck(subject: string, obj: unknown, opts: AppendOptions = {}): Promise<{ seq: number; duplicate: boolean }> {
    checkSubject(subject, false);
    const data = this.sealRecord(`js:${subject}`, obj);
    const msgID = opts.msgId ?? randomUUID();
    const retries = opts.retries ?? 3;
    let last: unknown;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await sleep(Math.min(1000, 50 * 2 ** (attempt - 1)));
      if (this.nc.isClosed()) throw new UnavailableError(`append to ${subject}: the NATS connection is closed`);
      await this.waitConnected(opts.timeoutMs ?? this.jsTimeoutMs);
      try {
        const ack = await this.js().publish(subject, data, {
          msgID,
          timeout: opts.timeoutMs ?? this.jsTimeoutMs,
          ...(opts.expectedLastSeq !== undefined ? { expect: { lastSequence: opts.expectedLastSeq } } : {}),
        });
        return { seq: ack.seq, duplicate: ack.duplicate === true };
      } catch (e) {
        last = e;
        const mapped = mapNatsError(e, `append to ${subject}`);
        if (mapped instanceof ConflictError || !(isNatsTimeout(e) || isNoResponders(e) || mapped instanceof TimeoutError || /503|no responders/i.test(String((e as Error)?.message)))) throw mapped;
      }
    }
    throw mapNatsError(last, `append to ${subject} (after ${retries + 1} attempts)`);
  }

  async streamInfo(stream: string): Promise<{ firstSeq: number; lastSeq: number; messages: number; bytes: number }> {
    const jsm = await this.jsm();
    const i = await this.jsOp(`stream ${stream}`, () => jsm.streams.info(stream), true);
    return { firstSeq: i.state.first_seq, lastSeq: i.state.last_seq, messages: i.state.messages, bytes: i.state.bytes };
  }

  /**
   * Every record from `fromSeq` up to the stream's last sequence at the time of the call, in
   * order (ordered consumer), then ends. A record that fails its MAC or decode throws
   * (AuthError/DecodeError with the seq), unless skipInvalid, which counts and skips it, or
   * yieldInvalid, which yields it as { seq, error } (obj undefined) for the caller to report.
   */
  async *readAll<T = unknown>(stream: string, fromSeq = 1, opts: { skipInvalid?: boolean; yieldInvalid?: boolean; batch?: number } = {}): AsyncIterable<StreamRecord<T>> {
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) throw new InvalidArgumentError(`readAll fromSeq must be >= 1, got ${fromSeq}`);
    const info = await this.streamInfo(stream);
    const endSeq = info.lastSeq;
    if (info.messages === 0 || endSeq < fromSeq) return;
    const startSeq = Math.max(fromSeq, info.firstSeq);
    const consumer = await this.jsOp(`read stream ${stream}`,
      () => this.js().consumers.get(stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq }), true);
    const iter = await consumer.consume({ max_messages: opts.batch ?? 256 });
    try {
      for await (const m of iter) {
        const seq = m.seq;
        let obj: unknown;
        let ok = true;
        try {
          obj = this.openRecord(`js:${m.subject}`, m.data);
        } catch (e) {
          const err = e instanceof DraftwireError ? e : new DecodeError(String(e));
          const named = new (err.constructor as ErrorCtor)(`stream ${stream} seq ${seq}: ${err.message}`, { cause: e, detail: { stream, seq } });
          if (opts.yieldInvalid) yield { seq, subject: m.subject, obj: undefined as T, error: named };
          else if (!opts.skipInvalid) throw named;
          else this._warnBadRecord(`${stream}#${seq}`, e);
          ok = false;
        }
        if (ok) yield { seq, subject: m.subject, obj: obj as T };
        if (seq >= endSeq || m.info.pending === 0) break;
      }
    } finally {
      try { iter.stop(); } catch { /* already */ }
      try { await iter.close(); } catch { /* already */ }
    }
  }

  /** Purge a stream: all, or keep the last `keep`, or everything below `upToSeq` (exclusive). Returns the count purged. */
  async purge(stream: string, opts: { keep?: number; upToSeq?: number } = {}): Promise<number> {
    const jsm = await this.jsm();
    const r = await this.jsOp(`purge ${stream}`,
      () => jsm.streams.purge(stream, opts.upToSeq !== undefined ? { seq: opts.upToSeq } : opts.keep !== undefined ? { keep: opts.keep } : undefined), false);
    return r.purged;
  }

  async deleteStream(stream: string): Promise<boolean> {
    const jsm = await this.jsm();
    return this.jsOp(`delete stream ${stream}`, () => jsm.streams.delete(stream), false);
  }
}
