// Runs every bench (bench/*.bench.ts) with --json, in a quick mode (the small sizes and
// iteration counts of QUICK below) unless --full, collects their figures (one JSON object per
// figure, bench/support/report.ts) into one JSON array file, and prints a summary table.
//   npm run bench [-- --out FILE] [--only a,b] [--full]
//   node --import tsx scripts/bench-all.ts [--out bench-results.json] [--only store,lease] [--full]
// A bench that needs what this machine lacks (python3 with torch, nats-server, the native addon, root for network namespaces)
// is skipped, with the reason printed; a skip is not a result. A bench that fails (non-zero
// exit, a timeout, no figures, a line that is not a figure) makes the script exit 1, naming it.
// Quick figures are for comparing runs of the same quick mode, not for the README's tables.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { FigureLine } from '../bench/support/report.ts';

interface Entry {
  /** Arguments of the quick mode (sizes, iterations); --json is added. */
  quick: string[];
  needs: Need[];
  /** Seconds before the bench is killed and counted as failed (quick mode; --full waits 6×). */
  timeoutS?: number;
}
type Need = 'addon' | 'nats' | 'torch' | 'transformers' | 'netns';

// One entry per bench; a bench file without one (or an entry without a file) is an error.
// Times: this 2-core machine, quick mode.
const QUICK: Record<string, Entry> = {
  allreduce: { quick: ['--ranks', '2', '--sizes', '1,4', '--reps', '3'], needs: ['addon', 'nats'] }, // ~2 s
  batch: { quick: ['--batch', '2', '--steps', '2'], needs: ['addon'] }, // ~5 s
  bus: { quick: ['--n', '500'], needs: ['nats'] }, // ~3 s
  checkpoint: { quick: ['--size', 'small', '--reps', '2'], needs: ['addon', 'nats'] }, // ~3 s
  cluster: { quick: ['--size', 'tiny', '--steps', '20'], needs: ['addon', 'nats', 'netns'], timeoutS: 300 }, // ~60 s (three hosts)
  codec: { quick: ['--min-ms', '250'], needs: [] }, // ~3 s
  convert: { quick: ['--min-ms', '100'], needs: ['addon'] }, // ~3 s
  dataplane: { quick: [], needs: ['addon'] }, // ~10 s (loopback; --full is the same: --hosts is by hand)
  'draft-1b': { quick: ['--seq', '32', '--reps', '1', '--warmup', '1'], needs: ['addon', 'torch'], timeoutS: 600 }, // ~60 s (1B-class weights: 7 GiB)
  // elastic and recovery: enough steps that the job outlives the `draftwire scale` CLI (about 1 s
  // to start) sent a third of the way in; at 20 tiny steps the job can end first and the bench fails.
  elastic: { quick: ['--size', 'tiny', '--steps', '80', '--batch', '4'], needs: ['addon', 'nats'] }, // ~50 s
  external: { quick: ['--size', 'tiny', '--samples', '96'], needs: ['addon', 'nats'] }, // ~3 s
  failover: { quick: [], needs: ['addon', 'nats'], timeoutS: 180 }, // ~30 s
  features: { quick: ['--files', '4', '--tokens', '128', '--hidden', '512', '--reps', '2'], needs: ['addon'] }, // ~1 s
  'hf-rollout': { quick: ['--seq', '64', '--rows', '1'], needs: ['addon', 'torch', 'transformers'] }, // ~18 s
  lease: { quick: ['--n', '200'], needs: ['nats'] }, // ~3 s
  'lease-load': { quick: ['--levels', '1,16', '--n', '4000'], needs: ['nats'] }, // ~20 s
  recovery: { quick: ['--size', 'tiny', '--steps', '90'], needs: ['addon', 'nats'] }, // ~50 s
  run: { quick: ['--size', 'tiny', '--steps', '20'], needs: ['addon', 'nats'] }, // ~4 s
  sharded: { quick: ['--batch', '2', '--steps', '1', '--layouts', 'single:1,dp2,tp2,sp2'], needs: ['addon', 'nats'] }, // ~11 s
  step: { quick: ['--batch', '1', '--steps', '1', '--threads', '1'], needs: ['addon'] }, // ~3 s
  store: { quick: [], needs: ['addon'] }, // ~4 s; its defaults are quick
};

