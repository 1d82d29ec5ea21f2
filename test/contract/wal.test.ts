// The write-ahead log against a real nats-server, with a raw NATS client playing the one who
// holds the NATS credentials: a fuzzed record, a record with a bad MAC and a byte-for-byte
// replayed record appended to the WAL stream. Replay (the queue's rebuild, readWal, the audit,
// the `draftwire audit` and `draftwire wal skip` commands) reports each by stream seq, the
// queue refuses to start without crash-looping, and after `wal skip` everything goes on.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Packr } from 'msgpackr';
import { startQueue } from '../../actors/queue.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { DraftwireError } from '../../src/errors.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readWal, WAL_RECORD, WalCorruptError, rebuildLedger, readLedgerEvents } from '../../src/ledger/wal.ts';
import { walSkip } from '../../cluster/commands/wal.ts';
import { withNats } from '../support/nats-server.ts';
import { ChaosJob, newWorkdir } from '../support/chaos.ts';
import { isAlive } from '../support/procs.ts';
import { startNatsServer } from '../../cluster/nats-launcher.ts';
import { subjects } from '../../src/wire/subjects.ts';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { sampleRef } from '../support/store-fixtures.ts';

const packr = new Packr({ useRecords: false });
const pack = (x: unknown) => new Uint8Array(packr.pack(x));
const SECRET = 'wal-test-secret-0123456789abcdef';

/** The queue in this process (so the test can count its restarts); stopped by the suite at the latest. */
const running = new Set<{ stop(): Promise<void> }>();
function queue(bus: Bus) {
  const system = new ActorSystem(`wal-${bus.job}`);
  const q = startQueue(system, { bus, tickMs: 100 });
  const h = { system, q, async stop() { running.delete(h); await q.stop(); await system.shutdown(); } };
  running.add(h);
  return h;
}
// Signed as a producer signs (a no-op with auth off): the queue verifies a ref's MAC at commit.
const commit = (bus: Bus, i: number, key = `commit:s-${i}`) => bus.request<{ status: string }>(bus.subjects.queue.commit, { ref: bus.auth.signRef(sampleRef({ job: bus.job, sampleId: `s-${i}`, generation: 1 })) }, { idempotencyKey: key, timeoutMs: 3000, retries: 3 });
const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => spawnSync(process.execPath, ['bin/draftwire.js', ...args], { encoding: 'utf8', env: { ...process.env, DRAFTWIRE_SECRET: '', ...env }, timeout: 60_000 });

async function refusal(p: Promise<unknown>): Promise<DraftwireError> {
  try { await p; } catch (e) { assert.ok(e instanceof DraftwireError, String(e)); return e; }
  return assert.fail('the request was answered, not refused');
}

