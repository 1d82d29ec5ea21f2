// Sharded-step throughput at the demo size: dp2 vs tp2 vs sp2 vs a single rank, every rank a
// real process (Gloo over loopback, rendezvous through a private nats-server), as
// `draftwire step --tp/--sp/--dp` runs them.
//   node --import tsx bench/sharded.bench.ts [--batch 4] [--steps 4] [--layouts single:1,single:2,dp2,tp2,sp2] [--rank-threads 1]
// `single:n` is one unsharded rank with n threads; the sharded layouts run --rank-threads
// threads per rank (default 1, so 2 ranks use as many cores as single:2). A step's time is
// the slowest rank's (ranks start each step together after a barrier); tokens/s = B·T / the
// median step time. Each rank also measures the CPU time its process spent in the step (all
// its threads): on a shared machine wall time mostly measures the neighbours, so the table
// adds "CPU ms" (all ranks together: the cost of the work, sharding overheads included) and
// "est. tokens/s" = B·T / (the busiest rank's CPU time ÷ its threads), the rate the step
// would reach with a dedicated core per thread and no waiting. Prints a table (not a test);
// --json: one JSON line per figure (bench/support/report.ts), the est. tokens/s against the first layout's.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startNatsServer } from '../cluster/nats-launcher.ts';
import { Bus } from '../src/bus/bus.ts';
import { Communicator, ShardLayout } from '../src/native/collectives.ts';
import { readDraftBatchSlice, readDraftWeights } from '../src/job/draft-io.ts';
import { DraftModel, blasInfo, initDraftWeights, type DraftConfig } from '../src/native/addon.ts';
import { writeSafetensorsFile } from '../src/store/safetensors.ts';
import { DEMO, DEMO_T, makeDemoBatch } from './demo-batch.ts';
import { tensor, type Tensor } from '../src/tensor.ts';
import { Reporter, type Measured } from './support/report.ts';

const cfg: DraftConfig = DEMO;
const T = DEMO_T;
const SELF = fileURLToPath(import.meta.url);

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}

interface ChildSpec {
  dir: string; steps: number; threads: number; tp: number; sp: number; dp: number; rank: number; single: boolean;
  nats: string; prefix: string;
}

// ------------------------------------------------------------------------------------------
// child: one rank

async function child(spec: ChildSpec): Promise<void> {
  const weights = await readDraftWeights(join(spec.dir, 'weights.safetensors'), cfg);
  const L = ShardLayout.of(spec.rank, spec.tp, spec.sp, spec.dp);
  const { batch } = await readDraftBatchSlice(join(spec.dir, 'batch.safetensors'), cfg, { sp: spec.sp, dp: spec.dp, spIdx: L.spIdx, dpIdx: L.dpIdx });
  const opts = { lr: 1e-4, clip: 1, weightDecay: 0, returnGrads: false };
  const ms: number[] = [], cpu: number[] = [];
  let loss = 0;
  const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  if (spec.single) {
    const m = DraftModel.create(cfg, weights, { threads: spec.threads });
    await m.step(batch, opts); // warm-up (scratch for this shape)
    for (let s = 0; s < spec.steps; s++) {
      const t0 = performance.now(), c0 = cpuMs();
      loss = (await m.step(batch, opts)).loss;
      ms.push(performance.now() - t0);
      cpu.push(cpuMs() - c0);
    }
    m.close();
  } else {
    const bus = await Bus.connect({ servers: spec.nats, job: 'bench', name: `bench-rank-${spec.rank}`, reconnect: false });
    const kv = await bus.kv('dw_bench', { storage: 'memory' });
    const comm = await Communicator.connect({ rank: spec.rank, size: L.world, kv, prefix: spec.prefix, timeoutMs: 120_000 });
    const m = await DraftModel.createSharded(cfg, weights, comm, { tp: spec.tp, sp: spec.sp, dp: spec.dp }, { threads: spec.threads });
    await m.step(batch, opts);
    for (let s = 0; s < spec.steps; s++) {
      await comm.barrier();
      const t0 = performance.now(), c0 = cpuMs();
      loss = (await m.step(batch, opts)).loss;
      ms.push(performance.now() - t0);
      cpu.push(cpuMs() - c0);
    }
    m.close();
    await comm.close();
    await bus.close();
  }
  process.stdout.write(JSON.stringify({ ev: 'result', rank: spec.rank, ms, cpu, loss }) + '\n');
}

// ------------------------------------------------------------------------------------------
// parent


interface RankResult { rank: number; ms: number[]; cpu: number[]; loss: number }
function runRanks(specs: ChildSpec[]): Promise<RankResult[]> {
  return Promise.all(specs.map((spec) => new Promise<RankResult>((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', SELF, '--child', JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    p.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{"ev":"result"'));
      if (code !== 0 || !line) reject(new Error(`rank ${spec.rank} exited with ${code}: ${out}`));
      else resolve(JSON.parse(line));
    });
  })));
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

