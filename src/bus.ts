// THE NATS boundary: the only file that imports the NATS client.
//
// Wire format (every message): auth.seal(encodeMessage(frame)), frame one of
//   publish  {k: 'm', s: subject, d: body}
//   request  {k: 'q', s: subject, i: idempotencyKey, a: attempt, d: body}
//   reply    {k: 'r', i: idempotencyKey, d: result}  |  {k: 'e', i, error: {code, message, retryable, detail?}}
// The subject is inside the MAC, so a sealed message cannot be moved to another subject;
// the idempotency key is inside too, and replies echo it. A retry is sealed afresh (new
// nonce), so the replay window never eats it. KV values and stream records are MAC'd (no
// replay window: they are read again later) with their key/subject bound in.
//
// A message that fails auth or decode is counted and dropped with a (rate-limited) warning;
// it never throws into NATS. Handler errors that are DraftwireErrors go back to the
// requester, which rethrows them as the same class.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, errors as natsErrors, type NatsConnection, type Msg, type Subscription, type Status } from '@nats-io/transport-node';
import {
  jetstream, jetstreamManager, DeliverPolicy, JetStreamApiError, JetStreamApiCodes, StorageType, DiscardPolicy, RetentionPolicy,
  type JetStreamClient, type JetStreamManager, type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import * as E from './errors.ts';
import { AuthError, ConflictError, DecodeError, DraftwireError, InvalidArgumentError, TimeoutError, UnavailableError } from './errors.ts';
import { AuthPolicy } from './auth.ts';
import { encodeMessage, decodeMessage, MESSAGE_MAX_BYTES } from './sampleref.ts';
import { createLogger, type Logger } from './log.ts';

// ---------------------------------------------------------------------------------------
// Subjects

const TOKEN_RE = /^[A-Za-z0-9_-]{1,64}$/;

function token(x: unknown, what: string): string {
  if (typeof x !== 'string' || !TOKEN_RE.test(x)) throw new InvalidArgumentError(`${what} must be 1..64 characters of [A-Za-z0-9_-], got ${JSON.stringify(x)}`);
  return x;
}

export interface JobSubjects {
  readonly job: string;
  readonly queue: { readonly commit: string; readonly credit: string; readonly ack: string; readonly release: string; readonly fail: string; readonly renew: string; readonly all: string };
  /** `dw.<job>.part.<num>.<index>` */
  part(num: number, index: number): string;
  /** `dw.<job>.part.<num>.*` */
  partAll(num: number): string;
  readonly storeFree: string;
  readonly ctlEpoch: string;
  /** `dw.<job>.node.<nodeId>.spawn` */
  nodeSpawn(nodeId: string): string;
  /** `dw.<job>.hb.<actor>` */
  hb(actor: string): string;
  readonly hbAll: string;
  /** Everything of this job: `dw.<job>.>` */
  readonly all: string;
  /** KV bucket of the coordinator: `dw_<job>` */
  readonly kvBucket: string;
  /** Ledger write-ahead log: stream `dw_<job>_wal`, subject `dw.<job>.wal.ledger` */
  readonly walStream: string;
  readonly walSubject: string;
}

export function subjects(job: string): JobSubjects {
  const j = token(job, 'job id');
  const p = `dw.${j}`;
  const uint = (x: number, what: string) => {
    if (!Number.isSafeInteger(x) || x < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer, got ${x}`);
    return x;
  };
  return Object.freeze({
    job: j,
    queue: Object.freeze({
      commit: `${p}.queue.commit`, credit: `${p}.queue.credit`, ack: `${p}.queue.ack`,
      release: `${p}.queue.release`, fail: `${p}.queue.fail`, renew: `${p}.queue.renew`, all: `${p}.queue.*`,
    }),
    part: (num: number, index: number) => {
      uint(num, 'partition count'); uint(index, 'partition index');
      if (num < 1 || index >= num) throw new InvalidArgumentError(`partition index ${index} out of range for ${num} partitions`);
      return `${p}.part.${num}.${index}`;
    },
    partAll: (num: number) => `${p}.part.${uint(num, 'partition count')}.*`,
    storeFree: `${p}.store.free`,
    ctlEpoch: `${p}.ctl.epoch`,
    nodeSpawn: (nodeId: string) => `${p}.node.${token(nodeId, 'node id')}.spawn`,
    hb: (actor: string) => `${p}.hb.${token(actor, 'actor name')}`,
    hbAll: `${p}.hb.*`,
    all: `${p}.>`,
    kvBucket: `dw_${j}`,
    walStream: `dw_${j}_wal`,
    walSubject: `${p}.wal.ledger`,
  });
}

// ---------------------------------------------------------------------------------------
// Errors over the wire

type ErrorCtor = new (message: string, opts?: E.DraftwireErrorOptions) => DraftwireError;
let errorTable: Map<string, ErrorCtor> | null = null;

function errorClasses(): Map<string, ErrorCtor> {
  if (errorTable) return errorTable;
  errorTable = new Map();
  for (const v of Object.values(E)) {
    if (typeof v !== 'function' || v === DraftwireError || !(v.prototype instanceof DraftwireError)) continue;
    try {
      const probe = new (v as ErrorCtor)('probe');
      if (!errorTable.has(probe.code)) errorTable.set(probe.code, v as ErrorCtor);
    } catch { /* a constructor with another signature: not mappable */ }
  }
  return errorTable;
}

export interface WireError { code: string; message: string; retryable: boolean; detail?: Record<string, unknown> }

export function errorToWire(err: unknown): WireError {
  if (err instanceof DraftwireError) {
    const w: WireError = { code: err.code, message: err.message, retryable: err.retryable };
    if (err.detail) w.detail = err.detail;
    return w;
  }
  const msg = err instanceof Error ? err.message : String(err);
  return { code: 'INTERNAL', message: `internal error: ${msg}`.slice(0, 2000), retryable: false };
}

export function errorFromWire(w: unknown, subject: string): DraftwireError {
  if (!w || typeof w !== 'object') return new DecodeError(`reply from ${subject}: malformed error`);
  const o = w as Record<string, unknown>;
  const code = typeof o.code === 'string' ? o.code.slice(0, 64) : 'INTERNAL';
  const message = typeof o.message === 'string' ? o.message.slice(0, 4000) : 'remote error';
  const retryable = o.retryable === true;
  const detail = o.detail && typeof o.detail === 'object' && !Array.isArray(o.detail) ? { ...(o.detail as Record<string, unknown>) } : {};
  detail.remoteSubject = subject;
  const C = errorClasses().get(code);
  if (C) return new C(message, { detail });
  return new DraftwireError(code, message, retryable, { detail });
}

// ---------------------------------------------------------------------------------------
// Types

export interface BusFaults {
  /** Requester side: do not send this request/publish (the attempt times out). */
  dropRequest?: (subject: string) => boolean;
  /** Responder side: run the handler but do not send the reply. */
  dropReply?: (subject: string) => boolean;
  /** Delay before sending (requests, publishes and replies). */
  delayMs?: (subject: string) => number;
}

/**
 * Fault injection in child processes (the chaos suite): DRAFTWIRE_BUS_FAULTS =
 * "seed=S,match=REGEX,dropRequest=P,dropReply=P,delayMs=MAX" drops requests/publishes (the
 * requester side) and replies (the responder side) on subjects matching REGEX with
 * probability P, and delays them by up to MAX ms, from a seeded generator. Unset: no faults.
 */
export function faultsFromEnv(text: string | undefined, salt: string): BusFaults {
  if (!text) return {};
  const kv = new Map(text.split(',').map((p) => p.split('=', 2) as [string, string]).filter(([k, v]) => k && v !== undefined).map(([k, v]) => [k.trim(), v.trim()]));
  for (const k of kv.keys()) if (!['seed', 'match', 'dropRequest', 'dropReply', 'delayMs'].includes(k)) throw new InvalidArgumentError(`DRAFTWIRE_BUS_FAULTS: unknown key "${k}"`);
  let st = (Number(kv.get('seed') ?? 1) ^ [...salt].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619), 2166136261)) >>> 0;
  const rnd = () => { st = (Math.imul(st, 1664525) + 1013904223) >>> 0; return st / 2 ** 32; };
  const re = new RegExp(kv.get('match') ?? '.');
  const pReq = Number(kv.get('dropRequest') ?? 0), pRep = Number(kv.get('dropReply') ?? 0), maxDelay = Number(kv.get('delayMs') ?? 0);
  return {
    dropRequest: pReq > 0 ? (s) => re.test(s) && rnd() < pReq : undefined,
    dropReply: pRep > 0 ? (s) => re.test(s) && rnd() < pRep : undefined,
    delayMs: maxDelay > 0 ? (s) => (re.test(s) ? Math.floor(rnd() * maxDelay) : 0) : undefined,
  };
}

export interface MsgMeta {
  subject: string;
  /** Set for requests. */
  reply?: string;
  idempotencyKey?: string;
  /** 0 for the first try of a request, 1.. for retries. */
  attempt?: number;
}

export type Handler<T = any, R = any> = (msg: T, meta: MsgMeta) => Promise<R | void> | R | void;

export interface SubscribeOptions {
  queue?: string;
  /**
   * Reply cache by idempotency key (default on): a retried request whose first try already
   * ran (or is running) gets the same answer without running the handler again. Only
   * successes and non-retryable errors are cached. Per process: the handler must still be
   * idempotent across restarts.
   */
  dedupe?: boolean;
  dedupeEntries?: number;
  dedupeTtlMs?: number;
}

export interface RequestOptions {
  /** Per attempt (default 2000). */
  timeoutMs?: number;
  /** Extra attempts after a timeout or no-responders (default 3). */
  retries?: number;
  /** Same key on every attempt (default: a random UUID). */
  idempotencyKey?: string;
  /** Backoff between attempts: backoffMs * 2^n, capped at maxBackoffMs (defaults 50 / 1000). */
  backoffMs?: number;
  maxBackoffMs?: number;
}

export interface BusConnectOptions {
  servers: string | string[];
  job: string;
  auth?: AuthPolicy;
  name?: string;
  /** Keep reconnecting forever (default true). */
  reconnect?: boolean;
  /** NATS user/pass; default auth.natsCredentials() (null: anonymous). */
  credentials?: { user: string; pass: string } | null;
  /** Bound on decoded messages (default 1 MiB). */
  maxMessageBytes?: number;
  reconnectTimeWaitMs?: number;
  connectTimeoutMs?: number;
  /** JetStream API timeout (default 5000). */
  jsTimeoutMs?: number;
}

export interface BusStats {
  published: number;
  requests: number;
  attempts: number;
  retries: number;
  timeouts: number;
  noResponders: number;
  received: number;
  rejectedAuth: number;
  rejectedDecode: number;
  handlerErrors: number;
  repliesSent: number;
  repliesFromCache: number;
  droppedByFault: number;
  /** Publishes made while disconnected (nats.js 3 discards its outbound buffer on reconnect). */
  droppedDisconnected: number;
  badReplies: number;
  disconnects: number;
  reconnects: number;
}

export interface BusSubscription {
  readonly subject: string;
  unsubscribe(): void;
  /** Stop receiving, let handlers in flight finish. */
  drain(): Promise<void>;
}

export interface KvValue<T = unknown> { key: string; value: T; revision: number }
export interface KvChange<T = unknown> { key: string; value: T | null; revision: number; op: 'PUT' | 'DEL' | 'PURGE' }
export interface KvWatch<T = unknown> extends AsyncIterable<KvChange<T>> { stop(): void }

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

export interface StreamRecord<T = unknown> { seq: number; subject: string; obj: T }

// ---------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const enc = new TextEncoder();

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a, 0); out.set(b, a.byteLength);
  return out;
}

function isNatsTimeout(e: unknown): boolean {
  return e instanceof natsErrors.TimeoutError || (e instanceof natsErrors.RequestError && (e.cause instanceof natsErrors.TimeoutError));
}
function isNoResponders(e: unknown): boolean {
  return e instanceof natsErrors.NoRespondersError || (e instanceof natsErrors.RequestError && e.isNoResponders());
}
function isClosed(e: unknown): boolean {
  return e instanceof natsErrors.ClosedConnectionError || e instanceof natsErrors.DrainingConnectionError;
}

/** Map a NATS client error to a Draftwire one (pass through Draftwire errors). */
function mapNatsError(e: unknown, what: string): DraftwireError {
  if (e instanceof DraftwireError) return e;
  if (e instanceof natsErrors.AuthorizationError || e instanceof natsErrors.UserAuthenticationExpiredError) {
    return new AuthError(`NATS refused the connection credentials (${what})`, { cause: e });
  }
  if (isNatsTimeout(e)) return new TimeoutError(`${what}: timed out`, { cause: e });
  if (isNoResponders(e)) return new UnavailableError(`${what}: no responders (is JetStream enabled and ready?)`, { cause: e });
  if (isClosed(e)) return new UnavailableError(`${what}: the NATS connection is closed`, { cause: e });
  if (e instanceof JetStreamApiError) {
    if (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown) {
      return new ConflictError(`${what}: ${e.message}`, { cause: e, detail: { jsCode: e.code } });
    }
    return new UnavailableError(`${what}: JetStream error ${e.code}: ${e.message}`, { cause: e, detail: { jsCode: e.code } });
  }
  const msg = e instanceof Error ? e.message : String(e);
  if (/wrong last sequence/i.test(msg)) return new ConflictError(`${what}: ${msg}`, { cause: e });
  if (/ECONNREFUSED|ENOTFOUND|CONNECTION_REFUSED|connection refused/i.test(msg) || e instanceof natsErrors.ConnectionError) {
    return new UnavailableError(`${what}: ${msg}`, { cause: e });
  }
  return new UnavailableError(`${what}: ${msg}`, { cause: e });
}

function checkSubject(subject: unknown, wildcardOk: boolean): string {
  if (typeof subject !== 'string' || subject.length === 0 || subject.length > 512 || /\s/.test(subject) ||
      subject.split('.').some((t) => t.length === 0) || (!wildcardOk && /(^|\.)(\*|>)(\.|$)/.test(subject))) {
    throw new InvalidArgumentError(`invalid NATS subject ${JSON.stringify(subject)}`);
  }
  return subject;
}

class RateLimitedWarn {
  private last = 0;
  private suppressed = 0;
  constructor(private readonly log: Logger, private readonly everyMs = 1000) {}
  warn(msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    if (now - this.last < this.everyMs) { this.suppressed++; return; }
    this.last = now;
    this.log.warn(msg, this.suppressed ? { ...fields, suppressed: this.suppressed } : fields);
    this.suppressed = 0;
  }
}

// ---------------------------------------------------------------------------------------

export class Bus extends EventEmitter {
  readonly job: string;
  readonly subjects: JobSubjects;
  readonly auth: AuthPolicy;
  /** Fault injection for tests (see BusFaults). */
  faults: BusFaults = {};
  private readonly nc: NatsConnection;
  private readonly log: Logger;
  private readonly maxBytes: number;
  private readonly jsTimeoutMs: number;
  private js_: JetStreamClient | null = null;
  private jsm_: JetStreamManager | null = null;
  private kvm_: Kvm | null = null;
  private readonly kvs = new Map<string, Promise<BusKv>>();
  private readonly subs = new Set<BusSubscription>();
  private readonly counters: BusStats = {
    published: 0, requests: 0, attempts: 0, retries: 0, timeouts: 0, noResponders: 0, received: 0,
    rejectedAuth: 0, rejectedDecode: 0, handlerErrors: 0, repliesSent: 0, repliesFromCache: 0,
    droppedByFault: 0, droppedDisconnected: 0, badReplies: 0, disconnects: 0, reconnects: 0,
  };
  private connected = true;
  private connWaiters: Array<() => void> = [];
  private readonly warnAuth: RateLimitedWarn;
  private readonly warnDecode: RateLimitedWarn;
  private closing = false;

  private constructor(nc: NatsConnection, o: BusConnectOptions, auth: AuthPolicy) {
    super();
    this.nc = nc;
    this.job = o.job;
    this.subjects = subjects(o.job);
    this.auth = auth;
    this.log = createLogger(`bus.${o.name ?? o.job}`);
    this.maxBytes = o.maxMessageBytes ?? MESSAGE_MAX_BYTES;
    this.jsTimeoutMs = o.jsTimeoutMs ?? 5000;
    this.warnAuth = new RateLimitedWarn(this.log);
    this.warnDecode = new RateLimitedWarn(this.log);
    this.faults = faultsFromEnv(process.env.DRAFTWIRE_BUS_FAULTS, o.name ?? o.job);
    void this.watchStatus();
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

  stats(): BusStats { return { ...this.counters }; }
  get server(): string { return this.nc.getServer(); }
  isClosed(): boolean { return this.nc.isClosed(); }

  /** Round trip to the server (ms). */
  async rtt(): Promise<number> { return this.nc.rtt(); }
  /** Resolves when everything published so far reached the server. */
  async flush(): Promise<void> { try { await this.nc.flush(); } catch (e) { throw mapNatsError(e, 'flush'); } }

  private async watchStatus(): Promise<void> {
    try {
      for await (const s of this.nc.status() as AsyncIterable<Status>) {
        switch (s.type) {
          case 'disconnect':
            this.connected = false;
            this.counters.disconnects++;
            if (!this.closing) this.log.warn('NATS disconnected', { server: s.server });
            break;
          case 'reconnect': {
            this.connected = true;
            this.counters.reconnects++;
            this.log.info('NATS reconnected', { server: s.server });
            const w = this.connWaiters; this.connWaiters = [];
            w.forEach((f) => f());
            break;
          }
          case 'close': {
            const w = this.connWaiters; this.connWaiters = [];
            w.forEach((f) => f());
            if (!this.closing) this.log.warn('NATS connection closed for good');
            break;
          }
          case 'reconnecting': this.log.debug('NATS reconnecting'); break;
          case 'error': this.log.warn('NATS error', { error: s.error }); break;
          case 'ldm': this.log.warn('NATS server entering lame duck mode', { server: s.server }); break;
          case 'staleConnection': this.log.warn('NATS connection stale'); break;
          case 'slowConsumer': this.log.warn('NATS slow consumer', { subject: s.sub.getSubject(), pending: s.pending }); break;
          default: break;
        }
        this.emit('status', s.type);
      }
    } catch (e) {
      this.log.debug('status stream ended', { error: e as Error });
    }
  }

  /**
   * nats.js 3 discards whatever was published while disconnected when it reconnects, so a
   * request sent then is lost for sure. Wait (up to ms) for the connection before sending.
   */
  private waitConnected(ms: number): Promise<boolean> {
    if (this.connected || this.nc.isClosed()) return Promise.resolve(!this.nc.isClosed());
    return new Promise((res) => {
      const t = setTimeout(() => { this.connWaiters = this.connWaiters.filter((f) => f !== done); res(false); }, ms);
      const done = () => { clearTimeout(t); res(true); };
      this.connWaiters.push(done);
    });
  }

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

  // ------------------------------------------------------------------ sealing

  private sealFrame(frame: Record<string, unknown>): Uint8Array {
    return this.auth.seal(encodeMessage(frame, this.maxBytes));
  }

  /** Open + decode; null (counted, warned) when it fails auth or decode. */
  private openFrame(data: Uint8Array, subject: string): Record<string, unknown> | null {
    let body: Uint8Array;
    try {
      body = this.auth.open(data);
    } catch (e) {
      if (e instanceof AuthError) {
        this.counters.rejectedAuth++;
        this.warnAuth.warn('dropped a message that failed authentication', { subject, total: this.counters.rejectedAuth });
      } else {
        this.counters.rejectedDecode++;
        this.warnDecode.warn('dropped an undecodable message', { subject, error: e as Error, total: this.counters.rejectedDecode });
      }
      return null;
    }
    try {
      return decodeMessage(body, this.maxBytes);
    } catch (e) {
      this.counters.rejectedDecode++;
      this.warnDecode.warn('dropped an undecodable message', { subject, error: e as Error, total: this.counters.rejectedDecode });
      return null;
    }
  }

  private badFrame(subject: string, why: string): null {
    this.counters.rejectedDecode++;
    this.warnDecode.warn('dropped a malformed message', { subject, why, total: this.counters.rejectedDecode });
    return null;
  }

  // ------------------------------------------------------------------ core messaging

  /** Fire-and-forget. Throws InvalidArgumentError for a bad subject or a non-plain body. */
  publish(subject: string, obj: unknown): void {
    checkSubject(subject, false);
    const data = this.sealFrame({ k: 'm', s: subject, d: obj });
    this.counters.published++;
    if (this.faults.dropRequest?.(subject)) { this.counters.droppedByFault++; return; }
    const delay = this.faults.delayMs?.(subject) ?? 0;
    const send = () => {
      if (!this.connected) { this.counters.droppedDisconnected++; this.log.debug('publish while disconnected (will be lost)', { subject }); }
      try { this.nc.publish(subject, data); } catch (e) { this.log.warn('publish failed', { subject, error: mapNatsError(e, 'publish') }); }
    };
    if (delay > 0) setTimeout(send, delay); else send();
  }

  /**
   * Request/reply with retries under one idempotency key. Rejects with TimeoutError when no
   * attempt got an answer, or with the handler's error (same class) when it answered one.
   */
  async request<R = any>(subject: string, obj: unknown, opts: RequestOptions = {}): Promise<R> {
    checkSubject(subject, false);
    const timeoutMs = opts.timeoutMs ?? 2000;
    const retries = opts.retries ?? 3;
    const key = opts.idempotencyKey ?? randomUUID();
    if (typeof key !== 'string' || key.length === 0 || key.length > 256) throw new InvalidArgumentError('idempotencyKey must be a string of 1..256 characters');
    if (!(timeoutMs > 0) || !Number.isInteger(retries) || retries < 0) throw new InvalidArgumentError('request needs timeoutMs > 0 and retries >= 0');
    const backoff = opts.backoffMs ?? 50;
    const maxBackoff = opts.maxBackoffMs ?? 1000;
    encodeMessage({ d: obj }, this.maxBytes); // fail fast on a bad body
    this.counters.requests++;
    let lastFailure = 'timeout';
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) {
        this.counters.retries++;
        const wait = Math.min(maxBackoff, backoff * 2 ** (attempt - 1));
        await sleep(wait * (0.75 + Math.random() * 0.5));
      }
      if (this.nc.isClosed()) throw new UnavailableError(`request to ${subject}: the NATS connection is closed`);
      this.counters.attempts++;
      const delay = this.faults.delayMs?.(subject) ?? 0;
      if (delay > 0) await sleep(delay);
      if (this.faults.dropRequest?.(subject)) {
        this.counters.droppedByFault++;
        await sleep(timeoutMs);
        this.counters.timeouts++;
        lastFailure = 'timeout';
        continue;
      }
      if (!(await this.waitConnected(timeoutMs))) { this.counters.timeouts++; lastFailure = 'disconnected'; continue; }
      const data = this.sealFrame({ k: 'q', s: subject, i: key, a: attempt, d: obj });
      let msg: Msg;
      try {
        msg = await this.nc.request(subject, data, { timeout: timeoutMs });
      } catch (e) {
        if (isNatsTimeout(e)) { this.counters.timeouts++; lastFailure = 'timeout'; continue; }
        if (isNoResponders(e)) {
          this.counters.noResponders++; lastFailure = 'no responders';
          // No one is listening right now (restarting?): wait out the attempt's time, then retry.
          await sleep(Math.min(timeoutMs, Math.max(backoff, 20)));
          continue;
        }
        throw mapNatsError(e, `request to ${subject}`);
      }
      const frame = this.openFrame(msg.data, subject);
      if (!frame) { this.counters.badReplies++; lastFailure = 'bad reply'; continue; }
      if (frame.i !== key || (frame.k !== 'r' && frame.k !== 'e')) {
        this.badFrame(subject, 'reply does not match the request');
        this.counters.badReplies++; lastFailure = 'bad reply'; continue;
      }
      if (frame.k === 'e') throw errorFromWire(frame.error, subject);
      return frame.d as R;
    }
    throw new TimeoutError(`request to ${subject} got no reply after ${retries + 1} attempt(s) of ${timeoutMs} ms (${lastFailure})`,
      { detail: { subject, attempts: retries + 1, timeoutMs, idempotencyKey: key, lastFailure } });
  }

  /** Subscribe; `handler`'s return value is the reply to requests. Never throws into NATS. */
  subscribe<T = any, R = any>(subject: string, handler: Handler<T, R>, opts: SubscribeOptions = {}): BusSubscription {
    checkSubject(subject, true);
    const dedupe = opts.dedupe ?? true;
    const cacheMax = opts.dedupeEntries ?? 10_000;
    const cacheTtl = opts.dedupeTtlMs ?? 5 * 60_000;
    const cache = new Map<string, { at: number; frame: Promise<Record<string, unknown>> }>();
    const inflight = new Set<Promise<void>>();

    const run = async (frame: Record<string, unknown>, msg: Msg): Promise<Record<string, unknown>> => {
      const meta: MsgMeta = { subject: msg.subject, reply: msg.reply, idempotencyKey: frame.i as string, attempt: frame.a as number };
      try {
        const out = await handler(frame.d as T, meta);
        return out === undefined ? { k: 'r', i: frame.i } : { k: 'r', i: frame.i, d: out };
      } catch (err) {
        this.counters.handlerErrors++;
        if (!(err instanceof DraftwireError)) this.log.error('request handler threw a non-Draftwire error', { subject: msg.subject, error: err as Error });
        else this.log.debug('request handler error', { subject: msg.subject, code: err.code });
        return { k: 'e', i: frame.i, error: errorToWire(err) };
      }
    };

    const reply = async (msg: Msg, frame: Record<string, unknown>): Promise<void> => {
      if (this.faults.dropReply?.(msg.subject)) { this.counters.droppedByFault++; return; }
      const delay = this.faults.delayMs?.(msg.subject) ?? 0;
      if (delay > 0) await sleep(delay);
      let data: Uint8Array;
      try {
        data = this.sealFrame(frame);
      } catch (e) {
        // A result or error detail that does not encode: say so instead of timing out.
        this.log.error('reply does not encode', { subject: msg.subject, error: e as Error });
        data = this.sealFrame({ k: 'e', i: frame.i, error: { code: 'INTERNAL', message: `reply does not encode: ${(e as Error).message}`, retryable: false } });
      }
      try { msg.respond(data); this.counters.repliesSent++; } catch (e) { this.log.warn('reply failed', { subject: msg.subject, error: mapNatsError(e, 'reply') }); }
    };

    const onMessage = async (msg: Msg): Promise<void> => {
      this.counters.received++;
      const frame = this.openFrame(msg.data, msg.subject);
      if (!frame) return;
      if (frame.s !== msg.subject) { this.badFrame(msg.subject, `sealed for subject ${String(frame.s).slice(0, 80)}`); return; }
      if (frame.k === 'm') {
        try { await handler(frame.d as T, { subject: msg.subject }); } catch (err) {
          this.counters.handlerErrors++;
          this.log.warn('message handler threw', { subject: msg.subject, error: err as Error });
        }
        return;
      }
      if (frame.k !== 'q' || typeof frame.i !== 'string' || !msg.reply) { this.badFrame(msg.subject, 'not a publish or a request'); return; }
      if (!dedupe) { await reply(msg, await run(frame, msg)); return; }
      const now = Date.now();
      const ck = `${msg.subject}\u0000${frame.i}`;
      const hit = cache.get(ck);
      if (hit && now - hit.at < cacheTtl) {
        this.counters.repliesFromCache++;
        await reply(msg, await hit.frame);
        return;
      }
      const p = run(frame, msg);
      cache.set(ck, { at: now, frame: p });
      while (cache.size > cacheMax) cache.delete(cache.keys().next().value as string);
      const out = await p;
      // Retryable errors and internal failures are not remembered: a retry runs again.
      if (out.k === 'e' && ((out.error as WireError).retryable || (out.error as WireError).code === 'INTERNAL')) {
        if (cache.get(ck)?.frame === p) cache.delete(ck);
      }
      await reply(msg, out);
    };

    let sub: Subscription;
    try {
      sub = this.nc.subscribe(subject, {
        queue: opts.queue,
        callback: (err, msg) => {
          if (err) { this.log.warn('subscription error', { subject, error: err }); return; }
          const p = onMessage(msg).catch((e) => this.log.error('message processing failed', { subject, error: e as Error }));
          inflight.add(p);
          void p.finally(() => inflight.delete(p));
        },
      });
    } catch (e) {
      throw mapNatsError(e, `subscribe to ${subject}`);
    }
    const handle: BusSubscription = {
      subject,
      unsubscribe: () => { this.subs.delete(handle); try { sub.unsubscribe(); } catch { /* closed */ } },
      drain: async () => {
        this.subs.delete(handle);
        try { await sub.drain(); } catch { /* closed */ }
        await Promise.allSettled([...inflight]);
      },
    };
    this.subs.add(handle);
    return handle;
  }

  // ------------------------------------------------------------------ JetStream

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

  /** MAC'd record bytes: {b: body, m?: mac over (context, body)}. */
  private sealRecord(context: string, obj: unknown): Uint8Array {
    const body = encodeMessage({ d: obj }, this.maxBytes);
    if (!this.auth.enabled) return encodeMessage({ b: body }, this.maxBytes + 64);
    const mac = this.auth.mac(concatBytes(enc.encode(context + '\u0000'), body));
    return encodeMessage({ b: body, m: mac }, this.maxBytes + 64);
  }

  /** Throws AuthError / DecodeError. */
  private openRecord(context: string, bytes: Uint8Array): unknown {
    const outer = decodeMessage(bytes, this.maxBytes + 64);
    const body = outer.b;
    if (!(body instanceof Uint8Array)) throw new DecodeError(`record ${context}: body must be bytes`);
    if (this.auth.enabled) this.auth.verifyMac(concatBytes(enc.encode(context + '\u0000'), body), outer.m as Uint8Array | undefined);
    return decodeMessage(body, this.maxBytes).d;
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

  /** @internal */ _sealKv(bucket: string, key: string, obj: unknown): Uint8Array { return this.sealRecord(`kv:${bucket}:${key}`, obj); }
  /** @internal */ _openKv(bucket: string, key: string, bytes: Uint8Array): unknown { return this.openRecord(`kv:${bucket}:${key}`, bytes); }
  /** @internal */ _js(): JetStreamClient { return this.js(); }
  /** @internal */ _jsOp<T>(what: string, fn: () => Promise<T>, idempotent: boolean): Promise<T> { return this.jsOp(what, fn, idempotent); }
  /** @internal */ _warnBadRecord(what: string, e: unknown): void {
    if (e instanceof AuthError) { this.counters.rejectedAuth++; this.warnAuth.warn('skipped a record that failed authentication', { what }); }
    else { this.counters.rejectedDecode++; this.warnDecode.warn('skipped an undecodable record', { what, error: e as Error }); }
  }

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
   * (AuthError/DecodeError with the seq), unless skipInvalid, which counts and skips it.
   */
  async *readAll<T = unknown>(stream: string, fromSeq = 1, opts: { skipInvalid?: boolean; batch?: number } = {}): AsyncIterable<StreamRecord<T>> {
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
          if (!opts.skipInvalid) {
            const err = e instanceof DraftwireError ? e : new DecodeError(String(e));
            throw new (err.constructor as ErrorCtor)(`stream ${stream} seq ${seq}: ${err.message}`, { cause: e, detail: { stream, seq } });
          }
          this._warnBadRecord(`${stream}#${seq}`, e);
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

  /** Drain subscriptions (handlers in flight finish) and close. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await Promise.allSettled([...this.subs].map((s) => s.drain()));
    try { await this.nc.drain(); } catch { /* already closed */ }
    if (!this.nc.isClosed()) await this.nc.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------

export class BusKv {
  constructor(private readonly bus: Bus, readonly bucket: string, private readonly kv: KV) {}

  private decode<T>(e: KvEntry): T { return this.bus._openKv(this.bucket, e.key, e.value) as T; }

  /** The current value, or null if absent or deleted. AuthError/DecodeError on a bad value. */
  async get<T = unknown>(key: string): Promise<KvValue<T> | null> {
    const e: KvEntry | null = await this.bus._jsOp(`kv ${this.bucket} get ${key}`, () => this.kv.get(key), true);
    if (!e || e.operation !== 'PUT') return null;
    return { key, value: this.decode<T>(e), revision: e.revision };
  }

  /** Create; ConflictError if the key exists. Returns the revision. */
  async create(key: string, obj: unknown): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    try { return await this.bus._jsOp(`kv ${this.bucket} create ${key}`, () => this.kv.create(key, data), false); } catch (err) {
      if (err instanceof ConflictError || /exists/i.test(String((err as Error)?.message))) throw new ConflictError(`kv ${this.bucket}: key ${key} already exists`, { cause: err });
      throw err;
    }
  }

  /** Compare-and-set: ConflictError unless the key's revision is `revision`. Returns the new revision. */
  async update(key: string, obj: unknown, revision: number): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    try { return await this.bus._jsOp(`kv ${this.bucket} update ${key}@${revision}`, () => this.kv.update(key, data, revision), false); } catch (err) {
      if (err instanceof ConflictError) throw new ConflictError(`kv ${this.bucket}: key ${key} is not at revision ${revision}`, { cause: err, detail: { bucket: this.bucket, key, revision } });
      throw err;
    }
  }

  async put(key: string, obj: unknown): Promise<number> {
    const data = this.bus._sealKv(this.bucket, key, obj);
    return this.bus._jsOp(`kv ${this.bucket} put ${key}`, () => this.kv.put(key, data), true);
  }

  async delete(key: string, opts: { revision?: number } = {}): Promise<void> {
    await this.bus._jsOp(`kv ${this.bucket} delete ${key}`, () => this.kv.delete(key, opts.revision !== undefined ? { previousSeq: opts.revision } : undefined), opts.revision === undefined);
  }

  async keys(): Promise<string[]> {
    return this.bus._jsOp(`kv ${this.bucket} keys`, async () => {
      const out: string[] = [];
      for await (const k of await this.kv.keys()) out.push(k);
      return out;
    }, true);
  }

  /**
   * Changes: the current values first (unless updatesOnly; deleted keys are left out), then
   * the changes after the moment watch() was called, in revision order. Values that fail
   * their MAC or decode are counted and skipped. stop() ends the iteration.
   *
   * A watch promises the latest value, not every value: with history 1 (the default) a
   * value superseded before the watcher read it is gone from the stream and never seen.
   * The start position is the stream's last sequence read before watch() returns (nats.js
   * creates ordered consumers lazily, so a server-computed DeliverPolicy.New would start
   * later than that); an ordered pull consumer, not nats.js's push-based kv.watch().
   */
  async watch<T = unknown>(opts: { key?: string; updatesOnly?: boolean } = {}): Promise<KvWatch<T>> {
    const key = opts.key ?? '>';
    if (!/^[-/=.\w>*]+$/.test(key)) throw new InvalidArgumentError(`invalid KV key filter ${JSON.stringify(key)}`);
    const prefix = `$KV.${this.bucket}.`;
    const stream = `KV_${this.bucket}`;
    const snapshot = (await this.bus.streamInfo(stream)).lastSeq;
    const consumer = await this.bus._jsOp(`kv ${this.bucket} watch`, () => this.bus._js().consumers.get(stream, {
      filter_subjects: prefix + key,
      ...(opts.updatesOnly ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: snapshot + 1 } : { deliver_policy: DeliverPolicy.All }),
    }), true);
    const msgs = await this.bus._jsOp(`kv ${this.bucket} watch`, () => consumer.consume({ max_messages: 256 }), true);
    const self = this;
    const toChange = (m: { subject: string; seq: number; data: Uint8Array; headers?: { get(k: string): string } }): KvChange<T> | null => {
      const k = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
      const op = (m.headers?.get('KV-Operation') || 'PUT') as 'PUT' | 'DEL' | 'PURGE';
      if (op !== 'PUT') return { key: k, value: null, revision: m.seq, op };
      try {
        return { key: k, value: self.bus._openKv(self.bucket, k, m.data) as T, revision: m.seq, op: 'PUT' };
      } catch (err) {
        self.bus._warnBadRecord(`kv ${self.bucket}/${k}@${m.seq}`, err);
        return null;
      }
    };
    return {
      stop: () => { msgs.stop(); },
      async *[Symbol.asyncIterator]() {
        // Backlog (seq <= snapshot): latest per key, yielded once complete.
        let backlog: Map<string, KvChange<T> | null> | null = opts.updatesOnly ? null : new Map();
        const flush = function* (): Generator<KvChange<T>> {
          if (!backlog) return;
          const cur = [...backlog.values()].filter((c): c is KvChange<T> => !!c && c.op === 'PUT').sort((x, y) => x.revision - y.revision);
          backlog = null;
          yield* cur;
        };
        try {
          for await (const m of msgs) {
            if (backlog && m.seq <= snapshot) {
              const k = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
              backlog.set(k, toChange(m));
              if (m.seq === snapshot || m.info.pending === 0) yield* flush();
              continue;
            }
            yield* flush();
            const c = toChange(m);
            if (c) yield c;
          }
        } finally {
          msgs.stop();
        }
      },
    };
  }
}
