// SampleRef: the only record the control plane carries for a sample (DESIGN.md §1), and the
// msgpack codec every control message uses. One Packr with `useRecords: false` (shared
// structures silently mis-map fields on version skew). The decoder accepts odd extensions
// (Date, C1, ...), so every decoded value is checked to be plain data and bounded in size:
// garbage, truncated, oversized or extension-typed input is a DecodeError, never a crash.
import { Packr } from 'msgpackr';
import { DecodeError, InvalidArgumentError } from '../errors.ts';

/** Dtypes a sample may hold (a subset of tensor.ts's Dtype). */
export type SampleDtype = 'f32' | 'bf16' | 'f16' | 'i32' | 'u8';
export const SAMPLE_DTYPES: readonly SampleDtype[] = ['f32', 'bf16', 'f16', 'i32', 'u8'];

export interface FeatureSpec {
  dtype: SampleDtype;
  shape: number[];
}

export interface Producer {
  /** Node id (id charset). */
  node: string;
  /** Actor name (id charset). */
  actor: string;
  /** Which start of that actor wrote it (uint, e.g. a start counter or start time in ms). */
  incarnation: number;
}

export interface SampleRef {
  v: 1;
  job: string;
  sampleId: string;
  /** Strictly increasing across re-puts of the same sampleId. */
  generation: number;
  /**
   * `dir://<storeId>/<sampleId>?g=<gen>`, `http://<host>:<port>/<storeId>/<sampleId>?g=<gen>`
   * (served by the producer's node: src/store/http-server.ts; `https://` where it serves TLS) or
   * `tcp://<host>:<port>/<storeId>/<sampleId>?g=<gen>`.
   */
  uri: string;
  features: Record<string, FeatureSpec>;
  numTokens: number;
  bytes: number;
  /** `<algo>:<lowercase hex>`; algo one of sha256, sha256m (see checksum.ts), xxh64. */
  checksum: string;
  producer: Producer;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** HMAC-SHA256 (32 bytes) over every other field when auth is on (see auth.ts). */
  mac?: Uint8Array;
}

export const SAMPLE_REF_MAX_BYTES = 4096;
/** Default bound for decodeMessage. */
export const MESSAGE_MAX_BYTES = 1024 * 1024;
const MAX_DEPTH = 32;
const MAX_FEATURES = 64;
const MAX_RANK = 8;

/** Ids (job, sampleId, storeId, node, actor) are safe file names and NATS subject tokens. */
export const ID_RE = /^[A-Za-z0-9._:-]{1,200}$/;
/** Feature (tensor) names. */
export const FEATURE_NAME_RE = /^[A-Za-z0-9._:/-]{1,128}$/;
const CHECKSUM_RE = /^(?:sha256:[0-9a-f]{64}|sha256m:[0-9a-f]{64}|xxh64:[0-9a-f]{16})$/;
const HOST_RE = /^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])$/;
const REF_KEYS = ['v', 'job', 'sampleId', 'generation', 'uri', 'features', 'numTokens', 'bytes', 'checksum', 'producer', 'createdAt'] as const;
const REF_KEY_SET = new Set<string>([...REF_KEYS, 'mac']);

/**
 * A single NATS subject token: ids used inside subjects (job, node ids) must also pass this
 * (ID_RE allows '.', which splits a subject into tokens).
 */
export const SUBJECT_TOKEN_RE = /^[A-Za-z0-9_:-]{1,200}$/;

export function checkSubjectToken(x: unknown, what: string): string {
  if (typeof x !== 'string' || !SUBJECT_TOKEN_RE.test(x)) throw new InvalidArgumentError(`${what} must match [A-Za-z0-9_:-]{1,200} to be one NATS subject token, got ${describe(x)}`);
  return x;
}

export function isId(x: unknown): x is string {
  return typeof x === 'string' && ID_RE.test(x) && x !== '.' && x !== '..';
}

/** Throws InvalidArgumentError unless `x` is a valid id; `what` names it in the message. */
export function checkId(x: unknown, what: string): string {
  if (!isId(x)) throw new InvalidArgumentError(`${what} must match [A-Za-z0-9._:-]{1,200} (not "." or ".."), got ${describe(x)}`);
  return x;
}

function describe(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.length > 60 ? x.slice(0, 60) + '…' : x);
  if (x === null) return 'null';
  if (x instanceof Uint8Array) return `${x.byteLength} bytes`;
  if (Array.isArray(x)) return 'an array';
  return typeof x === 'object' ? (Object.getPrototypeOf(x)?.constructor?.name ?? 'object') : `${typeof x} ${String(x)}`;
}

function isUint(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (x === null || typeof x !== 'object') return false;
  const p = Object.getPrototypeOf(x);
  return p === Object.prototype || p === null;
}

