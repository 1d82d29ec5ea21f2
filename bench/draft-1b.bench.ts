// Training tokens/s of the native draft step at the draft size of a 1B-class target (Llama-3.2-1B
// shapes: H 2048, 32/8 heads, I 8192, V 128256, Vd 32000, K 7) against the same math in PyTorch
// (bench/support/torch_draft.py, float32 autograd) on the same threads, in the same run; and the
// OpenBLAS SGEMM peak on those threads as a second baseline.
//   node --import tsx bench/draft-1b.bench.ts [--threads 2] [--batch 1] [--seq 128] [--reps 2] [--warmup 1] [--ttt 7] [--torch-default-malloc] [--json]
// Both sides time forward + backward (no optimizer update) on random weights and a random batch
// (mask 1, d2t = [0, Vd), every target argmax in d2t); tokens/s = B·T over the best rep. PyTorch runs first, in its own
// process, so its 2 GiB of frozen tensors are gone before the addon allocates its own.
// --json: one JSON line per figure (bench/support/report.ts): the native step against PyTorch's,
// its GEMM rate against the SGEMM peak measured before it.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { blasInfo, DraftModel, gemmFlops, initDraftWeights, sgemmBench, type DraftConfig } from '../src/native/addon.ts';
import { Reporter } from './support/report.ts';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}
const THREADS = Number(arg('threads', '2'));
const B = Number(arg('batch', '1'));
const T = Number(arg('seq', '128'));
const REPS = Number(arg('reps', '2'));
const WARMUP = Number(arg('warmup', '1'));
const report = Reporter.forBench(import.meta.url);
const cfg: DraftConfig = {
  vocab: 128256, draftVocab: 32000, hidden: 2048, heads: 32, kvHeads: 8, intermediate: 8192,
  ttt: Number(arg('ttt', '7')), ropeTheta: 500000, rmsEps: 1e-5,
};
const SCRIPT = fileURLToPath(new URL('./support/torch_draft.py', import.meta.url));
const log = (s: string): void => { report.log(s); };

interface TorchResult { tokensPerSec: number; msPerStep: number; meanMs: number; loss: number; threads: number; torch: string }

