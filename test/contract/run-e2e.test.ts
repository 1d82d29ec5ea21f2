// `draftwire run` end to end as a user runs it: a real process that starts its own
// nats-server, actors and a rank process; `status` while it trains; `audit` afterwards;
// nothing left running and no store files left behind.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile } from '../../src/store/safetensors.ts';
import { TRAINABLE_NAMES } from '../../src/native/addon.ts';
import { jobFile, loadJobSpec, validateJobSpec } from '../../src/job/spec.ts';

const CLI = 'bin/draftwire.js';
const childPids = (ppid: number) => spawnSync('pgrep', ['-P', String(ppid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
/** Children still alive after up to `ms` (exited processes may take a moment to be reaped). */
async function survivors(pids: Iterable<number>, ms = 5000): Promise<number[]> {
  const end = Date.now() + ms;
  let left = [...pids].filter(alive);
  while (left.length > 0 && Date.now() < end) { await new Promise((r) => setTimeout(r, 100)); left = left.filter(alive); }
  return left;
}

describe('draftwire run (end to end)', function () {
  this.timeout(240_000);
  const workdir = mkdtempSync(join(tmpdir(), 'draftwire-e2e-'));
  after(() => rmSync(workdir, { recursive: true, force: true }));

  it('trains, reports status while running, writes a checkpoint and a clean audit, and cleans up', async () => {
    const proc = spawn(process.execPath, [CLI, 'run', '--size', 'tiny', '--steps', '40', '--batch', '4', '--eval-every', '20', '--workdir', workdir, '--job', 'e2e', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    proc.stdout.on('data', (d: Buffer) => { out += d; });
    proc.stderr.on('data', (d: Buffer) => { err += d; });
    const exited = new Promise<number | null>((r) => proc.on('exit', (c) => r(c)));

    // status while it trains
    let status: Record<string, any> | null = null;
    const children = new Set<number>(); // nats-server and rank processes the run started
    for (let i = 0; i < 200 && !status; i++) {
      await new Promise((r) => setTimeout(r, 250));
      for (const p of childPids(proc.pid!)) children.add(p);
      if (!existsSync(join(workdir, 'e2e', 'run.json'))) continue;
      const s = spawnSync(process.execPath, [CLI, 'status', '--job', 'e2e', '--workdir', workdir, '--json'], { encoding: 'utf8' });
      if (s.status === 0) {
        const j = JSON.parse(s.stdout);
        if (j.queue && !j.queue.error && j.coordinator?.members?.length) status = j;
      }
    }
    assert.ok(status, `status never answered; run stderr:\n${err}`);
    assert.equal(status!.queue.epoch, 1);
    assert.equal(status!.coordinator.members[0].rank, 0);
    // Every role held by the run's one node, under its first term.
    assert.deepEqual(status!.roles.map((r: { role: string; node: string; term: number }) => `${r.role}@${r.node}:${r.term}`).sort(),
      ['coordinator@local:1', 'janitor@local:1', 'queue@local:1', 'rollout@local:1']);

    assert.equal(await exited, 0, `run failed:\n${err}`);
    const summary = JSON.parse(out.trim().split('\n').at(-1)!);
    assert.equal(summary.steps, 40);
    assert.equal(summary.samples, 160);
    assert.ok(summary.audit.ok, summary.audit.problems.join('\n'));
    assert.equal(summary.audit.consumed, 160);
    const first = summary.lossCurve.slice(0, 5).reduce((a: number, b: number) => a + b) / 5;
    const last = summary.lossCurve.slice(-5).reduce((a: number, b: number) => a + b) / 5;
    assert.ok(last < first, `loss should fall: first ${first}, last ${last}`);

    const ckpt = await readSafetensorsFile(summary.checkpoint);
    for (const n of [...TRAINABLE_NAMES, 'd2t']) assert.ok(ckpt.tensors[n], `checkpoint holds ${n}`);
    assert.equal(ckpt.metadata.step, '40');
    assert.ok(existsSync(summary.checkpoint.replace('.safetensors', '.optim.safetensors')));

    const audit = spawnSync(process.execPath, [CLI, 'audit', '--job', 'e2e', '--workdir', workdir, '--json'], { encoding: 'utf8' });
    assert.equal(audit.status, 0, audit.stderr);
    const rep = JSON.parse(audit.stdout);
    assert.equal(rep.ok, true);
    assert.equal(rep.consumed, 160);
    const dump = spawnSync(process.execPath, [CLI, 'audit', '--job', 'e2e', '--workdir', workdir, '--dump'], { encoding: 'utf8' });
    const lines = dump.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.filter((e) => e.type === 'ack').length, 160);

    assert.ok(!existsSync(join(workdir, 'e2e', 'store')), 'the store directory is removed');
    assert.ok(!existsSync(join(workdir, 'e2e', 'run.json')), 'run.json is removed');
    assert.ok(children.size >= 2, `saw the run's nats-server and rank: ${[...children]}`);
    assert.deepEqual(await survivors(children), [], 'no process of the run left running');
    assert.equal(JSON.parse(readFileSync(join(workdir, 'e2e', 'summary.json'), 'utf8')).job, 'e2e');
  });

  it('with a secret: only the right secret reaches the job, and SIGINT stops everything', async () => {
    const secret = 'e2e-secret-0123456789abcdef';
    const env = { ...process.env, DRAFTWIRE_SECRET: secret };
    const proc = spawn(process.execPath, [CLI, 'run', '--size', 'tiny', '--steps', '100000', '--batch', '2', '--eval-every', '0', '--workdir', workdir, '--job', 'authjob'], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let err = '';
    proc.stderr.on('data', (d: Buffer) => { err += d; });
    const exited = new Promise<number | null>((r) => proc.on('exit', (c, sig) => r(c ?? (sig ? 128 : null))));
    const children = new Set<number>();
    const status = (e: NodeJS.ProcessEnv) => spawnSync(process.execPath, [CLI, 'status', '--job', 'authjob', '--workdir', workdir, '--json'], { encoding: 'utf8', env: e });
    let ok = null;
    for (let i = 0; i < 200 && !ok; i++) {
      await new Promise((r) => setTimeout(r, 250));
      for (const p of childPids(proc.pid!)) children.add(p);
      if (!existsSync(join(workdir, 'authjob', 'run.json'))) continue;
      const s = status(env);
      if (s.status === 0 && JSON.parse(s.stdout).coordinator?.members?.length) ok = JSON.parse(s.stdout);
    }
    assert.ok(ok, `status with the right secret never answered:\n${err}`);
    const { DRAFTWIRE_SECRET: _drop, ...noSecret } = process.env;
    const missing = status(noSecret);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /AUTH/);
    const wrong = status({ ...process.env, DRAFTWIRE_SECRET: 'not-the-secret-0123456789' });
    assert.equal(wrong.status, 1);
    assert.match(wrong.stderr, /AUTH/);
    proc.kill('SIGINT');
    assert.equal(await exited, 130, err.slice(-2000));
    for (const p of childPids(proc.pid!)) children.add(p);
    assert.ok(children.size >= 2);
    assert.deepEqual(await survivors(children), [], 'SIGINT left no process of the run behind');
    assert.ok(!existsSync(join(workdir, 'authjob', 'store')), 'the store directory is removed');
  });

  it('--backend resident-host: the rank trains on the resident step (what --backend cuda runs on a GPU) and its job equals the CPU step\'s', async () => {
    const run = (backend: string) => {
      const r = spawnSync(process.execPath, [CLI, 'run', '--size', 'tiny', '--steps', '20', '--batch', '4', '--eval-every', '0', '--workdir', workdir,
        '--job', `bk-${backend}`, '--backend', backend, '--json'], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { runDir: string; backend: string; steps: number; lossCurve: number[]; audit: { ok: boolean; problems: string[] }; checkpoint: string };
    };
    const [cpu, res] = [run('cpu'), run('resident-host')];
    assert.equal(cpu.backend, 'cpu');
    assert.equal(res.backend, 'resident-host');
    // the job spec carries it, and refuses a sharded world or an unknown backend by name
    const spec = loadJobSpec(jobFile(res.runDir));
    assert.equal(spec.backend, 'resident-host');
    assert.throws(() => validateJobSpec({ ...spec, dp: 2 }), /job spec: backend "resident-host" trains one unsharded rank; dp·tp·sp is 2/);
    assert.throws(() => validateJobSpec({ ...spec, backend: 'gpu' }), /job spec: "backend" must be one of cpu, cuda, resident-host, got "gpu"/);
    assert.equal(res.steps, 20);
    assert.ok(res.audit.ok, res.audit.problems.join('\n'));
    // the same seeded job: the same samples in the same order, so the same losses to float rounding
    assert.equal(res.lossCurve.length, cpu.lossCurve.length);
    res.lossCurve.forEach((l, i) => assert.ok(Math.abs(l - cpu.lossCurve[i]!) <= 1e-5 * Math.abs(cpu.lossCurve[i]!), `step ${i + 1}: loss ${l} vs the CPU step's ${cpu.lossCurve[i]}`));
    const [a, b] = [await readSafetensorsFile(cpu.checkpoint), await readSafetensorsFile(res.checkpoint)];
    for (const n of TRAINABLE_NAMES) {
      const x = a.tensors[n]!.data as Float32Array, y = b.tensors[n]!.data as Float32Array;
      let d = 0, m = 0;
      for (let i = 0; i < x.length; i++) { d = Math.max(d, Math.abs(x[i]! - y[i]!)); m = Math.max(m, Math.abs(x[i]!)); }
      assert.ok(d <= 1e-4 * m, `checkpoint ${n}: max |Δ| ${d} vs max ${m}`);
    }
  });

  it('rejects bad options with exit code 2 and a message naming the option', () => {
    const r = spawnSync(process.execPath, [CLI, 'run', '--steps', '0', '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--steps must be a positive integer/);
    const r2 = spawnSync(process.execPath, [CLI, 'run', '--size', 'huge', '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r2.status, 2);
    assert.match(r2.stderr, /size/);
    const r4 = spawnSync(process.execPath, [CLI, 'run', '--dataset', join(workdir, 'missing.jsonl'), '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r4.status, 2);
    assert.match(r4.stderr, /cannot read dataset .*missing\.jsonl/);
    const r5 = spawnSync(process.execPath, [CLI, 'run', '--backend', 'resident-host', '--dp', '2', '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r5.status, 2);
    assert.match(r5.stderr, /--backend resident-host trains one unsharded rank: --dp, --tp and --sp must be 1 \(got 2, 1, 1\)/);
    const r6 = spawnSync(process.execPath, [CLI, 'run', '--backend', 'gpu', '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r6.status, 2);
    assert.match(r6.stderr, /--backend.*Allowed choices are cpu, cuda, resident-host/);
    const r3 = spawnSync(process.execPath, [CLI, 'audit', '--job', 'nope', '--workdir', workdir], { encoding: 'utf8' });
    assert.equal(r3.status, 2);
    assert.match(r3.stderr, /no running job/);
  });
});
