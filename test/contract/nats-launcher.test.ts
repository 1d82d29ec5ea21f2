import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { startNatsServer, isProcessAlive, renderConfig, type NatsServerHandle } from '../../cluster/nats-launcher.ts';
import { withNats, startNats } from '../support/nats-server.ts';
import { Bus } from '../../src/bus/bus.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { AuthError, UnavailableError, InvalidArgumentError } from '../../src/errors.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitDead(pid: number, ms = 8000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (!isProcessAlive(pid)) return true; await sleep(25); }
  return !isProcessAlive(pid);
}
const CHILD = fileURLToPath(new URL('../support/nats-launcher-child.ts', import.meta.url));

/** Start the child script; resolve with the server it started. */
function startChild(mode: string): Promise<{ child: ReturnType<typeof spawn>; pid: number; url: string; storeDir: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, mode], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, DRAFTWIRE_LOG_LEVEL: 'silent' } });
  let err = '';
  child.stderr!.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`child did not report a server: ${err}`)); }, 20_000);
    createInterface({ input: child.stdout! }).once('line', (line) => { clearTimeout(t); resolve({ child, ...JSON.parse(line) }); });
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`child exited (${code}) before reporting: ${err}`)); });
  });
}

describe('nats-launcher (real nats-server 2.9.10)', function () {
  this.timeout(60_000);

  it('starts on a random port, accepts clients, and stop() leaves no process and no temp dir', async () => {
    const h = await startNatsServer({ port: -1 });
    try {
      assert.ok(h.port > 0 && h.port < 65536);
      assert.equal(h.url, `nats://127.0.0.1:${h.port}`);
      assert.ok(isProcessAlive(h.pid));
      const nc = await connect({ servers: h.url });
      assert.equal(nc.info?.jetstream, true);
      await nc.close();
    } finally {
      const pid = h.pid;
      await h.stop();
      assert.equal(isProcessAlive(pid), false);
    }
    assert.equal(existsSync(h.storeDir), false, 'temp store dir removed');
    assert.equal(existsSync(h.configFile), false, 'config removed');
  });

  it('two servers on port -1 get different ports; a taken port fails with UnavailableError', async () => {
    const a = await startNatsServer({ port: -1 });
    try {
      const b = await startNatsServer({ port: -1 });
      assert.notEqual(a.port, b.port);
      await b.stop();
      await assert.rejects(startNatsServer({ port: a.port, readyTimeoutMs: 5000 }), (e: unknown) => e instanceof UnavailableError && /address already in use/i.test((e as Error).message));
    } finally { await a.stop(); }
  });

  it('writes only the accounts{APP} form with credentials (never authorization{} or $SYS), escaping the password', () => {
    const conf = renderConfig({ host: '127.0.0.1', port: -1, storeDir: '/s', credentials: { user: 'u', pass: 'a"b\\c$d' }, jetstream: true, maxMemBytes: 1, maxFileBytes: 2, serverName: 'x' });
    assert.match(conf, /accounts \{\n {2}APP \{\n {4}users: \[ \{ user: "u", password: "a\\"b\\\\c\$d" \} \]\n {4}jetstream: enabled/);
    assert.doesNotMatch(conf, /authorization|\$SYS|no_auth_user/);
  });

  it('rejects a password with a space or control character', async () => {
    await assert.rejects(startNatsServer({ credentials: { user: 'u', pass: 'a b' } }), InvalidArgumentError);
    await assert.rejects(startNatsServer({ credentials: { user: 'u\n', pass: 'ab' } }), InvalidArgumentError);
  });

  describe('with credentials', () => {
    const creds = { user: 'dw-user', pass: 'p"a$s#w\\rd' };
    const nats = withNats({ auth: creds });

    it('right credentials connect (and get JetStream); wrong and anonymous are refused with AuthError', async () => {
      const ok = await Bus.connect({ servers: nats.url, job: 'j', credentials: creds });
      await ok.ensureStream('s1', ['s1.x']);
      assert.equal(await ok.append('s1.x', { a: 1 }), 1);
      await ok.close();
      await assert.rejects(Bus.connect({ servers: nats.url, job: 'j', credentials: { user: 'dw-user', pass: 'wrong' } }), AuthError);
      await assert.rejects(Bus.connect({ servers: nats.url, job: 'j', credentials: null }), AuthError);
      await assert.rejects(Bus.connect({ servers: nats.url, job: 'j', credentials: { user: 'nobody', pass: 'x' } }), AuthError);
      // Raw client without credentials: refused too (CVE-2023-47090 shape would admit it).
      await assert.rejects(connect({ servers: nats.url, reconnect: false }), /Authorization Violation/);
    });

    it('AuthPolicy-derived credentials work end to end', async () => {
      const auth = AuthPolicy.fromSecret('launcher-test-secret-0123456789');
      const h = await startNatsServer({ credentials: auth.natsCredentials() });
      try {
        const bus = await Bus.connect({ servers: h.url, job: 'j', auth });
        assert.ok(bus.server.includes(String(h.port)));
        await bus.close();
        await assert.rejects(Bus.connect({ servers: h.url, job: 'j', auth: AuthPolicy.fromSecret('another-secret-0123456789') }), AuthError);
      } finally { await h.stop(); }
    });
  });

  it('restart() keeps port and store dir: JetStream data survives', async () => {
    const nats = await startNats();
    try {
      const port = nats.port, store = nats.storeDir, pid1 = nats.pid;
      let bus = await Bus.connect({ servers: nats.url, job: 'j', reconnect: false });
      await bus.ensureStream('keep', ['keep.x']);
      for (let i = 0; i < 3; i++) await bus.append('keep.x', { i });
      await bus.close();
      await nats.restart();
      assert.equal(nats.port, port);
      assert.equal(nats.storeDir, store);
      assert.notEqual(nats.pid, pid1);
      assert.equal(isProcessAlive(pid1), false);
      bus = await Bus.connect({ servers: nats.url, job: 'j', reconnect: false });
      const got: unknown[] = [];
      for await (const r of bus.readAll('keep', 1)) got.push(r.obj);
      assert.deepEqual(got, [{ i: 0 }, { i: 1 }, { i: 2 }]);
      await bus.close();
      // kill -9, then restart: still there.
      await nats.kill('SIGKILL');
      await nats.restart();
      bus = await Bus.connect({ servers: nats.url, job: 'j', reconnect: false });
      assert.equal((await bus.streamInfo('keep')).messages, 3);
      await bus.close();
    } finally { await nats.stop(); }
  });

  it('kill(SIGSTOP)/kill(SIGCONT) return at once and the server keeps running; logFile gets the server log', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dw-launcher-log-'));
    const logFile = join(dir, 'nats.log');
    const h: NatsServerHandle = await startNatsServer({ logFile });
    try {
      await h.kill('SIGSTOP');
      assert.equal(h.running, true);
      await h.kill('SIGCONT');
      const nc = await connect({ servers: h.url });
      await nc.close();
      assert.match(h.logTail(), /Server is ready/);
    } finally { await h.stop(); }
    try {
      assert.match(readFileSync(logFile, 'utf8'), /Listening for client connections on 127\.0\.0\.1:\d+[\s\S]*Server is ready/);
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  describe('the server never outlives its parent', () => {
    for (const [mode, how] of [['hang', 'SIGKILL'], ['hang', 'SIGTERM'], ['hang', 'SIGINT'], ['exit', ''], ['throw', '']] as const) {
      it(`parent ${how ? `killed by ${how}` : `does ${mode}`}: server gone, temp store removed`, async () => {
        const c = await startChild(mode);
        assert.ok(isProcessAlive(c.pid), 'server is up');
        const nc = await connect({ servers: c.url });
        await nc.close();
        c.child.stdin!.end('go\n'); // 'exit' and 'throw' children die once told to
        if (how) c.child.kill(how);
        await new Promise((r) => (c.child.exitCode !== null || c.child.signalCode !== null ? r(null) : c.child.once('exit', r)));
        assert.equal(await waitDead(c.pid), true, `nats-server ${c.pid} outlived its parent (${mode} ${how})`);
        const end = Date.now() + 3000;
        while (existsSync(c.storeDir) && Date.now() < end) await sleep(25);
        assert.equal(existsSync(c.storeDir), false, `temp store ${c.storeDir} left behind`);
      });
    }
  });

  it('the fixture removes its temp dir and checks for orphans', async () => {
    const f = await startNats({ auth: true });
    const dir = f.tmpDir, pid = f.pid;
    assert.ok(f.credentials && f.connectOptions.user === f.credentials.user);
    assert.ok(readFileSync(f.handle.configFile, 'utf8').includes('accounts'));
    await f.stop();
    assert.equal(existsSync(dir), false);
    assert.equal(isProcessAlive(pid), false);
  });
});
