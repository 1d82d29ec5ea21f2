// The device run of the CUDA backend (issue 15), plain JavaScript so that it needs only node
// and the addon: prints one line per check and writes every figure to $OUT/device-check.json.
//   node scripts/device-check.mjs ADDON_PATH    (scripts/device-check.sh sets everything up)
// Checks: the addon's CUDA build and the GPU it sees; every kernel body on the CPU against the
// CPU step; every kernel, the cuBLAS GEMMs and a 1-rank NCCL all-reduce on the GPU against the
// CPU step; then PyTorch eager's training step on the same GPU at the issue's realistic size
// (fp32, and bf16 autocast with fp32 weights) as the baseline the CUDA step will be measured
// against, with its TFLOP/s next to the H200's dense bf16 peak.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const addon = createRequire(import.meta.url)(process.argv[2]);
const out = process.env.OUT ?? '.';
const H200_BF16_DENSE_TFLOPS = 989; // NVIDIA H200 SXM datasheet, dense (no sparsity)
const REALISTIC = { vocab: 128256, draftVocab: 32000, hidden: 4096, heads: 32, kvHeads: 8, intermediate: 14336, ttt: 7, ropeTheta: 500000, rmsEps: 1e-5 };
const report = { info: null, host: [], device: null, deviceError: null, torch: {}, cudaStep: 'not built yet: the whole step on the GPU is issue 15 item 2', ok: true };
const line = (ok, what) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`); if (!ok) report.ok = false; };
const checks = (label, cs) => { for (const c of cs) line(c.err <= c.tol, `${label} ${c.name.padEnd(30)} err ${c.err.toExponential(2)} tol ${c.tol}${c.note ? ` (${c.note})` : ''}`); };

report.info = addon.cudaInfo();
const i = report.info;
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

for (const [name, extra] of [['fp32', []], ['bf16-autocast', ['--autocast', 'bf16']]]) {
  const r = spawnSync('python3', ['bench/support/torch_draft.py', 'bench', JSON.stringify(REALISTIC), '--batch', '1', '--seq', '2048',
    '--reps', '3', '--warmup', '1', '--device', 'cuda', ...extra], { encoding: 'utf8', timeout: 240_000 });
  if (r.status !== 0) { line(false, `torch eager ${name}: ${(r.stderr || r.error?.message || '').trim().split('\n').slice(-3).join(' | ')}`); continue; }
  const t = JSON.parse(r.stdout.trim().split('\n').pop());
  report.torch[name] = { ...t, peakTflops: H200_BF16_DENSE_TFLOPS, ofPeak: t.tflops / H200_BF16_DENSE_TFLOPS };
  line(true, `torch eager ${name} (H 4096, 32/8 heads, MLP 14336, V 128256, Vd 32000, T 2048, K 7): ${t.tokensPerSec.toFixed(0)} tokens/s, ${t.msPerStep.toFixed(1)} ms/step, ${t.tflops.toFixed(1)} TFLOP/s = ${(100 * t.tflops / H200_BF16_DENSE_TFLOPS).toFixed(1)}% of the ${H200_BF16_DENSE_TFLOPS} TFLOP/s bf16 peak (torch ${t.torch})`);
}
console.log(`cuda step: ${report.cudaStep}`);
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'device-check.json'), JSON.stringify(report, null, 1));
console.log(`${report.ok ? 'all checks passed' : 'CHECKS FAILED'}; figures in ${join(out, 'device-check.json')}`);
process.exitCode = report.ok ? 0 : 1;
