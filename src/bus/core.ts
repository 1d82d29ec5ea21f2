// The Bus over core NATS: the connection and its status, sealing (frames and records), and
// publish / request / subscribe with retries, reply dedupe and fault injection. Bus
// (bus.ts) extends it with the JetStream side; the two are split only so each reads in one
// sitting. Import from bus.ts, not from here.
//
// Wire format (every message; docs/wire.md is the reference): auth.seal(encodeMessage(frame)),
// frame one of
//   publish  {k: 'm', s: subject, d: body}
//   request  {k: 'q', s: subject, r: replySubject, i: idempotencyKey, a: attempt, d: body}
//   reply    {k: 'r', r: replySubject, i: idempotencyKey, d: result}
//          | {k: 'e', r: replySubject, i, error: {code, message, retryable, detail?}}
// The subject and the reply subject are inside the MAC: a sealed message cannot be moved to
// another subject, and a replayed request cannot be answered to another inbox (every attempt
// has its own single-use inbox, so a reply cannot be replayed into another request either).
// Replays: every subscription refuses a message sealed before it started (minus
// auth.skewMs; reset on reconnect) and a nonce it has seen inside the window; a retry is
// sealed afresh (new ts and nonce), at send time (after any injected delay). KV values and
// stream records are MAC'd (no replay window: they are read again later) with their
// key/subject bound in; KV values also bind a version (kv.ts).
//
// A message that fails auth or decode is counted and dropped with a (rate-limited) warning
// naming the subject; it never throws into NATS. Handler errors that are DraftwireErrors go
// back to the requester, which rethrows them as the same class.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createInbox, errors as natsErrors, type NatsConnection, type Msg, type Subscription, type Status } from '@nats-io/transport-node';
import { AuthError, DecodeError, DraftwireError, InvalidArgumentError, TimeoutError, UnavailableError } from '../errors.ts';
import type { AuthPolicy, ReplayGuard } from '../wire/auth.ts';
import { encodeMessage, decodeMessage, MESSAGE_MAX_BYTES } from '../wire/sampleref.ts';
import { createLogger, type Logger } from '../log.ts';
import { subjects, checkSubject, type JobSubjects } from '../wire/subjects.ts';
import { errorToWire, errorFromWire, type WireError } from '../wire/error-codec.ts';
import { faultsFromEnv, type BusFaults } from './faults.ts';
import { mapNatsError, isNatsTimeout, isNoResponders } from './nats-errors.ts';
import type { BusTlsOptions } from './transport.ts';
import { TermFence } from './terms.ts';

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
  /** Checks a reply before it is taken: a reason string refuses it (counted as a bad reply; the attempt is retried). */
  refuseReply?: (reply: unknown) => string | null;
  /**
   * A retryable error reply is retried like a timeout, while attempts are left (default: it is
   * the answer). Safe because a responder never remembers a retryable error under the key.
   */
  retryErrors?: boolean;
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
  /**
   * TLS files (transport.ts); default from DRAFTWIRE_TLS_CA/CERT/KEY; null: no TLS asked for.
   * With credentials, a server off loopback is refused without TLS.
   */
  tls?: BusTlsOptions | null;
  /**
   * Replicas of the streams and KV buckets this Bus creates when the caller names none:
   * a number, or 'auto' (3 when the cluster has 3 or more servers, else 1: transport.ts).
   * Default: DRAFTWIRE_NATS_REPLICAS, else 'auto'.
   */
  replicas?: number | 'auto';
}

