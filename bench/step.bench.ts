// Training-step throughput of the native draft step at the demo size, against the machine's
// own OpenBLAS SGEMM peak measured in the same run, on each backend asked for (--backends:
// cpu, the CPU step; resident-host, the resident step a GPU runs, on its CPU backend; cuda,
// where a GPU is), the CPU step at the same thread count as their baseline.
//   node --import tsx bench/step.bench.ts [--batch 4] [--steps 3] [--threads 1,2] [--backends cpu,resident-host] [--json]
// Prints a table (not a test); --json: one JSON line per figure (bench/support/report.ts), the
// analytic GFLOP/s against the SGEMM peak at the same thread count.
// FLOPs are counted analytically: every GEMM of the forward and backward pass, attention over
// the exact causal (q, key) pairs plus the TTT extras, no recomputation; "executed" is what the
// addon's GEMM wrappers actually ran (it includes the attention scores recomputed in the backward
// pass and the masked halves of diagonal tiles).
import { blasInfo, cudaInfo, DRAFT_BACKENDS, DraftModel, gemmFlops, initDraftWeights, sgemmBench, type DraftBackend, type DraftConfig } from '../src/native/addon.ts';
import { DEMO, DEMO_T, makeDemoBatch } from './demo-batch.ts';
import { Reporter, type Measured } from './support/report.ts';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}

const B = Number(arg('batch', '4'));
const STEPS = Number(arg('steps', '3'));
const THREADS = arg('threads', '1,2').split(',').map(Number);
const BACKENDS = arg('backends', cudaInfo().gpus.length > 0 ? 'cpu,resident-host,cuda' : 'cpu,resident-host').split(',') as DraftBackend[];
for (const b of BACKENDS) if (!(DRAFT_BACKENDS as readonly string[]).includes(b)) throw new Error(`--backends: unknown backend '${b}' (${DRAFT_BACKENDS.join(', ')})`);
if (BACKENDS[0] !== 'cpu') throw new Error('--backends: the first must be cpu (the baseline of the others)');
const cfg: DraftConfig = DEMO;
const T = DEMO_T;

/** Analytic GEMM FLOPs of one training step (forward + backward), dense over all rows. */
function stepFlops(c: DraftConfig, b: number, t: number): { total: number; parts: Record<string, number> } {
  const N = b * t, H = c.hidden, d = H / c.heads, qd = c.heads * d, D = qd + 2 * c.kvHeads * d, I = c.intermediate, K = c.ttt;
  const lin = (i: number, o: number) => 2 * N * i * o;
  const pairs = b * c.heads * (t * (t + 1)) / 2; // causal (query, key) pairs per step, all heads
  const parts: Record<string, number> = {
    'target head (fwd)': lin(H, c.vocab),
    'fc (fwd + dW)': 2 * lin(3 * H, H),
    'qkv (fwd + dX + dW)': 3 * K * lin(2 * H, D),
    'o (fwd + dX + dW)': 3 * K * lin(qd, H),
    'gate|up (fwd + dX + dW)': 3 * K * lin(H, 2 * I),
    'down (fwd + dX + dW)': 3 * K * lin(I, H),
    'lm (fwd + dX + dW)': 3 * K * lin(H, c.draftVocab),
    // QKᵀ, PV forward; dP, dS·K, dSᵀ·Q, Pᵀ·dO backward; the extras are k·N·heads dot products
    attention: 6 * K * 2 * d * pairs + 6 * 2 * d * c.heads * N * (K * (K - 1)) / 2,
  };
  return { total: Object.values(parts).reduce((a, x) => a + x, 0), parts };
}


