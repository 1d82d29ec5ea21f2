// `draftwire node --nats-cluster`: three node agents (real processes), each starting its own
// member of the job's NATS cluster (JetStream on, route credentials from the secret, TLS for
// clients and routes with certificates from `draftwire certs`), on loopback with distinct
// ports, as three machines would. Node a hosts the actors and rank 0 (spawned over the bus); the job's WAL stream and
// KV bucket get 3 replicas; node b's nats-server is SIGKILLed while the job trains and the
// node restarts it on its store; the job trains to the end; SIGTERM leaves nothing behind.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Bus } from '../../src/bus/bus.ts';
import { NodeClient } from '../../src/bus/clients.ts';
import { writeInitialWeights } from '../../src/job/checkpoint.ts';
import { jobFile, jobRows, saveJobSpec } from '../../src/job/spec.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { descendants, isAlive, sleep, until } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { freePorts, killChild, runCli, spawnTs, type Child } from '../support/procs.ts';

const SECRET = 'node-cluster-test-secret-0123456789ab';

async function waitOutput(c: Child, re: RegExp, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(c.output())) {
    if (c.proc.exitCode !== null || Date.now() > end) throw new Error(`no ${re} (exit ${c.proc.exitCode}); output:\n${c.output().slice(-3000)}`);
    await sleep(50);
  }
}

const natsPid = (node: Child) => descendants(node.proc.pid!).find((p) => /nats-server/.test(p.args) && !/\/bin\/sh/.test(p.args))?.pid;

describe('draftwire node --nats-cluster: three nodes, each with its own NATS member (TLS, secret)', function () {
  // Above the sum of the waits below, so that a slow step reports itself (with the nodes'
  // output) instead of mocha's bare timeout (one CI run on 2026-12-04 hit 180 s, cause unseen).
  this.timeout(420_000);

  it('the job\'s streams get 3 replicas, a killed member is restarted on its store, the job trains to the end', async () => {
    const spec = testSpec('natscl', { steps: 30, batch: 2, leaseMs: 10_000 });
    mkdirSync(spec.runDir, { recursive: true });
    await saveJobSpec(spec);
    await writeInitialWeights(spec);
    const certs = join(dirname(spec.runDir), 'certs');
    const made = await runCli(['certs', '--out', certs, '--hosts', '127.0.0.1']);
    assert.equal(made.code, 0, made.stderr);
    const tls = { ca: join(certs, 'ca.pem'), cert: join(certs, '127.0.0.1.pem'), key: join(certs, '127.0.0.1.key') };
    const ports = await freePorts(6);
    const client = ports.slice(0, 3), route = ports.slice(3);
    const routes = route.map((p) => `nats-route://127.0.0.1:${p}`).join(',');
    const env = { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_LOG_LEVEL: 'info' };
    const nodes: Child[] = [];
    const ids = ['a', 'b', 'c'];
    const start = (i: number, extra: string[]) => spawnTs('bin/draftwire.js', ['node', '--job-file', jobFile(spec.runDir), '--node-id', ids[i]!,
      '--nats-cluster', '--nats-listen', `127.0.0.1:${client[i]}`, '--cluster-listen', `127.0.0.1:${route[i]}`, '--routes', routes,
      '--tls-cert', tls.cert, '--tls-key', tls.key, '--tls-ca', tls.ca, ...extra], env);
    let bus: Bus | null = null;
    const rankLog = () => { try { return readFileSync(join(spec.runDir, 'rank-0.log'), 'utf8').slice(-4000); } catch { return '(none)'; } };
    try {
      // b and c first, with no roles: a waits for nothing, but the cluster forms only with a majority.
      nodes.push(start(1, []), start(2, []));
      nodes.unshift(start(0, ['--roles', 'coordinator,queue,janitor,rollout']));
      for (const n of nodes) await waitOutput(n, /node running/);
      for (const n of nodes) assert.match(n.output(), /control plane ready .*clusterSize=3 replicas=3 tls=true/);
      bus = await Bus.connect({ servers: client.map((p) => `nats://127.0.0.1:${p}`), job: spec.job, auth: AuthPolicy.fromSecret(SECRET), tls, name: 'test' });
      assert.equal(bus.tls, true);
      const done = new Promise<{ rank: number; step: number }>((resolve) => {
        bus!.subscribe<{ rank: number; step: number }>(bus!.subjects.rankDone, (m) => resolve(m), { dedupe: false });
      });
      const s = bus.subjects;
      const untilOk = async (what: string, f: () => Promise<boolean>, ms = 30_000) => {
        const end = Date.now() + ms;
        for (;;) { try { if (await f()) return; } catch { /* not yet */ } if (Date.now() > end) throw new Error(what); await sleep(200); }
      };
      await untilOk('the WAL stream exists with 3 replicas', async () => (await bus!.streamInfo(s.walStream)).replicas === 3);
      await untilOk('the job KV bucket exists with 3 replicas', async () => (await bus!.streamInfo(`KV_${s.kvBucket}`)).replicas === 3);

      // Rank 0 starts on node a (asked over the bus, once we listen for its end); node b's
      // member dies meanwhile, and node b starts it again on the same port and store.
      const spawned = await new NodeClient(bus).spawn('a', { rank: 0, minEpoch: 0 }, { timeoutMs: 10_000 });
      assert.ok(spawned.pid);
      const before = natsPid(nodes[1]!);
      assert.ok(before, 'node b runs a nats-server');
      process.kill(before, 'SIGKILL');
      await untilOk('node b restarted its nats-server', async () => { const p = natsPid(nodes[1]!); return !!p && p !== before; }, 20_000);
      assert.match(nodes[1]!.output(), /nats-server died; restarting it on the same port and store/);

      const fin = await until('the job to finish', 120_000, () => Promise.race([done, sleep(500).then(() => null)]),
        { out: () => [...nodes.map((n, i) => `--- node ${ids[i]}\n${n.output().slice(-1200)}`), `--- rank 0\n${rankLog().slice(-2000)}`].join('\n') });
      assert.equal(fin.rank, 0);
      const q = await bus.request<{ consumed: number; dead: number; pending: number; leased: number }>(s.queue.status, {}, { timeoutMs: 5000 });
      assert.deepEqual([q.consumed + q.dead, q.pending, q.leased], [jobRows(spec), 0, 0], 'every sample of the budget finished');
      await untilOk('every replica of the WAL current after the restart', async () => {
        const c = (await bus!.streamInfo(s.walStream)).cluster;
        return !!c && c.replicas.length === 2 && c.replicas.every((r) => r.current && !r.offline);
      });
      await waitOutput(nodes[0]!, /rank exited rank=0 pid=\d+ code=0/, 20_000);
      await bus.close();
      bus = null;
      const seen = nodes.flatMap((n) => descendants(n.proc.pid!)).map((p) => p.pid);
      for (const n of nodes.splice(0)) await killChild(n, 'SIGTERM');
      await sleep(200);
      for (const pid of seen) assert.ok(!isAlive(pid), `process ${pid} outlived its node`);
    } finally {
      await bus?.close();
      for (const n of nodes) await killChild(n);
      rmSync(dirname(spec.runDir), { recursive: true, force: true });
    }
  });
});
