// HttpFeatureStore: the FeatureStore of a node in a job whose machines share no directory
// (docs/wire.md "The HTTP data plane"). It holds the node's own shared-directory store (put,
// abort, gc, usage and the refs it wrote go there) and reads every other node's samples over
// HTTP from the node their ref names (`http://host:port/<storeId>/<sampleId>?g=<gen>`),
// through undici's keep-alive connection pools (one pool per node).
//
// A remote get keeps the store's guarantees: the ref's MAC is checked before anything is
// sent; only the tensors and rows asked for travel (a sequence-parallel rank fetches its own
// slice); every block received is verified against the manifest that the ref's checksum
// authenticates (ChecksumError) while it streams into exactly-sized private buffers (no
// whole-sample intermediate copy); the server's typed errors come back as the same classes
// (SampleGoneError after release, StaleGenerationError for an older generation, AuthError).
// release() of a remote ref asks its node to free it (DELETE); abort() acts on the local
// store only (an abort names no node: the node that wrote a sample frees it).
import { Writable } from 'node:stream';
import { Agent } from 'undici';
import { AuthPolicy } from '../wire/auth.ts';
import { errorFromWire } from '../wire/error-codec.ts';
import { AuthError, DecodeError, DraftwireError, InvalidArgumentError, TimeoutError, UnavailableError } from '../errors.ts';
import { TLS_ENV, tlsFailure, type TlsPem } from '../tls.ts';
import { parseSampleUri, validateSampleRef, type ParsedUri, type SampleRef } from '../wire/sampleref.ts';
import { DTYPE_BYTES, numel, type Tensor } from '../tensor.ts';
import { authorizationFor } from './store-token.ts';
import { FrameReader, storeRequestTarget, type FreeWhy } from './http-protocol.ts';
import type { BackpressureState, FeatureStore, GcStats, GetOptions, PutOptions, StoreHealth, StoreUsage } from './feature-store.ts';
import type { SharedDirFeatureStore } from './shared-dir.ts';

/** Bound on an error body read from a server. */
const MAX_ERROR_BODY = 64 * 1024;

export interface HttpStoreOptions {
  /** The node's own store: put, abort, gc and usage go there, and refs it wrote are read from it. */
  local: SharedDirFeatureStore;
  auth: AuthPolicy;
  /** Connections per remote node (default 8). */
  connections?: number;
  /** Idle keep-alive connections close after this, ms (default 20 000). */
  keepAliveMs?: number;
  /** Waiting for a response's headers, and between two chunks of its body, ms (default 30 000). */
  timeoutMs?: number;
  /** Connecting to a node, ms (default 10 000). */
  connectTimeoutMs?: number;
  /**
   * TLS for https:// refs (PEM contents): the job's CA the nodes' certificates are signed by,
   * and this machine's certificate and key (the nodes ask for one when they have a CA).
   */
  tls?: TlsPem | null;
}

export interface HttpStoreStats { remoteGets: number; bytesFetched: number; remoteFrees: number }

export class HttpFeatureStore implements FeatureStore {
  readonly storeId: string;
  readonly job: string;
  readonly stats: HttpStoreStats = { remoteGets: 0, bytesFetched: 0, remoteFrees: 0 };
  private readonly local: SharedDirFeatureStore;
  private readonly auth: AuthPolicy;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly tls: boolean;
  private readonly clientCert: boolean;
  private closed = false;

  constructor(o: HttpStoreOptions) {
    if (!o || !o.local) throw new InvalidArgumentError('HttpFeatureStore: local (the node\'s own SharedDirFeatureStore) is required');
    if (!(o.auth instanceof AuthPolicy)) throw new InvalidArgumentError('HttpFeatureStore: auth must be an AuthPolicy (AuthPolicy.disabled() for none)');
    this.local = o.local;
    this.storeId = o.local.storeId;
    this.job = o.local.job;
    this.auth = o.auth;
    this.timeoutMs = o.timeoutMs ?? 30_000;
    this.agent = new Agent({
      connections: o.connections ?? 8,
      keepAliveTimeout: o.keepAliveMs ?? 20_000,
      keepAliveMaxTimeout: Math.max(o.keepAliveMs ?? 20_000, 60_000),
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      pipelining: 1,
      ...(o.tls ? { connect: { ca: o.tls.ca, cert: o.tls.cert, key: o.tls.key } } : {}),
    });
    this.tls = !!o.tls;
    this.clientCert = !!o.tls?.cert;
  }

  /** Whether a ref is read from the local directory (a dir:// ref, or an http one naming this node). */
  private isLocal(u: ParsedUri): boolean {
    return u.scheme === 'dir' || (u.scheme !== 'tcp' && `${u.host}:${u.port}` === this.local.advertisedAt);
  }

