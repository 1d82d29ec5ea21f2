// Elastic data parallelism with real processes (issue 5): a job trains a data-parallel world
// of rank processes (Gloo all-reduce between them), scales 1 → 3 → 1 while it trains (watched
// with `draftwire status`), and survives the loss of one rank of a world, replaced or shrunk.
// Each scenario ends with the chaos suite's invariants (test/support/chaos.ts): audit clean,
// every committed sample consumed exactly once, store empty, no process left.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';
import { ChaosJob, checkInvariants, formatReport, newWorkdir, sleep, type ChaosResult } from '../support/chaos.ts';

const CLI = 'bin/draftwire.js';
const BATCH = 4;

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const results: ChaosResult[] = [];

/** Checks the chaos suite's invariants after a job (its step count varies with the width), records them for the report, asserts them. */
async function settle(scenario: string, faults: string[], job: ChaosJob, r: { code: number | null; summary: any }, rows: number, t0: number): Promise<void> {
  const invariants = await checkInvariants(job, r, { steps: null, rows });
  results.push({ scenario, seed: 0, faults, invariants, seconds: (Date.now() - t0) / 1000 });
  const bad = invariants.filter((i) => !i.ok);
  assert.equal(bad.length, 0, bad.map((i) => `${i.name}: ${i.detail}`).join('\n'));
}

/** The pid of rank `rank`'s process (the latest incarnation), or null. */
function rankPid(job: ChaosJob, rank: number): number | null {
  return job.track().filter((p) => p.args.includes('rank-main.ts') && p.args.includes(`--rank ${rank} `)).at(-1)?.pid ?? null;
}

