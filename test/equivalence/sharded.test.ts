// `draftwire step --tp T --sp S --dp D` as a user runs it: the real CLI, which starts its own
// nats-server (rendezvous) and T·S·D real rank processes (cluster/step-rank.ts) joined over
// Gloo. Every 4-rank layout's output file must equal the single-rank output and the float64
// reference; a rank SIGKILLed mid-step must make the others fail fast with CollectiveError.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { REF_TRAINABLE, refShapes } from '../support/reference.ts';
import type { Fixture } from '../support/fixtures.ts';
import { isAlive, runCli as runCliIn } from '../support/procs.ts';
import { SHARD_CFG, UPDATE, compareStep, fmtErrors, referenceStep, shardFixture, type StepNumbers } from '../support/sharded.ts';


const runCli = (args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000) => runCliIn(args, { env, timeoutMs });

async function readOutput(path: string): Promise<StepNumbers> {
  const { tensors: t } = await readSafetensorsFile(path);
  const f = (n: string) => t[n]!.data as Float32Array;
  const grads: Record<string, Float32Array> = {}, weights: Record<string, Float32Array> = {};
  for (const n of REF_TRAINABLE) {
    grads[n] = f(`grad.${n}`);
    if (t[`new.${n}`]) weights[n] = f(`new.${n}`);
  }
  return { loss: f('loss')[0]!, gradNorm: f('grad_norm')[0]!, ploss: f('ploss'), acc: f('acc'), grads, weights: Object.keys(weights).length ? weights : null };
}

