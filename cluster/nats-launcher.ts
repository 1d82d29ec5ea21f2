// Starts a local nats-server child (JetStream on) for `draftwire run` and for tests.
//
// - Config file in a private temp dir (0700/0600). With credentials, ONLY the
//   `accounts { APP { users, jetstream: enabled } }` form is written: on 2.9.10 an
//   `authorization{}` block next to an `accounts{$SYS}` block admits anonymous clients
//   (CVE-2023-47090). Without credentials the server is open (loopback only by default).
// - Port -1 picks a random port; the real one is read from the server's log line
//   "Listening for client connections on <host>:<port>", then a TCP probe waits for INFO.
// - The child never outlives us: live pids are killed from process 'exit' and from
//   SIGINT/SIGTERM/SIGHUP (when no one else handles them), and a tiny detached `sh` watchdog
//   per server holds a pipe from us: when we die (even by SIGKILL) the pipe closes and the
//   watchdog kills the server.
// - restart() keeps port and store dir, so JetStream data survives it.
// - TLS (`tls`): clients must connect with TLS; with a CA, they must also present a
//   certificate it signed (`verify: true`). Cluster (`cluster`): a member of a NATS cluster
//   (server_name, cluster name, route listen address and routes); route connections are
//   authenticated with their own credentials (`cluster { authorization }`, injected into
//   the route URLs we solicit) and use TLS with the same certificate when `tls` is set
//   (peers verified against the CA). The route port is pinned for restarts as the client
//   port is. Only the APP account is ever written (see above): the cluster's authorization
//   block covers route connections only, never clients.

