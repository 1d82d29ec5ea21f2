// The CUDA backend's checks that run without a GPU (issue 15): every kernel body
// (native/src/cuda/bodies.h) run on the CPU against the CPU step's layer functions, the
// row-major → column-major GEMM mapping driven through CBLAS's column-major interface, the
// build (the CUDA objects are in the addon wherever nvcc is), the addon on a machine without a
// driver, the host-staged collectives for several ranks on one GPU, and the run-time loading
// of cuBLAS. Named stand-ins: host memory plays the device's in the staged collectives' check; the "cuBLAS" libraries below are
// stubs compiled here (the real one cannot run without a GPU); they check the search path and
// the symbol table, not a GEMM. On a machine with a GPU the device check itself runs.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import { cudaDeviceCheck, cudaHostCheck, cudaInfo, cudaStepBench, type CudaInfo } from '../../src/native/addon.ts';

const SMALL = { vocab: 96, draftVocab: 40, hidden: 32, heads: 4, kvHeads: 2, intermediate: 48, ttt: 3, ropeTheta: 10000, rmsEps: 1e-6 };

const stepChecks = (prefix: string, accuracy: boolean): string[] => ['metrics(loss, per-step loss, grad norm)', 'grads',
  'adamw.weights', 'adamw.moments', 'evaluate(after 2 steps)', ...(accuracy ? ['accuracy(train and evaluate)'] : []), 'optimizer step count']
  .map((c) => `${prefix}.${c}`);
const KERNELS = ['rmsnorm.forward', 'rmsnorm.backward', 'rope.forward', 'rope.inverse', 'swiglu.forward', 'swiglu.backward',
  'bf16.to_f32', 'bf16.from_f32', 'adamw.update+clip', 'target.argmax+softmax', 'soft_ce.loss+hit', 'soft_ce.grad',
  'attention.forward(ttt)', 'attention.backward(ttt)', 'gemm_map.nt', 'gemm_map.nn', 'gemm_map.tn',
  // The whole step written once over the backend interface (native/src/step), on its CPU
  // instance, against DraftModel: two AdamW steps (short samples and a mask; fewer real samples)
  // and an evaluation, in fp32 and with bf16 matrix products (accuracy then not compared).
  ...stepChecks('step(host)', true), ...stepChecks('step(host, bf16 matmul)', false),
  // The host-staged collectives (several ranks on one GPU) over 3 in-process ranks, host memory
  // standing in for the device's, and the choice between NCCL and staging.
  ...['allReduce(sum)', 'allReduce(max)', 'allReduce(sum, f64)', 'allGather', 'reduceScatter', 'broadcast', 'subgroup(even).allReduce'].map((op) => `comm.staged(3 ranks).${op}`),
  'comm.pick(nccl or staged)'];

const nvccHere = (): boolean => spawnSync('nvcc', ['--version']).status === 0 || existsSync('/usr/local/cuda/bin/nvcc');

/** cudaInfo() of a fresh process (the libraries are loaded once per process) with `env`. */
function infoWith(env: Record<string, string>): CudaInfo {
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e',
    "import('./src/native/addon.ts').then((a) => process.stdout.write(JSON.stringify(a.cudaInfo())))"], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out) as CudaInfo;
}

