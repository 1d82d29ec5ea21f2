// The chaos driver: runs a real `draftwire run` job (real nats-server, real rank process),
// injects seeded faults with real signals, files and environment, and checks the invariants
// afterwards. Each scenario returns a ChaosResult; the suite prints every fault injected and
// every invariant checked.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { auditEvents, type LedgerEvent } from '../../src/ledger/ledger.ts';

const CLI = 'bin/draftwire.js';
import { rng } from './fixtures.ts';

export { rng };


export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Polls `fn` (errors count as not yet) every `everyMs` (default 100) until it returns a truthy
 * value, which it returns; throws after `ms` naming `what`, the last error, and `out()` if given.
 */
export async function until<T>(what: string, ms: number, fn: () => T | null | undefined | false | Promise<T | null | undefined | false>, o: { out?: () => string; everyMs?: number } = {}): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown = null;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${(last as Error).message})` : ''}${o.out ? `\n${o.out().slice(-6000)}` : ''}`);
    await sleep(o.everyMs ?? 100);
  }
}

export function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); } catch { return false; }
  // A zombie (exited, not reaped) counts as gone.
  try { return !/^\S+ \S+ Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^\d+ \(.*\) /, '0 x ')); } catch { return false; }
}

interface Proc { pid: number; ppid: number; args: string }
function procTable(): Proc[] {
  const r = spawnSync('ps', ['-e', '-o', 'pid=,ppid=,args='], { encoding: 'utf8' });
  return r.stdout.split('\n').map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l)).filter((m): m is RegExpExecArray => !!m).map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), args: m[3]! }));
}
/** Every live descendant of `root`. */
export function descendants(root: number): Proc[] {
  const t = procTable();
  const out: Proc[] = [];
  const walk = (p: number) => { for (const c of t) if (c.ppid === p) { out.push(c); walk(c.pid); } };
  walk(root);
  return out;
}

export interface JobOptions {
  workdir: string; job: string; steps?: number; batch?: number; leaseMs?: number; deadAfterMs?: number;
  env?: NodeJS.ProcessEnv; extra?: string[]; resume?: boolean;
}

/** A running `draftwire run` process and what it started. */
export class ChaosJob {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly seen = new Set<number>();
  private out = '';
  private err = '';
  private timer: NodeJS.Timeout;
  readonly runDir: string;

  constructor(readonly o: JobOptions) {
    this.runDir = join(o.workdir, o.job);
    const args = o.resume
      ? [CLI, 'run', '--resume', this.runDir, '--json', '--log-level', 'info']
      : [CLI, 'run', '--size', 'tiny', '--steps', String(o.steps ?? 12), '--batch', String(o.batch ?? 4), '--eval-every', '0', '--eval-prompts', '2',
        '--lease-ms', String(o.leaseMs ?? 3000), '--rank-dead-after-ms', String(o.deadAfterMs ?? 10_000), '--workdir', o.workdir, '--job', o.job, '--json', '--log-level', 'info', ...(o.extra ?? [])];
    this.proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env });
    this.proc.stdout!.on('data', (d: Buffer) => { this.out += d; });
    this.proc.stderr!.on('data', (d: Buffer) => { this.err += d; });
    this.exited = new Promise((r) => this.proc.on('exit', (c, sig) => r(c ?? (sig ? 128 : null))));
    this.timer = setInterval(() => this.track(), 200);
    void this.exited.then(() => clearInterval(this.timer));
  }

  track(): Proc[] {
    const d = descendants(this.proc.pid!);
    for (const p of d) this.seen.add(p.pid);
    return d;
  }
  get stderr(): string { return this.err; }
  rankPid(): number | null { return this.track().find((p) => p.args.includes('rank-main.ts'))?.pid ?? null; }
  natsPid(): number | null { return this.track().find((p) => p.args.includes('nats-server'))?.pid ?? null; }
  /** The step of the latest committed rank checkpoint (0 when none). */
  checkpointStep(): number {
    try { return (JSON.parse(readFileSync(join(this.runDir, 'ckpt', 'latest.json'), 'utf8')) as { step: number }).step; } catch { return 0; }
  }
  async waitStep(step: number, ms = 60_000): Promise<void> {
    const end = Date.now() + ms;
    while (this.checkpointStep() < step) {
      if (Date.now() > end) throw new Error(`job ${this.o.job} did not reach step ${step} in ${ms} ms; stderr:\n${this.err.slice(-3000)}`);
      if (this.proc.exitCode !== null) throw new Error(`job ${this.o.job} exited (${this.proc.exitCode}) before step ${step}; stderr:\n${this.err.slice(-3000)}`);
      await sleep(50);
    }
  }
  async waitRank(ms = 30_000): Promise<number> {
    const end = Date.now() + ms;
    for (;;) {
      const p = this.rankPid();
      if (p) return p;
      if (Date.now() > end) throw new Error(`no rank process within ${ms} ms`);
      await sleep(100);
    }
  }
  /** Waits for the run to exit; returns its exit code and parsed JSON summary (null if none). */
  async finish(ms = 120_000): Promise<{ code: number | null; summary: any }> {
    const t = setTimeout(() => this.proc.kill('SIGKILL'), ms);
    const code = await this.exited;
    clearTimeout(t);
    let summary = null;
    try { summary = JSON.parse(this.out.trim().split('\n').at(-1)!); } catch { /* none */ }
    return { code, summary };
  }
}