import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync, existsSync, statSync, mkdirSync, type WriteStream } from 'node:fs';
import { hostname, networkInterfaces, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import net from 'node:net';
import { InvalidArgumentError, UnavailableError } from '../src/errors.ts';
import { createLogger } from '../src/log.ts';

const log = createLogger('nats-launcher');

export interface NatsCredentials { user: string; pass: string }

/** PEM files of this server: its certificate and key, and the CA that signed its peers (optional). */
export interface NatsTlsFiles { cert: string; key: string; ca?: string | null }

export interface NatsClusterOptions {
  /** Cluster name: every member of one cluster has the same (the job's: `dw-<job>`). */
  name: string;
  /** Route listen address (default: the client listen host). */
  host?: string;
  /** Route port; -1 picks a random one (read from the log, pinned for restarts). */
  port: number;
  /** Peers' route URLs, `nats-route://host:port` (a route to this server itself is ignored by the server). */
  routes?: string[];
  /** Route credentials (AuthPolicy.natsRouteCredentials()): required of peers, and sent to them. */
  credentials?: NatsCredentials | null;
  /** Route TLS; default: the server's `tls`. null: routes in clear. */
  tls?: NatsTlsFiles | null;
}

export interface NatsServerOptions {
  /** JetStream store dir; default: a fresh temp dir, removed by stop(). */
  storeDir?: string;
  /** Client port; -1 (default) picks a random free one. */
  port?: number;
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** When set, clients must present these; anonymous clients are refused. */
  credentials?: NatsCredentials | null;
  /** JetStream on (default true). */
  jetstream?: boolean;
  /** Append the server's log here (it is always kept in memory too, last 200 lines). */
  logFile?: string;
  maxMemBytes?: number;
  maxFileBytes?: number;
  /** Give up starting after this long (default 15 s). */
  readyTimeoutMs?: number;
  /** Grace before SIGKILL in stop() (default 5 s). */
  stopTimeoutMs?: number;
  /** nats-server binary (default $DRAFTWIRE_NATS_SERVER or `nats-server` on PATH). */
  binary?: string;
  serverName?: string;
  /** Max payload in bytes (server default 1 MiB). */
  maxPayload?: number;
  /** Server -DV logging. */
  trace?: boolean;
  /** Client TLS (required of every client); with `ca`, clients must present a certificate it signed. */
  tls?: NatsTlsFiles | null;
  /** Run as a member of a NATS cluster. */
  cluster?: NatsClusterOptions | null;
  /**
   * Restart the server (same port and store) when it exits without being told to (stop(),
   * kill() or restart() of this handle): a node agent keeps its cluster member up. At most
   * 5 restarts a minute.
   */
  autoRestart?: boolean;
}

export interface NatsServerHandle {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Route port (cluster members; 0 otherwise). */
  readonly clusterPort: number;
  /** pid of the current server process (changes on restart). */
  readonly pid: number;
  readonly storeDir: string;
  readonly configFile: string;
  /** The current server process (changes on restart). */
  readonly process: ChildProcess;
  readonly running: boolean;
  /** Graceful stop (SIGTERM, SIGKILL after stopTimeoutMs); removes the temp dirs this launcher made. Final. */
  stop(): Promise<void>;
  /** Send a signal. Resolves when the server exited for terminating signals, at once for others. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Stop (if running) and start again on the same port and store dir. */
  restart(): Promise<void>;
  /** The last lines the server logged. */
  logTail(): string;
}

// ---------------------------------------------------------------------------------------
// Reaping: every live server pid, killed when this process goes away.

interface LiveEntry { proc: ChildProcess; watchdog: ChildProcess | null; tempDirs: string[] }
const live = new Map<number, LiveEntry>();
let hooksInstalled = false;
const REAP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function killAllLive(signal: NodeJS.Signals, removeTemp: boolean): void {
  for (const [pid, e] of live) {
    // A server on a temp store has nothing worth a graceful shutdown: KILL it so its
    // temp dirs can go now (we cannot wait for it in an 'exit' handler).
    const sig = removeTemp && e.tempDirs.length > 1 ? 'SIGKILL' : signal;
    try { process.kill(pid, sig); } catch { /* already gone */ }
    try { e.watchdog?.kill('SIGKILL'); } catch { /* gone */ }
    if (removeTemp && sig === 'SIGKILL') for (const d of e.tempDirs) { try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
  }
}

function onSignal(sig: NodeJS.Signals): void {
  // Someone else handles this signal (graceful shutdown that still needs NATS): leave the
  // servers alone; the 'exit' hook and the watchdog reap them once the process ends.
  if (process.listenerCount(sig) > 1) return;
  killAllLive('SIGTERM', true);
  for (const s of REAP_SIGNALS) process.removeListener(s, onSignal);
  process.removeListener('exit', onExit);
  process.kill(process.pid, sig); // default action: die by the same signal
}

function onExit(): void { killAllLive('SIGTERM', true); }

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', onExit);
  for (const s of REAP_SIGNALS) process.on(s, onSignal);
}

/** pids of the nats-server children this process has running (for tests). */
export function liveServerPids(): number[] { return [...live.keys()]; }

export function isProcessAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

// ---------------------------------------------------------------------------------------
// Config

const SAFE_CRED = /^[\x21-\x7e]{1,256}$/; // printable ASCII, no spaces or control characters

function confString(s: string): string {
  // nats conf double-quoted strings take \" and \\ escapes; nothing else needs escaping for
  // the printable-ASCII strings we accept. Quoted values are never variable-expanded.
  return '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

/** host:port, IPv6 hosts in brackets. */
export function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

function tlsBlock(indent: string, t: NatsTlsFiles): string[] {
  const out = [`${indent}tls {`, `${indent}  cert_file: ${confString(t.cert)}`, `${indent}  key_file: ${confString(t.key)}`];
  if (t.ca) out.push(`${indent}  ca_file: ${confString(t.ca)}`, `${indent}  verify: true`);
  out.push(`${indent}  timeout: 5`, `${indent}}`);
  return out;
}

const ROUTE_RE = /^nats-route:\/\//i;

/**
 * A route URL with `creds` as its user info (unless it has its own). Throws
 * InvalidArgumentError for anything but nats-route://host:port.
 */
export function routeUrl(route: string, creds: NatsCredentials | null): string {
  const bad = (why: string) => new InvalidArgumentError(`route "${route}" is not a NATS route URL (${why}); expected nats-route://host:port`);
  if (!ROUTE_RE.test(route)) throw bad('it must start with nats-route://');
  let u: URL;
  try { u = new URL(route.replace(ROUTE_RE, 'http://')); } catch { throw bad('malformed'); }
  if (u.hostname === '') throw bad('no host');
  if (u.port === '') throw bad('no port');
  if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.hash !== '') throw bad('a path, query or fragment');
  const userinfo = u.username ? `${u.username}${u.password ? ':' + u.password : ''}@`
    : creds ? `${encodeURIComponent(creds.user)}:${encodeURIComponent(creds.pass)}@` : '';
  return `nats-route://${userinfo}${u.host}`;
}

export function renderConfig(o: {
  host: string; port: number; storeDir: string; credentials: NatsCredentials | null; jetstream: boolean;
  maxMemBytes: number; maxFileBytes: number; serverName: string; maxPayload?: number;
  tls?: NatsTlsFiles | null;
  cluster?: (NatsClusterOptions & { host: string }) | null;
}): string {
  const lines: string[] = [];
  lines.push(`# written by draftwire nats-launcher`);
  lines.push(`server_name: ${confString(o.serverName)}`);
  lines.push(`listen: ${confString(hostPort(o.host, o.port))}`);
  if (o.maxPayload) lines.push(`max_payload: ${Math.floor(o.maxPayload)}`);
  if (o.tls) lines.push(...tlsBlock('', o.tls));
  if (o.cluster) {
    const c = o.cluster;
    const rc = c.credentials ?? null;
    lines.push(`cluster {`);
    lines.push(`  name: ${confString(c.name)}`);
    lines.push(`  listen: ${confString(hostPort(c.host, c.port))}`);
    if (rc) lines.push(`  authorization { user: ${confString(rc.user)}, password: ${confString(rc.pass)}, timeout: 5 }`);
    const routes = (c.routes ?? []).map((r) => routeUrl(r, rc));
    if (routes.length) lines.push(`  routes: [ ${routes.map(confString).join(', ')} ]`);
    const rt = c.tls === undefined ? o.tls ?? null : c.tls;
    if (rt) lines.push(...tlsBlock('  ', rt));
    lines.push(`}`);
  }
  if (o.jetstream) {
    lines.push(`jetstream {`);
    lines.push(`  store_dir: ${confString(o.storeDir)}`);
    lines.push(`  max_mem: ${Math.floor(o.maxMemBytes)}`);
    lines.push(`  max_file: ${Math.floor(o.maxFileBytes)}`);
    lines.push(`}`);
  }
  if (o.credentials) {
    // The accounts form only (see the header comment): no authorization{}, no $SYS users.
    lines.push(`accounts {`);
    lines.push(`  APP {`);
    lines.push(`    users: [ { user: ${confString(o.credentials.user)}, password: ${confString(o.credentials.pass)} } ]`);
    if (o.jetstream) lines.push(`    jetstream: enabled`);
    lines.push(`  }`);
    lines.push(`}`);
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------

const LISTEN_RE = /Listening for client connections on (\S+):(\d+)/;
const ROUTE_LISTEN_RE = /Listening for route connections on (\S+):(\d+)/;
const READY_RE = /Server is ready/;
const TERMINATING = new Set<string>(['SIGTERM', 'SIGKILL', 'SIGINT', 'SIGQUIT', 'SIGABRT']);

function probe(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((res) => {
    const sock = net.connect({ host, port });
    let buf = '';
    const done = (ok: boolean) => { clearTimeout(t); sock.destroy(); res(ok); };
    const t = setTimeout(() => done(false), timeoutMs);
    sock.on('data', (d) => { buf += d.toString('latin1'); if (buf.includes('\n')) done(buf.startsWith('INFO ')); });
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
  });
}

function sleep(ms: number): Promise<void> { return new Promise((r) => setTimeout(r, ms)); }

function checkTls(what: string, t: NatsTlsFiles | null | undefined): NatsTlsFiles | null {
  if (!t) return null;
  const file = (name: string, f: string | null | undefined): string => {
    if (typeof f !== 'string' || f === '') throw new InvalidArgumentError(`${what}: the ${name} file is missing`);
    const abs = resolve(f);
    let ok = false;
    try { ok = statSync(abs).isFile(); } catch { /* below */ }
    if (!ok) throw new InvalidArgumentError(`${what}: the ${name} file ${abs} does not exist or is not a file`);
    return abs;
  };
  return { cert: file('certificate', t.cert), key: file('key', t.key), ca: t.ca ? file('CA', t.ca) : null };
}

class Server implements NatsServerHandle {
  host: string;
  port: number;
  clusterPort = 0;
  storeDir: string;
  configFile: string;
  private confDir: string;
  private ownsStore: boolean;
  private proc: ChildProcess | null = null;
  private watchdog: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private tail: string[] = [];
  private logStream: WriteStream | null = null;
  private stopped = false;
  private opts: Required<Pick<NatsServerOptions, 'readyTimeoutMs' | 'stopTimeoutMs' | 'binary' | 'trace'>>;

  constructor(o: NatsServerOptions) {
    const host = o.host ?? '127.0.0.1';
    const port = o.port ?? -1;
    if (!Number.isInteger(port) || port < -1 || port > 65535) throw new InvalidArgumentError(`nats port must be -1 or 0..65535, got ${port}`);
    const creds = o.credentials ?? null;
    if (creds) {
      if (typeof creds.user !== 'string' || !SAFE_CRED.test(creds.user)) throw new InvalidArgumentError('nats credentials: user must be 1..256 printable ASCII characters without spaces');
      if (typeof creds.pass !== 'string' || !SAFE_CRED.test(creds.pass)) throw new InvalidArgumentError('nats credentials: password must be 1..256 printable ASCII characters without spaces');
    }
    const tls = checkTls('nats TLS', o.tls);
    const cl = o.cluster ?? null;
    if (cl) {
      if (typeof cl.name !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(cl.name)) throw new InvalidArgumentError(`nats cluster name must be 1..128 characters of [A-Za-z0-9_-], got ${JSON.stringify(cl.name)}`);
      if (!Number.isInteger(cl.port) || cl.port < -1 || cl.port > 65535) throw new InvalidArgumentError(`nats cluster port must be -1 or 0..65535, got ${cl.port}`);
      const rc = cl.credentials ?? null;
      if (rc && (!SAFE_CRED.test(rc.user) || !SAFE_CRED.test(rc.pass))) throw new InvalidArgumentError('nats route credentials must be 1..256 printable ASCII characters without spaces');
      for (const r of cl.routes ?? []) routeUrl(r, rc); // throws on a malformed route
      this.clusterPort = cl.port === 0 ? -1 : cl.port;
    }
    const clusterTls = cl ? (cl.tls === undefined ? tls : checkTls('nats route TLS', cl.tls)) : null;
    this.autoRestart = o.autoRestart ?? false;
    this.host = host;
    this.port = port === 0 ? -1 : port;
    this.confDir = mkdtempSync(join(tmpdir(), 'draftwire-natsconf-'));
    this.ownsStore = !o.storeDir;
    this.storeDir = o.storeDir ? resolve(o.storeDir) : mkdtempSync(join(tmpdir(), 'draftwire-js-'));
    if (!existsSync(this.storeDir)) mkdirSync(this.storeDir, { recursive: true, mode: 0o700 });
    else if (!statSync(this.storeDir).isDirectory()) throw new InvalidArgumentError(`nats store dir ${this.storeDir} is not a directory`);
    this.configFile = join(this.confDir, 'nats.conf');
    this.opts = {
      readyTimeoutMs: o.readyTimeoutMs ?? 15_000,
      stopTimeoutMs: o.stopTimeoutMs ?? 5_000,
      binary: o.binary ?? process.env.DRAFTWIRE_NATS_SERVER ?? 'nats-server',
      trace: o.trace ?? false,
    };
    this.render = () => renderConfig({
      host, port: this.port, storeDir: this.storeDir, credentials: creds, jetstream: o.jetstream ?? true,
      maxMemBytes: o.maxMemBytes ?? 512 * 1024 * 1024, maxFileBytes: o.maxFileBytes ?? 8 * 1024 * 1024 * 1024,
      serverName: o.serverName ?? `draftwire-${process.pid}`, maxPayload: o.maxPayload,
      tls, cluster: cl ? { ...cl, host: cl.host ?? host, port: this.clusterPort, tls: clusterTls } : null,
    });
    if (o.logFile) this.logStream = createWriteStream(o.logFile, { flags: 'a' });
  }
  private render: () => string;
  private readonly autoRestart: boolean;
  private restartTimes: number[] = [];

  /** The client URL from this machine (an unspecified listen host, 0.0.0.0 or ::, becomes loopback). */
  get url(): string {
    const h = this.host === '0.0.0.0' ? '127.0.0.1' : this.host === '::' || this.host === '[::]' ? '::1' : this.host;
    return `nats://${hostPort(h, this.port)}`;
  }
  get pid(): number { return this.proc?.pid ?? -1; }
  get process(): ChildProcess {
    if (!this.proc) throw new UnavailableError('nats-server is not started');
    return this.proc;
  }
  get running(): boolean { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }
  logTail(): string { return this.tail.join('\n'); }

  private pushLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 200) this.tail.shift();
    this.logStream?.write(line + '\n');
    // A client that closes before its TLS handshake (our own readiness probe, a port check) is not news.
    if ((line.includes('[ERR]') || line.includes('[FTL]')) && !/TLS handshake error: EOF$/.test(line)) log.warn('nats-server', { line });
    else if (log.enabled('debug')) log.debug('nats-server', { line });
  }

  async start(): Promise<void> {
    if (this.stopped) throw new InvalidArgumentError('this nats-server handle was stopped; start a new one');
    writeFileSync(this.configFile, this.render(), { mode: 0o600 });
    const args = ['-c', this.configFile];
    if (this.opts.trace) args.push('-DV');
    const proc = spawn(this.opts.binary, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.proc = proc;
    installHooks();

    let listenHost = '', listenPort = 0, routePort = 0, ready = false;
    let onProgress: () => void = () => {};
    let partial = '';
    const onData = (d: Buffer) => {
      partial += d.toString('utf8');
      let i: number;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        this.pushLine(line);
        const m = LISTEN_RE.exec(line);
        if (m) { listenHost = m[1]; listenPort = Number(m[2]); onProgress(); }
        const rm = ROUTE_LISTEN_RE.exec(line);
        if (rm) routePort = Number(rm[2]);
        if (READY_RE.test(line)) { ready = true; onProgress(); }
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);

    let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    let spawnError: Error | null = null;
    this.exited = new Promise<void>((res) => {
      proc.once('error', (e) => { spawnError = e; exitInfo = { code: null, signal: null }; onProgress(); res(); });
      proc.once('exit', (code, signal) => {
        exitInfo = { code, signal };
        if (proc.pid) live.delete(proc.pid);
        const wd = this.proc === proc ? this.watchdog : null;
        try { wd?.kill('SIGKILL'); } catch { /* gone */ }
        if (!this.stopping) log.info('nats-server exited', { pid: proc.pid, code, signal });
        onProgress();
        res();
        if (!this.stopping && !this.stopped && this.autoRestart && this.proc === proc && this.startedOnce) this.scheduleRestart();
      });
    });

    if (proc.pid) {
      const tempDirs = this.ownsStore ? [this.confDir, this.storeDir] : [this.confDir];
      this.watchdog = this.spawnWatchdog(proc.pid, tempDirs);
      live.set(proc.pid, { proc, watchdog: this.watchdog, tempDirs });
    }

    const deadline = Date.now() + this.opts.readyTimeoutMs;
    const fail = async (why: string): Promise<never> => {
      this.stopping = true;
      try { await this.killProc('SIGKILL'); } finally { this.stopping = false; }
      throw new UnavailableError(`nats-server did not start: ${why}\n${this.tail.slice(-15).join('\n')}`,
        { detail: { binary: this.opts.binary, config: this.configFile } });
    };
    // Wait for "Listening ..." and "Server is ready" (or an exit, or the deadline).
    while (!(ready && listenPort) && !exitInfo) {
      const left = deadline - Date.now();
      if (left <= 0) return fail(`no ready line within ${this.opts.readyTimeoutMs} ms`);
      await new Promise<void>((r) => { onProgress = r; setTimeout(r, Math.min(left, 200)); });
    }
    if (spawnError) return fail(`could not spawn ${this.opts.binary}: ${(spawnError as Error).message}`);
    if (exitInfo) return fail(`exited with ${JSON.stringify(exitInfo)}`);
    if (this.port === -1) this.port = listenPort;
    else if (listenPort !== this.port) return fail(`listening on ${listenPort}, expected ${this.port}`);
    if (this.clusterPort === -1) {
      if (!routePort) return fail('no "Listening for route connections" line');
      this.clusterPort = routePort;
    }
    void listenHost;
    // Connect probe: the server answers a TCP client with INFO.
    while (!(await probe(this.host, this.port, 1000))) {
      if (exitInfo) return fail(`exited with ${JSON.stringify(exitInfo)}`);
      if (Date.now() > deadline) return fail('no INFO from the client port');
      await sleep(20);
    }
    // Pin the ports for restarts.
    writeFileSync(this.configFile, this.render(), { mode: 0o600 });
    this.startedOnce = true;
    log.debug('nats-server ready', { pid: proc.pid, url: this.url, storeDir: this.storeDir });
  }

  private stopping = false;
  private startedOnce = false;
  private restartTimer: NodeJS.Timeout | null = null;

  /** autoRestart: the server died on its own; start it again (same port, store), a few times a minute at most. */
  private scheduleRestart(): void {
    const now = Date.now();
    this.restartTimes = this.restartTimes.filter((t) => now - t < 60_000);
    if (this.restartTimes.length >= 5) { log.error('nats-server keeps dying; not restarting it again', { restarts: this.restartTimes.length, log: this.tail.slice(-5).join(' | ') }); return; }
    this.restartTimes.push(now);
    const wait = 250 * 2 ** (this.restartTimes.length - 1);
    log.warn('nats-server died; restarting it on the same port and store', { in_ms: wait });
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.stopped || this.running) return;
      this.restart().catch((e: unknown) => { log.error('restarting nats-server failed', { error: e as Error }); if (!this.stopped) this.scheduleRestart(); });
    }, wait);
    this.restartTimer.unref();
  }

  private spawnWatchdog(pid: number, tempDirs: string[]): ChildProcess | null {
    // EOF on stdin = our process is gone (however it died): TERM the server, KILL after 5 s,
    // then remove the temp dirs we made (paths from mkdtemp: no quote characters).
    const rm = tempDirs.filter((d) => !d.includes("'")).map((d) => `'${d}'`).join(' ');
    const script = `trap '' INT TERM HUP; read _ ; if kill -0 ${pid} 2>/dev/null; then kill -TERM ${pid}; ` +
      `i=0; while [ $i -lt 50 ] && kill -0 ${pid} 2>/dev/null; do sleep 0.1; i=$((i+1)); done; kill -KILL ${pid} 2>/dev/null; fi; ` +
      (rm ? `sleep 0.1; rm -rf ${rm}` : 'true');
    try {
      const wd = spawn('/bin/sh', ['-c', script], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
      wd.on('error', (e) => log.warn('watchdog for nats-server could not start', { error: e }));
      wd.unref();
      (wd.stdin as unknown as { unref?: () => void } | null)?.unref?.();
      wd.stdin?.on('error', () => { /* EPIPE when it is gone */ });
      return wd;
    } catch (e) {
      log.warn('watchdog for nats-server could not start', { error: e as Error });
      return null;
    }
  }

  private async killProc(signal: NodeJS.Signals): Promise<void> {
    const proc = this.proc;
    if (!proc || !this.running) { await this.exited; return; }
    try { proc.kill(signal); } catch { /* gone */ }
    await this.exited;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    if (!TERMINATING.has(signal)) { this.proc!.kill(signal); return; }
    this.stopping = true;
    try { await this.killProc(signal); } finally { this.stopping = false; }
  }

  private async stopProc(): Promise<void> {
    if (!this.running) { await this.exited; return; }
    this.stopping = true;
    try {
      const proc = this.proc!;
      proc.kill('SIGTERM');
      const t = setTimeout(() => { log.warn('nats-server ignored SIGTERM; killing', { pid: proc.pid }); try { proc.kill('SIGKILL'); } catch { /* gone */ } }, this.opts.stopTimeoutMs);
      await this.exited;
      clearTimeout(t);
    } finally { this.stopping = false; }
  }

  async restart(): Promise<void> {
    if (this.stopped) throw new InvalidArgumentError('this nats-server handle was stopped; start a new one');
    await this.stopProc();
    // The port was just released; a few tries cover a slow release.
    for (let attempt = 0; ; attempt++) {
      try { await this.start(); return; } catch (e) {
        if (attempt >= 4 || !/address already in use/i.test(String((e as Error).message))) throw e;
        await sleep(100 * (attempt + 1));
      }
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    await this.stopProc();
    await new Promise<void>((r) => (this.logStream ? this.logStream.end(r) : r()));
    this.logStream = null;
    rmSync(this.confDir, { recursive: true, force: true });
    if (this.ownsStore) rmSync(this.storeDir, { recursive: true, force: true });
  }
}

/** Start a nats-server child and wait until it accepts clients. */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const s = new Server(opts);
  try {
    await s.start();
  } catch (e) {
    await s.stop().catch(() => {});
    throw e;
  }
  return s;
}

/**
 * How many servers a member's routes name, itself counted once: the distinct route
 * host:port pairs, less those that are this member (its route port, on a loopback address,
 * on one of `localNames` (this machine's addresses and host name), or on its listen host),
 * plus one.
 */
export function clusterSizeFromRoutes(routes: string[], self: { host: string; port: number }, localNames: string[] = localAddresses()): number {
  const mine = new Set([...localNames, self.host].map((h) => h.toLowerCase()));
  const peers = new Set<string>();
  for (const r of routes) {
    const u = new URL(routeUrl(r, null).replace(ROUTE_RE, 'http://'));
    const host = u.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
    const port = Number(u.port);
    const isSelf = port === self.port && (mine.has(host) || host === 'localhost' || /^127\./.test(host) || host === '::1');
    if (!isSelf) peers.add(`${host}:${port}`);
  }
  return peers.size + 1;
}

/** This machine's interface addresses and host name. */
export function localAddresses(): string[] {
  const out = [hostname()];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.push(a.address);
  return out;
}
