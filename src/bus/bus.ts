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
import { Objm } from '@nats-io/obj';
import { ConflictError, DecodeError, DraftwireError, InvalidArgumentError, TimeoutError, UnavailableError } from '../errors.ts';
import { AuthPolicy } from '../wire/auth.ts';
import { subjects, checkSubject } from '../wire/subjects.ts';
import type { ErrorCtor } from '../wire/error-codec.ts';
import { mapNatsError, isNatsTimeout, isNoResponders, isTransientJs } from './nats-errors.ts';
import { BusCore, sleep, type BusConnectOptions } from './core.ts';
import { BusKv } from './kv.ts';
import { BusObjects } from './objects.ts';
import { createLogger } from '../log.ts';
import { tlsFailure } from '../tls.ts';
import { clientTls, clusterSizeFromInfo, refusePlaintext, replicasFor, replicasFromEnv, splitServers, tlsFromEnv, TLS_ENV } from './transport.ts';

export { subjects, type JobSubjects } from '../wire/subjects.ts';
export { errorToWire, errorFromWire, type WireError } from '../wire/error-codec.ts';
export { faultsFromEnv, type BusFaults } from './faults.ts';
export { BusKv, type KvValue, type KvChange, type KvWatch } from './kv.ts';
export { sealRecordBytes, openRecordBytes } from './core.ts';
export type { MsgMeta, Handler, SubscribeOptions, RequestOptions, BusConnectOptions, BusStats, BusSubscription } from './core.ts';
export { isLoopbackHost, replicasFor, clusterSizeFromInfo, splitServers, tlsFromEnv, TLS_ENV, REPLICAS_ENV, type BusTlsOptions } from './transport.ts';

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
  /** Fails with ConflictError unless the stream's last record is the one of this msgId. */
  expectedLastMsgId?: string;
  /** Dedupe id (default: a fresh UUID, so our own retries never duplicate). */
  msgId?: string;
  timeoutMs?: number;
  retries?: number;
}

/** Where a replicated stream's copies are: the leader's server name, and each other replica's. */
export interface StreamClusterState { leader: string | null; replicas: Array<{ name: string; current: boolean; offline: boolean; lag: number }> }

export interface StreamRecord<T = unknown> { seq: number; subject: string; obj: T; /** Only with readAll's yieldInvalid: why this record did not open. */ error?: DraftwireError }

const log = createLogger('bus');
/** A stream read with no record for this long reads the rest from the stream's leader (readAll). */
const READ_STALL_MS = 5000;

// ---------------------------------------------------------------------------------------

export class Bus extends BusCore {
  private readonly jsTimeoutMs: number;
  private js_: JetStreamClient | null = null;
  private jsm_: JetStreamManager | null = null;
  private kvm_: Kvm | null = null;
  private readonly kvs = new Map<string, Promise<BusKv>>();
  private readonly objs = new Map<string, Promise<BusObjects>>();
  private readonly defaultReplicas: number | 'auto';
  private readonly givenServers: number;
  /** Whether the connection uses TLS (asked for: every server must offer it). */
  readonly tls: boolean;

  private constructor(nc: NatsConnection, o: BusConnectOptions, auth: AuthPolicy, servers: string[], tls: boolean, replicas: number | 'auto') {
    super(nc, o, auth);
    this.jsTimeoutMs = o.jsTimeoutMs ?? 5000;
    this.givenServers = new Set(servers).size;
    this.tls = tls;
    this.defaultReplicas = replicas;
  }

