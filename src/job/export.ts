// `draftwire export`: a run's draft as the directory SGLang and vLLM load (their
// llama_eagle3.py; SpecForge's export writes the same): config.json (LlamaForCausalLMEagle3,
// one decoder layer of the draft's sizes, vocab_size = the target's, draft_vocab_size) and
// model.safetensors with the PyTorch [out, in] tensors under the engines' names, d2t (I64
// offsets) and t2d (BOOL). No embed_tokens: the engine uses the target's. Before anything is
// written the draft is checked (every tensor and shape, the vocabulary map, finite values);
// afterwards the files are read back and compared with what was meant, bit for bit.
// --format speculators writes the same tensors in vLLM's speculators layout (./speculators.ts).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DecodeError, InvalidArgumentError } from '../errors.ts';
import { makeDir, writeFileAtomic } from '../files.ts';
import { draftParamShapes, headDimOf, type DraftConfig } from '../native/addon.ts';
import { encodeSafetensorsBuffer, readSafetensorsFile } from '../store/safetensors.ts';
import { f32ToBf16, f32ToF16, tensor, type Tensor } from '../tensor.ts';
import { vocabOfIds } from '../chat/vocab.ts';
import { jobFile, loadJobSpec, type JobSpec } from './spec.ts';
import { isHfTarget } from './target.ts';
import { speculatorsConfig, speculatorsName } from './speculators.ts';

export type ExportDtype = 'bf16' | 'f16' | 'f32';
export const EXPORT_FORMATS = ['sglang', 'speculators'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];
/** speculative_tokens of a speculators export unless told (what speculators' Eagle3Converter writes). */
export const DEFAULT_SPECULATIVE_TOKENS = 3;

/** Draftwire tensor → the engines' name. */
export const ENGINE_NAMES: Readonly<Record<string, string>> = Object.freeze({
  fc: 'fc.weight', n_in: 'midlayer.input_layernorm.weight', n_hid: 'midlayer.hidden_norm.weight',
  q: 'midlayer.self_attn.q_proj.weight', k: 'midlayer.self_attn.k_proj.weight', v: 'midlayer.self_attn.v_proj.weight',
  o: 'midlayer.self_attn.o_proj.weight', n_post: 'midlayer.post_attention_layernorm.weight',
  gate: 'midlayer.mlp.gate_proj.weight', up: 'midlayer.mlp.up_proj.weight', down: 'midlayer.mlp.down_proj.weight',
  n_final: 'norm.weight', lm: 'lm_head.weight',
});

export interface ExportOptions {
  run: string; out: string; dtype: ExportDtype; step?: number;
  /** sglang (default): LlamaForCausalLMEagle3, midlayer.*; speculators: vLLM's speculators layout, layers.0.*. */
  format?: ExportFormat;
  /** speculators only: speculators_config.proposal_methods[0].speculative_tokens (default 3). */
  speculativeTokens?: number;
}
export interface ExportSummary { out: string; format: ExportFormat; checkpoint: string; step: number; dtype: ExportDtype; tensors: number; bytes: number; draftVocab: number; vocab: number }

/** The checkpoint to export: step N of the rank checkpoints, or the final one, or the latest committed. */
function checkpointOf(runDir: string, step?: number): string {
  const ckpt = join(runDir, 'ckpt');
  if (step !== undefined) {
    const m = existsSync(ckpt) ? readdirSync(ckpt).find((f) => new RegExp(`^step-0*${step}-e\\d+\\.safetensors$`).test(f)) : undefined;
    if (!m) throw new InvalidArgumentError(`--step ${step}: no checkpoint of that step in ${ckpt} (a finished run keeps only checkpoint.safetensors)`);
    return join(ckpt, m);
  }
  const final = join(runDir, 'checkpoint.safetensors');
  if (existsSync(final)) return final;
  try {
    return join(ckpt, (JSON.parse(readFileSync(join(ckpt, 'latest.json'), 'utf8')) as { weights: string }).weights);
  } catch { throw new InvalidArgumentError(`${runDir}: no checkpoint.safetensors and no committed rank checkpoint`); }
}