async function until<T>(what: string, fn: () => T | null | undefined | false, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

describe('elastic data parallelism (real rank processes, Gloo)', function () {
  this.timeout(240_000);
  const workdir = newWorkdir();
  after(() => {
    process.stdout.write(formatReport(results).replace('chaos report\n============', 'elastic report\n=============='));
    rmSync(workdir, { recursive: true, force: true });
  });

  it('run --dp 2 trains one data-parallel world to the end of its data; the checkpoint loads elsewhere', async () => {
    const steps = 12;
    const t0 = Date.now();
    const job = new ChaosJob({ workdir, job: 'dp2', steps, batch: BATCH, extra: ['--dp', '2'] });
    const r = await job.finish();
    await settle('run --dp 2', ['none: a data-parallel world of 2 rank processes'], job, r, steps * BATCH * 2, t0);
    const s = r.summary;
    assert.deepEqual(s.dpHistory, [2]);
    assert.equal(s.samples, steps * BATCH * 2, 'every sample trained once (the sum of the steps\' global batches)');
    assert.ok(s.steps >= steps, `at least ${steps} steps (short steps pad): ${s.steps}`);
    for (const rank of [0, 1]) assert.match(readFileSync(join(job.runDir, `rank-${rank}.log`), 'utf8'), /world formed epoch=1 dp=2 index=\d/);
    const ck = await readSafetensorsFile(s.checkpoint);
    assert.equal(ck.metadata.step, String(s.steps));
    assert.ok(s.lastLoss < s.firstLoss, `loss falls: ${s.firstLoss} -> ${s.lastLoss}`);
  });

  it('scales 1 → 3 → 1 while training, watched with draftwire status; audit clean', async () => {
    // 4000 samples: a world of 3 trains them three times as fast, and must not run out of data
    // while the test watches it (status calls are processes of their own, seconds under load).
    const steps = 1000;
    const t0 = Date.now(), faults: string[] = [];
    const job = new ChaosJob({ workdir, job: 'scale', steps, batch: BATCH, leaseMs: 5000 });
    await job.waitStep(10);
    const up = cli(['scale', '--workdir', workdir, '--job', 'scale', '--dp', '3', '--json']);
    assert.equal(up.status, 0, up.stderr);
    const u = JSON.parse(up.stdout);
    assert.equal(u.to.partitions, 3);
    assert.deepEqual(u.spawned.map((x: { rank: number }) => x.rank), [1, 2]);
    faults.push(`draftwire scale --dp 3 at step ${job.checkpointStep()}: epoch ${u.from.epoch} -> ${u.to.epoch}, spawned ranks 1, 2`);
    const stepAtUp = job.checkpointStep();
    // The status view shows the three members training at the new epoch.
    const status3 = await until('3 members training at the new epoch', () => {
      const st = cli(['status', '--workdir', workdir, '--job', 'scale', '--json']);
      if (st.status !== 0) return null;
      const c = JSON.parse(st.stdout).coordinator;
      const live = (c.members ?? []).filter((m: any) => m.alive && m.member && m.epoch === u.to.epoch && m.step > stepAtUp);
      return live.length === 3 ? c : null;
    });
    assert.deepEqual(status3.epoch.members, [0, 1, 2]);
    const text = cli(['status', '--workdir', workdir, '--job', 'scale']);
    assert.match(text.stdout, /data-parallel width 3, members \(world rank order\) \[0, 1, 2\]/);
    const down = cli(['scale', '--workdir', workdir, '--job', 'scale', '--dp', '1']);
    assert.equal(down.status, 0, down.stderr);
    assert.match(down.stdout, /-> epoch \d+ \(dp 1\); retiring ranks 1, 2/);
    faults.push(`draftwire scale --dp 1 at step ${job.checkpointStep()}: ${down.stdout.trim()}`);
    const r = await job.finish();
    await settle('scale 1 -> 3 -> 1', faults, job, r, steps * BATCH, t0);
    assert.deepEqual(r.summary.dpHistory, [1, 3, 1], 'a world of 1 trained after the scale-down (not: the data ran out at dp 3 first)');
    for (const rank of [1, 2]) assert.match(readFileSync(join(job.runDir, `rank-${rank}.log`), 'utf8'), /retired by a scale-down/);
    assert.match(job.stderr, /rank exited rank=1 pid=\d+ code=0/);
    const audit = cli(['audit', '--workdir', workdir, '--job', 'scale', '--json']);
    assert.equal(audit.status, 0, audit.stderr);
    assert.equal(JSON.parse(audit.stdout).ok, true);
  });

  /** A dp 2 job of `steps` (leases of 60 s) whose rank 1 gets `signal` after checkpoint step 8. */
  async function signalRank1(name: string, steps: number, signal: NodeJS.Signals) {
    const job = new ChaosJob({ workdir, job: name, steps, batch: BATCH, leaseMs: 60_000, deadAfterMs: 3000, extra: ['--dp', '2'] });
    await job.waitStep(8);
    const pid = await until('rank 1 process', () => rankPid(job, 1));
    process.kill(pid, signal);
    return { job, pid, t0: Date.now() };
  }

  it('SIGKILL of one rank of a dp 2 world: the world reverts to its checkpoint and re-forms with the replacement', async () => {
    const steps = 60;
    // Leases of 60 s: the dead rank's samples come back because its node revokes them, not by expiry.
    const { job, pid, t0 } = await signalRank1('dpkill', steps, 'SIGKILL');
    const r = await job.finish();
    assert.ok(Date.now() - t0 < 45_000, `finished ${Date.now() - t0} ms after the kill, without waiting out the 60 s leases`);
    await settle('dp 2, rank SIGKILL', [`SIGKILL rank 1 pid ${pid} after checkpoint step 8 (leases of 60 s)`], job, r, steps * BATCH * 2, t0);
    assert.match(job.stderr, /leases of a gone consumer revoked consumer=rank-1 count=\d+/);
    assert.equal(r.summary.rankRestarts, 1);
    assert.deepEqual(r.summary.dpHistory, [2]);
    const log0 = readFileSync(join(job.runDir, 'rank-0.log'), 'utf8');
    assert.match(log0, /collective group failed; reverting to the latest checkpoint/);
    assert.match(log0, /world formed epoch=[2-9] dp=2/);
  });

  it('SIGSTOP of one rank of a dp 2 world: declared dead by heartbeat, killed, replaced; the world re-forms', async () => {
    const steps = 60;
    const { job, pid, t0 } = await signalRank1('dpstop', steps, 'SIGSTOP');
    try {
      const r = await job.finish();
      await settle('dp 2, rank SIGSTOP', [`SIGSTOP rank 1 pid ${pid} after checkpoint step 8, never resumed (dead after 3000 ms without heartbeat)`], job, r, steps * BATCH * 2, t0);
      assert.equal(r.summary.rankRestarts, 1);
      assert.match(job.stderr, new RegExp(`rank declared dead: no heartbeat rank=1 pid=${pid}`));
      assert.match(readFileSync(join(job.runDir, 'rank-0.log'), 'utf8'), /collective group failed; reverting/);
    } finally { try { process.kill(pid, 'SIGCONT'); process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  });

  it('SIGKILL of the run process of a dp 2 job, then run --resume: the world re-forms under a new epoch', async () => {
    const steps = 40;
    const job = new ChaosJob({ workdir, job: 'dpresume', steps, batch: BATCH, leaseMs: 3000, extra: ['--dp', '2'] });
    await job.waitStep(6);
    job.track();
    const t0 = Date.now();
    process.kill(job.proc.pid!, 'SIGKILL');
    await job.exited;
    const next = new ChaosJob({ workdir, job: 'dpresume', resume: true });
    for (const p of job.seen) next.seen.add(p);
    const r = await next.finish();
    await settle('dp 2, run process SIGKILL + --resume', [`SIGKILL the run process pid ${job.proc.pid} after checkpoint step 6`, 'draftwire run --resume'], next, r, steps * BATCH * 2, t0);
    assert.ok(r.summary.resumedFromStep > 0, `resumed from a checkpoint (step ${r.summary.resumedFromStep})`);
    assert.deepEqual(r.summary.dpHistory, [2]);
    assert.match(readFileSync(join(next.runDir, 'rank-1.log'), 'utf8'), /world formed epoch=2 dp=2 index=1/);
  });

  it('with --on-rank-loss shrink, a lost rank leaves the world and the job finishes at dp 1', async () => {
    const steps = 40;
    const t0 = Date.now();
    const job = new ChaosJob({ workdir, job: 'shrink', steps, batch: BATCH, leaseMs: 3000, deadAfterMs: 3000, extra: ['--dp', '2', '--on-rank-loss', 'shrink'] });
    await job.waitStep(6);
    const pid = await until('rank 1 process', () => rankPid(job, 1));
    process.kill(pid, 'SIGKILL');
    const r = await job.finish();
    await settle('dp 2 --on-rank-loss shrink, rank SIGKILL', [`SIGKILL rank 1 pid ${pid} after checkpoint step 6`], job, r, steps * BATCH * 2, t0);
    assert.deepEqual(r.summary.ranksLost, [1]);
    assert.deepEqual(r.summary.dpHistory, [2, 1]);
    assert.equal(r.summary.rankRestarts, 0);
  });

  it('with --tp 2: scale 1 -> 2 spawns a whole cell; a lost rank under shrink takes its cell out', async () => {
    const steps = 150;
    const t0 = Date.now();
    const job = new ChaosJob({ workdir, job: 'cells', steps, batch: BATCH, leaseMs: 5000, deadAfterMs: 3000, extra: ['--tp', '2', '--on-rank-loss', 'shrink'] });
    await job.waitStep(5);
    const up = cli(['scale', '--workdir', workdir, '--job', 'cells', '--dp', '2', '--json']);
    assert.equal(up.status, 0, up.stderr);
    const u = JSON.parse(up.stdout);
    assert.deepEqual(u.to.members, [0, 1, 2, 3]);
    assert.deepEqual(u.spawned.map((x: { rank: number }) => x.rank), [2, 3], 'a whole TP cell for DP index 1');
    await until('the dp 2 world formed', () => /world formed epoch=2 dp=2 index=3 dpIdx=1 leader=false/.test(readFileSync(join(job.runDir, 'rank-3.log'), 'utf8')));
    await job.waitStep(job.checkpointStep() + 3);
    const pid = await until('rank 3 process', () => rankPid(job, 3));
    const killedAt = job.checkpointStep();
    process.kill(pid, 'SIGKILL');
    const r = await job.finish();
    await settle('tp 2 cells: scale 1 -> 2, then a rank SIGKILL under shrink', ['draftwire scale --dp 2 (spawned ranks 2, 3: one TP cell)', `SIGKILL rank 3 pid ${pid} (not its cell's leader) at step ${killedAt}`], job, r, steps * BATCH, t0);
    assert.deepEqual(r.summary.ranksLost, [3]);
    assert.deepEqual(r.summary.dpHistory, [1, 2, 1]);
    assert.match(readFileSync(join(job.runDir, 'rank-2.log'), 'utf8'), /retired by a scale-down/, 'its cell partner retired with it');
  });

  it('refuses bad widths and layouts with exit 2 and a message naming them', () => {
    const tp = cli(['run', '--size', 'tiny', '--tp', '3', '--workdir', workdir, '--job', 'bad']);
    assert.equal(tp.status, 2);
    assert.match(tp.stderr, /--tp 3 --sp 1: config.kvHeads \(2\) must be divisible by tp \(3\)/);
    const sp = cli(['run', '--size', 'tiny', '--sp', '5', '--workdir', workdir, '--job', 'bad']);
    assert.equal(sp.status, 2);
    assert.match(sp.stderr, /--sp 5: the sequence has 32 positions, which --sp 5 does not divide/);
    const zero = cli(['scale', '--job', 'nope', '--dp', '0', '--workdir', workdir]);
    assert.equal(zero.status, 2);
    assert.match(zero.stderr, /--dp/);
    const none = cli(['scale', '--job', 'nope', '--dp', '2', '--workdir', workdir]);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /job nope is not running here/);
  });
});
