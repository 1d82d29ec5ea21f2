// One mode policy for everything a job writes (src/files.ts): after a real `draftwire run`
// every file under the run directory is 0640 and every directory 0750, whatever the umask,
// and nothing is group- or world-writable. The embedded nats-server's store is the one
// exception: the launcher makes its directory 0700 (stricter), the server writes 0640/0750.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DIR_MODE, FILE_MODE } from '../../src/files.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'draftwire.js');

/** Every path under `dir` with its permission bits (type letter f/d/l). */
function walk(dir: string, out: { path: string; kind: string; mode: number }[] = []): typeof out {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    out.push({ path: p, kind: st.isDirectory() ? 'd' : st.isFile() ? 'f' : 'l', mode: st.mode & 0o777 });
    if (st.isDirectory()) walk(p, out);
  }
  return out;
}

const oct = (m: number) => '0' + m.toString(8);

function checkModes(runDir: string, opts: { natsStore?: boolean } = {}): number {
  const entries = walk(runDir);
  const rel = (p: string) => relative(runDir, p);
  const bad: string[] = [];
  for (const e of entries) {
    if (e.mode & 0o022) bad.push(`${rel(e.path)} ${oct(e.mode)} is group- or world-writable`);
    if (e.mode & 0o007) bad.push(`${rel(e.path)} ${oct(e.mode)} is open to others`);
    const want = rel(e.path) === 'nats' && opts.natsStore ? 0o700 : e.kind === 'd' ? DIR_MODE : FILE_MODE;
    if (e.kind === 'l') bad.push(`${rel(e.path)} is a symlink`);
    else if (e.mode !== want) bad.push(`${rel(e.path)} (${e.kind}) is ${oct(e.mode)}, want ${oct(want)}`);
  }
  const top = lstatSync(runDir).mode & 0o777;
  if (top !== DIR_MODE) bad.push(`the run directory is ${oct(top)}, want ${oct(DIR_MODE)}`);
  assert.deepEqual(bad, [], bad.join('\n'));
  return entries.length;
}

/** `draftwire run` under the given umask (a shell sets it; the CLI inherits it). */
function runUnderUmask(umask: string, args: string[]) {
  const quoted = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const proc = spawn('/bin/sh', ['-c', `umask ${umask} && exec ${quoted}`], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn' } });
  let err = '';
  proc.stderr.on('data', (d: Buffer) => { err += d; });
  proc.stdout.resume();
  const exited = new Promise<number | null>((r) => proc.on('exit', (c, sig) => r(c ?? (sig ? 128 : null))));
  return { proc, exited, err: () => err };
}

describe('run outputs: one mode policy (0640 files, 0750 dirs)', function () {
  this.timeout(180_000);
  const workdir = mkdtempSync(join(tmpdir(), 'draftwire-modes-'));
  after(() => rmSync(workdir, { recursive: true, force: true }));

  it('a finished run (umask 022, --keep-store): weights, checkpoint, optimizer state, job.json, logs, summary, ledger, store', async () => {
    const r = runUnderUmask('022', ['run', '--size', 'tiny', '--steps', '4', '--batch', '2', '--eval-every', '0', '--eval-prompts', '2',
      '--workdir', workdir, '--job', 'modes', '--no-progress', '--keep-store', '--json']);
    assert.equal(await r.exited, 0, r.err());
    const runDir = join(workdir, 'modes');
    for (const f of ['job.json', 'init.safetensors', 'checkpoint.safetensors', 'checkpoint.optim.safetensors', 'summary.json', 'ledger.jsonl', 'rank-0.log', 'store']) {
      assert.ok(existsSync(join(runDir, f)), `the run wrote ${f}`);
    }
    assert.ok(checkModes(runDir) > 10);
  });

  it('an interrupted run (umask 000): rank checkpoints and the NATS store, still nothing writable by others', async () => {
    const r = runUnderUmask('000', ['run', '--size', 'tiny', '--steps', '100000', '--batch', '2', '--eval-every', '0', '--eval-prompts', '2',
      '--workdir', workdir, '--job', 'modes0', '--no-progress']);
    const runDir = join(workdir, 'modes0');
    for (let i = 0; i < 300 && !existsSync(join(runDir, 'ckpt', 'latest.json')); i++) await new Promise((res) => setTimeout(res, 100));
    assert.ok(existsSync(join(runDir, 'ckpt', 'latest.json')), `no rank checkpoint was committed:\n${r.err()}`);
    r.proc.kill('SIGINT');
    assert.equal(await r.exited, 130, r.err());
    assert.ok(readdirSync(join(runDir, 'ckpt')).some((f) => f.endsWith('.optim.safetensors')), 'optimizer state is checkpointed');
    assert.ok(existsSync(join(runDir, 'nats')), 'the ledger store stays for --resume');
    checkModes(runDir, { natsStore: true });
  });
});
