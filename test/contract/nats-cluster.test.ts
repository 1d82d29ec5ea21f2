// A NATS cluster as the control plane (issue 13, item 1): three real nats-servers on loopback,
// started by cluster/nats-launcher.ts as cluster members (JetStream on, route credentials
// derived from the secret), and a Bus given all three URLs. The job's WAL stream and KV
// bucket get 3 replicas; SIGKILL of the server the client is on: it fails over, and request,
// stream append and KV write still succeed; the server restarts on its store and rejoins
// (it serves the values written while it was down).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { clusterSizeFromRoutes, isProcessAlive, renderConfig, routeUrl, startNatsServer, type NatsServerHandle } from '../../cluster/nats-launcher.ts';
import { Bus } from '../../src/bus/bus.ts';
import { clusterSizeFromInfo, replicasFor, splitServers } from '../../src/bus/transport.ts';
import { readWal } from '../../src/ledger/wal.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import { freePorts } from '../support/procs.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, ms: number, f: () => Promise<T | null | undefined | false>): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown = null;
  for (;;) {
    try { const v = await f(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await sleep(100);
  }
}

const SECRET = 'nats-cluster-test-secret-0123456789';

describe('NATS cluster through the launcher (3 real nats-servers on loopback)', function () {
  this.timeout(120_000);
  const auth = AuthPolicy.fromSecret(SECRET);
  const servers: NatsServerHandle[] = [];
  let root = '';
  let routes: string[] = [];
  let routePorts: number[] = [];

  before(async function () {
    this.timeout(60_000);
    root = mkdtempSync(join(tmpdir(), 'dw-nats-cluster-'));
    routePorts = await freePorts(3);
    routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`);
    // Every member gets the same route list (its own among them: the server ignores a route to itself).
    const started = await Promise.all([0, 1, 2].map((i) => startNatsServer({
      serverName: `m${i}`, port: -1, storeDir: join(root, `m${i}`), credentials: auth.natsCredentials(),
      cluster: { name: 'dw-cl', port: routePorts[i]!, routes, credentials: auth.natsRouteCredentials() },
      maxMemBytes: 64 << 20, maxFileBytes: 1 << 30,
    })));
    servers.push(...started);
  });

  after(async function () {
    this.timeout(30_000);
    const pids = servers.map((s) => s.pid);
    for (const s of servers) await s.stop();
    rmSync(root, { recursive: true, force: true });
    assert.deepEqual(pids.filter(isProcessAlive), [], 'no nats-server left');
  });

  const urls = () => servers.map((s) => s.url);

  it('renders the cluster block: name, route listen, route credentials in the routes and the authorization block; clients still need theirs', async () => {
    const rc = auth.natsRouteCredentials()!;
    const conf = renderConfig({
      host: '127.0.0.1', port: 4222, storeDir: '/s', credentials: auth.natsCredentials(), jetstream: true, maxMemBytes: 1, maxFileBytes: 2, serverName: 'm0',
      cluster: { name: 'dw-cl', host: '0.0.0.0', port: 6222, routes: ['nats-route://h1:6222', 'nats-route://[fd00::2]:6222'], credentials: rc },
    });
    assert.match(conf, /cluster \{\n {2}name: "dw-cl"\n {2}listen: "0\.0\.0\.0:6222"\n/);
    assert.ok(conf.includes(`authorization { user: "${rc.user}", password: "${rc.pass}", timeout: 5 }`));
    assert.ok(conf.includes(`"nats-route://${rc.user}:${rc.pass}@h1:6222"`) && conf.includes(`@[fd00::2]:6222"`));
    assert.doesNotMatch(conf, /^authorization|\$SYS|no_auth_user/m, 'only the route block has an authorization: the CVE-2023-47090 shape is never written');
    // Route credentials are not the client's: different labels.
    assert.notEqual(rc.user, auth.natsCredentials()!.user);
    assert.notEqual(rc.pass, auth.natsCredentials()!.pass);
    assert.match(rc.user, /^dw-route-[0-9a-f]{16}$/);
    assert.match(rc.pass, /^[A-Za-z0-9_-]{32}$/);
    assert.throws(() => routeUrl('nats://h1:6222', rc), InvalidArgumentError);
    assert.throws(() => routeUrl('nats-route://h1', rc), InvalidArgumentError);
    // Anonymous clients of a cluster member are refused.
    await assert.rejects(connect({ servers: servers[0]!.url, reconnect: false }), /Authorization Violation/);
  });

  it('counts the cluster from the routes (itself once) and from what a server gossips; 3 replicas from 3 servers', () => {
    const self = { host: '0.0.0.0', port: 6222 };
    const mine = ['node-a', '10.0.0.1'];
    assert.equal(clusterSizeFromRoutes(['nats-route://node-a:6222', 'nats-route://node-b:6222', 'nats-route://node-c:6222'], self, mine), 3);
    assert.equal(clusterSizeFromRoutes(['nats-route://node-b:6222', 'nats-route://node-c:6222'], self, mine), 3);
    assert.equal(clusterSizeFromRoutes(['nats-route://10.0.0.1:6222', 'nats-route://10.0.0.2:6222'], self, mine), 2);
    assert.equal(clusterSizeFromRoutes([], self, mine), 1);
    assert.equal(clusterSizeFromInfo({}), 1);
    assert.equal(clusterSizeFromInfo({ cluster: 'c', connect_urls: ['a:1', 'b:1', 'a:1'] }), 2);
    assert.equal(clusterSizeFromInfo({ cluster: 'c', connect_urls: ['a:1'] }, 3), 3);
    assert.deepEqual([1, 2, 3, 5].map(replicasFor), [1, 1, 3, 3]);
    assert.deepEqual(splitServers(['nats://a:1, nats://b:2', 'nats://c:3']), ['nats://a:1', 'nats://b:2', 'nats://c:3']);
  });

  it('a client with all three URLs commits through the bus; SIGKILL of its server: it fails over, R3 writes succeed; the server restarts on its store and rejoins', async () => {
    const job = 'clj';
    const bus = await Bus.connect({ servers: urls().join(','), job, auth, name: 'client', reconnectTimeWaitMs: 100 });
    let responder: Bus | null = null;
    let lone: Bus | null = null;
    try {
      await bus.waitJetStream(30_000);
      assert.equal(bus.clusterSize(), 3);
      assert.equal(bus.replicas(), 3);
      const s = bus.subjects;
      // The WAL stream, created where the queue creates it (src/ledger/wal.ts), with no replica
      // count of its own: the Bus's default (3 here) applies.
      const replay = await readWal(bus);
      assert.equal(replay.events.length, 0);
      const kv = await bus.kv(s.kvBucket);
      assert.equal((await bus.streamInfo(s.walStream)).replicas, 3, 'WAL stream has 3 replicas');
      assert.equal((await bus.streamInfo(`KV_${s.kvBucket}`)).replicas, 3, 'KV bucket has 3 replicas');

      const victimIdx = servers.findIndex((x) => bus.server.endsWith(`:${x.port}`));
      assert.ok(victimIdx >= 0, `the client is on one of the members (${bus.server})`);
      const victim = servers[victimIdx]!;
      const other = servers[(victimIdx + 1) % 3]!;
      // A commit handler on another member: request -> WAL append -> reply (the queue's commit path).
      responder = await Bus.connect({ servers: other.url, job, auth, name: 'responder' });
      let n = 0;
      responder.subscribe(s.queue.commit, async (m: { id: string }) => ({ id: m.id, seq: await responder!.append(s.walSubject, { commit: m.id, n: ++n }) }));
      await responder.flush();
      const commit = (id: string) => bus.request<{ id: string; seq: number }>(s.queue.commit, { id }, { timeoutMs: 3000, retries: 10 });
      assert.deepEqual(await commit('a'), { id: 'a', seq: 1 });
      await kv.put('before', { v: 1 });

      const pid = victim.pid;
      await victim.kill('SIGKILL');
      assert.equal(isProcessAlive(pid), false);
      const t0 = Date.now();
      const r = await commit('b');
      const failoverMs = Date.now() - t0;
      assert.equal(r.id, 'b');
      assert.ok(!bus.server.endsWith(`:${victim.port}`), `the client moved to another member (${bus.server})`);
      assert.ok(bus.stats().reconnects >= 1);
      // R3 writes with one of three down: a majority acknowledges them.
      await kv.put('during', { v: 2 });
      const seq = await bus.append(s.walSubject, { direct: true });
      assert.ok(seq > r.seq);
      const during = await bus.streamInfo(`KV_${s.kvBucket}`);
      assert.equal(during.replicas, 3);
      assert.equal((await kv.get<{ v: number }>('during'))?.value.v, 2);
      process.stdout.write(`      (failover: the first commit (request + WAL append) after SIGKILL answered in ${failoverMs} ms; stream leader now ${during.cluster?.leader})\n`);

      // Restart on the same port and store: it rejoins and catches up.
      const store = victim.storeDir;
      await victim.restart();
      assert.notEqual(victim.pid, pid);
      assert.equal(victim.storeDir, store);
      lone = await Bus.connect({ servers: victim.url, job, auth, name: 'lone', replicas: 3 });
      await lone.waitJetStream(30_000);
      await until('every replica of the KV bucket and the WAL current again', 30_000, async () => {
        for (const st of [`KV_${s.kvBucket}`, s.walStream]) {
          const i = await bus.streamInfo(st);
          if (!i.cluster || i.cluster.replicas.length !== 2 || !i.cluster.replicas.every((x) => x.current && !x.offline)) return false;
        }
        return true;
      });
      // The restarted server has what was written while it was down.
      const lkv = await lone.kv(s.kvBucket);
      await until('the restarted member serves the value written while it was down', 20_000, async () => (await lkv.get<{ v: number }>('during'))?.value.v === 2);
      const walSeen: unknown[] = [];
      for await (const rec of lone.readAll(s.walStream)) walSeen.push(rec.obj);
      assert.deepEqual(walSeen, [{ commit: 'a', n: 1 }, { commit: 'b', n: 2 }, { direct: true }]);
      assert.deepEqual(await commit('c'), { id: 'c', seq: seq + 1 });
    } finally {
      await lone?.close();
      await responder?.close();
      await bus.close();
    }
  });

  it('a bucket made with 1 replica is raised to 3 by a Bus that wants 3', async () => {
    const one = await Bus.connect({ servers: urls(), job: 'raise', auth, replicas: 1 });
    const auto = await Bus.connect({ servers: servers[2]!.url, job: 'raise', auth });
    try {
      await one.waitJetStream(30_000);
      await (await one.kv('dw_raise')).put('k', 1);
      assert.equal((await one.streamInfo('KV_dw_raise')).replicas, 1);
      assert.equal(auto.replicas(), 3, 'auto: three servers gossiped');
      await auto.kv('dw_raise');
      await until('KV_dw_raise at 3 replicas', 15_000, async () => (await auto.streamInfo('KV_dw_raise')).replicas === 3);
      await auto.ensureStream('raise_s', ['raise.s']);
      assert.equal((await auto.streamInfo('raise_s')).replicas, 3);
    } finally { await one.close(); await auto.close(); }
  });

  it('autoRestart: a server killed behind the launcher\'s back comes back on its port and store; kill() through the handle does not', async () => {
    const h = await startNatsServer({ autoRestart: true, storeDir: join(root, 'auto') });
    try {
      const pid = h.pid, port = h.port;
      process.kill(pid, 'SIGKILL');
      await until('the server restarted', 10_000, async () => h.running && h.pid !== pid);
      assert.equal(h.port, port);
      assert.equal(h.storeDir, join(root, 'auto'));
      const nc = await connect({ servers: h.url, reconnect: false });
      await nc.close();
      await h.kill('SIGKILL');
      await sleep(1000);
      assert.equal(h.running, false, 'an intended kill stays killed');
    } finally { await h.stop(); }
  });

  it('a server with the wrong route credentials is not admitted to the cluster', async () => {
    const [rp] = await freePorts(1);
    const rogue = await startNatsServer({
      serverName: 'rogue', port: -1, credentials: auth.natsCredentials(),
      cluster: { name: 'dw-cl', port: rp!, routes: [routes[0]!], credentials: AuthPolicy.fromSecret('another-secret-0123456789abc').natsRouteCredentials() },
    });
    try {
      await until('member 0 refuses the rogue route', 10_000, async () => /authorization|authentication/i.test(rogue.logTail() + servers[0]!.logTail()));
      await sleep(500);
      const nc = await connect({ servers: servers[0]!.url, user: auth.natsCredentials()!.user, pass: auth.natsCredentials()!.pass, reconnect: false });
      const gossiped = (nc.info as { connect_urls?: string[] }).connect_urls ?? [];
      await nc.close();
      assert.ok(!gossiped.some((u) => u.endsWith(`:${rogue.port}`)), `the rogue's client port is not in the cluster's gossip: ${gossiped.join(' ')}`);
      assert.equal(gossiped.length, 3);
    } finally { await rogue.stop(); }
  });
});