const ROOT = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({ options: {
  out: { type: 'string', default: 'bench-results.json' }, only: { type: 'string' }, full: { type: 'boolean', default: false },
} });

/** Why this machine cannot run what `need` names, or null when it can. */
const lacks = (() => {
  const memo = new Map<Need, string | null>();
  const python = (mod: string) => {
    const r = spawnSync('python3', ['-c', `import ${mod}`], { encoding: 'utf8' });
    return r.status === 0 ? null : `python3 with ${mod} not found (${r.error?.message ?? (r.stderr.trim().split('\n').at(-1) ?? '')})`;
  };
  const check: Record<Need, () => string | null> = {
    addon: () => {
      const p = process.env.DRAFTWIRE_ADDON ?? join(ROOT, 'build', 'native', 'Release', 'draftwire_native.node');
      return existsSync(p) ? null : `the native addon is not built (${p}; npm run build:native)`;
    },
    nats: () => {
      const bin = process.env.DRAFTWIRE_NATS_SERVER ?? 'nats-server';
      const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
      return r.status === 0 ? null : `nats-server not found (${bin}: ${r.error?.message ?? `exit ${r.status}`})`;
    },
    torch: () => python('torch'),
    transformers: () => python('transformers'),
    netns: () => {
      if (process.getuid?.() !== 0) return 'not root: the hosts are network namespaces (ip netns)';
      const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      return r.status === 0 ? null : `ip netns does not work here (${r.error?.message ?? r.stderr.trim()})`;
    },
  };
  return (need: Need): string | null => {
    if (!memo.has(need)) memo.set(need, check[need]());
    return memo.get(need)!;
  };
})();

interface Outcome { bench: string; status: 'ok' | 'skipped' | 'failed'; why?: string; seconds: number; figures: FigureLine[] }

function isFigure(o: unknown, bench: string): o is FigureLine {
  const m = (x: unknown): boolean => {
    const f = x as Record<string, unknown> | null;
    return !!f && typeof f === 'object' && typeof f.name === 'string' && typeof f.value === 'number' && typeof f.unit === 'string';
  };
  const f = o as Record<string, unknown> | null;
  return m(f) && f!.bench === bench && (f!.baseline === null || m(f!.baseline));
}

let current: ReturnType<typeof spawn> | null = null;
const killGroup = (p: ReturnType<typeof spawn>, sig: NodeJS.Signals) => { try { process.kill(-p.pid!, sig); } catch { /* gone */ } };
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => { if (current) killGroup(current, 'SIGKILL'); process.exit(130); });
}

/** Runs one bench with --json; its own process group, so a timeout takes its children (nats-server, ranks) too. */
function runBench(bench: string, args: string[], timeoutS: number): Promise<Outcome> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', join('bench', `${bench}.bench.ts`), ...args, '--json'], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
    });
    current = p;
    let out = '', err = '', timedOut = false;
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); if (err.length > 1 << 20) err = err.slice(-(1 << 19)); });
    const timer = setTimeout(() => { timedOut = true; killGroup(p, 'SIGKILL'); }, timeoutS * 1000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      current = null;
      killGroup(p, 'SIGKILL'); // anything of its group left behind
      const seconds = (performance.now() - t0) / 1000;
      const figures: FigureLine[] = [];
      const stray: string[] = [];
      for (const line of out.split('\n').map((l) => l.trim()).filter(Boolean)) {
        let o: unknown = null;
        try { o = JSON.parse(line); } catch { /* not JSON */ }
        if (isFigure(o, bench)) figures.push(o); else stray.push(line);
      }
      const tail = err.trim().split('\n').slice(-20).join('\n');
      const fail = (why: string) => resolve({ bench, status: 'failed', why: tail ? `${why}\n${tail}` : why, seconds, figures: [] });
      if (timedOut) fail(`timed out after ${timeoutS} s`);
      else if (code !== 0) fail(`exit ${code ?? signal}`);
      else if (stray.length) fail(`${stray.length} stdout line(s) that are not figures of ${bench}, first: ${stray[0]!.slice(0, 200)}`);
      else if (!figures.length) fail('no figures');
      else resolve({ bench, status: 'ok', seconds, figures });
    });
  });
}

