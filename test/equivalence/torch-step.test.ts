// The native step against the same step written in PyTorch (bench/support/torch_draft.py,
// float32, autograd): loss, ploss, acc and every trainable gradient on a GQA fixture with
// masked and off-d2t positions; for the CPU step and for the resident step (the one a GPU runs)
// on its CPU backend. An implementation that shares nothing with native/ nor with
// the float64 reference. Needs python3 with torch and safetensors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DraftModel } from '../../src/native/addon.ts';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { REF_TRAINABLE, refShapes, relErr } from '../support/reference.ts';
import { TINY_GQA, makeFixture } from '../support/fixtures.ts';

const SCRIPT = fileURLToPath(new URL('../../bench/support/torch_draft.py', import.meta.url));
const TOL = 1e-4;

describe('native step = PyTorch step (bench/support/torch_draft.py)', function () {
  this.timeout(120_000);
  const config = { ...TINY_GQA, ttt: 3 };
  const fx = makeFixture(config, 11, { batch: 2, seq: 12 });
  let torch: (n: string) => Float32Array;

  before(async () => {
    const probe = spawnSync('python3', ['-c', 'import torch, safetensors'], { encoding: 'utf8' });
    assert.ok(!probe.error && probe.status === 0,
      `this test needs python3 with torch and safetensors (pip install torch safetensors): ${probe.error?.message ?? probe.stderr.trim().split('\n').at(-1)}`);
    const { batch: B, seq: T } = fx.batch, H = config.hidden;
    const shapes = refShapes(config);
    const tensors: Record<string, Tensor> = {
      ids: tensor('i32', [B, T], fx.batch.ids), aux: tensor('f32', [B, T, 3 * H], fx.batch.aux),
      last: tensor('f32', [B, T, H], fx.batch.last), mask: tensor('u8', [B, T], fx.batch.mask),
    };
    for (const [name, a] of Object.entries(fx.weights)) tensors[name] = tensor(name === 'd2t' ? 'i32' : 'f32', shapes[name]!, a);
    const dir = mkdtempSync(join(tmpdir(), 'dw-torch-'));
    try {
      const inp = join(dir, 'in.safetensors'), out = join(dir, 'out.safetensors');
      await writeSafetensorsFile(inp, tensors, { config: JSON.stringify(config) });
      const r = spawnSync('python3', [SCRIPT, 'check', inp, out], { encoding: 'utf8', timeout: 100_000 });
      assert.equal(r.status, 0, `torch_draft.py check failed: ${r.error?.message ?? r.stderr}`);
      const got = (await readSafetensorsFile(out)).tensors;
      torch = (n: string): Float32Array => got[n]!.data as Float32Array;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // 'resident-host' is the step a GPU runs (native/src/step), on its CPU backend.
  for (const backend of ['cpu', 'resident-host'] as const) {
    it(`${backend}: loss, ploss, acc and every gradient agree to 1e-4 norm-wise (TINY_GQA, B=2, T=12, K=3)`, async () => {
      const m = DraftModel.create(config, fx.weights, { threads: 1, backend });
      const nat = await m.step(fx.batch, { lr: null, clip: null, weightDecay: 0, returnGrads: true }).finally(() => m.close());
      const errs: Record<string, number> = { loss: relErr([nat.loss], torch('loss')), ploss: relErr(nat.ploss, torch('ploss')) };
      assert.deepEqual([...nat.acc], [...torch('acc')], 'acc per TTT step');
      for (const name of REF_TRAINABLE) {
        const g = nat.grads![name]!, w = torch(`grad.${name}`);
        assert.equal(g.length, w.length, `grad ${name} length`);
        assert.ok(w.some((x) => x !== 0), `PyTorch gradient of ${name} is all zero (fixture too weak)`);
        errs[name] = relErr(g, w);
      }
      const worst = Object.entries(errs).sort((a, b) => b[1] - a[1])[0]!;
      console.log(`      max norm-wise relative error ${worst[1].toExponential(2)} (${worst[0]}); loss ${errs.loss!.toExponential(2)}`);
      for (const [name, e] of Object.entries(errs)) assert.ok(e <= TOL, `${name}: norm-wise relative error ${e.toExponential(3)} > ${TOL}`);
    });
  }
});