const fmt = (x: number, d = 1) => x.toFixed(d);
async function main(): Promise<void> {
  const report = Reporter.forBench(import.meta.url);
  const info = blasInfo();
  report.log(`OpenBLAS: ${info.config} (OPENBLAS_CORETYPE=${info.coretype ?? 'unset'})`);
  report.log(`demo size: H=${cfg.hidden} heads=${cfg.heads}/${cfg.kvHeads} I=${cfg.intermediate} V=${cfg.vocab} Vd=${cfg.draftVocab} T=${T} K=${cfg.ttt} B=${B}`);
  const { batch, frozen } = await makeDemoBatch(cfg, B, T);
  const flops = stepFlops(cfg, B, T);
  report.context({ batch: B, seq: T, steps: STEPS, gflopPerStep: flops.total / 1e9, blas: info.config });
  report.log(`analytic GEMM FLOPs per step: ${fmt(flops.total / 1e9, 2)} GFLOP`);
  for (const [k, v] of Object.entries(flops.parts)) report.log(`  ${k.padEnd(26)} ${fmt(v / 1e9, 2).padStart(7)} GFLOP`);
  const rows: string[][] = [];
  for (const threads of THREADS) {
    const peak = Math.max(sgemmBench(1024, 10, threads), sgemmBench(1024, 10, threads));
    let cpuBest: Measured | null = null;
    for (const backend of BACKENDS) {
      const model = DraftModel.create(cfg, initDraftWeights(cfg, 1, frozen), { threads, backend });
      const opts = { lr: 1e-4, clip: 1, weightDecay: 0, returnGrads: false };
      const first = await model.step(batch, opts); // warm-up: allocates the scratch for this shape
      let best = Infinity, total = 0, executed = 0;
      for (let s = 0; s < STEPS; s++) {
        const f0 = gemmFlops();
        const t0 = performance.now();
        await model.step(batch, opts);
        const dt = (performance.now() - t0) / 1000;
        executed = gemmFlops() - f0;
        best = Math.min(best, dt);
        total += dt;
      }
      const ev0 = performance.now();
      await model.evaluate(batch);
      const evalS = (performance.now() - ev0) / 1000;
      model.close();
      const gflops = flops.total / best / 1e9;
      const ctx = { threads, backend, loss: first.loss };
      const tag = backend === 'cpu' ? `threads ${threads}` : `${backend}, threads ${threads}`;
      const peakFig = backend === 'cpu' ? report.add({ name: `SGEMM peak (1024³), threads ${threads}`, value: peak, unit: 'GFLOP/s', ...ctx }) : null;
      const bestFig = report.add({ name: `step: best ms, ${tag}`, value: best * 1000, unit: 'ms', ...ctx, ...(cpuBest ? { baseline: cpuBest } : {}) });
      if (backend === 'cpu') cpuBest = bestFig;
      report.add({ name: `step: mean ms, ${tag}`, value: total / STEPS * 1000, unit: 'ms', ...ctx });
      report.add({ name: `step: tokens/s, ${tag}`, value: B * T / best, unit: 'tokens/s', ...ctx });
      if (peakFig) {
        report.add({ name: `step: analytic GFLOP/s, ${tag}`, value: gflops, unit: 'GFLOP/s', baseline: peakFig, ...ctx });
        report.add({ name: `step: executed GFLOP/s, ${tag}`, value: executed / best / 1e9, unit: 'GFLOP/s', baseline: peakFig, ...ctx });
      }
      report.add({ name: `evaluate: ms, ${tag}`, value: evalS * 1000, unit: 'ms', ...ctx });
      // the resident backends' GEMMs go through the same wrappers only on the host
      rows.push([backend, String(threads), fmt(best * 1000, 0), fmt(total / STEPS * 1000, 0), fmt(B * T / best, 0), fmt(gflops),
        backend === 'cuda' ? '-' : fmt(executed / best / 1e9), fmt(peak), fmt(100 * gflops / peak), fmt(evalS * 1000, 0), fmt(first.loss, 3)]);
    }
  }
  const head = ['backend', 'threads', 'best ms', 'mean ms', 'tokens/s', 'GFLOP/s', 'exec GF/s', 'sgemm peak', '% peak', 'eval ms', 'loss'];
  report.log('');
  report.table(head, rows);
  report.log('\n(sgemm peak: best of 2×10 1024³ SGEMMs at the same thread count; % peak = analytic GFLOP/s ÷ peak; the CPU step is the baseline of the other backends)');
  report.end();
}

await main();