describe('CUDA backend, checked on the CPU', function () {
  this.timeout(60_000);

  it('every kernel body equals the CPU step\'s layer function on random inputs (3 seeds), and the GEMM mapping equals the row-major GEMMs', () => {
    for (const seed of [1, 2, 20261204]) {
      const checks = cudaHostCheck(seed);
      assert.deepEqual(checks.map((c) => c.name), KERNELS);
      for (const c of checks) {
        assert.ok(c.values > 0, `${c.name} compared nothing`);
        assert.ok(Number.isFinite(c.err) && c.err <= c.tol, `${c.name} (seed ${seed}): err ${c.err} > tol ${c.tol}`);
        assert.equal(c.note, null);
      }
      // bit-exact where the arithmetic is: every bf16 pattern, the rounding; the staged
      // collectives (sums in rank order, as the host communicator takes them)
      for (const c of checks.filter((x) => /^bf16|^comm\./.test(x.name))) assert.equal(c.tol, 0, c.name);
      // the fp32 resident step equals the CPU step to 1e-4; bf16 products to the stated 5e-2
      for (const c of checks.filter((x) => x.name.startsWith('step(host).'))) assert.ok(c.tol <= 1e-4, c.name);
      for (const c of checks.filter((x) => x.name.startsWith('step(host, bf16'))) assert.ok(c.tol <= 5e-2, c.name);
    }
  });

  it('a bad seed is an InvalidArgumentError naming it; so are a bad config and bad options of the step benchmark', () => {
    assert.throws(() => cudaHostCheck(-1), /seed must be a non-negative safe integer \(got -1\)/);
    assert.throws(() => cudaHostCheck(1.5), /seed/);
    const opts = { batch: 1, seq: 8, reps: 1, warmup: 0 };
    assert.throws(() => cudaStepBench({ ...SMALL, kvHeads: 3 }, opts), (e: unknown) => e instanceof InvalidArgumentError && /kvHeads/.test((e as Error).message));
    assert.throws(() => cudaStepBench(SMALL, { ...opts, batch: 0 }), (e: unknown) => e instanceof InvalidArgumentError && /options\.batch must be in \[1, /.test((e as Error).message));
    assert.throws(() => cudaStepBench(SMALL, { ...opts, seq: 1.5 }), (e: unknown) => e instanceof InvalidArgumentError && /options\.seq/.test((e as Error).message));
    assert.throws(() => cudaStepBench(SMALL, { ...opts, bf16: 'yes' as unknown as boolean }), (e: unknown) => e instanceof InvalidArgumentError && /options\.bf16 must be a boolean/.test((e as Error).message));
  });

  it('the addon has the CUDA objects wherever nvcc is, and without a driver runs its CPU path and says why there is no GPU', () => {
    const info = cudaInfo();
    if (nvccHere()) {
      assert.equal(info.built, true, 'nvcc is on this machine: the build must compile the CUDA objects');
      assert.equal(info.arch, 'sm_90');
      assert.ok((info.runtimeVersion ?? 0) >= 12000, `CUDA runtime ${info.runtimeVersion}`);
    }
    if (info.gpus.length === 0) {
      assert.match(info.error ?? '', /no usable CUDA device|built without CUDA/);
      assert.throws(() => cudaDeviceCheck(1), (e: unknown) => e instanceof UnavailableError && /no CUDA device check here/.test((e as Error).message));
      assert.throws(() => cudaStepBench(SMALL, { batch: 1, seq: 8, reps: 1, warmup: 0 }),
        (e: unknown) => e instanceof UnavailableError && /no CUDA step here: (no usable CUDA device|this addon was built without CUDA)/.test((e as Error).message));
    } else {
      assert.equal(info.error, null);
      // A GPU here: every kernel, the cuBLAS GEMMs and NCCL on one rank, against the CPU step.
      for (const c of cudaDeviceCheck(7)) assert.ok(c.err <= c.tol, `${c.name}: err ${c.err} > tol ${c.tol}${c.note ? ` (${c.note})` : ''}`);
      const b = cudaStepBench(SMALL, { batch: 2, seq: 16, reps: 2, warmup: 1 });
      assert.ok(b.msPerStep > 0 && Number.isFinite(b.loss), JSON.stringify(b));
    }
  });

  it('draftwire cuda --check --json: the status and every check as JSON (exit 0 when they pass); a bad --seed is exit 2', () => {
    const r = spawnSync(process.execPath, ['bin/draftwire.js', 'cuda', '--check', '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout) as { info: CudaInfo; host: { name: string; err: number; tol: number }[]; device: unknown; ok: boolean };
    assert.equal(rep.ok, true);
    assert.deepEqual(rep.host.map((c) => c.name), KERNELS);
    if (rep.info.gpus.length === 0) assert.match(String(rep.device), /no CUDA device check here/);
    const bad = spawnSync(process.execPath, ['bin/draftwire.js', 'cuda', '--seed', 'x'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--seed must be an integer ≥ 0, got "x"/);
  });

  describe('cuBLAS loaded at run time (stub libraries compiled here, named stand-ins)', () => {
    let dir = '';
    before(function () {
      if (spawnSync('cc', ['--version']).status !== 0) this.skip();
      dir = mkdtempSync(join(tmpdir(), 'dw-cublas-'));
      const fns = ['cublasCreate_v2', 'cublasDestroy_v2', 'cublasSetStream_v2', 'cublasSgemm_v2', 'cublasGemmEx'];
      const lib = (name: string, without: string | null) => {
        const sub = join(dir, name);
        mkdirSync(sub);
        const src = [...fns.filter((f) => f !== without).map((f) => `int ${f}(void) { return 0; }`),
          'int cublasGetProperty(int what, int* v) { *v = what == 0 ? 13 : what == 1 ? 1 : 7; return 0; }'].join('\n');
        writeFileSync(join(sub, 'stub.c'), src);
        execFileSync('cc', ['-shared', '-fPIC', '-o', join(sub, 'libcublas.so.13'), join(sub, 'stub.c')]);
        return sub;
      };
      lib('full', null);
      lib('partial', 'cublasGemmEx');
      mkdirSync(join(dir, 'garbage'));
      writeFileSync(join(dir, 'garbage', 'libcublas.so.13'), 'not a shared library');
    });
    after(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

    it('found in DRAFTWIRE_CUDA_LIBS: its path and version are reported', () => {
      const info = infoWith({ DRAFTWIRE_CUDA_LIBS: `/nonexistent:${join(dir, 'full')}` });
      assert.deepEqual(info.cublas, { path: join(dir, 'full', 'libcublas.so.13'), version: '13.1.7' });
      assert.equal(info.cublasError, null);
    });

    it('a library without an entry point the step needs, or one that is not a library, is refused by name', () => {
      const partial = infoWith({ DRAFTWIRE_CUDA_LIBS: join(dir, 'partial') });
      assert.equal(partial.cublas, null);
      assert.match(partial.cublasError ?? '', /libcublas\.so\.13 lacks cublasGemmEx/);
      const garbage = infoWith({ DRAFTWIRE_CUDA_LIBS: join(dir, 'garbage') });
      assert.equal(garbage.cublas, null);
      assert.match(garbage.cublasError ?? '', /garbage\/libcublas\.so\.13/);
      assert.match(garbage.cublasError ?? '', /set DRAFTWIRE_CUDA_LIBS/);
    });
  });
});