export interface ParsedUri {
  scheme: 'dir' | 'tcp' | 'http' | 'https';
  host?: string;
  port?: number;
  storeId: string;
  sampleId: string;
  generation: number;
}

/** Parses a sample uri; throws DecodeError naming what is wrong. */
export function parseSampleUri(uri: string): ParsedUri {
  if (typeof uri !== 'string' || uri.length > 600) throw new DecodeError(`uri must be a string of at most 600 characters`);
  let m = /^dir:\/\/([^/?#]+)\/([^/?#]+)\?g=(0|[1-9][0-9]{0,15})$/.exec(uri);
  let out: ParsedUri | null = null;
  if (m) {
    out = { scheme: 'dir', storeId: m[1]!, sampleId: m[2]!, generation: Number(m[3]) };
  } else {
    m = /^(tcp|https?):\/\/([^/?#]+):([0-9]{1,5})\/([^/?#]+)\/([^/?#]+)\?g=(0|[1-9][0-9]{0,15})$/.exec(uri);
    if (m) {
      const port = Number(m[3]);
      if (!HOST_RE.test(m[2]!) || port < 1 || port > 65535) throw new DecodeError(`uri ${JSON.stringify(uri)} has an invalid host or port`);
      out = { scheme: m[1] as 'tcp' | 'http' | 'https', host: m[2]!, port, storeId: m[4]!, sampleId: m[5]!, generation: Number(m[6]) };
    }
  }
  if (!out) throw new DecodeError(`uri ${JSON.stringify(uri.slice(0, 100))} is none of dir://<storeId>/<sampleId>?g=<gen>, http(s)://<host>:<port>/<storeId>/<sampleId>?g=<gen>, tcp://<host>:<port>/<storeId>/<sampleId>?g=<gen>`);
  if (!isId(out.storeId) || !isId(out.sampleId)) throw new DecodeError(`uri ${JSON.stringify(uri)} has an invalid storeId or sampleId`);
  if (!Number.isSafeInteger(out.generation)) throw new DecodeError(`uri ${JSON.stringify(uri)} has an out-of-range generation`);
  return out;
}

export function dirUri(storeId: string, sampleId: string, generation: number): string {
  return `dir://${storeId}/${sampleId}?g=${generation}`;
}

/** The uri of a sample served over HTTP (over TLS: https) by the node at host:port (src/store/http-server.ts). */
export function httpUri(host: string, port: number, storeId: string, sampleId: string, generation: number, tls = false): string {
  return `${tls ? 'https' : 'http'}://${host}:${port}/${storeId}/${sampleId}?g=${generation}`;
}

/** True for a host as a uri may carry it: a DNS name, an IPv4 address, or an IPv6 address in brackets. */
export function isUriHost(host: unknown): host is string {
  return typeof host === 'string' && HOST_RE.test(host);
}

export function tcpUri(host: string, port: number, storeId: string, sampleId: string, generation: number): string {
  return `tcp://${host}:${port}/${storeId}/${sampleId}?g=${generation}`;
}

/**
 * Checks that `x` is a well-formed SampleRef (exact key set, types, ranges, uri agreeing with
 * sampleId/generation) and returns a fresh, canonically ordered copy. Throws DecodeError.
 */
export function validateSampleRef(x: unknown): SampleRef {
  const bad = (what: string): never => { throw new DecodeError(`invalid SampleRef: ${what}`); };
  if (!isPlainObject(x)) bad(`expected a map, got ${describe(x)}`);
  const o = x as Record<string, unknown>;
  if (o.v !== 1) throw new DecodeError(`invalid SampleRef: unknown schema version ${describe(o.v)} (expected 1)`);
  for (const k of Object.keys(o)) if (!REF_KEY_SET.has(k)) bad(`unexpected field ${JSON.stringify(k.slice(0, 40))}`);
  for (const k of REF_KEYS) if (!(k in o)) bad(`missing field "${k}"`);
  if (!isId(o.job)) bad(`job must be an id, got ${describe(o.job)}`);
  if (!isId(o.sampleId)) bad(`sampleId must be an id, got ${describe(o.sampleId)}`);
  for (const k of ['generation', 'numTokens', 'bytes', 'createdAt'] as const) {
    if (!isUint(o[k])) bad(`${k} must be an unsigned safe integer, got ${describe(o[k])}`);
  }
  if (typeof o.uri !== 'string') bad(`uri must be a string, got ${describe(o.uri)}`);
  let parsed: ParsedUri;
  try { parsed = parseSampleUri(o.uri as string); } catch (e) { return bad((e as Error).message); }
  if (parsed.sampleId !== o.sampleId) bad(`uri names sample "${parsed.sampleId}" but sampleId is "${String(o.sampleId)}"`);
  if (parsed.generation !== o.generation) bad(`uri names generation ${parsed.generation} but generation is ${String(o.generation)}`);
  if (typeof o.checksum !== 'string' || !CHECKSUM_RE.test(o.checksum)) bad(`checksum must be sha256:<64 hex>, sha256m:<64 hex> or xxh64:<16 hex>, got ${describe(o.checksum)}`);
  if (!isPlainObject(o.features)) bad(`features must be a map, got ${describe(o.features)}`);
  const fin = o.features as Record<string, unknown>;
  const names = Object.keys(fin).sort();
  if (names.length > MAX_FEATURES) bad(`more than ${MAX_FEATURES} features`);
  const features: Record<string, FeatureSpec> = {};
  for (const name of names) {
    if (!FEATURE_NAME_RE.test(name)) bad(`feature name ${JSON.stringify(name.slice(0, 40))} must match [A-Za-z0-9._:/-]{1,128}`);
    const f = fin[name];
    if (!isPlainObject(f)) bad(`feature "${name}" must be a map {dtype, shape}`);
    const fo = f as Record<string, unknown>;
    const fk = Object.keys(fo);
    if (fk.length !== 2 || !('dtype' in fo) || !('shape' in fo)) bad(`feature "${name}" must have exactly the fields dtype and shape`);
    if (!(SAMPLE_DTYPES as readonly unknown[]).includes(fo.dtype)) bad(`feature "${name}" has dtype ${describe(fo.dtype)} (expected one of ${SAMPLE_DTYPES.join(', ')})`);
    const shape = fo.shape;
    if (!Array.isArray(shape) || shape.length > MAX_RANK || !shape.every(isUint)) bad(`feature "${name}" shape must be an array of at most ${MAX_RANK} unsigned integers`);
    features[name] = { dtype: fo.dtype as SampleDtype, shape: [...(shape as number[])] };
  }
  if (!isPlainObject(o.producer)) bad(`producer must be a map {node, actor, incarnation}`);
  const p = o.producer as Record<string, unknown>;
  const pk = Object.keys(p);
  if (pk.length !== 3 || !('node' in p) || !('actor' in p) || !('incarnation' in p)) bad(`producer must have exactly the fields node, actor and incarnation`);
  if (!isId(p.node)) bad(`producer.node must be an id, got ${describe(p.node)}`);
  if (!isId(p.actor)) bad(`producer.actor must be an id, got ${describe(p.actor)}`);
  if (!isUint(p.incarnation)) bad(`producer.incarnation must be an unsigned safe integer, got ${describe(p.incarnation)}`);
  const ref: SampleRef = {
    v: 1,
    job: o.job as string,
    sampleId: o.sampleId as string,
    generation: o.generation as number,
    uri: o.uri as string,
    features,
    numTokens: o.numTokens as number,
    bytes: o.bytes as number,
    checksum: o.checksum as string,
    producer: { node: p.node as string, actor: p.actor as string, incarnation: p.incarnation as number },
    createdAt: o.createdAt as number,
  };
  if ('mac' in o && o.mac !== undefined) {
    if (!(o.mac instanceof Uint8Array) || o.mac.byteLength !== 32) bad(`mac must be 32 bytes, got ${describe(o.mac)}`);
    ref.mac = new Uint8Array(o.mac as Uint8Array);
  }
  return ref;
}

export const packr = new Packr({ useRecords: false });

function packToBytes(x: unknown): Uint8Array {
  const b = packr.pack(x);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * The canonical encoding of a ref (fixed field order, features sorted by name), with or
 * without its mac: what signRef/verifyRef MAC and what encodeSampleRef sends.
 */
export function canonicalRefBytes(ref: SampleRef, withMac: boolean): Uint8Array {
  const r = validateSampleRef(withMac ? ref : { ...ref, mac: undefined });
  const o: Record<string, unknown> = {};
  for (const k of REF_KEYS) o[k] = r[k];
  if (withMac && r.mac) o.mac = r.mac;
  return packToBytes(o);
}

/** Encodes a (valid) SampleRef; throws InvalidArgumentError if it is invalid or over 4 KiB. */
export function encodeSampleRef(ref: SampleRef): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = canonicalRefBytes(ref, true);
  } catch (e) {
    throw new InvalidArgumentError(`cannot encode SampleRef: ${(e as Error).message}`, { cause: e });
  }
  if (bytes.byteLength > SAMPLE_REF_MAX_BYTES) throw new InvalidArgumentError(`SampleRef encodes to ${bytes.byteLength} bytes, over the ${SAMPLE_REF_MAX_BYTES}-byte bound`);
  return bytes;
}

function unpackBounded(bytes: Uint8Array, maxBytes: number, what: string): unknown {
  if (!(bytes instanceof Uint8Array)) throw new DecodeError(`${what}: expected bytes, got ${describe(bytes)}`);
  if (bytes.byteLength === 0) throw new DecodeError(`${what}: empty input`);
  if (bytes.byteLength > maxBytes) throw new DecodeError(`${what}: ${bytes.byteLength} bytes exceeds the ${maxBytes}-byte bound`);
  try {
    return packr.unpack(bytes);
  } catch (e) {
    throw new DecodeError(`${what}: not valid msgpack (${e instanceof Error ? e.message.slice(0, 120) : 'decode failed'})`);
  }
}

/** Decodes and validates a SampleRef (at most 4 KiB). Throws DecodeError. */
export function decodeSampleRef(bytes: Uint8Array): SampleRef {
  const raw = exactInts(unpackBounded(bytes, SAMPLE_REF_MAX_BYTES, 'SampleRef'), 'SampleRef', 0);
  checkPlain(raw, 'SampleRef', 0);
  return validateSampleRef(raw);
}

/**
 * msgpackr decodes every 64-bit integer (0xcf uint64, 0xd3 int64) as a bigint; Python's and
 * Go's msgpack write integers >= 2^32 (some: every integer) that way. Such an integer becomes
 * a number when it is exact in a double (a safe integer); otherwise DecodeError names the
 * field. Rewrites the freshly decoded value in place (it is ours); returns it.
 */
export function exactInts(x: unknown, where: string, depth: number): unknown {
  if (typeof x === 'bigint') {
    if (x > BigInt(Number.MAX_SAFE_INTEGER) || x < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new DecodeError(`${where}: a 64-bit integer (bigint) ${x > 0n ? 'above 2^53-1' : 'below -(2^53-1)'} is not exact in a double (only safe integers are accepted)`);
    }
    return Number(x);
  }
  if (x === null || typeof x !== 'object' || x instanceof Uint8Array || depth > MAX_DEPTH) return x;
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) x[i] = exactInts(x[i], `${where}[${i}]`, depth + 1);
  } else if (isPlainObject(x)) {
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o)) o[k] = exactInts(o[k], `${where}.${k.slice(0, 40)}`, depth + 1);
  }
  return x;
}