/** config.json of the draft, as the engines read it. */
export function engineConfig(spec: JobSpec, dtype: ExportDtype): Record<string, unknown> {
  const d: DraftConfig = spec.draft, hf = isHfTarget(spec.target) ? spec.target : null;
  const rs = d.ropeScaling;
  const cfg: Record<string, unknown> = {
    architectures: ['LlamaForCausalLMEagle3'], model_type: 'llama', num_hidden_layers: 1,
    hidden_size: d.hidden, intermediate_size: d.intermediate, num_attention_heads: d.heads, num_key_value_heads: d.kvHeads,
    head_dim: headDimOf(d), rms_norm_eps: d.rmsEps, hidden_act: 'silu', rope_theta: d.ropeTheta,
    rope_scaling: rs ? (rs.type === 'llama3'
      ? { rope_type: 'llama3', factor: rs.factor, low_freq_factor: rs.lowFreqFactor ?? 1, high_freq_factor: rs.highFreqFactor ?? 4, original_max_position_embeddings: rs.originalMaxPositionEmbeddings ?? 8192 }
      : { rope_type: 'linear', factor: rs.factor }) : null,
    max_position_embeddings: hf ? hf.config.maxPositionEmbeddings : spec.seqLen,
    vocab_size: d.vocab, draft_vocab_size: d.draftVocab, tie_word_embeddings: false,
    torch_dtype: { bf16: 'bfloat16', f16: 'float16', f32: 'float32' }[dtype],
  };
  if (hf) {
    const L = hf.config.layers, [a, b, c] = hf.config.auxLayers;
    cfg.target_model = hf.dir;
    // Written only when they differ from the engines' defaults (SGLang [1, L/2−1, L−4] by output, vLLM (2, L/2, L−3) by input).
    if (a !== 1 || b !== Math.floor(L / 2) - 1 || c !== L - 4) {
      cfg.eagle_config = { eagle_aux_hidden_state_layer_ids: [a, b, c], use_aux_hidden_state: true };
      cfg.eagle_aux_hidden_state_layer_ids = hf.auxLayersInput;
    }
  }
  return cfg;
}

/** The export's tensors from a checkpoint's (Draftwire names, f32, absolute d2t), checked. */
export function engineTensors(c: DraftConfig, ckpt: Record<string, Tensor>, dtype: ExportDtype, where: string): Record<string, Tensor> {
  const shapes = draftParamShapes(c), out: Record<string, Tensor> = {};
  for (const [name, engine] of Object.entries(ENGINE_NAMES)) {
    const t = ckpt[name];
    if (!t || t.dtype !== 'f32') throw new DecodeError(`${where}: tensor "${name}" is missing or not f32`);
    const want = shapes[name]!;
    if (t.shape.length !== want.length || t.shape.some((x, i) => x !== want[i])) throw new DecodeError(`${where}: tensor "${name}" has shape [${t.shape}], the draft's config needs [${want}]`);
    const data = t.data as Float32Array;
    const bad = data.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new DecodeError(`${where}: tensor "${name}"[${bad}] is ${data[bad]} (not finite)`);
    out[engine] = dtype === 'f32' ? tensor('f32', want, data) : tensor(dtype, want, dtype === 'bf16' ? f32ToBf16(data) : f32ToF16(data));
  }
  const ids = ckpt.d2t?.data;
  if (!(ids instanceof Int32Array) || ids.length !== c.draftVocab) throw new DecodeError(`${where}: tensor "d2t" must be i32 [${c.draftVocab}]`);
  // The engines read draft id i as target id i + d2t[i], so the ids must be ascending.
  const bad = ids.findIndex((id, i) => i > 0 && id <= ids[i - 1]!);
  if (bad > 0) throw new DecodeError(`${where}: d2t[${bad}] = ${ids[bad]} (the draft's target ids must be strictly increasing in [0, ${c.vocab}))`);
  let vocab;
  try { vocab = vocabOfIds(ids, c.vocab); } catch (e) { throw new DecodeError(`${where}: ${(e as Error).message}`, { cause: e }); }
  out.d2t = tensor('i64', [ids.length], vocab.d2t);
  out.t2d = tensor('u8', [c.vocab], vocab.t2d);
  return out;
}