  private remote(ref: SampleRef, op: string): { r: SampleRef; u: ParsedUri } | null {
    const r = validateSampleRef(ref);
    const u = parseSampleUri(r.uri);
    if (this.isLocal(u)) return null;
    if (u.scheme === 'tcp') throw new InvalidArgumentError(`${op}: ref ${r.uri} has no transport here (dir://, http:// and https:// refs are served)`);
    if (u.scheme === 'https' && !this.tls) throw new InvalidArgumentError(`${op}: ref ${r.uri} is served over TLS, and this reader has no TLS files: give the job's CA and this machine's certificate (--tls-ca/--tls-cert/--tls-key, or ${TLS_ENV.ca}/${TLS_ENV.cert}/${TLS_ENV.key})`);
    if (r.job !== this.job) throw new InvalidArgumentError(`${op}: ref is for job "${r.job}", this store serves "${this.job}"`);
    this.auth.verifyRef(r);
    return { r, u };
  }

  private checkOpen(): void {
    if (this.closed) throw new InvalidArgumentError(`store "${this.storeId}" is closed`);
  }

  put(sampleId: string, tensors: Record<string, Tensor>, opts?: PutOptions): Promise<SampleRef> {
    return this.local.put(sampleId, tensors, opts);
  }

  async get(ref: SampleRef, opts: GetOptions = {}): Promise<Record<string, Tensor>> {
    this.checkOpen();
    const rem = this.remote(ref, 'get');
    if (!rem) return this.local.get(ref, opts);
    const { r, u } = rem;
    const declared = Object.values(r.features).reduce((n, f) => n + numel(f.shape) * DTYPE_BYTES[f.dtype], 0);
    if (declared !== r.bytes) throw new DecodeError(`sample "${r.sampleId}" generation ${r.generation}: the ref declares ${r.bytes} bytes but its features hold ${declared}`, { detail: { sampleId: r.sampleId, generation: r.generation } });
    // What is asked is checked against the (authenticated) ref before anything is sent.
    const all = Object.keys(r.features);
    const names = opts.names ?? all;
    if (!Array.isArray(names)) throw new InvalidArgumentError('get: names must be an array');
    for (const n of names) if (!(n in r.features)) throw new InvalidArgumentError(`get: sample "${r.sampleId}" has no tensor "${n}" (has ${all.join(', ')})`);
    if (new Set(names).size !== names.length) throw new InvalidArgumentError('get: a tensor is named twice');
    let rows: [number, number] | null = null;
    if (opts.rows) {
      const [r0, r1] = opts.rows;
      for (const n of names) {
        const shape = r.features[n]!.shape;
        if (shape.length === 0 || !Number.isSafeInteger(r0) || !Number.isSafeInteger(r1) || r0 < 0 || r1 < r0 || r1 > shape[0]!) {
          throw new InvalidArgumentError(`get: rows [${r0}, ${r1}) are outside tensor "${n}" with shape [${shape}]`);
        }
      }
      rows = [r0, r1];
    }
    // Asking for every tensor in the manifest's order is asking for them all (names omitted).
    const target = storeRequestTarget(u.storeId, r.sampleId, r.generation, { names: opts.names ? names : null, rows });
    const reader = new FrameReader(r, opts.names ? names : null, rows, opts.verify ?? true);
    let received = 0;
    await this.request(u, 'GET', target, (statusCode, headers) => {
      if (statusCode !== 200) return null;
      const cl = headers['content-length'];
      return new Writable({
        highWaterMark: 1 << 20,
        write: (chunk: Buffer, _enc, cb) => {
          try {
            received += chunk.byteLength;
            reader.push(chunk);
            const want = reader.expectedLength();
            if (want !== null && typeof cl === 'string' && Number(cl) !== want) throw new DecodeError(`sample "${r.sampleId}": the response is ${cl} bytes, its frame needs ${want}`);
            cb();
          } catch (e) { cb(e as Error); }
        },
      });
    });
    const out = await reader.end();
    this.stats.remoteGets++;
    this.stats.bytesFetched += received;
    return out;
  }

