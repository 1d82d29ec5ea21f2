// Hugging Face targets in the native addon against transformers itself: seeded random tiny
// Llama / Qwen2 / Qwen3 checkpoints and their reference outputs come from
// test/support/hf_models.py (run once, into a temp dir); aux, last and logits must agree to
// 1e-4 relative (norm-wise), in both aux conventions; bad directories are ModelFormatError.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, ModelFormatError } from '../../src/errors.ts';
import { parseHfConfig, resolveAuxLayers } from '../../src/hf/config.ts';
import { loadHfTarget } from '../../src/hf/target.ts';
import { readHfWeights } from '../../src/hf/weights.ts';
import { TargetModel } from '../../src/native/addon.ts';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';

const SCRIPT = fileURLToPath(new URL('../support/hf_models.py', import.meta.url));
const MODELS = ['llama', 'llama_v4', 'llama_bf16', 'qwen2', 'qwen3'] as const;

interface Ref { ids: Int32Array; logits: Float32Array; layers: Float32Array; last: Float32Array; L: number; T: number; H: number; V: number }

async function readRef(dir: string): Promise<Ref> {
  const { tensors: t } = await readSafetensorsFile(join(dir, 'reference.safetensors'));
  const [L, T, H] = t.layers!.shape as [number, number, number];
  return { ids: t.ids!.data as Int32Array, logits: t.logits!.data as Float32Array, layers: t.layers!.data as Float32Array,
    last: t.last!.data as Float32Array, L, T, H, V: t.logits!.shape[1]! };
}

/** ‖a − b‖ / ‖b‖ */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i]! - b[i]!) ** 2; n += b[i]! ** 2; }
  return Math.sqrt(d / n);
}

/** The reference aux [T, 3H] of output-convention layers ids. */
function refAux(r: Ref, ids: readonly number[]): Float32Array {
  const out = new Float32Array(r.T * 3 * r.H);
  for (let t = 0; t < r.T; t++) {
    ids.forEach((l, a) => out.set(r.layers.subarray((l * r.T + t) * r.H, (l * r.T + t + 1) * r.H), (t * 3 + a) * r.H));
  }
  return out;
}

function logitsOf(last: Float32Array, head: Float32Array, T: number, H: number, V: number): Float32Array {
  const out = new Float32Array(T * V);
  for (let t = 0; t < T; t++) {
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let j = 0; j < H; j++) s += last[t * H + j]! * head[v * H + j]!;
      out[t * V + v] = s;
    }
  }
  return out;
}

const argmax = (a: Float32Array): number => a.reduce((bi, x, i) => (x > a[bi]! ? i : bi), 0);

