// `draftwire step` as a user runs it: the real CLI in a child process on files in a temp
// directory, its output file checked against the float64 reference, and bad input rejected
// with exit code 2 and a message naming the key or tensor (never a stack trace).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect as natsConnect } from '@nats-io/transport-node';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { tensor, type Tensor } from '../../src/tensor.ts';
import { REF_TRAINABLE, globalNorm, referenceAdamW, referenceGrads, referenceLoss, relErr, refShapes, worstElement } from '../support/reference.ts';
import { runCli as runCliIn, type CliRun } from '../support/procs.ts';
import { TINY, makeFixture, type Fixture, type FixtureBatch, type FixtureWeights } from '../support/fixtures.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'draftwire.js');

const runCli = (args: string[], timeoutMs = 60_000) => runCliIn(args, { timeoutMs });

function weightTensors(c: typeof TINY, w: FixtureWeights): Record<string, Tensor> {
  const shapes = refShapes(c);
  const out: Record<string, Tensor> = {};
  for (const [name, shape] of Object.entries(shapes)) out[name] = tensor(name === 'd2t' ? 'i32' : 'f32', shape, w[name]);
  return out;
}

function batchTensors(c: typeof TINY, b: FixtureBatch): Record<string, Tensor> {
  const { batch: B, seq: T } = b;
  return {
    ids: tensor('i32', [B, T], b.ids),
    aux: tensor('f32', [B, T, 3 * c.hidden], b.aux),
    last: tensor('f32', [B, T, c.hidden], b.last),
    mask: tensor('u8', [B, T], b.mask),
  };
}

function assertNoTrace(r: CliRun): void {
  assert.doesNotMatch(r.stderr, /^\s+at /m, `no stack trace expected:\n${r.stderr}`);
}