export interface Invariant { name: string; ok: boolean; detail: string }
export interface ChaosResult { scenario: string; seed: number; faults: string[]; invariants: Invariant[]; seconds: number }

/** The ledger as the run exported it (ledger.jsonl). */
export function ledgerOf(runDir: string): LedgerEvent[] {
  return readFileSync(join(runDir, 'ledger.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LedgerEvent);
}

/**
 * The invariants every scenario ends with: the run completed; the ledger audit is clean
 * (every committed sample consumed exactly once or dead-lettered, no overlapping leases, no
 * accepted stale ack); the job's step count was reached; store samples and temp files back to
 * zero; no process the run started is left.
 */
export interface InvariantOptions {
  /** The job's step count, or null when its data-parallel width changed (steps differ; rows still all trained). */
  steps: number | null; rows: number;
  /** Exactly these samples are dead-lettered (default: not checked), each with a reason matching `reason`. */
  dead?: { sampleIds: string[]; reason: RegExp };
  /** A store directory that outlives the run (--keep-store): no temp file, lock or sample file may be left in it. */
  keptStore?: string;
}

export async function checkInvariants(job: ChaosJob, r: { code: number | null; summary: any }, o: InvariantOptions): Promise<Invariant[]> {
  const inv: Invariant[] = [];
  const add = (name: string, ok: boolean, detail: string) => inv.push({ name, ok, detail });
  add('run exits 0', r.code === 0, `exit ${r.code}${r.code === 0 ? '' : `; stderr tail:\n${job.stderr.slice(-2500)}`}`);
  const s = r.summary;
  if (s) {
    if (o.steps !== null) add('steps reached', s.steps === o.steps, `steps ${s.steps} of ${o.steps}`);
    else add('steps reported for every width', s.steps > 0 && Array.isArray(s.dpHistory) && s.dpHistory.length > 0, `steps ${s.steps}, widths ${JSON.stringify(s.dpHistory)}`);
    const events = ledgerOf(job.runDir);
    const a = auditEvents(events);
    add('audit clean (consumed once or dead, no overlapping leases, no accepted stale ack)', a.ok, a.problems.slice(0, 5).join('; ') || `committed ${a.committed}, consumed ${a.consumed}, dead ${a.dead}`);
    add('every committed sample accounted for', a.committed === o.rows && a.consumed + a.dead === a.committed && a.pending === 0 && a.leased === 0, `committed ${a.committed}/${o.rows}, consumed ${a.consumed}, dead ${a.dead}, pending ${a.pending}, leased ${a.leased}`);
    const acks = events.filter((e) => e.type === 'ack');
    add('one accepted ack per consumed sample', new Set(acks.map((e) => (e as { sampleId: string }).sampleId)).size === acks.length && acks.length === a.consumed, `${acks.length} acks, ${a.consumed} consumed`);
    // Each step counted once (a step retrained after a crash was reported again; the last report
    // stands): the steps that made the final weights trained exactly the consumed samples.
    add('every consumed sample trained exactly once (steps\' samples add up to the consumed)', s.samples === a.consumed, `steps trained ${s.samples} samples, ${a.consumed} consumed`);
    add('store samples and temp files back to zero', s.storeAfter?.samples === 0 && s.storeAfter?.tempFiles === 0, JSON.stringify(s.storeAfter));
    if (o.dead) {
      const dead = events.filter((e) => e.type === 'dead') as { sampleId: string; reason: string }[];
      const want = [...o.dead.sampleIds].sort();
      add(`dead-lettered exactly ${want.join(', ') || 'nothing'}, reason matching ${o.dead.reason}`,
        JSON.stringify(dead.map((d) => d.sampleId).sort()) === JSON.stringify(want) && dead.every((d) => o.dead!.reason.test(d.reason)) && s.audit?.dead === want.length,
        `dead letters: ${JSON.stringify(dead.map((d) => ({ sampleId: d.sampleId, reason: d.reason.slice(0, 200) })))}; summary audit dead ${s.audit?.dead}`);
    }
  } else add('summary printed', false, job.stderr.slice(-2500));
  if (o.keptStore) {
    const left = listDir(o.keptStore).filter((f) => f.startsWith('.tmp-') || f.startsWith('.stale-') || f.endsWith('.lock') || f.endsWith('.safetensors'));
    add('no temp file, lock or sample file left in the store directory', left.length === 0, left.length ? `left: ${left.slice(0, 10).join(', ')}` : `${listDir(o.keptStore).length} entries (tombstones, generation records, marker)`);
  }
  const end = Date.now() + 5000;
  let left = [...job.seen].filter(isAlive);
  while (left.length && Date.now() < end) { await sleep(100); left = left.filter(isAlive); }
  add('no orphan process', left.length === 0, left.length ? `alive: ${left.join(', ')}` : `${job.seen.size} processes seen, all gone`);
  return inv;
}

export function newWorkdir(): string { return mkdtempSync(join(tmpdir(), 'draftwire-chaos-')); }

export function assertInvariants(res: ChaosResult): void {
  const bad = res.invariants.filter((i) => !i.ok);
  assert.deepEqual(bad.map((b) => `${b.name}: ${b.detail}`), [], `scenario ${res.scenario} (seed ${res.seed}) broke invariants`);
}

export function formatReport(results: ChaosResult[]): string {
  const lines = ['', 'chaos report', '============'];
  for (const r of results) {
    lines.push(`${r.scenario} (seed ${r.seed}, ${r.seconds.toFixed(1)} s)`);
    for (const f of r.faults) lines.push(`  fault: ${f}`);
    for (const i of r.invariants) lines.push(`  ${i.ok ? 'ok  ' : 'FAIL'} ${i.name}${i.ok ? '' : `: ${i.detail.split('\n')[0]}`}`);
  }
  return lines.join('\n') + '\n';
}

export function rankLog(job: ChaosJob): string {
  const f = join(job.runDir, 'rank-0.log');
  return existsSync(f) ? readFileSync(f, 'utf8') : '';
}
export function listDir(d: string): string[] { try { return readdirSync(d); } catch { return []; } }

/**
 * Flips `n` bytes (seeded) of one tensor's data in a published sample file, in place: the
 * header (and so the manifest of block checksums) is left intact, so only a reader that
 * verifies the blocks notices. Returns what was done, for the report.
 */
export function corruptSampleFile(path: string, rnd: () => number, tensorName = 'aux', n = 4): string {
  const fd = openSync(path, 'r+');
  try {
    const head = Buffer.alloc(8);
    readSync(fd, head, 0, 8, 0);
    const hlen = Number(head.readBigUInt64LE(0));
    const json = Buffer.alloc(hlen);
    readSync(fd, json, 0, hlen, 8);
    const h = JSON.parse(json.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
    const off = h[tensorName]?.data_offsets;
    if (!off || off[1] <= off[0]) throw new Error(`${path} has no tensor "${tensorName}" to corrupt`);
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      const pos = 8 + hlen + off[0] + Math.floor(rnd() * (off[1] - off[0]));
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, pos);
      b[0] = b[0]! ^ (1 + Math.floor(rnd() * 255)); // never a no-op flip
      writeSync(fd, b, 0, 1, pos);
      at.push(pos);
    }
    return `flipped ${n} bytes of tensor "${tensorName}" at file offsets ${at.join(', ')} (data starts at ${8 + hlen})`;
  } finally { closeSync(fd); }
}

/**
 * Mounts a tmpfs of `sizeKiB` at `dir` (a real filesystem that fills up: writes past it fail
 * with ENOSPC). Needs root (or CAP_SYS_ADMIN); fails with a clear message otherwise.
 */
export function mountTmpfs(dir: string, sizeKiB: number): void {
  mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeKiB}k,mode=0755`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`cannot mount a ${sizeKiB} KiB tmpfs at ${dir} (the full-disk scenario needs root or CAP_SYS_ADMIN to mount a small filesystem): ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  }
}

/** Unmounts what mountTmpfs mounted (lazily if it is still busy). */
export function unmountTmpfs(dir: string): void {
  if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
}

