// The fault-injection suite (issue 5): each scenario runs a short real job (`draftwire run`,
// tiny preset: real nats-server, real rank process), injects one seeded fault kind (alone or
// with a concurrent reshard), and checks the invariants (test/support/chaos.ts). A report of
// every fault injected and every invariant checked is printed at the end.
//   DRAFTWIRE_CHAOS_SEED=N    base seed (default 1)
//   DRAFTWIRE_SOAK=1          longer jobs and several seeds per scenario
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import {
  assertInvariants, ChaosJob, checkInvariants, corruptSampleFile, formatReport, ledgerOf, listDir, mountTmpfs, newWorkdir, rankLog, rng, sleep, unmountTmpfs,
  type ChaosResult, type InvariantOptions,
} from '../support/chaos.ts';

const SOAK = process.env.DRAFTWIRE_SOAK === '1';
const BASE_SEED = Number(process.env.DRAFTWIRE_CHAOS_SEED ?? 1);
const SEEDS = SOAK ? [BASE_SEED, BASE_SEED + 1, BASE_SEED + 2] : [BASE_SEED];
const STEPS = SOAK ? 40 : 12;
const BATCH = 4;
const ROWS = STEPS * BATCH;

describe('chaos: seeded faults against a real job', function () {
  this.timeout(SOAK ? 1_800_000 : 240_000);
  const workdir = newWorkdir();
  const results: ChaosResult[] = [];
  after(() => {
    process.stdout.write(formatReport(results));
    rmSync(workdir, { recursive: true, force: true });
  });

  /**
   * Runs one scenario: `inject` gets the job and a seeded generator and returns the faults it
   * injected. `before` prepares the run directory before the job starts; `expect` adds the
   * scenario's own invariants (dead letters, a store directory that outlives the run).
   */
  async function scenario(name: string, seed: number, o: {
    leaseMs?: number; deadAfterMs?: number; env?: NodeJS.ProcessEnv; extra?: string[]; steps?: number;
    before?: (runDir: string) => void; expect?: () => Omit<InvariantOptions, 'rows' | 'steps'> & { steps?: number | null };
  },
    inject: (job: ChaosJob, rnd: () => number, faults: string[]) => Promise<ChaosJob | void>): Promise<{ res: ChaosResult; job: ChaosJob; summary: any }> {
    const t0 = Date.now();
    const rnd = rng(seed * 7919 + name.length);
    const jobId = `${name}-${seed}`.replace(/[^A-Za-z0-9_-]/g, '-');
    o.before?.(join(workdir, jobId));
    const steps = o.steps ?? STEPS;
    let job = new ChaosJob({ workdir, job: jobId, steps, batch: BATCH, leaseMs: o.leaseMs ?? 3000, deadAfterMs: o.deadAfterMs ?? 10_000, env: o.env, extra: o.extra });
    const faults: string[] = [];
    try {
      const replaced = await inject(job, rnd, faults);
      if (replaced) job = replaced;
    } catch (e) {
      // Leave nothing behind: resume frozen processes and kill everything the run started.
      for (const p of job.track()) { try { process.kill(p.pid, 'SIGCONT'); process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }
      job.proc.kill('SIGKILL');
      throw e;
    }
    const r = await job.finish();
    const res: ChaosResult = { scenario: name, seed, faults, invariants: await checkInvariants(job, r, { steps, rows: steps * BATCH, ...o.expect?.() }), seconds: (Date.now() - t0) / 1000 };
    results.push(res);
    return { res, job, summary: r.summary };
  }
  const at = (rnd: () => number, lo = 2, hi = STEPS - 3) => lo + Math.floor(rnd() * (hi - lo + 1));
  /** A client of the job's NATS (url from run.json), for status queries without a CLI start-up. */
  const jobBus = async (job: ChaosJob) => {
    for (let i = 0; ; i++) {
      try {
        const url = (JSON.parse(readFileSync(join(job.runDir, 'run.json'), 'utf8')) as { nats: string }).nats;
        return await Bus.connect({ servers: url, job: job.o.job, auth: AuthPolicy.fromEnv(), name: 'chaos' });
      } catch (e) { if (i > 100) throw e; await sleep(100); }
    }
  };
  /**
   * Freezes the rank, then flips bytes in the tensor data (not the header) of one published
   * sample file that no live lease holds: samples are granted in commit order, so one of the
   * newest such files has not been read by any rank. With `reshard`, also bumps the epoch
   * (coordinator API) while the rank is frozen. Resumes the rank; returns the sample's id.
   */
  async function corruptUnreadSample(job: ChaosJob, rnd: () => number, faults: string[], o: { reshard?: boolean } = {}): Promise<string> {
    const step = at(rnd, 1, Math.floor(STEPS / 2));
    await job.waitStep(step);
    const pid = await job.waitRank();
    const storeDir = join(job.runDir, 'store');
    const bus = await jobBus(job);
    try {
      for (let i = 0; ; i++) {
        process.kill(pid, 'SIGSTOP');
        try {
          await sleep(300); // acks sent before the stop reach the janitor, which frees those files
          const q = await bus.request<{ leases: { sampleId: string }[] }>(bus.subjects.queue.status, {}, { timeoutMs: 2000, retries: 2 });
          const held = new Set(q.leases.map((l) => l.sampleId));
          const files = listDir(storeDir).filter((f) => /^row-\d+\.g\d+\.safetensors$/.test(f) && !held.has(f.slice(0, f.indexOf('.g')))).sort();
          if (files.length > 0) {
            const newest = files.slice(-3);
            const file = newest[Math.floor(rnd() * newest.length)]!;
            const what = corruptSampleFile(join(storeDir, file), rnd);
            faults.push(`rank pid ${pid} frozen (SIGSTOP) after step ${step}; ${held.size} samples leased; corrupted ${file} (not leased, not yet read): ${what}`);
            if (o.reshard) {
              const r = await bus.request<{ from: { epoch: number }; to: { epoch: number } }>(bus.subjects.coord.scale, { dp: 1 }, { timeoutMs: 5000, retries: 2 });
              faults.push(`epoch bump (coordinator API, dp 1: epoch ${r.from.epoch} -> ${r.to.epoch}) while the rank is frozen`);
            }
            faults.push('rank resumed (SIGCONT)');
            return file.slice(0, file.indexOf('.g'));
          }
        } finally { process.kill(pid, 'SIGCONT'); }
        if (i > 100) throw new Error(`no unleased sample file appeared in ${storeDir}`);
        await sleep(20 + Math.floor(rnd() * 40));
      }
    } finally { await bus.close(); }
  }
  const scale = (job: ChaosJob, dp: number) => spawnSync(process.execPath, ['bin/draftwire.js', 'scale', '--job', job.o.job, '--workdir', workdir, '--dp', String(dp), '--json'], { encoding: 'utf8' });

  for (const seed of SEEDS) {
    it(`SIGKILL of the rank: respawned from the checkpoint, leases re-leased (seed ${seed})`, async () => {
      const { res, summary } = await scenario('kill-rank', seed, {}, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        const pid = await job.waitRank();
        process.kill(pid, 'SIGKILL');
        faults.push(`SIGKILL rank pid ${pid} after checkpoint step ${step}`);
      });
      assertInvariants(res);
      assert.ok(summary.rankRestarts >= 1, 'the rank was respawned');
    });

    it(`SIGKILL of the rank between its checkpoint and its acks (failpoint; seed ${seed})`, async () => {
      const once = newWorkdir();
      const k = 2 + (seed % 5);
      const { res, job } = await scenario('kill-rank-before-ack', seed, { env: { ...process.env, DRAFTWIRE_FAILPOINTS: `rank.before-ack=kill@${k}`, DRAFTWIRE_FAILPOINTS_ONCE_DIR: once } }, async (_job, _rnd, faults) => {
        faults.push(`failpoint rank.before-ack=kill@${k} (SIGKILL after checkpoint ${k} is durable, before its acks)`);
      });
      rmSync(once, { recursive: true, force: true });
      assertInvariants(res);
      assert.match(rankLog(job), /failpoint rank.before-ack: kill/);
    });

    // With a checkpoint every 4 steps the frozen rank's expired leases include trained ones that
    // wait for their checkpoint: their samples are re-granted and must not be trained again.
    for (const every of [1, 4]) {
    it(`SIGSTOP of the rank past its lease, then SIGCONT: the zombie's stale acks are refused (checkpoint every ${every}; seed ${seed})`, async () => {
      // Longer with sparse checkpoints, so the freeze lands while the job still runs.
      const { res, job } = await scenario(`stop-rank-zombie-c${every}`, seed, { leaseMs: 1500, deadAfterMs: 30_000, steps: every * STEPS, extra: ['--checkpoint-every', String(every)] }, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        const pid = await job.waitRank();
        // Freeze it while it holds leases (stop, look, resume and retry if it held none).
        const bus = await jobBus(job);
        try {
          for (let i = 0; ; i++) {
            process.kill(pid, 'SIGSTOP');
            const q = await bus.request<{ leases: { consumer: string }[] }>(bus.subjects.queue.status, {}, { timeoutMs: 2000, retries: 2 });
            if (q.leases.some((l) => l.consumer === 'rank-0')) break;
            process.kill(pid, 'SIGCONT');
            if (i > 200) throw new Error('the rank never held a lease');
            await sleep(5 + Math.floor(rnd() * 20));
          }
        } finally { await bus.close(); }
        const ms = 3500 + Math.floor(rnd() * 1000);
        await sleep(ms);
        process.kill(pid, 'SIGCONT');
        faults.push(`SIGSTOP rank pid ${pid} at step ${step} for ${ms} ms (lease 1500 ms), then SIGCONT`);
      });
      assertInvariants(res);
      const ev = ledgerOf(job.runDir);
      assert.ok(ev.some((e) => e.type === 'expire'), 'the frozen rank\'s leases expired');
      // After SIGCONT the zombie used its old leases (renew or ack) and was refused (fencing).
      assert.match(rankLog(job), /lease renewal failed|ack refused/, 'the zombie\'s stale lease operations were refused');
    });
    }

    it(`SIGSTOP of the rank past the heartbeat deadline: declared dead, killed, replaced (seed ${seed})`, async () => {
      const { res, summary } = await scenario('stop-rank-dead', seed, { leaseMs: 2000, deadAfterMs: 4000 }, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        const pid = await job.waitRank();
        process.kill(pid, 'SIGSTOP');
        faults.push(`SIGSTOP rank pid ${pid} at step ${step}, never resumed (dead after 4000 ms without heartbeat)`);
        // The coordinator's status (what `draftwire status` shows) declares it dead although the
        // process and its NATS connection still exist.
        const bus = await jobBus(job);
        let shown = false, lastErr = '', lastSeen = '';
        try {
          for (let i = 0; i < 150 && !shown; i++) {
            await sleep(100);
            const c = await bus.request<{ deaths: { pid: number }[] }>(bus.subjects.coord.status, {}, { timeoutMs: 2000, retries: 1 }).catch((e: Error) => { lastErr = e.message; return null; });
            shown = !!c?.deaths?.some((d) => d.pid === pid);
            if (c) lastSeen = JSON.stringify(c).slice(0, 400);
          }
        } finally { await bus.close(); }
        assert.ok(shown, `status lists the frozen rank (pid ${pid}) as declared dead; last status ${lastSeen}; last error ${lastErr}; run stderr: ${job.stderr.slice(-1500)}`);
        faults.push('coordinator status showed the rank declared dead');
      });
      assertInvariants(res);
      assert.ok(summary.rankRestarts >= 1, 'the frozen rank was replaced');
    });

    it(`nats-server SIGKILL: restarted on the same store and port, clients reconnect (seed ${seed})`, async () => {
      const { res, summary } = await scenario('kill-nats', seed, {}, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        const pid = job.natsPid();
        assert.ok(pid, 'found the run\'s nats-server');
        process.kill(pid!, 'SIGKILL');
        faults.push(`SIGKILL nats-server pid ${pid} after step ${step}`);
      });
      assertInvariants(res);
      assert.ok(summary.natsRestarts >= 1, 'the server was restarted');
    });

    it(`SIGKILL of the process hosting queue, coordinator, janitor and rollout, then run --resume (seed ${seed})`, async () => {
      const { res, summary } = await scenario('kill-node-resume', seed, {}, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        job.track();
        process.kill(job.proc.pid!, 'SIGKILL');
        await job.exited;
        faults.push(`SIGKILL the run process (queue, coordinator, janitor, rollout) pid ${job.proc.pid} after step ${step}`);
        const next = new ChaosJob({ workdir, job: job.o.job, resume: true });
        for (const p of job.seen) next.seen.add(p);
        faults.push('draftwire run --resume (ledger from the same NATS store, rank from its checkpoint)');
        return next;
      });
      assertInvariants(res);
      assert.ok(summary.resumedFromStep > 0, `resumed from a checkpoint (step ${summary.resumedFromStep})`);
    });

    it(`dropped and delayed messages, request and reply sides (seed ${seed})`, async () => {
      const faultsEnv = `seed=${seed},match=\\.queue\\.(credit|ack|renew|release|commit),dropRequest=0.03,dropReply=0.03,delayMs=40`;
      const { res } = await scenario('drop-delay', seed, { env: { ...process.env, DRAFTWIRE_BUS_FAULTS: faultsEnv } }, async (_job, _rnd, faults) => {
        faults.push(`DRAFTWIRE_BUS_FAULTS=${faultsEnv} in every process`);
      });
      assertInvariants(res);
    });

    it(`a client with the wrong secret cannot join (seed ${seed})`, async () => {
      const secret = `chaos-secret-${seed}-0123456789abcdef`;
      const { res } = await scenario('wrong-secret', seed, { env: { ...process.env, DRAFTWIRE_SECRET: secret } }, async (job, _rnd, faults) => {
        await job.waitStep(2);
        const url = (JSON.parse(readFileSync(join(job.runDir, 'run.json'), 'utf8')) as { nats: string }).nats;
        const pid = await job.waitRank(); // held (well inside its lease) so the job is live while the intruder tries
        process.kill(pid, 'SIGSTOP');
        let refused = '';
        try {
          const bad = await Bus.connect({ servers: url, job: job.o.job, auth: AuthPolicy.fromSecret('not-the-secret-0123456789'), name: 'intruder', reconnect: false });
          await bad.request(bad.subjects.queue.ack, { leaseId: 'x', epoch: 1 }, { timeoutMs: 500, retries: 0 }).catch((e: Error) => { refused = e.message; });
          await bad.close();
        } catch (e) { refused = (e as Error).message; } finally { process.kill(pid, 'SIGCONT'); }
        faults.push(`a client with a wrong secret connects and sends an ack: ${refused ? `refused (${refused.slice(0, 80)})` : 'NOT refused'}`);
        assert.match(refused, /credential|auth/i, 'the wrong secret was refused');
      });
      assertInvariants(res);
    });

    it(`reshard (draftwire scale 1 -> 2 -> 1) while training, alone (seed ${seed})`, async () => {
      const { res, job } = await scenario('reshard', seed, { leaseMs: 30_000, deadAfterMs: 30_000, steps: 5 * STEPS, expect: () => ({ steps: null }) }, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        // The tiny job would finish before a CLI process starts: hold the rank (well inside its
        // 30 s lease and heartbeat deadline) while the CLI runs, so the reshard hits a live job.
        const pid = await job.waitRank();
        process.kill(pid, 'SIGSTOP');
        faults.push(`rank pid ${pid} held with SIGSTOP while the scale CLI runs (lease 30 s: nothing expires)`);
        let wide;
        try { wide = scale(job, 2); } finally { process.kill(pid, 'SIGCONT'); }
        assert.equal(wide.status, 0, wide.stderr);
        faults.push(`draftwire scale --dp 2 at step ${step}: ${wide.stdout.trim()}`);
        // Back to dp 1 through the coordinator's API (no CLI start-up) once the dp 2 world trained.
        const bus = await jobBus(job);
        try {
          while (!/world formed epoch=2 dp=2/.test(rankLog(job))) { if (job.proc.exitCode !== null) throw new Error('job ended before the dp 2 world formed'); await sleep(20); }
          const r = await bus.request<{ from: { epoch: number }; to: { epoch: number; partitions: number } }>(bus.subjects.coord.scale, { dp: 1 }, { timeoutMs: 10_000 });
          assert.equal(r.to.partitions, 1);
          faults.push(`scale to dp 1 (coordinator API) once the dp 2 world formed: epoch ${r.from.epoch} -> ${r.to.epoch}`);
        } finally { await bus.close(); }
      });
      assertInvariants(res);
      const epochs = ledgerOf(job.runDir).filter((e) => e.type === 'epoch').map((e) => (e as { epoch: number }).epoch);
      assert.ok(epochs.includes(2) && epochs.includes(3), `the ledger moved to epochs 2 and 3: ${epochs}`);
      assert.match(rankLog(job), /joined epoch=2 num=2/, 'rank 0 re-joined under epoch 2 (dp 2)');
      assert.match(rankLog(job), /joined epoch=3 num=1/, 'and under epoch 3 (dp 1)');
    });

    it(`reshard to dp 2 combined with a rank SIGKILL (seed ${seed})`, async () => {
      const { res, job, summary } = await scenario('reshard-kill-rank', seed, { steps: 3 * STEPS, expect: () => ({ steps: null }) }, async (job, rnd, faults) => {
        const step = at(rnd);
        await job.waitStep(step);
        const pid = await job.waitRank();
        // The coordinator's API (what the CLI calls), from a client already connected: the
        // tiny job would finish before a CLI process starts.
        const bus = await jobBus(job);
        try {
          const wide = bus.request<{ from: { epoch: number }; to: { epoch: number } }>(bus.subjects.coord.scale, { dp: 2 }, { timeoutMs: 10_000, retries: 2 });
          process.kill(pid, 'SIGKILL');
          const r = await wide;
          faults.push(`scale to dp 2 (coordinator API: epoch ${r.from.epoch} -> ${r.to.epoch}; rank 1 spawned) and SIGKILL of rank 0 pid ${pid} at step ${step}`);
        } finally { await bus.close(); }
      });
      assertInvariants(res);
      assert.ok(ledgerOf(job.runDir).some((e) => e.type === 'epoch' && (e as { epoch: number }).epoch >= 2));
      assert.equal(summary.rankRestarts, 1, 'rank 0 was replaced');
      assert.ok(summary.dpHistory.includes(2), `trained at dp 2: ${JSON.stringify(summary.dpHistory)}`);
    });

    // A corrupted sample: the rank's read verifies block checksums (ChecksumError), fails the
    // lease non-retryably, and the ledger dead-letters the sample. One sample fewer than
    // steps x batch is trained: the last step is one short.
    for (const reshard of [false, true]) {
      it(`corrupted sample file (bytes flipped in its tensor data)${reshard ? ' combined with a reshard' : ''}: checksum failure, dead-lettered (seed ${seed})`, async () => {
        let corrupted = '';
        const { res, job, summary } = await scenario(reshard ? 'reshard-corrupt-sample' : 'corrupt-sample', seed, {
          leaseMs: 10_000, expect: () => ({ dead: { sampleIds: [corrupted], reason: /checksum/i } }),
        }, async (job, rnd, faults) => { corrupted = await corruptUnreadSample(job, rnd, faults, { reshard }); });
        assertInvariants(res);
        assert.equal(summary.samples, ROWS - 1, 'every sample but the corrupted one was trained');
        assert.match(rankLog(job), new RegExp(`sample unreadable; failing its lease.*${corrupted}.*checksum`), 'the rank failed the corrupted sample\'s lease');
        if (reshard) assert.ok(ledgerOf(job.runDir).some((e) => e.type === 'epoch' && (e as { epoch: number }).epoch === 2), 'the ledger moved to epoch 2');
      });
    }

    // A full disk: the store directory is a small tmpfs (a real filesystem that fills up, well
    // below the store's own high watermark, so writes really fail with ENOSPC). The rank is held
    // until the rollout has met ENOSPC, so the fault happens whatever the speeds. A failed put
    // publishes nothing; the rollout backs off and writes again once the janitor has freed
    // consumed samples. Samples are 128 tokens here (67760-byte files, 17 pages); tombstones and
    // generation records take a page each and stay for the whole run, so the size is: those,
    // plus slack for locks and records in flight, plus 13 samples (at least one rollout chunk
    // written ahead, 8, plus a batch, 4: fewer could starve the rank). About 19 samples fit
    // at the start, 13 at the end, of the job's ${ROWS}.
    const SEQ = 128, SAMPLE_PAGES = 17;
    const DISK_KIB = 4 * (2 * ROWS + 1 + 24 + 13 * SAMPLE_PAGES);
    it(`full disk: the store's filesystem fills up (ENOSPC), the rollout backs off until the janitor frees space (seed ${seed})`, async () => {
      let mnt: string | null = null;
      try {
        const { res, job } = await scenario('disk-full', seed, {
          leaseMs: 30_000, deadAfterMs: 30_000,
          // --store-high-mb far above the tmpfs: the write hits ENOSPC, not the watermark's backpressure.
          // --keep-store: the store directory (a mount point) outlives the run, to be inspected and unmounted here.
          extra: ['--seq-len', String(SEQ), '--store-high-mb', '64', '--keep-store'],
          before: (runDir) => { mountTmpfs(join(runDir, 'store'), DISK_KIB); mnt = join(runDir, 'store'); },
          expect: () => ({ dead: { sampleIds: [], reason: /.^/ }, keptStore: mnt! }),
        }, async (job, rnd, faults) => {
          faults.push(`store directory on a ${DISK_KIB} KiB tmpfs (about ${Math.floor(DISK_KIB / 4 / SAMPLE_PAGES)} samples of ${SEQ} tokens; store high watermark 64 MiB)`);
          const pid = await job.waitRank();
          process.kill(pid, 'SIGSTOP'); // within its 30 s lease and heartbeat deadline
          try {
            const end = Date.now() + 60_000;
            while (!/ENOSPC/.test(job.stderr)) { // the rollout's warning (or, were it to crash on it, the crash)
              if (Date.now() > end || job.proc.exitCode !== null) throw new Error(`the rollout never met a full disk; stderr:\n${job.stderr.slice(-3000)}`);
              await sleep(50);
            }
            const ms = 500 + Math.floor(rnd() * 1000);
            await sleep(ms); // the rollout retries against the full disk meanwhile
            faults.push(`rank pid ${pid} held (SIGSTOP) until the rollout met ENOSPC, then ${ms} ms more; store writes failing meanwhile`);
          } finally { try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ } }
        });
        const resumed = [...job.stderr.matchAll(/store has space again; rollout resumed refusedWrites=(\d+)/g)].at(-1);
        res.faults.push(`rollout: ${(job.stderr.match(/store disk full \(ENOSPC\)/g) ?? []).length} full-disk episode(s), ${resumed?.[1] ?? 'no'} writes refused with ENOSPC in all`);
        assertInvariants(res);
        const crashes = job.stderr.split('\n').filter((l) => /rollout/.test(l) && /actor crashed|restarted too often/.test(l));
        assert.deepEqual(crashes, [], 'a full disk is waited out, not a crash loop');
        assert.match(job.stderr, /store disk full \(ENOSPC\)/, 'the rollout met ENOSPC and said so');
        assert.match(job.stderr, /store has space again; rollout resumed/, 'the rollout resumed once space was freed');
      } finally {
        if (mnt) unmountTmpfs(mnt);
      }
    });
  }
});
