// The node's HTTP data plane server (docs/wire.md "The HTTP data plane"): serves the samples
// of this node's own store to readers on other machines, and frees them when asked. Thin:
// authorising (store-token.ts), parsing and planning (http-protocol.ts) are pure functions;
// this file only moves bytes. A GET streams the chosen byte ranges from the open file in
// bounded chunks, with backpressure (never the whole file in memory); the file stays open
// until the response ends, so a release meanwhile cannot tear a response.
//
// Every request is authorised before anything else is looked at: without a valid token the
// answer is 401 with the same body whatever the request named, so nothing is revealed (not
// even whether the sample exists). Files are opened only by the store (O_NOFOLLOW, regular
// files, names built from validated ids inside the store directory).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { AuthError, DraftwireError, InvalidArgumentError } from '../errors.ts';
import { errorToWire } from '../wire/error-codec.ts';
import type { AuthPolicy } from '../wire/auth.ts';
import { checkAuthorization } from './store-token.ts';
import { FRAME_CONTENT_TYPE, httpStatusOf, parseStoreRequest, planSampleResponse, type StoreRequest } from './http-protocol.ts';
import type { SharedDirFeatureStore } from './shared-dir.ts';

/** Bytes read from the file per write to the socket. */
const CHUNK_BYTES = 1 << 20;

export interface StoreServerOptions {
  store: SharedDirFeatureStore;
  auth: AuthPolicy;
  /** Address to bind (default 127.0.0.1) and port (0: any free one). */
  host?: string;
  port?: number;
  /**
   * Serve TLS (PEM contents): this machine's certificate and key; with `ca`, only clients
   * presenting a certificate signed by it are accepted (mutual TLS, as the NATS members do).
   */
  tls?: { cert: string; key: string; ca?: string | null } | null;
  /** Called for requests that failed on the server's side (not for 4xx answers). */
  onError?: (e: unknown, req: { method: string; target: string }) => void;
}

export interface StoreServerStats { connections: number; requests: number; bytesServed: number; frees: number; refused: number }

function sendError(res: ServerResponse, e: unknown): void {
  const status = httpStatusOf(e);
  // A refusal says nothing: not why, not what the request named.
  const wire = e instanceof AuthError ? errorToWire(new AuthError()) : errorToWire(e);
  if (!(e instanceof DraftwireError)) wire.message = 'internal error';
  const body = Buffer.from(JSON.stringify(wire), 'utf8');
  const headers: Record<string, string | number> = { 'Content-Type': 'application/json', 'Content-Length': body.byteLength, 'Cache-Control': 'no-store' };
  if (status === 405) headers.Allow = 'GET, DELETE';
  if (status === 401) headers['WWW-Authenticate'] = 'Draftwire v1';
  res.writeHead(status, headers);
  res.end(body);
}