export interface BusStats {
  published: number;
  requests: number;
  attempts: number;
  retries: number;
  timeouts: number;
  noResponders: number;
  received: number;
  /** Messages refused as AuthError: bad MAC, stale timestamp, replay, re-addressed reply. */
  rejectedAuth: number;
  /** Of rejectedAuth, the replays: sealed before the subscription started, or a nonce seen. */
  rejectedReplay: number;
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

const enc = new TextEncoder();

// ---------------------------------------------------------------------------------------

/**
 * A MAC'd record (KV value, stream record): msgpack {b: body, m?: mac}, body = msgpack {d: obj}
 * or, for KV values, {d: obj, v: version} (what makes a value current: kv.ts); mac =
 * HMAC(key, context || 0x00 || body), context `kv:<bucket>:<key>` or `js:<subject>`.
 */
export function sealRecordBytes(auth: AuthPolicy, context: string, obj: unknown, version?: number, maxBytes = MESSAGE_MAX_BYTES): Uint8Array {
  const body = encodeMessage(version === undefined ? { d: obj } : { d: obj, v: version }, maxBytes);
  if (!auth.enabled) return encodeMessage({ b: body }, maxBytes + 64);
  const mac = auth.mac(concatBytes(enc.encode(context + '\u0000'), body));
  return encodeMessage({ b: body, m: mac }, maxBytes + 64);
}

/** Opens a record of sealRecordBytes: AuthError on a bad MAC, DecodeError when malformed; version 0 when absent. */
export function openRecordBytes(auth: AuthPolicy, context: string, bytes: Uint8Array, maxBytes = MESSAGE_MAX_BYTES): { value: unknown; version: number } {
  const outer = decodeMessage(bytes, maxBytes + 64);
  const body = outer.b;
  if (!(body instanceof Uint8Array)) throw new DecodeError(`record ${context}: body must be bytes`);
  if (auth.enabled) auth.verifyMac(concatBytes(enc.encode(context + '\u0000'), body), outer.m as Uint8Array | undefined);
  const inner = decodeMessage(body, maxBytes);
  const v = inner.v ?? 0;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new DecodeError(`record ${context}: version must be an unsigned integer`);
  return { value: inner.d, version: v };
}

const NOT_REMEMBERED = new Set(['INTERNAL', 'WAL_CORRUPT']);

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a, 0); out.set(b, a.byteLength);
  return out;
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

export abstract class BusCore extends EventEmitter {
  readonly job: string;
  readonly subjects: JobSubjects;
  /** The newest term seen per singleton role, and the ones this process holds (src/bus/terms.ts). */
  readonly terms = new TermFence();
  readonly auth: AuthPolicy;
  /** Fault injection for tests (see BusFaults). */
  faults: BusFaults = {};
  protected readonly nc: NatsConnection;
  private readonly log: Logger;
  private readonly maxBytes: number;
  private readonly subs = new Set<BusSubscription>();
  /** Replay state of every live subscription (restarted on reconnect). */
  private readonly guards = new Set<ReplayGuard>();
  private readonly counters: BusStats = {
    published: 0, requests: 0, attempts: 0, retries: 0, timeouts: 0, noResponders: 0, received: 0,
    rejectedAuth: 0, rejectedReplay: 0, rejectedDecode: 0, handlerErrors: 0, repliesSent: 0, repliesFromCache: 0,
    droppedByFault: 0, droppedDisconnected: 0, badReplies: 0, disconnects: 0, reconnects: 0,
  };
  private connected = true;
  private connWaiters: Array<() => void> = [];
  private readonly warnAuth: RateLimitedWarn;
  private readonly warnDecode: RateLimitedWarn;
  private closing = false;

