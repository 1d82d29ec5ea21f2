// Checkpoints without a shared filesystem (src/job/checkpoint-store.ts, `checkpointStore:
// 'nats'`): weights and AdamW moments as MAC'd objects of the job's JetStream object store,
// the manifest a KV value committed by compare-and-set. Round trip bit for bit, a zombie
// writer of an older epoch refused, a replaced object refused, window parts; and on a cluster
// of three real nats-servers a committed checkpoint survives the loss of any one of them.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer, type NatsServerHandle } from '../../cluster/nats-launcher.ts';
import { Bus } from '../../src/bus/bus.ts';
import { AuthError, StaleEpochError } from '../../src/errors.ts';
import { modelState } from '../../src/job/checkpoint.ts';
import { NatsCheckpointStore } from '../../src/job/checkpoint-store.ts';
import { DraftModel, initDraftWeights, TRAINABLE_NAMES } from '../../src/native/addon.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { STORAGE } from '../../src/wire/protocol.ts';
import { testSpec } from '../support/jobs.ts';
import { ChaosJob, checkInvariants, newWorkdir, sleep } from '../support/chaos.ts';
import { withNats } from '../support/nats-server.ts';
import { freePorts } from '../support/procs.ts';

const SECRET = 'checkpoint-nats-test-secret-0123456789';
const auth = AuthPolicy.fromSecret(SECRET);

function model(seed: number) {
  const spec = { ...testSpec('ckptnats'), checkpointStore: 'nats' as const };
  const w = initDraftWeights(spec.draft, seed);
  const d2t = Int32Array.from({ length: spec.draft.draftVocab }, (_, i) => i);
  w.d2t = d2t;
  return { spec, w, d2t, m: DraftModel.create(spec.draft, w) };
}

describe('checkpoints in the job\'s JetStream (checkpointStore nats)', function () {
  this.timeout(120_000);
  const nats = withNats({ auth: auth.natsCredentials()! });

  it('round-trips weights, moments, step and window bit for bit; refuses an older epoch\'s writer and a replaced object; parts', async () => {
    const { spec, w, d2t, m } = model(5);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'ckpt' });
    try {
      const store = new NatsCheckpointStore(spec, bus);
      assert.equal(await store.loadRankCheckpoint(w), null, 'none yet');
      await store.writeRankCheckpoint(await modelState(m), d2t, 3, [{ leaseId: 'L1', sampleId: 'row-1', epoch: 1 }], 1, 12);
      const got = (await store.loadRankCheckpoint(w))!;
      assert.equal(got.manifest.step, 3);
      assert.equal(got.manifest.samples, 12);
      assert.deepEqual(got.manifest.trained, ['row-1']);
      const opt = m.optimizerState();
      for (const n of TRAINABLE_NAMES) {
        assert.deepEqual(got.weights[n], m.weights()[n], `weights ${n}`);
        assert.deepEqual(got.optimizer.m[n], opt.m[n], `m.${n}`);
        assert.deepEqual(got.optimizer.v[n], opt.v[n], `v.${n}`);
      }
      await store.writeRankCheckpoint(await modelState(m), d2t, 5, [], 2, 20);
      await store.writeRankCheckpoint(await modelState(m), d2t, 6, [], 2, 24);
      await store.collected(); // old objects are deleted in the background
      const objs = await bus.objects(STORAGE.ckptBucket(spec.job));
      assert.deepEqual((await objs.names()).sort(), ['step-00000005-e2.optim.safetensors', 'step-00000005-e2.safetensors', 'step-00000006-e2.optim.safetensors', 'step-00000006-e2.safetensors'],
        'older objects deleted; the one just replaced kept one commit longer');
      await assert.rejects(store.writeRankCheckpoint(await modelState(m), d2t, 4, [], 1, 16), (e: unknown) => e instanceof StaleEpochError && /from epoch 2/.test((e as Error).message));
      assert.equal((await store.latestManifest())!.step, 6, 'the committed checkpoint is unchanged');

      // A process with the NATS credentials but not the secret replaces the weights object: refused.
      const forger = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.fromSecret('another-secret-of-sixteen-bytes'), credentials: auth.natsCredentials(), name: 'forger' });
      try {
        await (await forger.objects(STORAGE.ckptBucket(spec.job))).put('step-00000006-e2.safetensors', new Uint8Array(64));
      } finally { await forger.close(); }
      await assert.rejects(store.loadRankCheckpoint(w), (e: unknown) => e instanceof AuthError && /failed its MAC/.test((e as Error).message));

      await store.writeWindowPart(7, 2, 0, { window: [{ leaseId: 'La', sampleId: 'a', epoch: 2 }], skipped: [] });
      await store.writeWindowPart(7, 2, 1, { window: [], skipped: ['b'] });
      assert.deepEqual(await store.takeWindowParts(7, 2, 2), [{ leaseId: 'La', sampleId: 'a', epoch: 2 }, { leaseId: '', sampleId: 'b', epoch: 0 }]);
      await assert.rejects(store.takeWindowParts(7, 2, 2), /missing/, 'taken parts are removed');
    } finally { await bus.close(); }
  });

  it('deletes (in the background) what it replaced at each commit; sweeps older strays at its first commit and every 20th, never a newer or foreign object', async () => {
    const made = model(6);
    const { d2t, m } = made;
    const spec = { ...made.spec, job: 'ckptgc' }; // a bucket of its own
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'ckpt-gc' });
    try {
      const objs = await bus.objects(STORAGE.ckptBucket(spec.job));
      const stray = 'step-00000001-e0.safetensors'; // a crashed writer's, never committed
      const newer = 'step-00000099-e9.safetensors'; // as if written by a commit after the sweep began
      const foreign = 'notes.txt';
      for (const n of [stray, newer, foreign]) await objs.put(n, new Uint8Array(16));
      const store = new NatsCheckpointStore(spec, bus);
      const state = await modelState(m);
      const names = async () => { await store.collected(); return (await objs.names()).filter((n) => !n.includes('optim')).sort(); };
      const base = (step: number) => `step-${String(step).padStart(8, '0')}-e1.safetensors`;
      await store.writeRankCheckpoint(state, d2t, 10, [], 1, 4);
      assert.deepEqual(await names(), [foreign, base(10), newer], 'the first commit swept the older stray, not the newer or foreign object');
      await objs.put(stray, new Uint8Array(16));
      for (let step = 11; step <= 29; step++) {
        await store.writeRankCheckpoint(state, d2t, step, [], 1, 4);
        assert.deepEqual(await names(), [foreign, stray, base(step - 1), base(step), newer],
          `commit ${step - 9}: the one it replaced kept, older ones deleted, the stray not looked for`);
      }
      await store.writeRankCheckpoint(state, d2t, 30, [], 1, 4);
      assert.deepEqual(await names(), [foreign, base(29), base(30), newer], 'the 21st commit swept the stray again');
    } finally { await bus.close(); }
  });
});