/** Resolves when the response can take more bytes; rejects when the client went away. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => { res.off('drain', ok); res.off('close', gone); res.off('error', done); if (err) reject(err); else resolve(); };
    const ok = () => done();
    const gone = () => done(new Error('client closed the connection'));
    res.on('drain', ok); res.on('close', gone); res.on('error', done);
  });
}

export class StoreHttpServer {
  readonly stats: StoreServerStats = { connections: 0, requests: 0, bytesServed: 0, frees: 0, refused: 0 };
  private constructor(private readonly o: StoreServerOptions, readonly server: Server, readonly host: string, readonly port: number) {}

  /** Binds and starts serving; resolves once listening. */
  static async start(o: StoreServerOptions): Promise<StoreHttpServer> {
    let self: StoreHttpServer | null = null;
    const handler = (req: IncomingMessage, res: ServerResponse) => { void self!.handle(req, res); };
    const t = o.tls;
    if (t && (!t.cert || !t.key)) throw new InvalidArgumentError('data plane TLS: give both the certificate and its key');
    const server: Server = t
      ? createTlsServer({ keepAlive: true, cert: t.cert, key: t.key, ...(t.ca ? { ca: t.ca, requestCert: true, rejectUnauthorized: true } : {}) }, handler)
      : createServer({ keepAlive: true }, handler);
    server.keepAliveTimeout = 30_000;
    server.headersTimeout = 20_000;
    server.requestTimeout = 300_000;
    server.maxHeadersCount = 64;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => { server.off('error', reject); resolve(); });
    });
    const a = server.address() as AddressInfo;
    const s = new StoreHttpServer(o, server, a.family === 'IPv6' ? `[${a.address}]` : a.address, a.port);
    server.on('connection', () => { s.stats.connections++; });
    self = s;
    return s;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.stats.requests++;
    const method = req.method ?? '';
    const target = req.url ?? '';
    let parsed: StoreRequest;
    try {
      // Authorisation first, over the target exactly as received.
      checkAuthorization(this.o.auth, this.o.store.storeId, method, target, req.headers.authorization);
      parsed = parseStoreRequest(method, target);
      if (parsed.storeId !== this.o.store.storeId) throw new InvalidArgumentError(`bad request: this node serves store "${this.o.store.storeId}", not "${parsed.storeId}"`, { detail: { field: 'storeId' } });
    } catch (e) {
      this.stats.refused++;
      req.resume();
      return sendError(res, e);
    }
    req.resume(); // no request body is read
    try {
      if (parsed.op === 'free') return await this.free(parsed, res);
      return await this.get(parsed, res);
    } catch (e) {
      if (!(e instanceof DraftwireError) || httpStatusOf(e) >= 500) this.o.onError?.(e, { method, target });
      if (res.headersSent) { res.destroy(); return; } // mid-body: the reader sees a truncated frame
      return sendError(res, e);
    }
  }

  private async free(r: Extract<StoreRequest, { op: 'free' }>, res: ServerResponse): Promise<void> {
    const store = this.o.store;
    const freed = r.why === 'dead'
      ? await store.abort(r.sampleId, 'dead-lettered', { generation: r.generation })
      : await store.releaseGeneration(r.sampleId, r.generation);
    if (freed) this.stats.frees++;
    const body = Buffer.from(JSON.stringify({ freed }), 'utf8');
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.byteLength, 'Cache-Control': 'no-store' });
    res.end(body);
  }

  private async get(r: Extract<StoreRequest, { op: 'get' }>, res: ServerResponse): Promise<void> {
    const file = await this.o.store.openForRead(r.sampleId, r.generation);
    try {
      const plan = planSampleResponse(file, r);
      res.writeHead(200, { 'Content-Type': FRAME_CONTENT_TYPE, 'Content-Length': plan.contentLength, 'Cache-Control': 'no-store' });
      // The frame header goes out in the same write as the first chunk of data.
      let pending: Buffer | null = plan.head;
      for (const range of plan.ranges) {
        let off = 0;
        while (off < range.length) {
          const n = Math.min(CHUNK_BYTES, range.length - off);
          const lead = pending?.byteLength ?? 0;
          const buf = Buffer.allocUnsafe(lead + n);
          if (pending) { pending.copy(buf, 0); pending = null; }
          const { bytesRead } = await file.fh.read(buf, lead, n, range.offset + off);
          if (bytesRead === 0) throw new Error(`sample "${r.sampleId}" generation ${r.generation}: file truncated while serving it`);
          off += bytesRead;
          this.stats.bytesServed += bytesRead;
          if (!res.write(bytesRead === n ? buf : buf.subarray(0, lead + bytesRead))) await drained(res);
        }
      }
      if (pending) res.write(pending);
      await new Promise<void>((resolve) => res.end(resolve));
    } finally {
      await file.fh.close();
    }
  }

  /** The address refs should carry when this server's own address is the advertised one. */
  get address(): string { return `${this.host}:${this.port}`; }

  /** Stops accepting, ends idle keep-alive connections, waits for responses in flight. */
  async close(graceMs = 5000): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => this.server.closeAllConnections(), graceMs);
      t.unref();
      this.server.close(() => { clearTimeout(t); resolve(); });
      this.server.closeIdleConnections();
    });
  }
}