  protected constructor(nc: NatsConnection, o: BusConnectOptions, auth: AuthPolicy) {
    super();
    this.nc = nc;
    this.job = o.job;
    this.subjects = subjects(o.job);
    this.auth = auth;
    this.log = createLogger(`bus.${o.name ?? o.job}`);
    this.maxBytes = o.maxMessageBytes ?? MESSAGE_MAX_BYTES;
    this.warnAuth = new RateLimitedWarn(this.log);
    this.warnDecode = new RateLimitedWarn(this.log);
    this.faults = faultsFromEnv(process.env.DRAFTWIRE_BUS_FAULTS, o.name ?? o.job);
    void this.watchStatus();
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
            // Nothing sent while we were away reached us: what was sealed then is a replay.
            for (const g of this.guards) g.restart();
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
  protected waitConnected(ms: number): Promise<boolean> {
    if (this.connected || this.nc.isClosed()) return Promise.resolve(!this.nc.isClosed());
    return new Promise((res) => {
      const t = setTimeout(() => { this.connWaiters = this.connWaiters.filter((f) => f !== done); res(false); }, ms);
      const done = () => { clearTimeout(t); res(true); };
      this.connWaiters.push(done);
    });
  }

  // ------------------------------------------------------------------ sealing

  private sealFrame(frame: Record<string, unknown>): Uint8Array {
    return this.auth.seal(encodeMessage(frame, this.maxBytes));
  }

  /** Open + decode; null (counted, warned) when it fails auth or decode. No replay check. */
  private openFrame(data: Uint8Array, subject: string): { frame: Record<string, unknown>; ts?: number; nonce?: Uint8Array } | null {
    let u: { body: Uint8Array; ts?: number; nonce?: Uint8Array };
    try {
      u = this.auth.unseal(data);
    } catch (e) {
      if (e instanceof AuthError) {
        this.refuse(subject, 'failed authentication', e);
      } else {
        this.counters.rejectedDecode++;
        this.warnDecode.warn('dropped an undecodable message', { subject, error: e as Error, total: this.counters.rejectedDecode });
      }
      return null;
    }
    try {
      return { frame: decodeMessage(u.body, this.maxBytes), ts: u.ts, nonce: u.nonce };
    } catch (e) {
      this.counters.rejectedDecode++;
      this.warnDecode.warn('dropped an undecodable message', { subject, error: e as Error, total: this.counters.rejectedDecode });
      return null;
    }
  }

  /** Counts and warns (with the subject) about a message refused with an AuthError. */
  private refuse(subject: string, why: string, err: AuthError, replay = false): null {
    this.counters.rejectedAuth++;
    if (replay) this.counters.rejectedReplay++;
    this.warnAuth.warn(`dropped a message that ${why}`, { subject, code: err.code, total: this.counters.rejectedAuth });
    return null;
  }

  private badFrame(subject: string, why: string): null {
    this.counters.rejectedDecode++;
    this.warnDecode.warn('dropped a malformed message', { subject, why, total: this.counters.rejectedDecode });
    return null;
  }

  /** MAC'd record bytes (see sealRecordBytes). */
  protected sealRecord(context: string, obj: unknown, version?: number): Uint8Array {
    return sealRecordBytes(this.auth, context, obj, version, this.maxBytes);
  }

  /** Throws AuthError / DecodeError. */
  protected openRecord(context: string, bytes: Uint8Array): unknown {
    return openRecordBytes(this.auth, context, bytes, this.maxBytes).value;
  }

  /** openRecord with the record's version (0 when it has none: written before versions). */
  protected openVersionedRecord(context: string, bytes: Uint8Array): { value: unknown; version: number } {
    return openRecordBytes(this.auth, context, bytes, this.maxBytes);
  }

  /** @internal */ _warnBadRecord(what: string, e: unknown): void {
    if (e instanceof AuthError) { this.counters.rejectedAuth++; this.warnAuth.warn(e.detail?.rollback ? 'refused a rolled-back record' : 'skipped a record that failed authentication', { what, ...(e.detail?.rollback ? { detail: e.message } : {}) }); }
    else { this.counters.rejectedDecode++; this.warnDecode.warn('skipped an undecodable record', { what, error: e as Error }); }
  }

  // ------------------------------------------------------------------ core messaging

  /** Fire-and-forget. Throws InvalidArgumentError for a bad subject or a non-plain body. */
  publish(subject: string, obj: unknown): void {
    checkSubject(subject, false);
    encodeMessage({ k: 'm', s: subject, d: obj }, this.maxBytes); // fail fast on a bad body
    this.counters.published++;
    if (this.faults.dropRequest?.(subject)) { this.counters.droppedByFault++; return; }
    const delay = this.faults.delayMs?.(subject) ?? 0;
    const send = () => {
      if (!this.connected) { this.counters.droppedDisconnected++; this.log.debug('publish while disconnected (will be lost)', { subject }); }
      // Sealed when sent: a delayed message must not look older than the subscriptions it reaches.
      let data: Uint8Array;
      try { data = this.sealFrame({ k: 'm', s: subject, d: obj }); } catch (e) { this.log.warn('publish failed', { subject, error: e as Error }); return; }
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
      // A single-use inbox per attempt, bound inside the MAC: the responder answers only to it.
      const inbox = this.replies().inbox();
      const data = this.sealFrame({ k: 'q', s: subject, r: inbox, i: key, a: attempt, d: obj });
      let msg: Msg;
      try {
        msg = await this.replies().request(this.nc, subject, data, inbox, timeoutMs);
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
      const opened = this.openFrame(msg.data, subject);
      if (!opened) { this.counters.badReplies++; lastFailure = 'bad reply'; continue; }
      const frame = opened.frame;
      if (this.auth.enabled && frame.r !== inbox) {
        this.refuse(subject, 'is a reply sealed for another request', new AuthError());
        this.counters.badReplies++; lastFailure = 'bad reply'; continue;
      }
      if (frame.i !== key || (frame.k !== 'r' && frame.k !== 'e')) {
        this.badFrame(subject, 'reply does not match the request');
        this.counters.badReplies++; lastFailure = 'bad reply'; continue;
      }
      if (frame.k === 'e') {
        const err = errorFromWire(frame.error, subject);
        if (opts.retryErrors && err.retryable && attempt < retries) {
          this.log.warn('retryable error reply; retrying', { subject, code: err.code, error: err.message, attempt });
          lastFailure = `${err.code}: ${err.message}`;
          continue;
        }
        throw err;
      }
      const refused = opts.refuseReply?.(frame.d) ?? null;
      if (refused !== null) { this.log.warn('reply refused; retrying', { subject, why: refused }); this.counters.badReplies++; lastFailure = refused; continue; }
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
        data = this.sealFrame({ ...frame, r: msg.reply });
      } catch (e) {
        // A result or error detail that does not encode: say so instead of timing out.
        this.log.error('reply does not encode', { subject: msg.subject, error: e as Error });
        data = this.sealFrame({ k: 'e', r: msg.reply, i: frame.i, error: { code: 'INTERNAL', message: `reply does not encode: ${(e as Error).message}`, retryable: false } });
      }
      try { msg.respond(data); this.counters.repliesSent++; } catch (e) { this.log.warn('reply failed', { subject: msg.subject, error: mapNatsError(e, 'reply') }); }
    };

    // Started before the SUB reaches the server, so nothing legitimately delivered is older.
    const guard = this.auth.replayGuard(Date.now());
    const onMessage = async (msg: Msg): Promise<void> => {
      this.counters.received++;
      const opened = this.openFrame(msg.data, msg.subject);
      if (!opened) return;
      const frame = opened.frame;
      if (frame.s !== msg.subject) { this.badFrame(msg.subject, `sealed for subject ${String(frame.s).slice(0, 80)}`); return; }
      if (this.auth.enabled) {
        if (frame.k === 'q' && (typeof frame.r !== 'string' || frame.r !== msg.reply)) { this.refuse(msg.subject, 'is a request whose reply subject is not the one sealed', new AuthError()); return; }
        try { guard.check(opened.ts!, opened.nonce!); } catch (e) {
          if (e instanceof AuthError) { this.refuse(msg.subject, 'is a replay (sealed before this subscription started, or seen already)', e, true); return; }
          throw e;
        }
      }
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
      // Retryable errors, internal failures and a refusal for the responder's own state (a WAL
      // awaiting an operator's skip) are not remembered: a retry runs again.
      if (out.k === 'e' && ((out.error as WireError).retryable || NOT_REMEMBERED.has((out.error as WireError).code))) {
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
    this.guards.add(guard);
    const handle: BusSubscription = {
      subject,
      unsubscribe: () => { this.subs.delete(handle); this.guards.delete(guard); try { sub.unsubscribe(); } catch { /* closed */ } },
      drain: async () => {
        this.subs.delete(handle);
        this.guards.delete(guard);
        try { await sub.drain(); } catch { /* closed */ }
        await Promise.allSettled([...inflight]);
      },
    };
    this.subs.add(handle);
    return handle;
  }

  /** Drain subscriptions (handlers in flight finish) and close. */
  private replyMux: ReplyMux | null = null;
  private replies(): ReplyMux {
    if (!this.replyMux) this.replyMux = new ReplyMux(this.nc);
    return this.replyMux;
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.replyMux?.close();
    await Promise.allSettled([...this.subs].map((s) => s.drain()));
    try { await this.nc.drain(); } catch { /* already closed */ }
    if (!this.nc.isClosed()) await this.nc.close().catch(() => {});
  }
}

/**
 * Replies to this Bus's requests: one subscription on `<inbox>.*`, and a fresh subject under it
 * per attempt (the subject the request's MAC binds), so an attempt costs no subscribe round trip.
 * A reply for an attempt that timed out, or for no attempt, is dropped.
 */
class ReplyMux {
  private readonly prefix = createInbox();
  private readonly waiting = new Map<string, { resolve(m: Msg): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  private readonly sub: Subscription;
  private next = 0;

  constructor(nc: NatsConnection) {
    this.sub = nc.subscribe(`${this.prefix}.*`, {
      callback: (err, m) => {
        if (err) return;
        const w = this.waiting.get(m.subject);
        if (!w) return;
        this.waiting.delete(m.subject);
        clearTimeout(w.timer);
        // The server answers a request nobody subscribes to with an empty 503 status message.
        if (m.data.length === 0 && m.headers?.code === 503) w.reject(new natsErrors.NoRespondersError(m.subject));
        else w.resolve(m);
      },
    });
  }

  inbox(): string { return `${this.prefix}.${(this.next++).toString(36)}`; }

  request(nc: NatsConnection, subject: string, data: Uint8Array, inbox: string, timeoutMs: number): Promise<Msg> {
    return new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(inbox);
        reject(new natsErrors.TimeoutError());
      }, timeoutMs);
      this.waiting.set(inbox, { resolve, reject, timer });
      try { nc.publish(subject, data, { reply: inbox }); } catch (e) { clearTimeout(timer); this.waiting.delete(inbox); reject(e as Error); }
    });
  }

  close(): void {
    for (const [, w] of this.waiting) { clearTimeout(w.timer); w.reject(new natsErrors.ClosedConnectionError()); }
    this.waiting.clear();
    this.sub.unsubscribe();
  }
}
