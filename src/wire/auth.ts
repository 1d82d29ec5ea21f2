// Authentication for every message and sample (DESIGN.md §4): one job secret, read from the
// environment (DRAFTWIRE_SECRET) or a file (DRAFTWIRE_SECRET_FILE), never a CLI argument.
// Every key is derived from it with HKDF-SHA256 under its own label, so every process of a
// job derives the same MAC key, NATS credentials and store tokens, and no derived value
// reveals another. MACs are compared in constant time; failures say nothing about why.
import { createHmac, createSecretKey, hkdfSync, randomFillSync, timingSafeEqual, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { AuthError, DecodeError, InvalidArgumentError } from '../errors.ts';
import { canonicalRefBytes, decodeMessage, encodeMessage, type SampleRef } from './sampleref.ts';

export const MIN_SECRET_BYTES = 16;
const SALT = Buffer.from('draftwire/v1', 'utf8');
const ENVELOPE_PREFIX = Buffer.from('draftwire/v1/envelope\0', 'utf8');
const MAC_BYTES = 32;
const NONCE_BYTES = 16;

/** Nonces cut from one 4 KiB fill of the system CSPRNG (one syscall per 256 messages, not one each). */
const noncePool = { buf: new Uint8Array(4096), at: 4096 };
function freshNonce(): Uint8Array {
  if (noncePool.at + NONCE_BYTES > noncePool.buf.byteLength) { randomFillSync(noncePool.buf); noncePool.at = 0; }
  return noncePool.buf.slice(noncePool.at, (noncePool.at += NONCE_BYTES));
}

export interface AuthOptions {
  /** Accepted |now - ts| for sealed messages, ms (default 30 000). */
  windowMs?: number;
  /** Bound on remembered nonces (default 1 000 000). */
  replayCacheSize?: number;
  /** Bound on sealed messages `open` accepts (default 16 MiB). */
  maxEnvelopeBytes?: number;
  /**
   * Clock-skew allowance, ms (default 2000): a ReplayGuard accepts messages sealed up to this
   * long before it started (the sender's clock may lag the receiver's).
   */
  skewMs?: number;
}

/** A sealed message whose MAC and timestamp window checked out; not yet checked for replay. */
export interface Unsealed { body: Uint8Array; ts?: number; nonce?: Uint8Array }

/**
 * Replay refusal for one receiver (a Bus subscription; AuthPolicy.open has its own): refuses
 * a message sealed before the receiver started (minus the skew allowance) — nobody can have
 * sent it to this receiver, so it is a replay — and a nonce already seen inside the window.
 * Nonces are remembered for the window only (older ones fail the window check anyway); on
 * overflow the oldest is forgotten and its timestamp becomes the floor, so a message is never
 * accepted twice. restart() moves the start (after a reconnect: what was sent while the
 * receiver was away was never delivered to it, so anything sealed then is a replay).
 */
export class ReplayGuard {
  /** nonce (hex) -> ts, in insertion order. */
  private readonly seen = new Map<string, number>();
  /** Messages with ts < floor (or <= evictedTs) are refused. */
  private floorTs: number;
  private evictedTs = -Infinity;

  constructor(private readonly windowMs: number, private readonly skewMs: number, private readonly cacheSize: number, startedAt = -Infinity) {
    this.floorTs = startedAt - skewMs;
  }

  /** Refuse everything sealed before `now - skew` from here on. */
  restart(now = Date.now()): void { this.floorTs = Math.max(this.floorTs, now - this.skewMs); }

  /** Throws AuthError for a replay; records the nonce otherwise. */
  check(ts: number, nonce: Uint8Array, now = Date.now()): void {
    if (ts < this.floorTs || ts <= this.evictedTs) throw new AuthError();
    this.prune(now);
    const key = Buffer.from(nonce).toString('hex');
    if (this.seen.has(key)) throw new AuthError();
    this.seen.set(key, ts);
    if (this.seen.size > this.cacheSize) {
      const [oldKey, oldTs] = this.seen.entries().next().value as [string, number];
      this.seen.delete(oldKey);
      this.evictedTs = Math.max(this.evictedTs, oldTs);
    }
  }

  /** Forgets nonces whose timestamps can no longer pass the window check. */
  private prune(now: number): void {
    // Insertion order is close to ts order; stop at the first entry still inside the window.
    for (const [k, ts] of this.seen) {
      if (ts < now - this.windowMs) this.seen.delete(k);
      else break;
    }
  }

  get size(): number { return this.seen.size; }
}

export class AuthPolicy {
  readonly enabled: boolean;
  readonly windowMs: number;
  private readonly macKey: KeyObject | null;
  private readonly secret: Buffer | null;
  private readonly replayCacheSize: number;
  private readonly maxEnvelopeBytes: number;
  readonly skewMs: number;
  /** open()'s replay state (one per policy; the Bus keeps one per subscription instead). */
  private readonly guard: ReplayGuard;

  private constructor(secret: Buffer | null, opts: AuthOptions = {}) {
    this.enabled = secret !== null;
    this.secret = secret;
    this.macKey = secret ? createSecretKey(derive(secret, 'draftwire/v1/mac', 32)) : null;
    this.windowMs = opts.windowMs ?? 30_000;
    this.replayCacheSize = opts.replayCacheSize ?? 1_000_000;
    this.maxEnvelopeBytes = opts.maxEnvelopeBytes ?? 16 * 1024 * 1024;
    this.skewMs = opts.skewMs ?? 2000;
    if (!(this.windowMs > 0)) throw new InvalidArgumentError(`auth windowMs must be > 0, got ${this.windowMs}`);
    if (!Number.isInteger(this.replayCacheSize) || this.replayCacheSize < 1) throw new InvalidArgumentError(`auth replayCacheSize must be a positive integer`);
    if (!(this.skewMs >= 0 && Number.isFinite(this.skewMs))) throw new InvalidArgumentError(`auth skewMs must be a finite number >= 0, got ${this.skewMs}`);
    this.guard = this.replayGuard();
  }

  /** A fresh replay guard under this policy's window, skew and cache bound, started at `startedAt`. */
  replayGuard(startedAt = -Infinity): ReplayGuard {
    return new ReplayGuard(this.windowMs, this.skewMs, this.replayCacheSize, startedAt);
  }

  /**
   * Reads DRAFTWIRE_SECRET or DRAFTWIRE_SECRET_FILE (contents trimmed). Neither set: auth
   * disabled. Both set, an unreadable file, or a secret under 16 bytes: InvalidArgumentError.
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, opts?: AuthOptions): AuthPolicy {
    const direct = env.DRAFTWIRE_SECRET;
    const file = env.DRAFTWIRE_SECRET_FILE;
    if (direct !== undefined && direct !== '' && file !== undefined && file !== '') {
      throw new InvalidArgumentError('set only one of DRAFTWIRE_SECRET and DRAFTWIRE_SECRET_FILE');
    }
    let secret: string | undefined;
    let source = 'DRAFTWIRE_SECRET';
    if (file !== undefined && file !== '') {
      source = `DRAFTWIRE_SECRET_FILE (${file})`;
      try {
        secret = readFileSync(file, 'utf8').trim();
      } catch (e) {
        throw new InvalidArgumentError(`cannot read the secret file named by DRAFTWIRE_SECRET_FILE (${file}): ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    } else if (direct !== undefined && direct !== '') {
      secret = direct.trim();
    }
    if (secret === undefined) return AuthPolicy.disabled();
    return AuthPolicy.fromSecret(secret, opts, source);
  }

  /** From a secret held in memory (tests, embedding); at least 16 bytes. */
  static fromSecret(secret: string | Uint8Array, opts?: AuthOptions, source = 'secret'): AuthPolicy {
    const buf = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
    if (buf.byteLength < MIN_SECRET_BYTES) {
      throw new InvalidArgumentError(`${source} is ${buf.byteLength} bytes; a secret must be at least ${MIN_SECRET_BYTES} bytes`);
    }
    return new AuthPolicy(buf, opts);
  }

  static disabled(): AuthPolicy {
    return new AuthPolicy(null);
  }

  /** HMAC-SHA256 of `bytes` under the derived MAC key. Throws if auth is disabled. */
  mac(bytes: Uint8Array): Uint8Array {
    if (!this.macKey) throw new InvalidArgumentError('auth is disabled: no key to compute a MAC with');
    return new Uint8Array(createHmac('sha256', this.macKey).update(bytes).digest());
  }

  /** Throws AuthError unless `mac` is the MAC of `bytes`. A no-op when auth is disabled. */
  verifyMac(bytes: Uint8Array, mac: Uint8Array | undefined | null): void {
    if (!this.macKey) return;
    if (!(mac instanceof Uint8Array) || mac.byteLength !== MAC_BYTES) throw new AuthError();
    const want = createHmac('sha256', this.macKey).update(bytes).digest();
    if (!timingSafeEqual(want, mac)) throw new AuthError();
  }

  /** The ref with `mac` set (over its canonical encoding without mac); unchanged copy when disabled. */
  signRef(ref: SampleRef): SampleRef {
    const out: SampleRef = { ...ref };
    delete out.mac;
    if (!this.enabled) return out;
    out.mac = this.mac(canonicalRefBytes(out, false));
    return out;
  }

  /** Throws AuthError unless the ref carries a valid mac. A no-op when auth is disabled. */
  verifyRef(ref: SampleRef): void {
    if (!this.enabled) return;
    let bytes: Uint8Array;
    try { bytes = canonicalRefBytes(ref, false); } catch { throw new AuthError(); }
    this.verifyMac(bytes, ref.mac);
  }

  /**
   * Wraps a message body. Enabled: msgpack {ts, nonce, body, mac} with mac = HMAC(key,
   * "draftwire/v1/envelope\0" || int64be(ts) || nonce || body) (docs/wire.md); disabled:
   * msgpack {body}. `nonce` (16 bytes) is for golden vectors only: a fixed nonce is a replay.
   */
  seal(body: Uint8Array, now = Date.now(), nonce: Uint8Array = freshNonce()): Uint8Array {
    if (!(body instanceof Uint8Array)) throw new InvalidArgumentError('seal: body must be bytes');
    if (!this.enabled) return encodeMessage({ body }, this.maxEnvelopeBytes);
    if (!(nonce instanceof Uint8Array) || nonce.byteLength !== NONCE_BYTES) throw new InvalidArgumentError(`seal: nonce must be ${NONCE_BYTES} bytes`);
    const ts = Math.floor(now);
    const mac = new Uint8Array(this.envelopeMac(ts, nonce, body));
    return encodeMessage({ ts, nonce, body, mac }, this.maxEnvelopeBytes);
  }

  /**
   * Unwraps a sealed message: DecodeError if malformed; AuthError (no detail) on a missing or
   * wrong mac, a timestamp outside ±window of `now`, or a nonce already seen in the window
   * (by this policy: one replay cache per AuthPolicy; the Bus uses unseal + a ReplayGuard per
   * subscription instead).
   */
  open(bytes: Uint8Array, now = Date.now()): Uint8Array {
    const u = this.unseal(bytes, now);
    if (this.enabled) this.guard.check(u.ts!, u.nonce!, now);
    return u.body;
  }

  /**
   * open() without the replay check: DecodeError if malformed; AuthError on a missing or wrong
   * mac or a timestamp outside ±window of `now`. Returns the body with its ts and nonce (absent
   * when auth is disabled) for the caller's ReplayGuard.
   */
  unseal(bytes: Uint8Array, now = Date.now()): Unsealed {
    const env = decodeMessage(bytes, this.maxEnvelopeBytes);
    const body = env.body;
    if (!(body instanceof Uint8Array)) throw new DecodeError('sealed message: body must be bytes');
    if (!this.enabled) return { body: new Uint8Array(body) };
    const { ts, nonce, mac } = env;
    if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || !(nonce instanceof Uint8Array) || nonce.byteLength !== NONCE_BYTES || !(mac instanceof Uint8Array)) {
      throw new AuthError();
    }
    if (mac.byteLength !== MAC_BYTES || !timingSafeEqual(this.envelopeMac(ts, nonce, body), mac)) throw new AuthError();
    if (Math.abs(now - ts) > this.windowMs) throw new AuthError();
    return { body: new Uint8Array(body), ts, nonce: new Uint8Array(nonce) };
  }

  private envelopeMac(ts: number, nonce: Uint8Array, body: Uint8Array): Buffer {
    const head = Buffer.alloc(ENVELOPE_PREFIX.byteLength + 8);
    ENVELOPE_PREFIX.copy(head, 0);
    head.writeBigInt64BE(BigInt(ts), ENVELOPE_PREFIX.byteLength);
    return createHmac('sha256', this.macKey!).update(head).update(nonce).update(body).digest();
  }

  /** Size of the replay cache (for stats and tests). */
  replayCacheEntries(): number {
    return this.guard.size;
  }

  /** NATS user/password derived from the secret (same in every process); null when disabled. */
  natsCredentials(): { user: string; pass: string } | null {
    if (!this.secret) return null;
    return {
      user: 'dw-' + derive(this.secret, 'draftwire/v1/nats-user', 8).toString('hex'),
      pass: derive(this.secret, 'draftwire/v1/nats-pass', 24).toString('base64url'),
    };
  }

  /**
   * The user/password of NATS route connections (server to server, `cluster { authorization }`)
   * derived from the secret under labels of their own: a client's credentials do not open a
   * route, and a member started from the same secret on another machine needs nothing else.
   */
  natsRouteCredentials(): { user: string; pass: string } | null {
    if (!this.secret) return null;
    return {
      user: 'dw-route-' + derive(this.secret, 'draftwire/v1/nats-route-user', 8).toString('hex'),
      pass: derive(this.secret, 'draftwire/v1/nats-route-pass', 24).toString('base64url'),
    };
  }

  /** A token proving knowledge of the secret for one store (hex); '' when disabled. */
  storeToken(storeId: string): string {
    if (!this.secret) return '';
    const key = derive(this.secret, 'draftwire/v1/store-token', 32);
    return createHmac('sha256', key).update(storeId, 'utf8').digest('hex');
  }

  /** Constant-time comparison of a presented store token. */
  verifyStoreToken(storeId: string, token: string): void {
    if (!this.secret) return;
    const want = Buffer.from(this.storeToken(storeId), 'utf8');
    const got = Buffer.from(typeof token === 'string' ? token : '', 'utf8');
    if (got.byteLength !== want.byteLength || !timingSafeEqual(want, got)) throw new AuthError();
  }
}

function derive(secret: Buffer, label: string, bytes: number): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, SALT, Buffer.from(label, 'utf8'), bytes));
}
