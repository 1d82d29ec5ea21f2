// `draftwire cuda`: what this installation can do with a GPU (the CUDA objects built in, the
// driver, the devices, cuBLAS and NCCL found at run time), and with --check the checks of the
// CUDA backend: every kernel body against the CPU step on the CPU, and, where a GPU is usable,
// every kernel, the cuBLAS GEMMs and a 1-rank NCCL all-reduce on it. Exit 1 when a check fails.
import { Command } from 'commander';
import { UnavailableError } from '../../src/errors.ts';
import { cudaDeviceCheck, cudaHostCheck, cudaInfo, type CudaCheck, type CudaInfo } from '../../src/native/addon.ts';
import type { GlobalOptions } from '../options.ts';
import { nonNegativeInt } from '../options.ts';

export interface CudaReport {
  info: CudaInfo;
  host: CudaCheck[] | null;
  /** null: not run (no --check); a string: why it could not run here. */
  device: CudaCheck[] | string | null;
  ok: boolean;
}

const passed = (c: CudaCheck) => Number.isFinite(c.err) && c.err <= c.tol;

export function cudaReport(check: boolean, seed: number): CudaReport {
  const info = cudaInfo();
  if (!check) return { info, host: null, device: null, ok: true };
  const host = cudaHostCheck(seed);
  let device: CudaCheck[] | string;
  try { device = cudaDeviceCheck(seed); } catch (e) {
    if (!(e instanceof UnavailableError)) throw e;
    device = e.message;
  }
  return { info, host, device, ok: host.every(passed) && (typeof device === 'string' || device.every(passed)) };
}

function render(r: CudaReport): string {
  const i = r.info;
  const lines = [
    `CUDA objects: ${i.built ? `built (${i.arch}, runtime ${i.runtimeVersion})` : 'not built (no nvcc when the addon was built)'}`,
    `driver: ${i.driverVersion ?? 'none'}`,
    ...(i.gpus.length ? i.gpus.map((g, n) => `gpu ${n}: ${g.name}, compute ${g.computeCapability}, ${g.sms} SMs, ${g.memoryGiB.toFixed(1)} GiB`) : [`gpus: none (${i.error})`]),
    `cuBLAS: ${i.cublas ? `${i.cublas.version} (${i.cublas.path})` : i.cublasError}`,
    `NCCL: ${i.nccl ? `${i.nccl.version} (${i.nccl.path})` : i.ncclError}`,
  ];
  const table = (what: string, cs: CudaCheck[]) => [`${what}:`, ...cs.map((c) =>
    `  ${passed(c) ? 'ok  ' : 'FAIL'} ${c.name.padEnd(30)} err ${c.err.toExponential(2)} (tol ${c.tol}, ${c.values} values)${c.note ? ` ${c.note}` : ''}`)];
  if (r.host) lines.push(...table('kernel bodies on the CPU vs the CPU step', r.host));
  if (typeof r.device === 'string') lines.push(`kernels on the GPU: not run (${r.device})`);
  else if (r.device) lines.push(...table('kernels on the GPU vs the CPU step', r.device));
  if (r.host) lines.push(r.ok ? 'all checks passed' : 'CHECKS FAILED');
  return lines.join('\n') + '\n';
}

export function command(): Command {
  return new Command('cuda')
    .summary('what this installation can do with a GPU; --check runs the CUDA backend\'s checks')
    .description('Shows whether the native addon has its CUDA objects (built where nvcc was found), the driver, the GPUs, and whether cuBLAS and NCCL load (searched first in the directories of DRAFTWIRE_CUDA_LIBS, e.g. a PyTorch wheel\'s site-packages/nvidia/cublas/lib). With --check: every CUDA kernel body run on the CPU against the CPU step, and, where a GPU is usable, every kernel, the cuBLAS GEMMs and a 1-rank NCCL all-reduce on it. Exit 1 when a check fails.\n\nExample: DRAFTWIRE_CUDA_LIBS=$(python3 -c "import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__))")/lib draftwire cuda --check')
    .option('--check', 'run the checks (seconds on the CPU; seconds on a GPU)')
    .option('--seed <n>', 'seed of the random inputs', nonNegativeInt('--seed'), 1)
    .action((_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { check?: boolean; seed: number }>();
      const r = cudaReport(!!o.check, o.seed);
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : render(r));
      if (!r.ok) process.exitCode = 1;
    });
}