describe('a committed NATS checkpoint survives the loss of one of three servers', function () {
  this.timeout(180_000);
  const servers: NatsServerHandle[] = [];
  let root = '';
  after(async () => { for (const s of servers) await s.stop(); if (root) rmSync(root, { recursive: true, force: true }); });

  it('written through one server, read through another after the first is SIGKILLed', async () => {
    root = mkdtempSync(join(tmpdir(), 'dw-ckpt-cluster-'));
    const routePorts = await freePorts(3);
    const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`);
    servers.push(...await Promise.all([0, 1, 2].map((i) => startNatsServer({
      serverName: `c${i}`, port: -1, storeDir: join(root, `c${i}`), credentials: auth.natsCredentials(),
      cluster: { name: 'dw-ckpt', port: routePorts[i]!, routes, credentials: auth.natsRouteCredentials() },
      maxMemBytes: 64 << 20, maxFileBytes: 1 << 30,
    }))));
    const { spec, w, d2t, m } = model(9);
    const writer = await Bus.connect({ servers: servers[0]!.url, job: spec.job, auth, name: 'writer' });
    await writer.waitJetStream(60_000);
    assert.equal(writer.replicas(), 3);
    await new NatsCheckpointStore(spec, writer).writeRankCheckpoint(await modelState(m), d2t, 8, [], 3, 32);
    const info = await writer.streamInfo(`OBJ_${STORAGE.ckptBucket(spec.job)}`);
    assert.equal(info.replicas, 3, 'the object store has 3 replicas');
    await writer.close();
    await servers[0]!.kill('SIGKILL');
    const reader = await Bus.connect({ servers: [servers[1]!.url, servers[2]!.url], job: spec.job, auth, name: 'reader' });
    try {
      const got = await new NatsCheckpointStore(spec, reader).loadRankCheckpoint(w);
      assert.equal(got!.manifest.step, 8);
      for (const n of TRAINABLE_NAMES) assert.deepEqual(got!.weights[n], m.weights()[n], `weights ${n}`);
    } finally { await reader.close(); }
  });
});

describe('a job with --checkpoint-store nats: a rank SIGKILLed resumes from the JetStream checkpoint', function () {
  this.timeout(180_000);

  it('no checkpoint file in the run directory; the replacement resumes from JetStream; the audit is clean', async () => {
    const workdir = newWorkdir();
    try {
      const steps = 24;
      const job = new ChaosJob({ workdir, job: 'natsckpt', steps, batch: 4, leaseMs: 3000, extra: ['--checkpoint-store', 'nats'] });
      const url = await (async () => {
        for (let i = 0; ; i++) {
          try { return (JSON.parse(readFileSync(join(job.runDir, 'run.json'), 'utf8')) as { nats: string }).nats; } catch (e) { if (i > 300) throw e; await sleep(100); }
        }
      })();
      const bus = await Bus.connect({ servers: url, job: 'natsckpt', auth: AuthPolicy.fromEnv(), name: 'test' });
      let killedAt = 0;
      try {
        const store = new NatsCheckpointStore({ ...testSpec('natsckpt'), job: 'natsckpt' }, bus);
        for (let i = 0; ; i++) {
          const m = await store.latestManifest().catch(() => null);
          if (m && m.step >= 6) { killedAt = m.step; break; }
          assert.ok(!existsSync(join(job.runDir, 'ckpt', 'latest.json')), 'no checkpoint manifest in the run directory');
          if (i > 600 || job.proc.exitCode !== null) throw new Error(`no NATS checkpoint at step 6; stderr:\n${job.stderr.slice(-3000)}`);
          await sleep(50);
        }
        process.kill(await job.waitRank(), 'SIGKILL');
      } finally { await bus.close(); }
      const r = await job.finish();
      const inv = await checkInvariants(job, r, { steps, rows: steps * 4 });
      for (const i of inv) assert.ok(i.ok, `${i.name}: ${i.detail}`);
      assert.ok(r.summary.rankRestarts >= 1, 'the rank was respawned');
      assert.match(readFileSync(join(job.runDir, 'rank-0.log'), 'utf8'), /resuming from checkpoint step=\d+ .*from=nats:dw_natsckpt_ckpt/);
      assert.ok(killedAt >= 6);
    } finally { rmSync(workdir, { recursive: true, force: true }); }
  });
});
