// Request tokens of the HTTP data plane (docs/wire.md "The HTTP data plane"). Every request to
// a node's store server carries
//   Authorization: Draftwire v1 exp=<ms> mac=<64 lowercase hex>
// with mac = HMAC-SHA256(K_store, utf8(method) || 0x00 || utf8(target) || 0x00 || utf8(exp)),
// K_store the 32 bytes of the store token (auth.ts storeToken: HMAC of the storeId under the
// HKDF "draftwire/v1/store-token" key), `target` the request target exactly as sent (path and
// query), `exp` the decimal expiry in ms since the Unix epoch. So a token is good for one
// method on one path of one store until it expires, and nothing else. Pure: no I/O.
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import type { AuthPolicy } from '../wire/auth.ts';
import { AuthError } from '../errors.ts';

/** How long a client's token lives (ms). */
export const TOKEN_TTL_MS = 30_000;
/** A server refuses a token that expires further ahead than this (ms): no long-lived tokens. */
export const TOKEN_MAX_AHEAD_MS = 120_000;
const HEADER_RE = /^Draftwire v1 exp=(0|[1-9][0-9]{0,15}) mac=([0-9a-f]{64})$/;

/** K_store per policy and store (deriving it is an HKDF and an HMAC: not per request). */
const keys = new WeakMap<AuthPolicy, Map<string, KeyObject>>();
function storeKey(auth: AuthPolicy, storeId: string): KeyObject {
  let m = keys.get(auth);
  if (!m) keys.set(auth, m = new Map());
  let k = m.get(storeId);
  if (!k) {
    k = createSecretKey(Buffer.from(auth.storeToken(storeId), 'hex'));
    if (m.size < 1024) m.set(storeId, k);
  }
  return k;
}

/** The request MAC (32 bytes) for `method target` with expiry `exp`. Auth must be on. */
export function requestMac(auth: AuthPolicy, storeId: string, method: string, target: string, exp: number): Buffer {
  return createHmac('sha256', storeKey(auth, storeId)).update(`${method}\0${target}\0${exp}`, 'utf8').digest();
}

/** The Authorization header value for one request; null when auth is off (no header needed). */
export function authorizationFor(auth: AuthPolicy, storeId: string, method: string, target: string, now = Date.now(), ttlMs = TOKEN_TTL_MS): string | null {
  if (!auth.enabled) return null;
  const exp = Math.floor(now + ttlMs);
  return `Draftwire v1 exp=${exp} mac=${requestMac(auth, storeId, method, target, exp).toString('hex')}`;
}

/**
 * Throws AuthError (with nothing about why) unless `header` is a valid token for exactly this
 * method and target that has not expired and does not expire more than TOKEN_MAX_AHEAD_MS
 * ahead. A no-op when auth is off. The MAC is compared in constant time.
 */
export function checkAuthorization(auth: AuthPolicy, storeId: string, method: string, target: string, header: unknown, now = Date.now()): void {
  if (!auth.enabled) return;
  const m = typeof header === 'string' && header.length <= 200 ? HEADER_RE.exec(header) : null;
  // Compute the MAC even for a malformed header, so a refusal takes the same time either way.
  const exp = m ? Number(m[1]) : 0;
  const want = requestMac(auth, storeId, method, target, exp);
  const got = m ? Buffer.from(m[2]!, 'hex') : Buffer.alloc(32);
  const macOk = timingSafeEqual(want, got);
  if (!m || !macOk || exp < now || exp > now + TOKEN_MAX_AHEAD_MS) throw new AuthError();
}