async function main(): Promise<void> {
  const B = Number(arg('batch', '4'));
  const steps = Number(arg('steps', '4'));
  const rankThreads = Number(arg('rank-threads', '1'));
  const layouts = arg('layouts', 'single:1,single:2,dp2,tp2,sp2').split(',');
  const report = Reporter.forBench(import.meta.url);
  const info = blasInfo();
  report.context({ batch: B, seq: T, steps, rankThreads, blas: info.config });
  report.log(`OpenBLAS: ${info.config} (OPENBLAS_CORETYPE=${info.coretype ?? 'unset'})`);
  report.log(`demo size: H=${cfg.hidden} heads=${cfg.heads}/${cfg.kvHeads} I=${cfg.intermediate} V=${cfg.vocab} Vd=${cfg.draftVocab} T=${T} K=${cfg.ttt} B=${B}; ${steps} timed steps after one warm-up`);
  const dir = await mkdtemp(join(tmpdir(), 'draftwire-shard-bench-'));
  const nats = await startNatsServer({ port: -1, jetstream: true, maxMemBytes: 256 * 1024 * 1024 });
  try {
    const { batch, frozen } = await makeDemoBatch(cfg, B, T);
    const w = initDraftWeights(cfg, 1, frozen);
    const wt: Record<string, Tensor> = {};
    const shapes: Record<string, number[]> = (await import('../src/native/addon.ts')).draftParamShapes(cfg);
    for (const [name, shape] of Object.entries(shapes)) wt[name] = tensor(name === 'd2t' ? 'i32' : 'f32', shape, w[name]!);
    await writeSafetensorsFile(join(dir, 'weights.safetensors'), wt);
    const H = cfg.hidden;
    await writeSafetensorsFile(join(dir, 'batch.safetensors'), {
      ids: tensor('i32', [B, T], batch.ids), aux: tensor('f32', [B, T, 3 * H], batch.aux),
      last: tensor('f32', [B, T, H], batch.last), mask: tensor('u8', [B, T], batch.mask),
    });
    const rows: string[][] = [];
    let base = 0;
    let baseFig: Measured | null = null;
    for (const lay of layouts) {
      const m = /^(single):(\d+)$|^(tp|sp|dp)(\d+)$/.exec(lay);
      if (!m) throw new Error(`bad layout ${lay} (single:<threads> | tp<n> | sp<n> | dp<n>)`);
      const single = !!m[1];
      const n = single ? 1 : Number(m[4]);
      const l = { tp: m[3] === 'tp' ? n : 1, sp: m[3] === 'sp' ? n : 1, dp: m[3] === 'dp' ? n : 1 };
      const threads = single ? Number(m[2]) : rankThreads;
      const prefix = `bench-${lay}-${Date.now()}`;
      const res = await runRanks(Array.from({ length: n }, (_, rank) => ({ dir, steps, threads, ...l, rank, single, nats: nats.url, prefix })));
      const per = Array.from({ length: steps }, (_, s) => Math.max(...res.map((r) => r.ms[s]!)));
      const med = median(per);
      const tps = (B * T) / (med / 1000);
      const cpuAll = median(Array.from({ length: steps }, (_, s) => res.reduce((a, r) => a + r.cpu[s]!, 0)));
      const cpuMax = median(Array.from({ length: steps }, (_, s) => Math.max(...res.map((r) => r.cpu[s]!))));
      const est = (B * T) / (cpuMax / threads / 1000);
      if (!base) base = est;
      rows.push([lay, String(n), String(threads), med.toFixed(0), Math.min(...per).toFixed(0), tps.toFixed(0), cpuAll.toFixed(0), est.toFixed(0), (est / base).toFixed(2), res[0]!.loss.toFixed(4)]);
      const ctx = { layout: lay, ranks: n, threads, loss: res[0]!.loss };
      report.add({ name: `${lay}: median step`, value: med, unit: 'ms', ...ctx });
      report.add({ name: `${lay}: tokens/s (median step, wall)`, value: tps, unit: 'tokens/s', ...ctx });
      report.add({ name: `${lay}: CPU ms per step (all ranks)`, value: cpuAll, unit: 'ms', ...ctx });
      const e = report.add({ name: `${lay}: est. tokens/s (busiest rank's CPU time)`, value: est, unit: 'tokens/s', baseline: baseFig, ...ctx });
      baseFig ??= e;
      report.log(`  ${lay}: median ${med.toFixed(0)} ms wall, ${cpuAll.toFixed(0)} ms CPU`);
    }
    const head = ['layout', 'ranks', 'threads/rank', 'median ms', 'best ms', 'tokens/s', 'CPU ms', 'est. tokens/s', `est. vs ${layouts[0]}`, 'loss'];
    report.log('');
    report.table(head, rows);
    report.end();
  } finally {
    await nats.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--child')) {
  child(JSON.parse(process.argv[process.argv.indexOf('--child') + 1]!) as ChildSpec).then(() => process.exit(0), (e: unknown) => {
    process.stderr.write(`bench child failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else {
  await main();
}
