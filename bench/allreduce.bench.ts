// All-reduce bandwidth of the Gloo communicator between rank processes on this host
// (test/support/comm-child.ts, rendezvous through a real nats-server), next to this
// machine's memcpy bandwidth measured in the same run.
//
//   node --import tsx bench/allreduce.bench.ts [--ranks 2,4] [--sizes 1,4,16,64] [--reps 5] [--json]
//   --json: one JSON line per figure (bench/support/report.ts); baseline: the native memcpy.
//
// Per (ranks, size): time = median over reps of the slowest rank's time (each rep starts
// after a barrier); algbw = bytes / time; busbw = algbw · 2(n−1)/n (nccl-tests' definition:
// comparable to the link/memory bandwidth a ring all-reduce can reach). memcpy GB/s count
// the bytes copied (each is read once and written once).

import { fileURLToPath } from 'node:url';
import { memcpyBandwidth } from '../src/native/collectives.ts';
import { startNats } from '../test/support/nats-server.ts';
import { killChild, spawnTs, type Child } from '../test/support/procs.ts';
import type { CommChildSpec } from '../test/support/comm-child.ts';
import { Reporter } from './support/report.ts';

process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}
const RANKS = arg('ranks', '2,4').split(',').map(Number);
const SIZES_MIB = arg('sizes', '1,4,16,64').split(',').map(Number);
const REPS = Number(arg('reps', '5'));
const report = Reporter.forBench(import.meta.url);
const CHILD = fileURLToPath(new URL('../test/support/comm-child.ts', import.meta.url));
const MiB = 1 << 20;

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };

function memcpyJs(bytes: number, reps: number): number {
  const a = Buffer.alloc(bytes, 1), b = Buffer.alloc(bytes);
  a.copy(b);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) (i & 1 ? b : a).copy(i & 1 ? a : b);
  return (bytes * reps) / ((performance.now() - t0) / 1000) / 1e9;
}

async function runWorld(url: string, ranks: number): Promise<{ bytes: number; ms: number }[]> {
  const prefix = `bench-${ranks}-${Date.now()}`;
  const children: Child[] = Array.from({ length: ranks }, (_, rank) => spawnTs(CHILD, [JSON.stringify({
    scenario: 'bench', servers: url, job: 'bench', bucket: 'dw_bench', prefix, rank, size: ranks, timeoutMs: 120_000,
    sizes: SIZES_MIB.map((m) => m * MiB), reps: REPS,
  } satisfies CommChildSpec)]));
  try {
    const codes = await Promise.all(children.map((c) => c.exited));
    const results = children.map((c, r) => {
      const line = c.output().split('\n').find((l) => l.startsWith('{"ev":"result"'));
      if (codes[r] !== 0 || !line) throw new Error(`rank ${r} failed (exit ${codes[r]}):\n${c.output()}`);
      return JSON.parse(line) as { rows: { bytes: number; ms: number[] }[] };
    });
    return results[0]!.rows.map((row, i) => ({
      bytes: row.bytes,
      ms: median(row.ms.map((_, k) => Math.max(...results.map((res) => res.rows[i]!.ms[k]!)))),
    }));
  } finally {
    await Promise.all(children.map((c) => killChild(c)));
  }
}

async function main(): Promise<void> {
  const memJs = memcpyJs(64 * MiB, 10);
  const memNative = memcpyBandwidth(64 * MiB, 10);
  const nats = await startNats();
  const rows: { ranks: number; mib: number; ms: number; algbw: number; busbw: number }[] = [];
  try {
    for (const n of RANKS) {
      for (const r of await runWorld(nats.url, n)) {
        const algbw = r.bytes / (r.ms / 1000) / 1e9;
        rows.push({ ranks: n, mib: r.bytes / MiB, ms: r.ms, algbw, busbw: (algbw * 2 * (n - 1)) / n });
      }
    }
  } finally {
    await nats.stop();
  }
  report.context({ reps: REPS });
  const mem = report.add({ name: 'native memcpy, 64 MiB', value: memNative, unit: 'GB/s' });
  report.add({ name: 'Buffer.copy, 64 MiB', value: memJs, unit: 'GB/s', baseline: mem });
  for (const r of rows) {
    const at = `${r.ranks} ranks, ${r.mib} MiB`, ctx = { ranks: r.ranks, sizeMiB: r.mib };
    report.add({ name: `all-reduce busbw, ${at}`, value: r.busbw, unit: 'GB/s', baseline: mem, ...ctx });
    report.add({ name: `all-reduce algbw, ${at}`, value: r.algbw, unit: 'GB/s', baseline: mem, ...ctx });
    report.add({ name: `all-reduce time, ${at}`, value: r.ms, unit: 'ms', ...ctx });
  }
  report.log(`memcpy 64 MiB: Buffer.copy ${memJs.toFixed(2)} GB/s, native memcpy ${memNative.toFixed(2)} GB/s`);
  report.log(`all-reduce (float32, sum; Gloo ring over TCP loopback; median of ${REPS}, slowest rank)`);
  report.log('ranks    size      time ms   algbw GB/s   busbw GB/s   busbw/memcpy');
  for (const r of rows) {
    report.log(`${String(r.ranks).padStart(5)} ${`${r.mib} MiB`.padStart(7)} ${r.ms.toFixed(2).padStart(12)} ${r.algbw.toFixed(3).padStart(12)} ${r.busbw.toFixed(3).padStart(12)} ${(r.busbw / memNative * 100).toFixed(1).padStart(13)}%`);
  }
  report.end();
}

main().catch((e) => { console.error(e); process.exit(1); });