describe('write-ahead log replay: bad, fuzzed and replayed records (real server)', function () {
  this.timeout(120_000);

  describe('auth off: a fuzzed record of the right format', () => {
    const nats = withNats();
    const JOB = 'walfuzz';
    let bus: Bus;
    let raw: NatsConnection;
    before(async () => {
      bus = await Bus.connect({ servers: nats.url, job: JOB, auth: AuthPolicy.disabled(), name: 'test' });
      raw = await connect(nats.connectOptions);
    });
    after(async () => { for (const h of [...running]) await h.stop(); await raw.close(); await bus.close(); });

    it('reports it by stream seq; the queue refuses (typed, not retryable, no restarts); wal skip lets everything go on', async () => {
      let qa = queue(bus);
      for (let i = 0; i < 3; i++) assert.equal((await commit(bus, i)).status, 'added');
      await qa.stop();
      const before = await bus.streamInfo(bus.subjects.walStream);
      // A well-formed record (auth is off: no MAC) whose lease event has leases = 5.
      const fuzzed = { f: WAL_RECORD, events: [{ type: 'lease', seq: 4, at: Date.now(), epoch: 0, consumer: 'x', partition: [0, 1], leases: 5 }] };
      const ack = await jetstream(raw).publish(bus.subjects.walSubject, pack({ b: pack({ d: fuzzed }) }));
      assert.equal(ack.seq, before.lastSeq + 1);
      const bad = ack.seq;

      const w = await readWal(bus);
      assert.deepEqual(w.bad.map((b) => b.streamSeq), [bad]);
      assert.match(w.bad[0]!.reason, /lease\.leases is the number 5, not an array/);
      assert.equal(w.events.length, 3, 'the good records still read');
      const report = auditEvents(w.events, w);
      assert.equal(report.ok, false);
      assert.match(report.problems.join('\n'), new RegExp(`stream seq ${bad} .*lease\\.leases`));
      await assert.rejects(rebuildLedger(bus), (e: unknown) => e instanceof WalCorruptError && e.detail?.streamSeq === bad && !e.retryable);
      await assert.rejects(readLedgerEvents(bus), WalCorruptError);

      // `draftwire audit` lists it and fails.
      const a1 = cli(['audit', '--job', JOB, '--nats', nats.url]);
      assert.notEqual(a1.status, 0, a1.stdout + a1.stderr);
      assert.match(a1.stdout, new RegExp(`problem: write-ahead log record at stream seq ${bad} `));

      // The queue refuses every request with the typed error, and does not restart-loop.
      qa = queue(bus);
      for (let i = 0; i < 3; i++) {
        const e = await refusal(commit(bus, 10 + i));
        assert.equal(e.code, 'WAL_CORRUPT');
        assert.equal(e.retryable, false);
        assert.match(e.message, new RegExp(`stream seq ${bad} .*wal skip --job ${JOB} --seq ${bad}`));
      }
      assert.equal(qa.system.restartCount(qa.q.ref), 0, 'the queue actor did not crash');

      // The operator skips it (the CLI); the running queue picks that up by itself.
      const s1 = cli(['wal', 'skip', '--job', JOB, '--nats', nats.url, '--seq', String(bad), '--reason', 'fuzzed by the test']);
      assert.equal(s1.status, 0, s1.stdout + s1.stderr);
      assert.match(s1.stdout, new RegExp(`skipped stream seq ${bad}`));
      // (A fresh key per attempt: the bus remembers a non-retryable answer per key for minutes.)
      let status: string | null = null;
      for (let n = 0, end = Date.now() + 10_000; status === null && Date.now() < end; n++) {
        try { status = (await commit(bus, 20, `commit:s-20:${n}`)).status; } catch (e) { assert.equal((e as DraftwireError).code, 'WAL_CORRUPT'); await new Promise((r) => setTimeout(r, 300)); }
      }
      assert.equal(status, 'added');
      assert.equal((await commit(bus, 0, 'commit:again:s-0')).status, 'duplicate', 'the ledger before the bad record was rebuilt');
      assert.equal(qa.system.restartCount(qa.q.ref), 0);
      await qa.stop();

      const w2 = await readWal(bus);
      assert.deepEqual(w2.bad, []);
      assert.deepEqual(w2.skipped.map((k) => [k.streamSeq, k.reason]), [[bad, 'fuzzed by the test']]);
      const r2 = auditEvents(w2.events, w2);
      assert.equal(r2.ok, true, r2.problems.join('\n'));
      assert.equal(r2.committed, 4);
      const a2 = cli(['audit', '--job', JOB, '--nats', nats.url]);
      assert.equal(a2.status, 0, a2.stdout + a2.stderr);
      assert.match(a2.stdout, new RegExp(`skipped by the operator: stream seq ${bad} .*fuzzed by the test`));
      // A well-formed record is not skipped without --force; an absent one is bad input.
      await assert.rejects(walSkip(bus, 1, 'no'), /well-formed ledger record/);
      const s2 = cli(['wal', 'skip', '--job', JOB, '--nats', nats.url, '--seq', '999', '--reason', 'x']);
      assert.equal(s2.status, 2, s2.stderr);
      assert.match(s2.stderr, /no record at stream seq 999/);
    });
  });

  it('run --resume after a fuzzed record: refused by stream seq; wal skip on the stopped run; the resume finishes', async () => {
    const workdir = newWorkdir();
    const env = { ...process.env, DRAFTWIRE_SECRET: '', DRAFTWIRE_SECRET_FILE: '' };
    const JOB = 'walresume';
    try {
      const job = new ChaosJob({ workdir, job: JOB, steps: 12, batch: 4, leaseMs: 3000, env });
      await job.waitStep(3);
      job.track();
      process.kill(job.proc.pid!, 'SIGKILL');
      await job.exited;
      for (const end = Date.now() + 15_000; [...job.seen].some(isAlive) && Date.now() < end;) await new Promise((r) => setTimeout(r, 100));
      for (const pid of job.seen) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
      // Someone with access to the run's NATS appends a fuzzed record to its WAL.
      const srv = await startNatsServer({ storeDir: join(workdir, JOB, 'nats') });
      let bad: number;
      try {
        const nc = await connect({ servers: srv.url });
        const fuzzed = { f: WAL_RECORD, events: [{ type: 'expire', seq: 1, at: 1, leases: 'x' }] };
        bad = (await jetstream(nc).publish(subjects(JOB).walSubject, pack({ b: pack({ d: fuzzed }) }))).seq;
        await nc.close();
      } finally { await srv.stop(); }
      const j1 = new ChaosJob({ workdir, job: JOB, resume: true, env });
      const r1 = await j1.finish();
      assert.notEqual(r1.code, 0);
      assert.match(j1.stderr, new RegExp(`WAL_CORRUPT: .*stream seq ${bad} .*expire\\.leases.*wal skip --job ${JOB} --seq ${bad}`));
      const skip = cli(['wal', 'skip', '--workdir', workdir, '--job', JOB, '--seq', String(bad), '--reason', 'fuzzed by the test']);
      assert.equal(skip.status, 0, skip.stdout + skip.stderr);
      const a = cli(['audit', '--workdir', workdir, '--job', JOB]);
      assert.match(a.stdout, new RegExp(`skipped by the operator: stream seq ${bad} `), a.stdout + a.stderr);
      const next = new ChaosJob({ workdir, job: JOB, resume: true, env });
      const r2 = await next.finish();
      assert.equal(r2.code, 0, next.stderr.slice(-3000));
      assert.equal(r2.summary.audit.ok, true, JSON.stringify(r2.summary.audit.problems));
      // Nothing was lost to the refused resume: every sample trained, none dead-lettered.
      assert.equal(r2.summary.audit.dead, 0, JSON.stringify(r2.summary.audit));
      assert.equal(r2.summary.audit.complete, true);
      assert.equal(r2.summary.steps, 12);
    } finally { rmSync(workdir, { recursive: true, force: true }); }
  });

  describe('auth on: a record with a bad MAC, and a byte-for-byte replayed record', () => {
    const nats = withNats({ auth: AuthPolicy.fromSecret(SECRET).natsCredentials()! });
    const JOB = 'walmac';
    let bus: Bus;
    let raw: NatsConnection;
    before(async () => {
      bus = await Bus.connect({ servers: nats.url, job: JOB, auth: AuthPolicy.fromSecret(SECRET), name: 'test' });
      raw = await connect(nats.connectOptions);
    });
    after(async () => { for (const h of [...running]) await h.stop(); await raw.close(); await bus.close(); });

    it('a replayed record is ignored and reported (the audit stays clean); a bad MAC is refused by seq until skipped', async () => {
      let qa = queue(bus);
      for (let i = 0; i < 3; i++) assert.equal((await commit(bus, i)).status, 'added');
      await qa.stop();
      const stream = bus.subjects.walStream;
      // Replay the first sealed record, byte for byte.
      const jsm = await jetstreamManager(raw);
      const first = await jsm.streams.getMessage(stream, { seq: 1 });
      const js = jetstream(raw);
      const dup = (await js.publish(bus.subjects.walSubject, first!.data)).seq;
      let w = await readWal(bus);
      assert.deepEqual(w.bad, []);
      assert.deepEqual(w.duplicates.map((d) => [d.streamSeq, d.original]), [[dup, 1]]);
      let report = auditEvents(w.events, w);
      assert.equal(report.ok, true, `a replayed record does not make a clean ledger broken: ${report.problems.join('; ')}`);
      assert.equal(report.committed, 3);

      // A record with a MAC that is not the secret's.
      const body = pack({ d: { f: WAL_RECORD, events: [] } });
      const forged = (await js.publish(bus.subjects.walSubject, pack({ b: body, m: new Uint8Array(32).fill(7) }))).seq;
      w = await readWal(bus);
      assert.deepEqual(w.bad.map((b) => [b.streamSeq, b.reason]), [[forged, 'failed its MAC (authentication failed)']]);
      const a1 = cli(['audit', '--job', JOB, '--nats', nats.url, '--json'], { DRAFTWIRE_SECRET: SECRET });
      assert.notEqual(a1.status, 0);
      const j = JSON.parse(a1.stdout.trim().split('\n')[0]!) as { ok: boolean; wal: { bad: { streamSeq: number }[]; duplicates: unknown[] } };
      assert.equal(j.ok, false);
      assert.deepEqual(j.wal.bad.map((b) => b.streamSeq), [forged]);
      assert.equal(j.wal.duplicates.length, 1);

      qa = queue(bus);
      const e = await refusal(commit(bus, 9));
      assert.equal(e.code, 'WAL_CORRUPT');
      assert.match(e.message, new RegExp(`stream seq ${forged} failed its MAC`));
      assert.equal(qa.system.restartCount(qa.q.ref), 0);
      assert.equal((await walSkip(bus, forged, 'forged by the test')).status, 'skipped');
      assert.equal((await walSkip(bus, forged, 'again')).status, 'already-skipped');
      assert.equal((await walSkip(bus, dup, 'dup')).status, 'duplicate');
      let st: { samples: number } | null = null;
      for (const end = Date.now() + 10_000; st === null && Date.now() < end;) {
        try { st = await bus.request<{ samples: number }>(bus.subjects.queue.status, {}, { timeoutMs: 3000, retries: 0 }); } catch { await new Promise((r) => setTimeout(r, 300)); }
      }
      assert.equal(st?.samples, 3, 'rebuilt with the three samples, once each');
      await qa.stop();
      w = await readWal(bus);
      report = auditEvents(w.events, w);
      assert.equal(report.ok, true, report.problems.join('; '));
      assert.deepEqual(report.wal.skipped.map((k) => k.streamSeq), [forged]);
    });
  });
});
