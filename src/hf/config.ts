// A Hugging Face checkpoint's config.json (Llama, Qwen2, Qwen3) as an HfTargetConfig, in
// both the transformers-4 form (rope_theta, rope_scaling) and the 5 form (rope_parameters),
// and the three aux layers in either convention (docs/model-math.md "Hugging Face targets").
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, ModelFormatError } from '../errors.ts';
import type { RopeScalingConfig, TargetConfig } from '../native/addon.ts';

export const HF_ARCHITECTURES = ['LlamaForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM'] as const;
export type HfArchitecture = (typeof HF_ARCHITECTURES)[number];

/** What Draftwire takes from config.json; JSON-able. auxLayers are output-convention ids. */
export interface HfTargetConfig {
  architecture: HfArchitecture;
  vocab: number; hidden: number; heads: number; kvHeads: number; headDim: number; intermediate: number; layers: number;
  ropeTheta: number; ropeScaling: RopeScalingConfig | null; rmsEps: number;
  tie: boolean; attentionBias: boolean; qkNorm: boolean; maxPositionEmbeddings: number;
  /** The checkpoint's dtype as config.json names it (e.g. 'bfloat16'), or null. */
  dtype: string | null;
  auxLayers: [number, number, number];
}

/**
 * Which decoder layers feed aux. 'output': the output of decoder layer i (SpecForge, SGLang;
 * default [1, L/2−1, L−4]). 'input': the input of layer j, i.e. the output of layer j−1 (vLLM,
 * speculators; default [2, L/2, L−3]).
 */
export interface AuxLayerSpec { convention: 'output' | 'input'; ids?: readonly number[] }

/** The three output-convention layer ids, validated (distinct, ascending, in range). */
export function resolveAuxLayers(L: number, spec?: AuxLayerSpec): [number, number, number] {
  if (!Number.isInteger(L) || L < 1) throw new InvalidArgumentError(`layers must be a positive integer (got ${String(L)})`);
  const conv = spec?.convention ?? 'output';
  if (conv !== 'output' && conv !== 'input') throw new InvalidArgumentError(`auxLayers.convention must be 'output' or 'input' (got ${String(conv)})`);
  const half = Math.floor(L / 2);
  const given = spec?.ids !== undefined;
  const ids = spec?.ids ?? (conv === 'output' ? [1, half - 1, L - 4] : [2, half, L - 3]);
  if (!Array.isArray(ids) || ids.length !== 3) throw new InvalidArgumentError('auxLayers.ids must be an array of 3 layer indices');
  const lo = conv === 'output' ? 0 : 1, hi = conv === 'output' ? L - 1 : L;
  const what = given ? `auxLayers.ids (${conv} convention)` : `the default aux layers [${ids.join(', ')}] (${conv} convention)`;
  ids.forEach((x, i) => {
    if (!Number.isInteger(x) || x < lo || x > hi) {
      throw new InvalidArgumentError(`${what}: [${i}] = ${String(x)} is outside [${lo}, ${hi}] for a ${L}-layer model`);
    }
    if (i > 0 && x <= ids[i - 1]!) throw new InvalidArgumentError(`${what}: must be distinct and ascending (got [${ids.join(', ')}])`);
  });
  const out = conv === 'output' ? ids : ids.map((j) => j - 1);
  return [out[0]!, out[1]!, out[2]!];
}

type Json = Record<string, unknown>;

function int(cj: Json, key: string, where: string, def?: number): number {
  const x = cj[key] ?? def;
  if (!Number.isSafeInteger(x) || (x as number) < 1) throw new ModelFormatError(`${where}: ${key} must be a positive integer (got ${JSON.stringify(x)})`);
  return x as number;
}

function num(o: Json, key: string, where: string, def?: number): number {
  const x = o[key] ?? def;
  if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) throw new ModelFormatError(`${where}: ${key} must be a positive number (got ${JSON.stringify(x)})`);
  return x;
}