  /**
   * One request to the node of `u`. `sink` gives the Writable for a 200 body (null: not a
   * success); any other status's JSON error is rethrown as its class.
   */
  private async request(u: ParsedUri, method: 'GET' | 'DELETE', target: string, sink: (status: number, headers: Record<string, string | string[] | undefined>) => Writable | null): Promise<void> {
    const origin = `${u.scheme}://${u.host}:${u.port}`;
    const headers: Record<string, string> = {};
    const authz = authorizationFor(this.auth, u.storeId, method, target);
    if (authz) headers.authorization = authz;
    let status = 0;
    let errBody = '';
    try {
      await this.agent.stream({ origin, path: target, method, headers, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs }, ({ statusCode, headers: h }) => {
        status = statusCode;
        const w = sink(statusCode, h as Record<string, string | string[] | undefined>);
        if (w) return w;
        return new Writable({
          write(chunk: Buffer, _enc, cb) { if (errBody.length < MAX_ERROR_BODY) errBody += chunk.toString('utf8'); cb(); },
        });
      });
    } catch (e) {
      if (e instanceof DraftwireError) throw e;
      throw transportError(e, `${method} ${origin}${target.split('?')[0]}`, u.scheme === 'https', this.clientCert);
    }
    if (status === 200) return;
    let wire: unknown = null;
    try { wire = JSON.parse(errBody.slice(0, MAX_ERROR_BODY)); } catch { /* not JSON */ }
    if (!wire || typeof wire !== 'object' || typeof (wire as { code?: unknown }).code !== 'string') {
      throw new UnavailableError(`${method} ${origin}${target.split('?')[0]}: HTTP ${status} without a Draftwire error body`, { detail: { status } });
    }
    throw errorFromWire(wire, `${origin}${target.split('?')[0]}`);
  }

  owns(ref: SampleRef): boolean { return this.local.owns(ref); }

  held(): Promise<{ sampleId: string; generation: number }[]> { return this.local.held(); }

  async release(ref: SampleRef): Promise<boolean> {
    this.checkOpen();
    const rem = this.remote(ref, 'release');
    if (!rem) return this.local.release(ref);
    return this.freeRemote(rem.r, rem.u, 'consumed');
  }

  /** Asks the node that wrote `ref` to free it: release ('consumed') or abort of that generation ('dead'). */
  async freeRemote(r: SampleRef, u: ParsedUri, why: FreeWhy): Promise<boolean> {
    let body = '';
    await this.request(u, 'DELETE', storeRequestTarget(u.storeId, r.sampleId, r.generation, { why }), (status) => status === 200
      ? new Writable({ write(chunk: Buffer, _enc, cb) { if (body.length < MAX_ERROR_BODY) body += chunk.toString('utf8'); cb(); } })
      : null);
    let freed: unknown;
    try { freed = (JSON.parse(body) as { freed?: unknown }).freed; } catch { /* below */ }
    if (typeof freed !== 'boolean') throw new DecodeError(`DELETE ${r.uri}: the reply is not {"freed": bool}`);
    if (freed) this.stats.remoteFrees++;
    return freed;
  }

  abort(sampleId: string, reason: string, opts?: { generation?: number }): Promise<boolean> {
    return this.local.abort(sampleId, reason, opts);
  }

  gc(now?: number): Promise<GcStats> { return this.local.gc(now); }
  health(): Promise<StoreHealth> { return this.local.health(); }
  usage(): Promise<StoreUsage> { return this.local.usage(); }
  backpressure(): Promise<BackpressureState> { return this.local.backpressure(); }

  /** Closes the connection pools and the local store. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agent.close();
    await this.local.close();
  }
}

/** An undici failure as a typed error naming the request (never its token). */
function transportError(e: unknown, what: string, tls: boolean, clientCert: boolean): DraftwireError {
  const code = (e as { code?: string } | null)?.code ?? '';
  const msg = (e as Error | null)?.message ?? String(e);
  // A certificate refused either way is configuration, not a passing fault: not retryable.
  const t = tls ? tlsFailure(e, false) : null;
  if (t) return new AuthError(`${what}: TLS failed (${t.why}): ${t.hint}`, { cause: e, detail: { tls: true } });
  // Under TLS 1.3 a server refusing the client's certificate just closes the connection: the
  // same as a node dying mid-request, so still retryable, with the likely cause named.
  if (tls && code === 'UND_ERR_SOCKET') {
    const likely = clientCert ? 'refuses this reader\'s certificate: it must be signed by the job\'s CA' : 'requires a client certificate signed by the job\'s CA';
    return new UnavailableError(`${what}: the node closed the connection: if this persists it most likely ${likely} (--tls-cert/--tls-key, or ${TLS_ENV.cert}/${TLS_ENV.key})`, { cause: e, detail: { code, tls: true } });
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new TimeoutError(`${what}: ${msg}`, { cause: e, detail: { code } });
  }
  // Refused, reset, closed mid-response (the server died or dropped it): worth a retry.
  return new UnavailableError(`${what}: ${code || msg}`, { cause: e, detail: { code } });
}
