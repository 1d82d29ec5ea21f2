// The device run of the CUDA backend (issue 15), plain JavaScript so that it needs only node
// and the addon: prints one line per check and writes every figure to $OUT/device-check.json.
//   node scripts/device-check.mjs ADDON_PATH    (scripts/device-check.sh sets everything up)
// Checks: the addon's CUDA build and the GPU it sees; every kernel body on the CPU against the
// CPU step; every kernel, the cuBLAS GEMMs, a 1-rank NCCL all-reduce, the host-staged ranks and
// the whole resident step (fp32 to 1e-4 against the CPU step, bf16 products against the host's
// bf16 step) on the GPU; then the benchmark at the issue's realistic size: the resident CUDA
// step's training tokens/s next to PyTorch eager's on the same GPU for the same math (fp32, and
// bf16 products with fp32 weights: autocast), each with its TFLOP/s against the GPU's dense
// bf16 peak.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const addon = createRequire(import.meta.url)(process.argv[2]);
const out = process.env.OUT ?? '.';
// Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, by the name the GPU gives.
const BF16_DENSE_TFLOPS = [[/H200/, 989], [/H100.*(SXM|HBM3)/, 989], [/H100.*NVL/, 835], [/H100/, 756]];
const REALISTIC = { vocab: 128256, draftVocab: 32000, hidden: 4096, heads: 32, kvHeads: 8, intermediate: 14336, ttt: 7, ropeTheta: 500000, rmsEps: 1e-5 };
const report = { info: null, host: [], device: null, deviceError: null, torch: {}, cudaStep: {}, peakTflops: null, ok: true };
const BATCH = 1, SEQ = 2048;
// The same count as bench/support/torch_draft.py step_flops (matrix FLOPs, forward + backward).
function stepFlops(c, B, T) {
  const { hidden: H, heads: nh, kvHeads: nkv, intermediate: I, draftVocab: Vd, vocab: V, ttt: K } = c;
  const d = H / nh, N = B * T;
  const layer = 2 * N * (2 * H * (nh + 2 * nkv) * d + nh * d * H + 3 * H * I + H * Vd);
  const attn = 2 * 2 * B * nh * d * (T * T / 2 + T * K / 2);
  return 3 * 2 * N * 3 * H * H + K * (3 * layer + 3.5 * attn) + 2 * N * H * V;
}
const line = (ok, what) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); if (!ok) report.ok = false; };
const checks = (label, cs) => { for (const c of cs) line(c.err <= c.tol, `${label} ${c.name.padEnd(30)} err ${c.err.toExponential(2)} tol ${c.tol}${c.note ? ` (${c.note})` : ''}`); };

report.info = addon.cudaInfo();
const i = report.info;
const gpuName = i.gpus[0]?.name ?? '';
const PEAK = (BF16_DENSE_TFLOPS.find(([re]) => re.test(gpuName)) ?? [null, null])[1];
report.peakTflops = PEAK;
const ofPeak = (tflops) => PEAK ? `${(100 * tflops / PEAK).toFixed(1)}% of the ${PEAK} TFLOP/s bf16 peak` : 'peak unknown for this GPU';
line(i.built, `addon CUDA objects: ${i.built ? `${i.arch}, runtime ${i.runtimeVersion}` : 'not built'}`);
line(i.gpus.length > 0, `gpu: ${i.gpus.map((g) => `${g.name} (cc ${g.computeCapability}, ${g.sms} SMs, ${g.memoryGiB.toFixed(0)} GiB)`).join(', ') || i.error}; driver ${i.driverVersion}`);
line(i.cublas !== null, `cuBLAS: ${i.cublas ? `${i.cublas.version} ${i.cublas.path}` : i.cublasError}`);
line(i.nccl !== null, `NCCL: ${i.nccl ? `${i.nccl.version} ${i.nccl.path}` : i.ncclError}`);
report.host = addon.cudaHostCheck(1);
checks('host  ', report.host);
const t0 = Date.now();
const dev = addon.cudaDeviceCheck(7);
report.device = dev.checks;
report.deviceError = dev.error;
checks('device', dev.checks);
line(dev.error === null, `device check ${dev.error === null ? `complete in ${Date.now() - t0} ms` : `stopped: ${dev.error}`}`);

const shape = `H 4096, 32/8 heads, MLP 14336, V 128256, Vd 32000, T ${SEQ}, K 7`;
for (const [name, bf16] of [['fp32', false], ['bf16-products', true]]) {
  try {
    const r = addon.cudaStepBench(REALISTIC, { batch: BATCH, seq: SEQ, reps: 3, warmup: 1, bf16 });
    if (r.error !== null) throw new Error(r.error);
    const tflops = stepFlops(REALISTIC, BATCH, SEQ) / (r.msPerStep / 1e3) / 1e12;
    report.cudaStep[name] = { ...r, tflops, ofPeak: PEAK ? tflops / PEAK : null };
    line(true, `cuda step ${name} (${shape}): ${r.tokensPerSec.toFixed(0)} tokens/s, ${r.msPerStep.toFixed(1)} ms/step, ${tflops.toFixed(1)} TFLOP/s = ${ofPeak(tflops)}; ${r.deviceGiB.toFixed(1)} GiB on the device, setup ${(r.setupMs / 1e3).toFixed(1)} s`);
  } catch (e) {
    line(false, `cuda step ${name}: ${e.message}`);
  }
}
for (const [name, extra] of [['fp32', []], ['bf16-autocast', ['--autocast', 'bf16']]]) {
  const r = spawnSync('python3', ['bench/support/torch_draft.py', 'bench', JSON.stringify(REALISTIC), '--batch', String(BATCH), '--seq', String(SEQ),
    '--reps', '3', '--warmup', '1', '--device', 'cuda', ...extra], { encoding: 'utf8', timeout: 240_000 });
  if (r.status !== 0) { line(false, `torch eager ${name}: ${(r.stderr || r.error?.message || '').trim().split('\n').slice(-3).join(' | ')}`); continue; }
  const t = JSON.parse(r.stdout.trim().split('\n').pop());
  report.torch[name] = { ...t, ofPeak: PEAK ? t.tflops / PEAK : null };
  line(true, `torch eager ${name} (${shape}): ${t.tokensPerSec.toFixed(0)} tokens/s, ${t.msPerStep.toFixed(1)} ms/step, ${t.tflops.toFixed(1)} TFLOP/s = ${ofPeak(t.tflops)} (torch ${t.torch})`);
}
for (const [ours, theirs] of [['fp32', 'fp32'], ['bf16-products', 'bf16-autocast']])
  if (report.cudaStep[ours] && report.torch[theirs]) console.log(`cuda step ${ours} / torch eager ${theirs}: ${(report.cudaStep[ours].tokensPerSec / report.torch[theirs].tokensPerSec).toFixed(2)}x tokens/s`);
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'device-check.json'), JSON.stringify(report, null, 1));
console.log(`${report.ok ? 'all checks passed' : 'CHECKS FAILED'}; figures in ${join(out, 'device-check.json')}`);
process.exitCode = report.ok ? 0 : 1;
