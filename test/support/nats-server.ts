// A real nats-server per suite (random port, temp store dir), built on cluster/nats-launcher.
//
//   describe('x', () => {
//     const nats = withNats({ auth: true });           // registers before/after hooks
//     it('...', async () => { const bus = await Bus.connect({ servers: nats.url, ... }); });
//   });
//
// Or without mocha hooks: `const nats = await startNats(opts); ...; await nats.stop();`
// stop() leaves no process and no temp dir behind (it asserts the pid is gone).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startNatsServer, isProcessAlive, type NatsServerHandle, type NatsCredentials } from '../../cluster/nats-launcher.ts';

export interface NatsFixtureOptions {
  /** true: random credentials; an object: these; false/absent: open server. */
  auth?: boolean | NatsCredentials;
  jetstream?: boolean;
  /** Keep the server log in this file as well. */
  logFile?: string;
  maxPayload?: number;
}

export class NatsFixture {
  private h: NatsServerHandle | null = null;
  private root: string | null = null;
  readonly credentials: NatsCredentials | null;
  private readonly opts: NatsFixtureOptions;
  private readonly pids: number[] = [];

  constructor(opts: NatsFixtureOptions = {}) {
    this.opts = opts;
    this.credentials = opts.auth === true
      ? { user: `dw-${randomBytes(4).toString('hex')}`, pass: randomBytes(18).toString('base64url') }
      : opts.auth ? opts.auth : null;
  }

  get handle(): NatsServerHandle {
    if (!this.h) throw new Error('nats fixture is not started (use withNats() inside describe, or await start())');
    return this.h;
  }
  get url(): string { return this.handle.url; }
  get port(): number { return this.handle.port; }
  get pid(): number { return this.handle.pid; }
  get storeDir(): string { return this.handle.storeDir; }
  /** A scratch dir removed with the fixture. */
  get tmpDir(): string {
    if (!this.root) throw new Error('nats fixture is not started');
    return this.root;
  }
  /** Connection options for a raw nats.js client (user/pass when auth is on). */
  get connectOptions(): { servers: string; user?: string; pass?: string } {
    return this.credentials ? { servers: this.url, user: this.credentials.user, pass: this.credentials.pass } : { servers: this.url };
  }

  async start(): Promise<this> {
    if (this.h) return this;
    this.root = mkdtempSync(join(tmpdir(), 'draftwire-test-nats-'));
    this.h = await startNatsServer({
      storeDir: join(this.root, 'js'),
      port: -1,
      credentials: this.credentials,
      jetstream: this.opts.jetstream ?? true,
      logFile: this.opts.logFile,
      maxPayload: this.opts.maxPayload,
      maxMemBytes: 64 * 1024 * 1024,
      maxFileBytes: 1024 * 1024 * 1024,
    });
    this.pids.push(this.h.pid);
    return this;
  }

  /** Restart on the same port and store dir (JetStream data survives). */
  async restart(): Promise<void> {
    await this.handle.restart();
    this.pids.push(this.handle.pid);
  }

  /** Kill the server with a real signal (default SIGKILL); restart() brings it back. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.handle.kill(signal);
  }

  /** Stop the server, remove the temp dirs, and check that no server process is left. */
  async stop(): Promise<void> {
    const h = this.h;
    this.h = null;
    try {
      if (h) await h.stop();
    } finally {
      if (this.root) rmSync(this.root, { recursive: true, force: true });
      this.root = null;
    }
    const orphans = this.pids.filter(isProcessAlive);
    if (orphans.length) throw new Error(`nats-server processes left running after stop: ${orphans.join(', ')}`);
  }
}

/** Start a fixture without mocha hooks. */
export async function startNats(opts: NatsFixtureOptions = {}): Promise<NatsFixture> {
  return new NatsFixture(opts).start();
}

/** One server per suite: registers mocha before/after hooks on the enclosing describe. */
export function withNats(opts: NatsFixtureOptions = {}): NatsFixture {
  const f = new NatsFixture(opts);
  before(async function () { this.timeout(30_000); await f.start(); });
  after(async function () { this.timeout(30_000); await f.stop(); });
  return f;
}