/** rope_theta and the scaling from rope_parameters (transformers 5) or rope_theta + rope_scaling (4). */
function rope(cj: Json, where: string): { theta: number; scaling: RopeScalingConfig | null } {
  const rp = cj.rope_parameters, rs = cj.rope_scaling;
  const isObj = (x: unknown): x is Json => typeof x === 'object' && x !== null && !Array.isArray(x);
  const params: Json = isObj(rp) ? rp : isObj(rs) ? rs : {};
  const key = isObj(rp) ? 'rope_parameters' : 'rope_scaling';
  const theta = num(isObj(rp) && rp.rope_theta !== undefined ? rp : cj, 'rope_theta', where, 10000);
  const type = params.rope_type ?? params.type ?? 'default';
  const w = `${where}: ${key}`;
  if (type === 'default') return { theta, scaling: null };
  if (type === 'linear') return { theta, scaling: { type, factor: num(params, 'factor', w) } };
  if (type === 'llama3') {
    return {
      theta,
      scaling: {
        type, factor: num(params, 'factor', w), lowFreqFactor: num(params, 'low_freq_factor', w, 1),
        highFreqFactor: num(params, 'high_freq_factor', w, 4),
        originalMaxPositionEmbeddings: int(params, 'original_max_position_embeddings', w, 8192),
      },
    };
  }
  throw new ModelFormatError(`${w}: rope type ${JSON.stringify(type)} is not supported (default, linear, llama3)`);
}

/** Parses a config.json object; `where` names it in messages. */
export function parseHfConfig(cj: unknown, where: string, aux?: AuxLayerSpec): HfTargetConfig {
  if (typeof cj !== 'object' || cj === null || Array.isArray(cj)) throw new ModelFormatError(`${where}: not a JSON object`);
  const c = cj as Json;
  const archs = c.architectures;
  const arch = Array.isArray(archs) && archs.length === 1 ? archs[0] : archs;
  if (!(HF_ARCHITECTURES as readonly unknown[]).includes(arch)) {
    throw new ModelFormatError(`${where}: architecture ${JSON.stringify(arch)} is not supported (${HF_ARCHITECTURES.join(', ')})`);
  }
  const architecture = arch as HfArchitecture;
  const hidden = int(c, 'hidden_size', where), heads = int(c, 'num_attention_heads', where);
  const kvHeads = int(c, 'num_key_value_heads', where, heads);
  if (c.head_dim === undefined && hidden % heads !== 0) throw new ModelFormatError(`${where}: hidden_size ${hidden} is not a multiple of num_attention_heads ${heads} (and no head_dim)`);
  const headDim = int(c, 'head_dim', where, hidden / heads);
  if (headDim % 2 !== 0) throw new ModelFormatError(`${where}: head_dim ${headDim} must be even (RoPE)`);
  if (heads % kvHeads !== 0) throw new ModelFormatError(`${where}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const layers = int(c, 'num_hidden_layers', where);
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') throw new ModelFormatError(`${where}: hidden_act ${JSON.stringify(c.hidden_act)} is not supported (silu)`);
  if (c.mlp_bias === true) throw new ModelFormatError(`${where}: mlp_bias is not supported`);
  if (c.use_sliding_window === true) throw new ModelFormatError(`${where}: use_sliding_window (sliding-window attention) is not supported`);
  const { theta, scaling } = rope(c, where);
  const dtype = c.dtype ?? c.torch_dtype ?? null;
  return {
    architecture, vocab: int(c, 'vocab_size', where), hidden, heads, kvHeads, headDim,
    intermediate: int(c, 'intermediate_size', where), layers, ropeTheta: theta, ropeScaling: scaling,
    rmsEps: num(c, 'rms_norm_eps', where, 1e-6), tie: c.tie_word_embeddings === true,
    attentionBias: architecture === 'Qwen2ForCausalLM' || c.attention_bias === true,
    qkNorm: architecture === 'Qwen3ForCausalLM', maxPositionEmbeddings: int(c, 'max_position_embeddings', where, 2048),
    dtype: typeof dtype === 'string' ? dtype : null, auxLayers: resolveAuxLayers(layers, aux),
  };
}

/** Reads dir/config.json. */
export async function readHfConfig(dir: string, aux?: AuxLayerSpec): Promise<HfTargetConfig> {
  const path = join(dir, 'config.json');
  let text: string;
  try { text = await readFile(path, 'utf8'); } catch (err) {
    throw new ModelFormatError(`${path}: cannot read the model's config.json (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { cause: err });
  }
  let cj: unknown;
  try { cj = JSON.parse(text); } catch { throw new ModelFormatError(`${path}: not valid JSON`); }
  return parseHfConfig(cj, path, aux);
}

/** The native TargetConfig of an HF target. */
export function nativeTargetConfig(c: HfTargetConfig): TargetConfig {
  return {
    vocab: c.vocab, hidden: c.hidden, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, intermediate: c.intermediate,
    layers: c.layers, ropeTheta: c.ropeTheta, rmsEps: c.rmsEps, seed: 0, tie: c.tie, attentionBias: c.attentionBias,
    qkNorm: c.qkNorm, ropeScaling: c.ropeScaling, auxLayers: c.auxLayers,
  };
}