// glibc returns PyTorch's freed gradient buffers (> 32 MiB: mmap) to the OS, and each step
// faults them in again (first touch ≈ 0.3 GB/s on this VM); keep them in the heap instead, unless
// --torch-default-malloc (measured both ways: README).
function torchStep(): TorchResult {
  const malloc = process.argv.includes('--torch-default-malloc') ? {} : { MALLOC_MMAP_MAX_: '0', MALLOC_TRIM_THRESHOLD_: String(2 ** 40) };
  const env = { ...process.env, ...malloc, OMP_NUM_THREADS: String(THREADS), MKL_NUM_THREADS: String(THREADS) };
  const args = [SCRIPT, 'bench', JSON.stringify(cfg), '--batch', String(B), '--seq', String(T), '--reps', String(REPS), '--warmup', String(WARMUP), '--threads', String(THREADS)];
  const r = spawnSync('python3', args, { env, encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`torch_draft.py bench failed (python3 with torch needed): ${r.error?.message ?? r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as TorchResult;
}

async function nativeStep(): Promise<{ tokensPerSec: number; msPerStep: number; meanMs: number; loss: number; gflops: number }> {
  let weights: ReturnType<typeof initDraftWeights> | null = initDraftWeights(cfg, 1); // embed, target_head: 1 GiB each
  const H = cfg.hidden, N = B * T;
  const ids = Int32Array.from({ length: N }, (_, i) => (i * 2654435761) % cfg.vocab);
  const aux = new Float32Array(N * 3 * H), last = new Float32Array(N * H);
  for (let i = 0; i < aux.length; i++) aux[i] = Math.sin(i * 12.9898) * 1.7;
  // last = 3·Wt[y] + noise with y in d2t: every row's target argmax is in d2t, so every row carries
  // loss weight (as in real training; the addon skips the LM head of rows without any)
  const Wt = weights.target_head as Float32Array;
  for (let n = 0; n < N; n++) {
    const y = (n * 40503) % cfg.draftVocab;
    for (let h = 0; h < H; h++) last[n * H + h] = 3 * Wt[y * H + h]! + 0.3 * Math.cos((n * H + h) * 78.233);
  }
  const batch = { ids, aux, last, mask: new Uint8Array(N).fill(1), batch: B, seq: T };
  const model = DraftModel.create(cfg, weights, { threads: THREADS });
  weights = null; // the addon holds its own copy
  const opts = { lr: null, clip: null, weightDecay: 0, returnGrads: false };
  try {
    const times: number[] = [];
    let loss = 0, flops = 0;
    for (let r = 0; r < WARMUP + REPS; r++) {
      const f0 = gemmFlops(), t0 = performance.now();
      loss = (await model.step(batch, opts)).loss; // the scratch limit refuses a batch too large, naming it
      const dt = (performance.now() - t0) / 1000;
      if (r >= WARMUP) { times.push(dt); flops = gemmFlops() - f0; }
    }
    const best = Math.min(...times);
    return { tokensPerSec: N / best, msPerStep: best * 1000, meanMs: 1000 * times.reduce((a, x) => a + x, 0) / times.length, loss, gflops: flops / best / 1e9 };
  } finally {
    model.close();
  }
}

async function main(): Promise<void> {
  const info = blasInfo();
  log(`OpenBLAS: ${info.config} (OPENBLAS_CORETYPE=${info.coretype ?? 'unset'}); threads ${THREADS}`);
  log(`1B-class draft: H=${cfg.hidden} heads=${cfg.heads}/${cfg.kvHeads} I=${cfg.intermediate} V=${cfg.vocab} Vd=${cfg.draftVocab} K=${cfg.ttt}; B=${B} T=${T}, ${WARMUP} warm-up + ${REPS} reps`);
  const peak = Math.max(sgemmBench(1024, 10, THREADS), sgemmBench(1024, 10, THREADS));
  const torch = torchStep();
  const native = await nativeStep();
  const peakAfter = Math.max(sgemmBench(1024, 10, THREADS), sgemmBench(1024, 10, THREADS)); // the shared machine's load drifts
  const ratio = native.tokensPerSec / torch.tokensPerSec;
  report.context({ threads: THREADS, batch: B, seq: T, ttt: cfg.ttt, warmup: WARMUP, reps: REPS, torch: torch.torch, torchDefaultMalloc: process.argv.includes('--torch-default-malloc'), blas: info.config });
  const peakFig = report.add({ name: 'SGEMM peak before (1024³)', value: peak, unit: 'GFLOP/s' });
  report.add({ name: 'SGEMM peak after (1024³)', value: peakAfter, unit: 'GFLOP/s', baseline: peakFig });
  const torchTps = report.add({ name: 'PyTorch step: tokens/s', value: torch.tokensPerSec, unit: 'tokens/s', loss: torch.loss });
  const torchMs = report.add({ name: 'PyTorch step: best ms', value: torch.msPerStep, unit: 'ms' });
  report.add({ name: 'native step: tokens/s', value: native.tokensPerSec, unit: 'tokens/s', baseline: torchTps, loss: native.loss });
  report.add({ name: 'native step: best ms', value: native.msPerStep, unit: 'ms', baseline: torchMs });
  report.add({ name: 'native step: GEMM GFLOP/s', value: native.gflops, unit: 'GFLOP/s', baseline: peakFig });
  const f = (x: number, d = 0) => x.toFixed(d);
  log('');
  log(`native step   ${f(native.msPerStep).padStart(7)} ms (mean ${f(native.meanMs)})  ${f(native.tokensPerSec, 1).padStart(7)} tokens/s  loss ${f(native.loss, 4)}  GEMM ${f(native.gflops, 1)} GFLOP/s = ${f(100 * native.gflops / peak)}% of SGEMM peak`);
  log(`PyTorch ${torch.torch.padEnd(6)}${f(torch.msPerStep).padStart(7)} ms (mean ${f(torch.meanMs)})  ${f(torch.tokensPerSec, 1).padStart(7)} tokens/s  loss ${f(torch.loss, 4)}  (${torch.threads} threads)`);
  log(`native / PyTorch: ${f(ratio, 2)}×   SGEMM peak (1024³, same threads): ${f(peak, 1)} GFLOP/s before, ${f(peakAfter, 1)} after`);
  log('(each side draws its own random weights and batch, from the same distributions)');
  report.end();
}

await main();