/** Pids of this machine's processes whose environment contains `needle` (Linux /proc). */
async function pidsWith(needle: string): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const out: number[] = [];
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if ((await readFile(`/proc/${d}/environ`, 'utf8')).includes(needle)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

describe('draftwire step --tp/--sp/--dp (4 rank processes, Gloo, real nats-server)', function () {
  this.timeout(120_000);
  let dir: string, cfgPath: string, wPath: string, bPath: string;
  let fx: Fixture;
  let single: StepNumbers, ref: StepNumbers;
  const args = (out: string, extra: string[]) => ['step', '--config', cfgPath, '--weights', wPath, '--batch', bPath, '--out', out,
    '--lr', String(UPDATE.lr), '--clip', String(UPDATE.clip), '--weight-decay', String(UPDATE.weightDecay), '--threads', '1', '--json', ...extra];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'draftwire-sharded-'));
    fx = shardFixture(5);
    cfgPath = join(dir, 'config.json');
    wPath = join(dir, 'weights.safetensors');
    bPath = join(dir, 'batch.safetensors');
    await writeFile(cfgPath, JSON.stringify(SHARD_CFG));
    const shapes = refShapes(SHARD_CFG);
    const wt: Record<string, Tensor> = {};
    for (const [name, shape] of Object.entries(shapes)) wt[name] = tensor(name === 'd2t' ? 'i32' : 'f32', shape, fx.weights[name]);
    await writeSafetensorsFile(wPath, wt);
    const { batch: B, seq: T } = fx.batch, H = SHARD_CFG.hidden;
    await writeSafetensorsFile(bPath, {
      ids: tensor('i32', [B, T], fx.batch.ids), aux: tensor('f32', [B, T, 3 * H], fx.batch.aux),
      last: tensor('f32', [B, T, H], fx.batch.last), mask: tensor('u8', [B, T], fx.batch.mask),
    });
    const out = join(dir, 'single.safetensors');
    const r = await runCli(args(out, []));
    assert.equal(r.code, 0, r.stderr);
    single = await readOutput(out);
    ref = referenceStep(fx);
    compareStep('single-rank CLI vs reference', single, ref, { rel: 1e-5, gradRel: 1e-4 }, UPDATE.lr!);
  });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  const layouts: [string, string[]][] = [
    ['tp2×sp2', ['--tp', '2', '--sp', '2']],
    ['tp2×dp2', ['--tp', '2', '--dp', '2']],
    ['sp4', ['--sp', '4']],
    ['dp4', ['--dp', '4']],
    ['tp1×sp1×dp1', ['--tp', '1', '--sp', '1', '--dp', '1']],
  ];
  for (const [name, flags] of layouts) {
    it(`${name}: the output file equals the single-rank output and the float64 reference`, async () => {
      const out = join(dir, `${name}.safetensors`);
      const r = await runCli(args(out, flags));
      assert.equal(r.code, 0, r.stderr);
      const summary = JSON.parse(r.stdout.trim());
      const got = await readOutput(out);
      assert.equal(Math.fround(summary.loss), got.loss);
      // every rank reported the single-rank loss and grad norm (to 1e-5)
      assert.equal(summary.ranks.length, name === 'tp1×sp1×dp1' ? 1 : 4);
      for (const rk of summary.ranks) {
        assert.ok(Math.abs(rk.loss - single.loss) <= 1e-5 * single.loss, `${name} rank ${rk.rank}: loss ${rk.loss} vs ${single.loss}`);
        assert.ok(Math.abs(rk.gradNorm - single.gradNorm) <= 1e-5 * single.gradNorm, `${name} rank ${rk.rank}: grad norm ${rk.gradNorm} vs ${single.gradNorm}`);
      }
      const e1 = compareStep(`${name} vs single rank`, got, single, { rel: 1e-5, gradRel: 1e-5 }, UPDATE.lr!);
      const e2 = compareStep(`${name} vs float64 reference`, got, ref, { rel: 1e-5, gradRel: 1e-4 }, UPDATE.lr!);
      if (process.env.DRAFTWIRE_SHARD_REPORT) console.log(`      ${name} (${r.ms} ms): vs single ${fmtErrors(e1)}; vs reference ${fmtErrors(e2)}`);
    });
  }

  it('rejects layouts the config or batch cannot split before starting anything (exit 2, names the constraint)', async () => {
    const out = join(dir, 'bad.safetensors');
    const a = await runCli(args(out, ['--tp', '8']));
    assert.equal(a.code, 2, a.stderr);
    assert.match(a.stderr, /draftwire: INVALID_ARGUMENT: --tp 8: config\.kvHeads \(4\) must be divisible by tp \(8\)/);
    const b = await runCli(args(out, ['--sp', '3']));
    assert.equal(b.code, 2, b.stderr);
    assert.match(b.stderr, /the sequence has 8 positions, which sp = 3 does not divide/);
    const c = await runCli(args(out, ['--dp', '3']));
    assert.equal(c.code, 2, c.stderr);
    assert.match(c.stderr, /the batch has 4 samples, which dp = 3 does not divide/);
  });

  it('bad values in one rank\'s slice: that rank names them, the others are stopped at once (exit 2)', async () => {
    const bad = join(dir, 'bad-batch.safetensors');
    const { batch: B, seq: T } = fx.batch, H = SHARD_CFG.hidden;
    const aux = fx.batch.aux.slice();
    aux[((3 * T + 7) * 3 + 1) * H] = NaN; // sample 3, position 7: rank (dp 1, sp 1) owns it
    await writeSafetensorsFile(bad, {
      ids: tensor('i32', [B, T], fx.batch.ids), aux: tensor('f32', [B, T, 3 * H], aux),
      last: tensor('f32', [B, T, H], fx.batch.last), mask: tensor('u8', [B, T], fx.batch.mask),
    });
    const r = await runCli(args(join(dir, 'never.safetensors'), ['--sp', '2', '--dp', '2']).map((x) => (x === bPath ? bad : x)));
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /draftwire: INVALID_ARGUMENT: batch .*: tensor "aux" has a non-finite value \(NaN\) at \[3, 7\] \(rank 3; the other ranks were stopped\)/);
    assert.ok(r.ms < 15_000, `took ${r.ms} ms`);
  });

  it('a rank SIGKILLed mid-step: the others fail fast with CollectiveError, the CLI reports every rank and leaves nothing behind', async () => {
    const out = join(dir, 'killed.safetensors');
    const marker = `draftwire-kill-test-${process.pid}`;
    // the victim kills itself while its native step runs; collectives wait up to 20 s, so
    // failing within a few seconds proves the survivors noticed the dead peer, not a timeout
    const r = await runCli([...args(out, ['--tp', '2', '--sp', '2', '--comm-timeout', '20000']), '--log-level', 'warn'],
      { DRAFTWIRE_FAILPOINTS: 'step-rank.1.in-step=kill', DRAFTWIRE_TEST_MARKER: marker });
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.ms < 15_000, `the CLI took ${r.ms} ms to fail (collective timeout 20 s)`);
    assert.match(r.stderr, /draftwire: COLLECTIVE: sharded step failed \(4 of 4 ranks\)/);
    assert.match(r.stderr, /rank 1 was killed \(SIGKILL\)/);
    for (const rank of [0, 2, 3]) assert.match(r.stderr, new RegExp(`rank ${rank}: COLLECTIVE: `), `rank ${rank} must report a CollectiveError:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
    // no rank process and no nats-server of this run is left
    await new Promise((res) => setTimeout(res, 200));
    const left = (await pidsWith(marker)).filter(isAlive);
    assert.deepEqual(left, [], 'processes left behind');
  });
});