describe('draftwire step (CLI contract)', function () {
  this.timeout(120_000);
  let dir: string;
  let fx: Fixture;
  let cfgPath: string, wPath: string, bPath: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'draftwire-step-'));
    fx = makeFixture(TINY, 21);
    cfgPath = join(dir, 'config.json');
    wPath = join(dir, 'weights.safetensors');
    bPath = join(dir, 'batch.safetensors');
    const { ropeTheta: _t, rmsEps: _e, ...sizes } = TINY; // defaults: ropeTheta 10000, rmsEps 1e-6
    assert.equal(TINY.ropeTheta, 10000);
    assert.equal(TINY.rmsEps, 1e-6);
    await writeFile(cfgPath, JSON.stringify(sizes));
    await writeSafetensorsFile(wPath, weightTensors(TINY, fx.weights));
    await writeSafetensorsFile(bPath, batchTensors(TINY, fx.batch));
  });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('writes loss, grad_norm, ploss, acc and grad.* equal to the reference (1e-4); --json summarizes', async () => {
    const out = join(dir, 'out.safetensors');
    const r = await runCli(['step', '--config', cfgPath, '--weights', wPath, '--batch', bPath, '--out', out, '--threads', '1', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim());
    const { tensors } = await readSafetensorsFile(out);
    const names = Object.keys(tensors).sort();
    assert.deepEqual(names, ['acc', 'grad_norm', 'loss', 'ploss', ...REF_TRAINABLE.map((n) => `grad.${n}`)].sort());
    for (const t of Object.values(tensors)) assert.equal(t.dtype, 'f32');
    assert.deepEqual(tensors.loss.shape, [1]);
    assert.deepEqual(tensors.ploss.shape, [TINY.ttt]);
    assert.deepEqual(tensors.acc.shape, [TINY.ttt]);
    const shapes = refShapes(TINY);
    for (const n of REF_TRAINABLE) assert.deepEqual(tensors[`grad.${n}`].shape, shapes[n], `grad.${n} shape`);

    const ref = referenceLoss(TINY, fx.weights, fx.batch);
    const loss = tensors.loss.data[0] as number;
    assert.ok(Math.abs(loss - ref.loss) <= 1e-4 * ref.loss, `loss ${loss} vs ${ref.loss}`);
    for (let k = 0; k < TINY.ttt; k++) {
      assert.ok(Math.abs((tensors.ploss.data[k] as number) - ref.ploss[k]) <= 1e-4 * ref.ploss[k] + 1e-7, `ploss[${k}]`);
      assert.ok(Math.abs((tensors.acc.data[k] as number) - ref.acc[k]) <= 1e-6, `acc[${k}] ${tensors.acc.data[k]} vs ${ref.acc[k]}`);
    }
    const fd = referenceGrads(TINY, fx.weights, fx.batch);
    for (const n of REF_TRAINABLE) {
      const g = tensors[`grad.${n}`].data as Float32Array;
      assert.ok(relErr(g, fd[n]) <= 1e-4, `grad.${n} relative error ${relErr(g, fd[n])}`);
      let inf = 0;
      for (const x of fd[n]) inf = Math.max(inf, Math.abs(x));
      const we = worstElement(g, fd[n], inf);
      assert.ok(Math.abs(we.got - we.want) <= 1e-4 * Math.abs(we.want) + 1e-5 * inf, `grad.${n}[${we.index}] ${we.got} vs ${we.want}`);
    }
    const gn = globalNorm(fd);
    assert.ok(Math.abs((tensors.grad_norm.data[0] as number) - gn) <= 1e-4 * gn, `grad_norm ${tensors.grad_norm.data[0]} vs ${gn}`);

    assert.equal(summary.out, out);
    assert.ok(Math.abs(summary.loss - ref.loss) <= 1e-4 * ref.loss);
    assert.ok(Math.abs(summary.gradNorm - gn) <= 1e-4 * gn);
    assert.equal(summary.ploss.length, TINY.ttt);
    assert.equal(summary.acc.length, TINY.ttt);
  });

  it('--lr applies AdamW (with --clip and --weight-decay) and writes new.*', async () => {
    const out = join(dir, 'out-lr.safetensors');
    const r = await runCli(['step', '--config', cfgPath, '--weights', wPath, '--batch', bPath, '--out', out, '--lr', '0.01', '--clip', '0.1', '--weight-decay', '0.05']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /loss /);
    const { tensors } = await readSafetensorsFile(out);
    const grads: Record<string, Float32Array> = {};
    for (const n of REF_TRAINABLE) grads[n] = tensors[`grad.${n}`].data as Float32Array;
    const upd = referenceAdamW(fx.weights, grads, null, { lr: 0.01, clip: 0.1, weightDecay: 0.05 });
    assert.ok(upd.clipCoef < 1, 'clip was active');
    for (const n of REF_TRAINABLE) {
      const t = tensors[`new.${n}`];
      assert.ok(t, `new.${n} written`);
      assert.deepEqual(t.shape, refShapes(TINY)[n]);
      const got = t.data as Float32Array, want = upd.weights[n];
      for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= 1e-6 * Math.max(1, Math.abs(want[i])), `new.${n}[${i}] ${got[i]} vs ${want[i]}`);
    }
  });

  it('sharded with a secret: its private nats-server refuses anonymous clients, and the output is the same', async () => {
    // The step's server lives only while its ranks run: the test stops the CLI (SIGSTOP) once
    // it logged the server's URL, so the server outlives the ranks until the probes are done.
    const secret = 'step-secret-0123456789abcdef';
    const out = join(dir, 'out-auth.safetensors');
    const child = spawn(process.execPath, [BIN, 'step', '--config', cfgPath, '--weights', wPath, '--batch', bPath, '--out', out, '--dp', '2', '--threads', '1', '--json', '--log-level', 'debug'],
      { cwd: ROOT, env: { ...process.env, DRAFTWIRE_SECRET: secret } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no nats-server URL logged:\n${stderr}`)), 60_000);
      let found = false;
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = found ? null : /sharded step: nats-server up .*url=(nats:\/\/[^\s]+)/.exec(stderr);
        if (m) { found = true; clearTimeout(timer); child.kill('SIGSTOP'); resolve(m[1]!); }
      });
    });
    try {
      await assert.rejects(natsConnect({ servers: url, reconnect: false, timeout: 5000 }), /authorization/i, 'an anonymous client must be refused');
      const creds = AuthPolicy.fromSecret(secret).natsCredentials()!;
      const nc = await natsConnect({ servers: url, reconnect: false, timeout: 5000, user: creds.user, pass: creds.pass });
      await nc.close(); // the server was up: the refusal above was its authorization, not its absence
      assert.match(stderr, /nats-server up .*auth=true/);
    } finally { child.kill('SIGCONT'); }
    assert.equal(await exited, 0, stderr.slice(-3000));
    const summary = JSON.parse(stdout.trim().split('\n').at(-1)!);
    assert.equal(summary.ranks.length, 2);
    const { tensors } = await readSafetensorsFile(out);
    const ref = referenceLoss(TINY, fx.weights, fx.batch);
    assert.ok(Math.abs((tensors.loss.data[0] as number) - ref.loss) <= 1e-4 * ref.loss, `loss ${tensors.loss.data[0]} vs ${ref.loss}`);
    const fd = referenceGrads(TINY, fx.weights, fx.batch);
    for (const n of REF_TRAINABLE) assert.ok(relErr(tensors[`grad.${n}`].data as Float32Array, fd[n]) <= 1e-4, `grad.${n}`);
  });

  describe('bad input: exit 2, a message naming what is wrong, no stack trace', () => {
    async function expectBad(args: { config?: string; weights?: string; batch?: string; extra?: string[] }, pattern: RegExp): Promise<void> {
      const r = await runCli(['step', '--config', args.config ?? cfgPath, '--weights', args.weights ?? wPath, '--batch', args.batch ?? bPath, '--out', join(dir, 'bad-out.safetensors'), ...(args.extra ?? [])]);
      assert.equal(r.code, 2, `exit code ${r.code}, stderr:\n${r.stderr}`);
      assert.match(r.stderr, /^draftwire: (INVALID_ARGUMENT|DECODE): /m);
      assert.match(r.stderr, pattern);
      assertNoTrace(r);
    }
    async function writeBatch(name: string, edit: (t: Record<string, Tensor>) => void): Promise<string> {
      const t = batchTensors(TINY, { ...fx.batch, ids: fx.batch.ids.slice(), aux: fx.batch.aux.slice(), last: fx.batch.last.slice(), mask: fx.batch.mask.slice() });
      edit(t);
      const p = join(dir, name);
      await writeSafetensorsFile(p, t);
      return p;
    }
    async function writeWeights(name: string, edit: (t: Record<string, Tensor>) => void): Promise<string> {
      const t = weightTensors(TINY, fx.weights);
      edit(t);
      const p = join(dir, name);
      await writeSafetensorsFile(p, t);
      return p;
    }

    it('missing file', async () => {
      await expectBad({ weights: join(dir, 'nope.safetensors') }, /nope\.safetensors: no such file/);
    });
    it('wrong dtype (aux as f64)', async () => {
      const p = await writeBatch('f64.safetensors', (t) => { t.aux = tensor('f64', t.aux.shape, Float64Array.from(t.aux.data as Float32Array)); });
      await expectBad({ batch: p }, /"aux" has dtype f64, expected f32/);
    });
    it('wrong shape (q)', async () => {
      const p = await writeWeights('shape.safetensors', (t) => { t.q = tensor('f32', [t.q.shape[0] - 2, t.q.shape[1]], (t.q.data as Float32Array).slice(0, (t.q.shape[0] - 2) * t.q.shape[1])); });
      await expectBad({ weights: p }, /"q" has shape \[6,16\], expected \[8,16\]/);
    });
    it('missing tensor (n_final)', async () => {
      const p = await writeWeights('missing.safetensors', (t) => { delete t.n_final; });
      await expectBad({ weights: p }, /missing tensor "n_final"/);
    });
    it('token id ≥ V', async () => {
      const p = await writeBatch('tok.safetensors', (t) => { (t.ids.data as Int32Array)[3] = TINY.vocab; });
      await expectBad({ batch: p }, /"ids" has token id 40 .*outside the vocabulary \[0, 40\)/);
    });
    it('NaN in aux', async () => {
      const p = await writeBatch('nan.safetensors', (t) => { (t.aux.data as Float32Array)[5] = NaN; });
      await expectBad({ batch: p }, /"aux" has a non-finite value \(NaN\) at flat index 5/);
    });
    it('bad config key', async () => {
      const p = join(dir, 'badkey.json');
      await writeFile(p, JSON.stringify({ ...TINY, hiddn: 8 }));
      await expectBad({ config: p }, /unknown key "hiddn"/);
      const q = join(dir, 'badval.json');
      await writeFile(q, JSON.stringify({ ...TINY, kvHeads: 3 }));
      await expectBad({ config: q }, /key "kvHeads"/);
    });
    it('truncated safetensors file', async () => {
      const p = join(dir, 'trunc.safetensors');
      await writeFile(p, Buffer.from([1, 2, 3]));
      await expectBad({ batch: p }, /trunc\.safetensors/);
    });
    it('bad option value', async () => {
      await expectBad({ extra: ['--lr', 'fast'] }, /--lr/);
    });
  });
});
