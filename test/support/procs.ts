// Child processes for tests: spawn a TypeScript entry point under tsx, wait for a line on
// stdout, kill with real signals, and make sure nothing outlives the test.
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'draftwire.js');

const live = new Set<ChildProcess>();
process.on('exit', () => { for (const p of live) p.kill('SIGKILL'); });

export interface Child { proc: ChildProcess; output(): string; exited: Promise<number | null> }

export function spawnTs(script: string, args: string[], env: NodeJS.ProcessEnv = process.env, nodeArgs: string[] = []): Child {
  const proc = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  live.add(proc);
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((r) => proc.on('exit', (code, sig) => { live.delete(proc); r(code ?? (sig ? 128 : null)); }));
  return { proc, output: () => out, exited };
}

/** Resolves when the child printed `line` (rejects if it exits first or after `ms`). */
export function waitForLine(c: Child, line: string, ms = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${line}" within ${ms} ms; output:\n${c.output()}`)), ms);
    const check = () => { if (c.output().split('\n').includes(line)) { clearTimeout(timer); resolve(); return true; } return false; };
    if (check()) return;
    c.proc.stdout!.on('data', check);
    void c.exited.then((code) => { clearTimeout(timer); reject(new Error(`exited with ${code} before "${line}"; output:\n${c.output()}`)); });
  });
}

export async function killChild(c: Child, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
  c.proc.kill(signal);
  await c.exited;
}

export function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

export interface CliRun { code: number | null; stdout: string; stderr: string; ms: number }

/** Runs the real `draftwire` executable (bin/draftwire.js) in the checkout, logs at warn; SIGKILL after timeoutMs. */
export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, DRAFTWIRE_LOG_LEVEL: 'warn', ...opts.env } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr, ms: Date.now() - t0 }); });
  });
}

/** Ports nobody listens on right now (bound to 0 and released). */
export async function freePorts(n: number): Promise<number[]> {
  const out: number[] = [];
  while (out.length < n) {
    const p = await new Promise<number>((res) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const port = (s.address() as net.AddressInfo).port; s.close(() => res(port)); }); });
    if (!out.includes(p)) out.push(p);
  }
  return out;
}