const sameBytes = (a: Tensor, b: Tensor) => {
  const x = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength), y = new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength);
  return a.dtype === b.dtype && x.length === y.length && x.every((v, i) => v === y[i]);
};

/** The format and speculative_tokens of `o`, checked. */
function formatOf(o: ExportOptions): { format: ExportFormat; tokens: number } {
  const format = o.format ?? 'sglang';
  if (!(EXPORT_FORMATS as readonly string[]).includes(format)) throw new InvalidArgumentError(`--format must be ${EXPORT_FORMATS.join(' or ')}, got ${String(format)}`);
  if (o.speculativeTokens === undefined) return { format, tokens: DEFAULT_SPECULATIVE_TOKENS };
  if (format !== 'speculators') throw new InvalidArgumentError('--speculative-tokens is written only by --format speculators (SGLang and vLLM take it on their command line)');
  if (!Number.isSafeInteger(o.speculativeTokens) || o.speculativeTokens < 1 || o.speculativeTokens > 64) throw new InvalidArgumentError(`--speculative-tokens must be an integer in [1, 64], got ${String(o.speculativeTokens)}`);
  return { format, tokens: o.speculativeTokens };
}

export async function exportDraft(o: ExportOptions): Promise<ExportSummary> {
  if (!['bf16', 'f16', 'f32'].includes(o.dtype)) throw new InvalidArgumentError(`--dtype must be bf16, f16 or f32, got ${String(o.dtype)}`);
  const { format, tokens } = formatOf(o);
  const spec = loadJobSpec(jobFile(o.run));
  const path = checkpointOf(o.run, o.step);
  const { tensors, metadata } = await readSafetensorsFile(path);
  if (metadata.config && metadata.config !== JSON.stringify(spec.draft)) throw new DecodeError(`${path}: its draft config is not the job's (${jobFile(o.run)})`);
  const checked = engineTensors(spec.draft, tensors, o.dtype, path);
  const out = format === 'sglang' ? checked : Object.fromEntries(Object.entries(checked).map(([n, t]) => [speculatorsName(n), t]));
  const config = format === 'sglang' ? engineConfig(spec, o.dtype) : speculatorsConfig(engineConfig(spec, o.dtype), spec, tokens);
  await makeDir(o.out);
  const bytes = encodeSafetensorsBuffer(out, { format: 'pt', draftwire_job: spec.job, draftwire_step: metadata.step ?? '' }, { bool: ['t2d'] });
  await writeFileAtomic(join(o.out, 'model.safetensors'), bytes, { fsync: true });
  await writeFileAtomic(join(o.out, 'config.json'), JSON.stringify(config, null, 2) + '\n', { fsync: true });
  // Read back what was written: the same tensors, bit for bit, and the same config.
  const back = await readSafetensorsFile(join(o.out, 'model.safetensors'), { allowBool: true });
  for (const [name, t] of Object.entries(out)) {
    const b = back.tensors[name];
    if (!b || !sameBytes(b, t) || b.shape.join() !== t.shape.join()) throw new DecodeError(`${o.out}/model.safetensors: tensor "${name}" does not read back as written`);
  }
  if (JSON.stringify(JSON.parse(readFileSync(join(o.out, 'config.json'), 'utf8'))) !== JSON.stringify(config)) throw new DecodeError(`${o.out}/config.json does not read back as written`);
  return { out: o.out, format, checkpoint: path, step: Number(metadata.step ?? 0), dtype: o.dtype, tensors: Object.keys(out).length, bytes: bytes.byteLength, draftVocab: spec.draft.draftVocab, vocab: spec.draft.vocab };
}