const num = (x: number) => {
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return x.toLocaleString('en-US');
  const a = Math.abs(x);
  if (a < 1e-3) return x.toExponential(2);
  const d = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
};

function table(head: string[], rows: string[][], right: boolean[]): string[] {
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((x, i) => (right[i] ? x.padStart(width[i]!) : x.padEnd(width[i]!))).join('  ').trimEnd();
  return [line(head), line(width.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

async function main(): Promise<number> {
  const files = readdirSync(join(ROOT, 'bench')).filter((f) => f.endsWith('.bench.ts')).map((f) => f.slice(0, -'.bench.ts'.length)).sort();
  const missing = files.filter((b) => !QUICK[b]);
  const stale = Object.keys(QUICK).filter((b) => !files.includes(b));
  if (missing.length || stale.length) {
    for (const b of missing) console.error(`bench/${b}.bench.ts has no entry in scripts/bench-all.ts (QUICK): add its quick arguments and needs`);
    for (const b of stale) console.error(`scripts/bench-all.ts lists ${b}, but there is no bench/${b}.bench.ts`);
    return 1;
  }
  const only = values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : null;
  const unknown = (only ?? []).filter((b) => !files.includes(b));
  if (unknown.length) { console.error(`--only: no such bench: ${unknown.join(', ')} (benches: ${files.join(', ')})`); return 1; }
  const benches = only ? files.filter((b) => only.includes(b)) : files;

  console.log(`bench-all: ${benches.length} benches, ${values.full ? 'full (their defaults)' : 'quick mode'}, results -> ${values.out}`);
  const t0 = performance.now();
  const outcomes: Outcome[] = [];
  for (const bench of benches) {
    const e = QUICK[bench]!;
    const why = e.needs.map(lacks).filter((x) => x !== null);
    if (why.length) {
      console.log(`- ${bench}: SKIPPED, ${why.join('; ')}`);
      outcomes.push({ bench, status: 'skipped', why: why.join('; '), seconds: 0, figures: [] });
      continue;
    }
    const args = values.full ? [] : e.quick;
    process.stdout.write(`- ${bench} ${args.join(' ')} ... `);
    const o = await runBench(bench, args, (e.timeoutS ?? 300) * (values.full ? 6 : 1));
    outcomes.push(o);
    if (o.status === 'ok') console.log(`${o.seconds.toFixed(1)} s, ${o.figures.length} figures`);
    else console.log(`FAILED after ${o.seconds.toFixed(1)} s: ${o.why}`);
  }
  const total = (performance.now() - t0) / 1000;

  const figures = outcomes.flatMap((o) => o.figures);
  writeFileSync(values.out!, JSON.stringify(figures, null, 2) + '\n');

  const rows = figures.map((f) => [
    f.bench, f.name, num(f.value), f.unit,
    f.baseline ? `${num(f.baseline.value)} ${f.baseline.unit}` : '',
    f.baseline && f.baseline.unit === f.unit && f.baseline.value ? `${num(f.value / f.baseline.value)}×` : '',
    f.baseline?.name ?? '',
  ]);
  console.log('');
  if (rows.length) for (const l of table(['bench', 'figure', 'value', 'unit', 'baseline', 'ratio', 'baseline figure'], rows, [false, false, true, false, true, true, false])) console.log(l);
  if (rows.length) console.log('');
  for (const l of table(['bench', 'status', 'seconds', 'figures'], outcomes.map((o) => [
    o.bench, o.status === 'skipped' ? `skipped: ${o.why}` : o.status, o.status === 'skipped' ? '' : o.seconds.toFixed(1), o.status === 'ok' ? String(o.figures.length) : '',
  ]), [false, false, true, true])) console.log(l);

  const ok = outcomes.filter((o) => o.status === 'ok'), skipped = outcomes.filter((o) => o.status === 'skipped'), failed = outcomes.filter((o) => o.status === 'failed');
  console.log('');
  console.log(`${figures.length} figures from ${ok.length} benches in ${total.toFixed(1)} s -> ${values.out}` +
    (skipped.length ? `; ${skipped.length} skipped (${skipped.map((o) => o.bench).join(', ')}), not counted` : ''));
  if (failed.length) {
    console.error(`FAILED: ${failed.map((o) => o.bench).join(', ')}`);
    return 1;
  }
  return 0;
}

process.exitCode = await main();