describe('Hugging Face targets (transformers reference)', function () {
  this.timeout(120_000);
  let root = '';
  const figures: Record<string, number> = {};

  before(async function () {
    const probe = spawnSync('python3', ['-c', 'import torch, transformers, safetensors'], { encoding: 'utf8' });
    assert.equal(probe.status, 0, `python3 with torch, transformers and safetensors is required:\n${probe.stderr}`);
    root = mkdtempSync(join(tmpdir(), 'dw-hf-'));
    await new Promise<void>((res, rej) => execFile('python3', [SCRIPT, root], { timeout: 110_000 }, (err, _o, stderr) =>
      (err ? rej(new Error(`hf_models.py failed: ${stderr}`)) : res())));
  });
  after(() => {
    if (root) rmSync(root, { recursive: true, force: true });
    console.log(`      max relative error per model: ${JSON.stringify(figures)}`);
  });

  for (const name of MODELS) {
    it(`${name}: aux, last and logits equal transformers to 1e-4; greedy tokens and the KV-cached rollout agree`, async () => {
      const dir = join(root, name);
      const r = await readRef(dir);
      const { model, config } = await loadHfTarget(dir, { threads: 1 });
      try {
        assert.deepEqual(config.auxLayers, [1, 3, 4]);
        const { aux, last } = await model.forward(r.ids, 1, r.T);
        const { embed, target_head } = model.frozen();
        if (config.tie) assert.deepEqual(target_head, embed);
        const errs = [relErr(aux, refAux(r, [1, 3, 4])), relErr(last, r.last), relErr(logitsOf(last, target_head, r.T, r.H, r.V), r.logits)];
        figures[name] = Math.max(...errs);
        for (const e of errs) assert.ok(e < 1e-4, `${name}: relative errors ${errs.map((x) => x.toExponential(2)).join(', ')}`);
        // the native head: greedy next token of each prefix = argmax of transformers' logits
        const prefixes = [4, 9, 16, r.T].map((n) => r.ids.slice(0, n));
        const next = await model.generateBatch(prefixes, 1);
        prefixes.forEach((p, i) => assert.equal(next[i]![p.length], argmax(r.logits.subarray((p.length - 1) * r.V, p.length * r.V))));
        // decoding against the KV cache gives the features of a plain forward
        const [ro] = await model.rolloutBatch([r.ids.slice(0, 10)], 6);
        const f = await model.forward(ro!.ids, 1, ro!.ids.length);
        assert.ok(relErr(ro!.aux, f.aux) < 1e-5 && relErr(ro!.last, f.last) < 1e-5);
      } finally { model.close(); }
    });
  }

  it('aux layers in the input convention (vLLM) are the outputs of the layers below', async () => {
    const dir = join(root, 'qwen3');
    const r = await readRef(dir);
    for (const [spec, want] of [[{ convention: 'input', ids: [3, 5, 7] }, [2, 4, 6]], [{ convention: 'input' }, [1, 3, 4]],
      [{ convention: 'output', ids: [0, 5, 7] }, [0, 5, 7]]] as const) {
      const { model, config } = await loadHfTarget(dir, { threads: 1, auxLayers: spec });
      try {
        assert.deepEqual(config.auxLayers, want);
        const { aux } = await model.forward(r.ids, 1, r.T);
        assert.ok(relErr(aux, refAux(r, want)) < 1e-4, JSON.stringify(spec));
      } finally { model.close(); }
    }
  });

  it('resolveAuxLayers: defaults, and clear errors for bad ids', () => {
    assert.deepEqual(resolveAuxLayers(32), [1, 15, 28]);
    assert.deepEqual(resolveAuxLayers(32, { convention: 'input' }), [1, 15, 28]);
    assert.throws(() => resolveAuxLayers(8, { convention: 'output', ids: [1, 1, 4] }), /distinct and ascending/);
    assert.throws(() => resolveAuxLayers(8, { convention: 'output', ids: [1, 3, 8] }), /outside \[0, 7\]/);
    assert.throws(() => resolveAuxLayers(8, { convention: 'input', ids: [0, 3, 5] }), /outside \[1, 8\]/);
    assert.throws(() => resolveAuxLayers(8, { convention: 'middle' as 'input' }), InvalidArgumentError);
    assert.throws(() => resolveAuxLayers(4), /default aux layers/);
  });

  it('config.json: both rope forms, and unsupported ones named', () => {
    const v5 = JSON.parse(readFileSync(join(root, 'llama', 'config.json'), 'utf8')) as Record<string, unknown>;
    const v4 = JSON.parse(readFileSync(join(root, 'llama_v4', 'config.json'), 'utf8')) as Record<string, unknown>;
    const a = parseHfConfig(v5, 'v5'), b = parseHfConfig(v4, 'v4');
    assert.deepEqual({ ...a, dtype: null }, { ...b, dtype: null });
    assert.deepEqual(a.ropeScaling, { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 });
    assert.equal(a.headDim, 32);
    assert.equal(b.dtype, 'float32');
    assert.throws(() => parseHfConfig({ ...v5, rope_parameters: { rope_type: 'yarn', rope_theta: 1e4, factor: 4 } }, 'x'),
      (e: unknown) => e instanceof ModelFormatError && /"yarn" is not supported/.test(e.message));
  });

  describe('bad model directories are ModelFormatError', () => {
    const copy = (from: string, to: string): string => {
      const d = join(root, to);
      cpSync(join(root, from), d, { recursive: true });
      return d;
    };
    const rejects = (p: Promise<unknown>, re: RegExp) => assert.rejects(p, (e: unknown) => e instanceof ModelFormatError && e.code === 'MODEL_FORMAT' && re.test(e.message));

    it('a missing tensor (named, with its file)', async () => {
      const d = copy('qwen2', 'bad-missing');
      const f = join(d, 'model.safetensors');
      const { tensors } = await readSafetensorsFile(f);
      delete tensors['model.layers.5.self_attn.k_proj.bias'];
      await writeSafetensorsFile(f, tensors);
      await rejects(loadHfTarget(d), /model\.safetensors: tensor model\.layers\.5\.self_attn\.k_proj\.bias is missing/);
    });

    it('a tensor of the wrong shape', async () => {
      const d = copy('qwen3', 'bad-shape');
      const f = join(d, 'model.safetensors');
      const { tensors } = await readSafetensorsFile(f);
      tensors['model.layers.2.mlp.up_proj.weight']!.shape = [64, 128];
      await writeSafetensorsFile(f, tensors);
      await rejects(loadHfTarget(d), /tensor model\.layers\.2\.mlp\.up_proj\.weight has shape \[64, 128\], expected \[128, 64\]/);
    });

    it('a tensor absent from a sharded index', async () => {
      const d = copy('llama_bf16', 'bad-index');
      const f = join(d, 'model.safetensors.index.json');
      const idx = JSON.parse(readFileSync(f, 'utf8')) as { weight_map: Record<string, string> };
      delete idx.weight_map['model.norm.weight'];
      writeFileSync(f, JSON.stringify(idx));
      await rejects(loadHfTarget(d), /index\.json: tensor model\.norm\.weight is missing/);
    });

    it('an unknown architecture, an absent or unreadable config.json', async () => {
      const d = copy('llama', 'bad-arch');
      const cj = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8')) as Record<string, unknown>;
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...cj, architectures: ['MistralForCausalLM'] }));
      await rejects(loadHfTarget(d), /architecture "MistralForCausalLM" is not supported/);
      const empty = join(root, 'bad-empty');
      mkdirSync(empty);
      await rejects(loadHfTarget(empty), /config\.json: cannot read .*ENOENT/);
      writeFileSync(join(empty, 'config.json'), '{ not json');
      await rejects(loadHfTarget(empty), /config\.json: not valid JSON/);
      rmSync(join(empty, 'config.json'));
      mkdirSync(join(empty, 'config.json'));
      await rejects(loadHfTarget(empty), /config\.json: cannot read .*EISDIR/);
    });
  });

  it('TargetConfig: the HF fields are validated by name; the seeded model takes them too', async () => {
    const base = { vocab: 64, hidden: 32, heads: 4, kvHeads: 2, intermediate: 48, layers: 8, ropeTheta: 1e4, rmsEps: 1e-6, seed: 3 };
    const bad = (extra: Record<string, unknown>, re: RegExp) =>
      assert.throws(() => TargetModel.create({ ...base, ...extra }), (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message), re.source);
    bad({ ropeScaling: { type: 'yarn', factor: 2 } }, /config\.ropeScaling\.type/);
    bad({ ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1 } }, /config\.ropeScaling\.highFreqFactor/);
    bad({ ropeScaling: { type: 'linear', factor: -1 } }, /config\.ropeScaling\.factor/);
    bad({ auxLayers: [1, 1, 4] }, /config\.auxLayers\[1\]/);
    bad({ auxLayers: [1, 3, 8] }, /config\.auxLayers\[2\]/);
    bad({ headDim: 3 }, /config\.headDim/);
    bad({ qkNorm: 'yes' }, /config\.qkNorm/);
    const m = TargetModel.create({ ...base, layers: 5, headDim: 24, qkNorm: true, attentionBias: true, tie: true, auxLayers: [0, 2, 4],
      ropeScaling: { type: 'llama3', factor: 4, originalMaxPositionEmbeddings: 16 } }, { threads: 1 });
    try {
      const { aux, last } = await m.forward(Int32Array.from({ length: 12 }, (_, i) => i * 5), 2, 6);
      assert.equal(aux.length, 2 * 6 * 3 * 32);
      assert.equal(last.length, 2 * 6 * 32);
      assert.ok(aux.every(Number.isFinite) && last.every(Number.isFinite));
      assert.deepEqual(m.frozen().target_head, m.frozen().embed);
    } finally { m.close(); }
  });

  it('TargetModel.fromWeights: the same model in one call; a missing tensor is InvalidArgumentError', async () => {
    const dir = join(root, 'qwen2');
    const r = await readRef(dir);
    const { config } = await loadHfTarget(dir).then(({ model, config }) => (model.close(), { config }));
    const { nativeTargetConfig } = await import('../../src/hf/config.ts');
    const w = await readHfWeights(dir, config);
    const m = TargetModel.fromWeights(nativeTargetConfig(config), w, { threads: 1 });
    try {
      assert.ok(relErr((await m.forward(r.ids, 1, r.T)).last, r.last) < 1e-4);
    } finally { m.close(); }
    delete w['model.layers.0.mlp.up_proj.weight'];
    assert.throws(() => TargetModel.fromWeights(nativeTargetConfig(config), w), (e: unknown) =>
      e instanceof InvalidArgumentError && /missing model\.layers\.0\.mlp\.up_proj\.weight/.test(e.message));
    assert.throws(() => TargetModel.fromWeights(nativeTargetConfig(config), { ...w, 'model.layers.9.mlp.up_proj.weight': new Float32Array(4) }),
      (e: unknown) => e instanceof InvalidArgumentError && /no tensor model\.layers\.9/.test(e.message));
  });
});