/**
 * Throws DecodeError unless `x` is plain data: null, undefined, boolean, finite-or-not number,
 * string, bytes (Uint8Array), arrays and plain objects of those, nested at most 32 deep.
 * Dates, RegExps, Errors, Maps, Sets, typed arrays other than bytes, bigints and msgpackr's
 * extension objects are all rejected.
 */
export function checkPlain(x: unknown, where: string, depth = 0): void {
  if (depth > MAX_DEPTH) throw new DecodeError(`${where}: nested deeper than ${MAX_DEPTH}`);
  if (x === null || x === undefined) return;
  switch (typeof x) {
    case 'boolean': case 'number': case 'string': return;
    case 'object': break;
    default: throw new DecodeError(`${where}: ${typeof x} values are not allowed`);
  }
  if (x instanceof Uint8Array) {
    const p = Object.getPrototypeOf(x);
    if (p === Uint8Array.prototype || p === Buffer.prototype) return;
    throw new DecodeError(`${where}: unexpected ${describe(x)}`);
  }
  if (Array.isArray(x)) {
    if (Object.getPrototypeOf(x) !== Array.prototype) throw new DecodeError(`${where}: unexpected array subclass`);
    for (let i = 0; i < x.length; i++) checkPlain(x[i], `${where}[${i}]`, depth + 1);
    return;
  }
  if (!isPlainObject(x)) throw new DecodeError(`${where}: unexpected ${describe(x)} (only plain maps, arrays, strings, numbers, booleans, null and bytes are allowed)`);
  for (const [k, v] of Object.entries(x)) checkPlain(v, `${where}.${k.slice(0, 40)}`, depth + 1);
}

/** Encodes a plain control message (a map). Throws InvalidArgumentError on non-plain input. */
export function encodeMessage(obj: Record<string, unknown>, maxBytes = MESSAGE_MAX_BYTES): Uint8Array {
  if (!isPlainObject(obj)) throw new InvalidArgumentError(`message must be a plain map, got ${describe(obj)}`);
  try {
    checkPlain(obj, 'message', 0);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message, { cause: e });
  }
  const bytes = packToBytes(obj);
  if (bytes.byteLength > maxBytes) throw new InvalidArgumentError(`message encodes to ${bytes.byteLength} bytes, over the ${maxBytes}-byte bound`);
  return bytes;
}

/** Decodes a plain control message (a map) of at most `maxBytes`. Throws DecodeError. */
export function decodeMessage(bytes: Uint8Array, maxBytes = MESSAGE_MAX_BYTES): Record<string, unknown> {
  const raw = exactInts(unpackBounded(bytes, maxBytes, 'message'), 'message', 0);
  if (!isPlainObject(raw)) throw new DecodeError(`message: expected a map, got ${describe(raw)}`);
  checkPlain(raw, 'message', 0);
  return raw;
}