  static async connect(o: BusConnectOptions): Promise<Bus> {
    subjects(o.job); // validates the job id
    const auth = o.auth ?? AuthPolicy.disabled();
    const creds = o.credentials !== undefined ? o.credentials : auth.natsCredentials();
    const reconnect = o.reconnect ?? true;
    const servers = splitServers(o.servers);
    if (servers.length === 0) throw new InvalidArgumentError('no NATS server given');
    const replicas = o.replicas ?? replicasFromEnv() ?? 'auto';
    if (replicas !== 'auto' && !(Number.isInteger(replicas) && replicas >= 1 && replicas <= 5)) throw new InvalidArgumentError(`replicas must be 'auto' or an integer in 1..5, got ${String(replicas)}`);
    const tls = clientTls(servers, o.tls !== undefined ? o.tls : tlsFromEnv());
    const secret = !!creds || auth.enabled;
    // Before anything connects: no password in clear to a host off this machine.
    refusePlaintext(servers, { credentials: secret, tls: !!tls });
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers,
        name: o.name ?? `draftwire-${o.job}`,
        ...(creds ? { user: creds.user, pass: creds.pass } : {}),
        ...(tls ? { tls } : {}),
        // Plain (allowed on loopback only): never follow the cluster to servers it gossips,
        // which may be on other machines.
        ignoreClusterUpdates: secret && !tls,
        reconnect,
        maxReconnectAttempts: reconnect ? -1 : 0,
        reconnectTimeWait: o.reconnectTimeWaitMs ?? 250,
        reconnectJitter: 50,
        timeout: o.connectTimeoutMs ?? 5000,
        waitOnFirstConnect: false,
        // Wrong credentials are fatal, not something to retry forever.
        ignoreAuthErrorAbort: false,
        // nats.js otherwise builds an Error (a stack capture) for every request, to decorate a
        // timeout that rarely comes: a tenth of the queue's CPU under load. The Bus's own typed
        // errors name the subject and the caller's stack.
        noAsyncTraces: true,
      });
    } catch (e) {
      throw connectError(e, servers, !!tls);
    }
    return new Bus(nc, o, auth, servers, !!tls, replicas);
  }

  /**
   * The number of servers in the cluster, as the server we are connected to tells it: 1 if
   * not clustered, else the distinct client URLs the cluster gossips (at least the servers
   * given to connect).
   */
  clusterSize(): number {
    return clusterSizeFromInfo(this.nc.info as { cluster?: string; connect_urls?: string[] } | undefined, this.givenServers);
  }

  /** Whether the server we are connected to is a member of a cluster. */
  private clustered(): boolean {
    return Boolean((this.nc.info as { cluster?: string } | undefined)?.cluster);
  }

  /** The replica count of the streams and KV buckets this Bus creates (when not given). */
  replicas(): number {
    return this.defaultReplicas === 'auto' ? replicasFor(this.clusterSize()) : this.defaultReplicas;
  }

  /**
   * Resolves once JetStream answers (a cluster has elected its meta leader: a quorum of its
   * servers is up); UnavailableError after timeoutMs.
   */
  async waitJetStream(timeoutMs = 60_000, onWait?: (ms: number) => void): Promise<void> {
    const t0 = Date.now();
    let last: unknown = null;
    let told = 0;
    while (Date.now() - t0 < timeoutMs) {
      try {
        const jsm = await jetstreamManager(this.nc, { timeout: Math.min(2000, this.jsTimeoutMs), checkAPI: false });
        await jsm.getAccountInfo();
        return;
      } catch (e) {
        last = e;
        if (this.nc.isClosed()) break;
        if (onWait && Date.now() - t0 - told >= 5000) { told = Date.now() - t0; onWait(told); }
        await sleep(250);
      }
    }
    throw new UnavailableError(`JetStream did not answer within ${timeoutMs} ms (${last ? mapNatsError(last, 'JetStream').message : 'connection closed'}): ` +
      'a NATS cluster needs a majority of its servers up (2 of 3) before it serves streams', { cause: last });
  }

  /** Raise a stream's replica count to `want` (never lowers it); a failure is logged, not thrown (the stream works as it is). */
  private async raiseReplicas(jsm: JetStreamManager, cfg: StreamConfig, want: number): Promise<void> {
    if ((cfg.num_replicas ?? 1) >= want) return;
    try {
      await this.jsOp(`scale stream ${cfg.name} to ${want} replicas`, () => jsm.streams.update(cfg.name, { ...cfg, num_replicas: want }), false);
    } catch (e) {
      log.warn('could not raise a stream\'s replicas; it keeps the ones it has', { stream: cfg.name, have: cfg.num_replicas ?? 1, want, error: mapNatsError(e, 'scale').message });
    }
  }

  // ------------------------------------------------------------------ JetStream

  /** Run a JetStream operation once connected; retry idempotent ones on timeout/no-responders. */
  private async jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean, retries = 3): Promise<T> {
    const t0 = Date.now();
    let last: unknown;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) await sleep(Math.min(1000, 50 * 2 ** (attempt - 1)));
      if (this.nc.isClosed()) throw new UnavailableError(`${what}: the NATS connection is closed`);
      await this.waitConnected(this.jsTimeoutMs);
      try {
        return await fn();
      } catch (e) {
        last = e;
        const m = mapNatsError(e, what);
        const timedOut = m instanceof TimeoutError;
        // No responders: nobody ran it, so even a non-idempotent operation may go again.
        const unanswered = m instanceof UnavailableError && isUnanswered(e);
        if (!(unanswered || (idempotent && (timedOut || (m instanceof UnavailableError && isTransientJs(e)))))) throw m;
        if (!this.keepTrying(attempt, retries, t0, this.jsTimeoutMs, timedOut)) break;
      }
    }
    throw mapNatsError(last, what);
  }

  /**
   * Whether a failed JetStream attempt gets another: `retries` more in any case; past those,
   * in a cluster, fast failures (no responders while a stream's leader is being elected:
   * seconds) go on until as long as the attempts would have taken had they timed out.
   */
  private keepTrying(attempt: number, retries: number, t0: number, timeoutMs: number, timedOut: boolean): boolean {
    if (attempt < retries) return true;
    if (timedOut || !this.clustered()) return false;
    return Date.now() - t0 < timeoutMs * (retries + 1);
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
    return this.openBucket(this.kvs, 'KV bucket', bucket, `KV_${bucket}`, opts.replicas ?? this.replicas(), async (replicas) => {
      if (!this.kvm_) this.kvm_ = new Kvm(this.js());
      const kvm = this.kvm_;
      const kv = await this.jsOp(`open KV bucket ${bucket}`, () => kvm.create(bucket, {
        history: opts.history ?? 1,
        storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
        replicas,
        timeout: this.jsTimeoutMs,
      }), true);
      return new BusKv(this, bucket, kv);
    });
  }

  /** Open (creating if missing) an object store bucket, with the job's replica count. */
  objects(bucket: string): Promise<BusObjects> {
    return this.openBucket(this.objs, 'object store bucket', bucket, `OBJ_${bucket}`, this.replicas(), async (replicas) => {
      const os = await this.jsOp(`open object store ${bucket}`, () => new Objm(this.js()).create(bucket, { replicas, storage: StorageType.File }), true);
      return new BusObjects(this, bucket, os);
    });
  }

  /**
   * A bucket opened once per Bus (a failed open is forgotten, so the next call retries), with
   * its stream raised to `replicas` when it was made with fewer (before the cluster grew, or by
   * a process that saw fewer servers).
   */
  private openBucket<T>(cache: Map<string, Promise<T>>, what: string, bucket: string, stream: string, replicas: number, open: (replicas: number) => Promise<T>): Promise<T> {
    if (typeof bucket !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(bucket)) return Promise.reject(new InvalidArgumentError(`invalid ${what} name ${JSON.stringify(bucket)}`));
    let p = cache.get(bucket);
    if (!p) {
      p = (async () => {
        const b = await open(replicas);
        if (replicas > 1) {
          const jsm = await this.jsm();
          const info = await this.jsOp(`stream ${stream}`, () => jsm.streams.info(stream), true);
          await this.raiseReplicas(jsm, info.config, replicas);
        }
        return b;
      })();
      cache.set(bucket, p);
      p.catch(() => cache.delete(bucket));
    }
    return p;
  }

  /** @internal */ _sealKv(bucket: string, key: string, obj: unknown, version: number): Uint8Array { return this.sealRecord(`kv:${bucket}:${key}`, obj, version); }
  /** @internal */ _openKv(bucket: string, key: string, bytes: Uint8Array): { value: unknown; version: number } { return this.openVersionedRecord(`kv:${bucket}:${key}`, bytes); }
  /** @internal */ _js(): JetStreamClient { return this.js(); }
  /** @internal */ _jsm(): Promise<JetStreamManager> { return this.jsm(); }
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
    const replicas = opts.replicas ?? this.replicas();
    if (existing) {
      const have = new Set(existing.config.subjects ?? []);
      const missing = streamSubjects.filter((s) => !have.has(s));
      if (missing.length) await this.jsOp(`update stream ${name}`, () => jsm.streams.update(name, { subjects: [...have, ...missing] }), true);
      await this.raiseReplicas(jsm, missing.length ? { ...existing.config, subjects: [...have, ...missing] } : existing.config, replicas);
      return;
    }
    const cfg: Partial<StreamConfig> & { name: string } = {
      name,
      subjects: streamSubjects,
      storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.New, // never silently drop unread records at a limit
      num_replicas: replicas,
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
    let attempts = 0;
    const t0 = Date.now();
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) await sleep(Math.min(1000, 50 * 2 ** (attempt - 1)));
      attempts = attempt + 1;
      if (this.nc.isClosed()) throw new UnavailableError(`append to ${subject}: the NATS connection is closed`);
      await this.waitConnected(opts.timeoutMs ?? this.jsTimeoutMs);
      try {
        const ack = await this.js().publish(subject, data, {
          msgID,
          timeout: opts.timeoutMs ?? this.jsTimeoutMs,
          ...(opts.expectedLastSeq !== undefined || opts.expectedLastMsgId !== undefined ? {
            expect: {
              ...(opts.expectedLastSeq !== undefined ? { lastSequence: opts.expectedLastSeq } : {}),
              ...(opts.expectedLastMsgId !== undefined ? { lastMsgID: opts.expectedLastMsgId } : {}),
            },
          } : {}),
        });
        return { seq: ack.seq, duplicate: ack.duplicate === true };
      } catch (e) {
        last = e;
        const mapped = mapNatsError(e, `append to ${subject}`);
        const timedOut = isNatsTimeout(e) || mapped instanceof TimeoutError;
        if (mapped instanceof ConflictError || !(timedOut || isNoResponders(e) || isTransientJs(e))) throw mapped;
        if (!this.keepTrying(attempt, retries, t0, opts.timeoutMs ?? this.jsTimeoutMs, timedOut)) break;
      }
    }
    throw mapNatsError(last, `append to ${subject} (after ${attempts} attempts)`);
  }

  async streamInfo(stream: string, retries = 3): Promise<{ firstSeq: number; lastSeq: number; messages: number; bytes: number; replicas: number; cluster: StreamClusterState | null }> {
    const jsm = await this.jsm();
    const i = await this.jsOp(`stream ${stream}`, () => jsm.streams.info(stream), true, retries);
    const cluster = i.cluster ? {
      leader: i.cluster.leader ?? null,
      replicas: (i.cluster.replicas ?? []).map((r) => ({ name: r.name, current: r.current, offline: r.offline === true, lag: r.lag ?? 0 })),
    } : null;
    return { firstSeq: i.state.first_seq, lastSeq: i.state.last_seq, messages: i.state.messages, bytes: i.state.bytes, replicas: i.config.num_replicas ?? 1, cluster };
  }

  /**
   * Every record from `fromSeq` up to the stream's last sequence at the time of the call, in
   * order (ordered consumer), then ends. A record that fails its MAC or decode throws
   * (AuthError/DecodeError with the seq), unless skipInvalid, which counts and skips it, or
   * yieldInvalid, which yields it as { seq, error } (obj undefined) for the caller to report.
   * A consumer that delivers nothing for `stallMs` (default 5 s) is given up: the rest is read
   * from the stream's leader by sequence.
   */
  async *readAll<T = unknown>(stream: string, fromSeq = 1, opts: { skipInvalid?: boolean; yieldInvalid?: boolean; batch?: number; stallMs?: number } = {}): AsyncIterable<StreamRecord<T>> {
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) throw new InvalidArgumentError(`readAll fromSeq must be >= 1, got ${fromSeq}`);
    // In a cluster, creating the (ordered, ephemeral) consumer needs the JetStream meta leader,
    // which is re-elected for seconds after a server dies: a reader (the queue rebuilding its
    // ledger, `draftwire audit`) waits that out, about a minute, instead of failing.
    const patience = this.clustered() ? 11 : 3;
    const info = await this.streamInfo(stream, patience);
    const endSeq = info.lastSeq;
    if (info.messages === 0 || endSeq < fromSeq) return;
    const startSeq = Math.max(fromSeq, info.firstSeq);
    const consumer = await this.jsOp(`read stream ${stream}`,
      () => this.js().consumers.get(stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq }), true, patience);
    const iter = await consumer.consume({ max_messages: opts.batch ?? 256 });
    /** The record of seq, or null when it fails its MAC or decode (then thrown, skipped or yielded as the options say). */
    const open = (seq: number, subject: string, data: Uint8Array): StreamRecord<T> | null => {
      try {
        return { seq, subject, obj: this.openRecord(`js:${subject}`, data) as T };
      } catch (e) {
        const err = e instanceof DraftwireError ? e : new DecodeError(String(e));
        const named = new (err.constructor as ErrorCtor)(`stream ${stream} seq ${seq}: ${err.message}`, { cause: e, detail: { stream, seq } });
        if (opts.yieldInvalid) return { seq, subject, obj: undefined as T, error: named };
        if (!opts.skipInvalid) throw named;
        this._warnBadRecord(`${stream}#${seq}`, e);
        return null;
      }
    };
    let last = startSeq - 1;
    let stalled = false;
    const it = iter[Symbol.asyncIterator]();
    try {
      for (;;) {
        // A consumer on a replica that stays behind (one back from a freeze or a partition)
        // delivers nothing more: after stallMs without a record, read the rest from the
        // stream's leader, by sequence.
        let timer: NodeJS.Timeout | undefined;
        const next = await Promise.race([it.next(), new Promise<'stall'>((r) => { timer = setTimeout(() => r('stall'), opts.stallMs ?? READ_STALL_MS); })]);
        clearTimeout(timer);
        if (next === 'stall') { stalled = true; break; }
        if (next.done) break;
        const m = next.value;
        last = m.seq;
        const rec = open(m.seq, m.subject, m.data);
        if (rec) yield rec;
        if (m.seq >= endSeq) return;
        if (m.info.pending === 0) {
          // In a cluster the consumer may count from a replica that has not applied the last
          // records yet: end only if the stream itself has nothing past this record.
          const now = await this.streamInfo(stream);
          if (now.messages === 0 || now.lastSeq <= m.seq) return;
        }
      }
    } finally {
      try { iter.stop(); } catch { /* already */ }
      // What a for-await's exit does (close waits for it); a next() still pending after a stall settles with done.
      void it.return?.(undefined)?.catch(() => {});
      try { await iter.close(); } catch { /* already */ }
    }
    if (!stalled) return;
    log.warn('stream read stalled (a replica behind the others?); reading the rest from the stream leader', { stream, from: last + 1, to: endSeq });
    const jsm = await this.jsm();
    for (let seq = last + 1; seq <= endSeq; seq++) {
      const m = await this.jsOp(`read stream ${stream} seq ${seq}`, () => jsm.streams.getMessage(stream, { seq }), true, patience);
      if (!m) continue; // deleted or purged
      const rec = open(m.seq, m.subject, m.data);
      if (rec) yield rec;
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

/** A connect failure as a Draftwire error; a TLS failure says which side's certificate is wrong and what to give. */
function connectError(e: unknown, servers: string[], tls: boolean): DraftwireError {
  const what = `connect to ${servers.join(',')}`;
  const f = tlsFailure(e, tls);
  if (f) return new UnavailableError(`${what}: TLS failed (${f.why}): ${f.hint}`, { cause: e, detail: { tls: true } });
  return mapNatsError(e, what);
}

/** The request reached no one (no responders; nats.js reports a JetStream publish's as "jetstream is not enabled"). */
function isUnanswered(e: unknown): boolean {
  return isNoResponders(e) || /\b503\b|no responders|jetstream (?:is )?not enabled/i.test(String((e as Error)?.message)) ||
    /no responders/i.test(String(((e as { cause?: Error })?.cause)?.message));
}
