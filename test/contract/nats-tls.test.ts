// TLS across machines (issue 13, item 5): certificates made by `draftwire certs` (the
// system's openssl), a nats-server with TLS for clients (client certificates verified
// against the job's CA) and for routes, and the Bus connecting with TLS. A client without the
// CA, or without a certificate, fails with an error that says what to give; a secret with a
// plain URL off loopback is refused before anything connects.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { isProcessAlive, renderConfig, startNatsServer, type NatsServerHandle } from '../../cluster/nats-launcher.ts';
import { Bus } from '../../src/bus/bus.ts';
import { isLoopbackHost } from '../../src/bus/transport.ts';
import { InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { jobFile, saveJobSpec } from '../../src/job/spec.ts';
import { testSpec } from '../support/jobs.ts';
import { runCli } from '../support/procs.ts';

const SECRET = 'nats-tls-test-secret-0123456789abcdef';

async function freePort(): Promise<number> {
  return new Promise<number>((res) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => res(p)); }); });
}

/** A non-loopback IPv4 address of this machine, if it has one. */
function machineIp(): string | null {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  return null;
}

describe('NATS with TLS (draftwire certs, real nats-servers)', function () {
  this.timeout(90_000);
  const auth = AuthPolicy.fromSecret(SECRET);
  let dir = '';
  let certs = '';
  const f = (name: string) => join(certs, name);
  const tlsFor = (host: string) => ({ cert: f(`${host}.pem`), key: f(`${host}.key`), ca: f('ca.pem') });

  before(async function () {
    this.timeout(60_000);
    dir = mkdtempSync(join(tmpdir(), 'dw-nats-tls-'));
    certs = join(dir, 'certs');
    const r = await runCli(['certs', '--out', certs, '--hosts', '127.0.0.1,node-b,fd00::7', '--days', '30', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { ca: { cert: string; reused: boolean }; nodes: Array<{ host: string; cert: string; key: string }> };
    assert.equal(out.ca.reused, false);
    assert.deepEqual(out.nodes.map((n) => n.host), ['127.0.0.1', 'node-b', 'fd00::7']);
  });
  after(() => { rmSync(dir, { recursive: true, force: true }); });

  it('draftwire certs: a CA and one certificate per host (serverAuth + clientAuth, the host and loopback as SANs), keys 0600; a rerun reuses the CA', async () => {
    const ca = new X509Certificate(readFileSync(f('ca.pem')));
    assert.equal(ca.ca, true);
    for (const [host, stem, san] of [['127.0.0.1', '127.0.0.1', 'IP Address:127.0.0.1'], ['node-b', 'node-b', 'DNS:node-b'], ['fd00::7', 'fd00__7', 'IP Address:FD00:0:0:0:0:0:0:7']] as const) {
      const c = new X509Certificate(readFileSync(f(`${stem}.pem`)));
      assert.equal(c.ca, false);
      assert.ok(c.checkIssued(ca) && c.verify(ca.publicKey), `${host}: signed by the job CA`);
      assert.match(c.subject, new RegExp(`CN=${host.replace(/[.:]/g, '\\$&')}`));
      assert.ok(c.subjectAltName?.toUpperCase().includes(san.toUpperCase()), `${host}: SAN ${c.subjectAltName}`);
      assert.ok(c.subjectAltName?.includes('DNS:localhost') && c.subjectAltName.includes('IP Address:127.0.0.1'), 'loopback SANs');
      assert.deepEqual([...(c.keyUsage ?? [])].sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'serverAuth and clientAuth');
      assert.ok(Date.parse(c.validTo) - Date.now() < 31 * 86400_000, '--days 30');
      assert.equal(statSync(f(`${stem}.key`)).mode & 0o777, 0o600);
      assert.match(execFileSync('openssl', ['verify', '-CAfile', f('ca.pem'), f(`${stem}.pem`)], { encoding: 'utf8' }), /: OK/);
    }
    assert.equal(statSync(f('ca.key')).mode & 0o777, 0o600);
    const caBefore = readFileSync(f('ca.pem'), 'utf8');
    const again = await runCli(['certs', '--out', certs, '--hosts', 'node-c', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).ca.reused, true);
    assert.equal(readFileSync(f('ca.pem'), 'utf8'), caBefore, 'the CA is kept');
    assert.ok(new X509Certificate(readFileSync(f('node-c.pem'))).checkIssued(ca));
    const bad = await runCli(['certs', '--out', certs, '--hosts', 'a b,/CN=x']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /INVALID_ARGUMENT: .*--hosts: "a b" is neither a host name nor an IP address/);
  });

  it('renders client and route TLS blocks (verify with a CA)', () => {
    const t = tlsFor('127.0.0.1');
    const conf = renderConfig({ host: '127.0.0.1', port: 1, storeDir: '/s', credentials: null, jetstream: false, maxMemBytes: 1, maxFileBytes: 1, serverName: 's', tls: t, cluster: { name: 'c', host: '127.0.0.1', port: 2, routes: [] } });
    assert.equal(conf.match(/tls \{/g)?.length, 2, 'client and route TLS');
    assert.equal(conf.match(/verify: true/g)?.length, 2);
    assert.ok(conf.includes(`ca_file: "${t.ca}"`));
  });

  describe('a TLS nats-server with the job CA', () => {
    let h: NatsServerHandle;
    before(async () => {
      h = await startNatsServer({ credentials: auth.natsCredentials(), tls: tlsFor('127.0.0.1'), storeDir: join(dir, 'js-one'), maxMemBytes: 64 << 20, maxFileBytes: 1 << 30 });
    });
    after(async () => { const pid = h.pid; await h.stop(); assert.equal(isProcessAlive(pid), false); });

    it('a client with the CA and its certificate connects and round-trips a request, and JetStream works', async () => {
      const tls = { ca: f('ca.pem'), cert: f('node-b.pem'), key: f('node-b.key') };
      const a = await Bus.connect({ servers: h.url, job: 'tlsj', auth, tls, name: 'a' });
      const b = await Bus.connect({ servers: h.url, job: 'tlsj', auth, tls, name: 'b' });
      try {
        assert.equal(a.tls, true);
        b.subscribe('dw.tlsj.echo', (m: { x: number }) => ({ y: m.x * 2 }));
        await b.flush();
        assert.deepEqual(await a.request('dw.tlsj.echo', { x: 21 }), { y: 42 });
        await a.ensureStream('tls_s', ['dw.tlsj.s']);
        assert.equal(await a.append('dw.tlsj.s', { ok: true }), 1);
      } finally { await a.close(); await b.close(); }
    });

    it('the TLS files can come from DRAFTWIRE_TLS_CA/CERT/KEY (what a node hands its ranks)', async () => {
      const saved = { ...process.env };
      Object.assign(process.env, { DRAFTWIRE_TLS_CA: f('ca.pem'), DRAFTWIRE_TLS_CERT: f('127.0.0.1.pem'), DRAFTWIRE_TLS_KEY: f('127.0.0.1.key') });
      try {
        const a = await Bus.connect({ servers: h.url, job: 'tlsj', auth });
        assert.equal(a.tls, true);
        await a.close();
      } finally {
        for (const k of ['DRAFTWIRE_TLS_CA', 'DRAFTWIRE_TLS_CERT', 'DRAFTWIRE_TLS_KEY']) { if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k]; }
      }
    });

    it('a client without the CA fails, saying to give the job CA; one without a certificate, saying to give --tls-cert/--tls-key', async () => {
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: null, reconnect: false }),
        (e: unknown) => e instanceof UnavailableError && /TLS failed/.test(e.message) && /not signed by a CA this client trusts: give the job's CA \(--tls-ca/.test(e.message));
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: { cert: f('node-b.pem'), key: f('node-b.key') }, reconnect: false }),
        (e: unknown) => e instanceof UnavailableError && /give the job's CA/.test(e.message));
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: { ca: f('ca.pem') }, reconnect: false }),
        // The server answers with an alert (bad certificate) or, as often, just closes the connection.
        (e: unknown) => e instanceof UnavailableError && /refused this client's certificate/.test(e.message) && /--tls-cert/.test(e.message));
      // A certificate from another CA is refused by the server.
      const other = join(dir, 'other');
      assert.equal((await runCli(['certs', '--out', other, '--hosts', '127.0.0.1'])).code, 0);
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: { ca: f('ca.pem'), cert: join(other, '127.0.0.1.pem'), key: join(other, '127.0.0.1.key') }, reconnect: false }),
        (e: unknown) => e instanceof UnavailableError && /TLS failed/.test(e.message));
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: { ca: f('ca.pem'), cert: f('node-b.pem') } }),
        (e: unknown) => e instanceof InvalidArgumentError && /both a certificate and its key/.test(e.message));
      await assert.rejects(Bus.connect({ servers: h.url, job: 'tlsj', auth, tls: { ca: join(dir, 'missing.pem') } }),
        (e: unknown) => e instanceof InvalidArgumentError && /cannot read the CA file/.test(e.message));
    });

    it('a TLS client is refused by a server without TLS before it sends CONNECT', async () => {
      const plain = await startNatsServer({ credentials: auth.natsCredentials(), jetstream: false });
      try {
        await assert.rejects(Bus.connect({ servers: plain.url, job: 'tlsj', auth, tls: tlsFor('127.0.0.1'), reconnect: false }),
          (e: unknown) => e instanceof UnavailableError && /does not offer TLS/.test(e.message));
      } finally { await plain.stop(); }
    });
  });

  it('with a secret, a plain NATS URL off loopback is refused before anything connects; loopback and TLS are not', async () => {
    const ip = machineIp();
    let connections = 0;
    const trap = ip ? net.createServer((s) => { connections++; s.destroy(); }) : null;
    const port = ip ? await new Promise<number>((res) => trap!.listen(0, ip, () => res((trap!.address() as net.AddressInfo).port))) : 4222;
    try {
      for (const url of [...(ip ? [`nats://${ip}:${port}`] : []), 'nats://10.213.7.9:4222', 'nats-node.example:4222', `nats://127.0.0.1:1,nats://10.213.7.9:4222`]) {
        const t0 = Date.now();
        await assert.rejects(Bus.connect({ servers: url, job: 'tlsj', auth }), (e: unknown) =>
          e instanceof InvalidArgumentError && /without TLS/.test(e.message) && /password would travel in clear in the CONNECT line/.test(e.message) &&
          /--tls-ca/.test(e.message) && /run NATS on loopback/.test(e.message));
        assert.ok(Date.now() - t0 < 1000, 'refused at once');
      }
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(connections, 0, 'nothing connected to the non-loopback address');
    } finally { trap?.close(); }
    assert.deepEqual(['127.0.0.1', '127.9.9.9', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1'].map(isLoopbackHost), [true, true, true, true, true, true, true]);
    assert.deepEqual(['10.0.0.1', '128.0.0.1', '::', '::2', 'example.com', '::ffff:10.0.0.1', 'localhost.example'].map(isLoopbackHost), [false, false, false, false, false, false, false]);
    // Not refused with TLS asked for (it fails to connect instead: nothing listens there).
    const p = await freePort();
    await assert.rejects(Bus.connect({ servers: `tls://10.213.7.9:${p}`, job: 'tlsj', auth, reconnect: false, connectTimeoutMs: 300 }), (e: unknown) => !(e instanceof InvalidArgumentError));
    // Without a secret there is no password to protect.
    await assert.rejects(Bus.connect({ servers: `nats://127.0.0.1:${p}`, job: 'tlsj', reconnect: false }), UnavailableError);
  });

  it('draftwire node refuses it too, with exit 2 and the reason, before it connects or starts a server', async () => {
    const spec = testSpec('tlsnode');
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    const env = { DRAFTWIRE_SECRET: SECRET };
    const r1 = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats', 'nats://10.213.7.9:4222'], { env });
    assert.equal(r1.code, 2, r1.stderr);
    assert.match(r1.stderr, /INVALID_ARGUMENT: refusing to connect to NATS at nats:\/\/10\.213\.7\.9:4222 without TLS/);
    const r2 = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats-cluster', '--nats-listen', '0.0.0.0:14222', '--routes', 'nats-route://10.213.7.9:6222'], { env });
    assert.equal(r2.code, 2, r2.stderr);
    assert.match(r2.stderr, /INVALID_ARGUMENT: --nats-cluster without TLS on 0\.0\.0\.0.*--tls-cert, --tls-key and --tls-ca/);
    const r3 = await runCli(['node', '--job-file', jobFile(spec.runDir)], { env });
    assert.equal(r3.code, 2);
    assert.match(r3.stderr, /give --nats URL.*or --nats-cluster/);
    const r4 = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats', 'nats://127.0.0.1:4222', '--routes', 'nats-route://h:6222']);
    assert.equal(r4.code, 2);
    assert.match(r4.stderr, /--routes need --nats-cluster/);
    const r5 = await runCli(['node', '--job-file', jobFile(spec.runDir), '--nats-cluster', '--routes', 'nats://h:6222']);
    assert.equal(r5.code, 2);
    assert.match(r5.stderr, /--routes: "nats:\/\/h:6222" is not a route URL/);
    rmSync(join(spec.runDir, '..'), { recursive: true, force: true });
  });

  it('route TLS between two cluster members: a request crosses the route; a member without the CA\'s certificate is not admitted', async () => {
    const [p0, p1, p2] = [await freePort(), await freePort(), await freePort()];
    const routes = [`nats-route://127.0.0.1:${p0}`, `nats-route://127.0.0.1:${p1}`];
    const member = (i: number, port: number, tls: ReturnType<typeof tlsFor>) => startNatsServer({
      serverName: `t${i}`, credentials: auth.natsCredentials(), tls, jetstream: false,
      cluster: { name: 'dw-tls', port, routes, credentials: auth.natsRouteCredentials() },
    });
    const [m0, m1] = await Promise.all([member(0, p0, tlsFor('127.0.0.1')), member(1, p1, tlsFor('127.0.0.1'))]);
    const other = join(dir, 'rogue-ca');
    assert.equal((await runCli(['certs', '--out', other, '--hosts', '127.0.0.1'])).code, 0);
    const rogue = await member(2, p2, { cert: join(other, '127.0.0.1.pem'), key: join(other, '127.0.0.1.key'), ca: join(other, 'ca.pem') });
    const tls = tlsFor('127.0.0.1');
    const a = await Bus.connect({ servers: m0.url, job: 'rt', auth, tls, name: 'a' });
    const b = await Bus.connect({ servers: m1.url, job: 'rt', auth, tls, name: 'b' });
    try {
      b.subscribe('dw.rt.echo', (m: { x: number }) => ({ from: 'b', x: m.x }));
      await b.flush();
      // Interest propagates over the route once it is up.
      assert.deepEqual(await a.request('dw.rt.echo', { x: 1 }, { timeoutMs: 1000, retries: 20 }), { from: 'b', x: 1 });
      assert.match(m0.logTail() + m1.logTail(), /Route connection created/);
      const tail = rogue.logTail() + m0.logTail() + m1.logTail();
      assert.match(tail, /TLS route handshake error|tls: (?:bad certificate|unknown certificate authority)|certificate signed by unknown authority/i);
      // The rogue's client address is not gossiped: the cluster is the two members.
      const fresh = await Bus.connect({ servers: m0.url, job: 'rt', auth, tls, name: 'fresh', reconnect: false });
      assert.equal(fresh.clusterSize(), 2);
      await fresh.close();
    } finally {
      await a.close(); await b.close();
      await rogue.stop(); await m0.stop(); await m1.stop();
    }
  });
});
