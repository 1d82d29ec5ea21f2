// vLLM's speculators format for an EAGLE3 draft (vllm-project/speculators; what vLLM reads in
// vllm/transformers_utils/configs/speculators/{base,algos}.py): config.json holds the decoder
// layer as `transformer_layer_config` (a LlamaConfig dict) with the EAGLE3 fields beside it
// (speculators_model_type "eagle3", draft_vocab_size, norm_before_residual, the aux layers in
// the input convention) and `speculators_config` (algorithm, proposal methods, the verifier);
// model.safetensors names the layer `layers.0.*` where SGLang's format says `midlayer.*`.
// Written by `draftwire export --format speculators`, read back by `run --init-from`.
import { ModelFormatError } from '../errors.ts';
import type { JobSpec } from './spec.ts';
import { isHfTarget } from './target.ts';

/** The speculators release whose config layout this follows (Eagle3SpeculatorConfig, SpeculatorsConfig, GreedyTokenProposalConfig). */
export const SPECULATORS_VERSION = '0.3.0';

/** The SGLang-format tensor name as speculators (and vLLM's loader) name it. */
export const speculatorsName = (engine: string): string => engine.replace(/^midlayer\./, 'layers.0.');

/** Keys of the flat engine config that are not the decoder layer's: they move out of transformer_layer_config. */
const NOT_LAYER = new Set(['architectures', 'draft_vocab_size', 'target_model', 'eagle_config', 'eagle_aux_hidden_state_layer_ids']);

/**
 * The speculators config.json from the flat SGLang-format one (engineConfig). No top-level
 * model_type: vLLM takes a config for a speculators one only when it has none and has a
 * speculators_config (transformers_utils/config.py).
 */
export function speculatorsConfig(flat: Record<string, unknown>, spec: JobSpec, speculativeTokens: number): Record<string, unknown> {
  const hf = isHfTarget(spec.target) ? spec.target : null;
  const layer = Object.fromEntries(Object.entries(flat).filter(([k]) => !NOT_LAYER.has(k)));
  return {
    speculators_model_type: 'eagle3', architectures: ['Eagle3Speculator'], speculators_version: SPECULATORS_VERSION,
    transformer_layer_config: { ...layer, attention_bias: false, mlp_bias: false },
    draft_vocab_size: flat.draft_vocab_size,
    // Draftwire's layer keeps the residual before hidden_norm; vLLM reads a missing field as true.
    norm_before_residual: false, norm_before_fc: false, target_hidden_size: null,
    eagle_aux_hidden_state_layer_ids: hf ? hf.auxLayersInput : null,
    torch_dtype: flat.torch_dtype,
    speculators_config: {
      algorithm: 'eagle3', default_proposal_method: 'greedy',
      // vLLM serves `vllm serve DRAFT` with num_speculative_tokens = proposal_methods[0].speculative_tokens.
      proposal_methods: [{ proposal_type: 'greedy', speculative_tokens: speculativeTokens, verifier_accept_k: 1, accept_tolerance: 0 }],
      verifier: { name_or_path: hf ? hf.dir : null, architectures: hf ? [hf.config.architecture] : [] },
    },
  };
}

export const isSpeculatorsConfig = (cj: Record<string, unknown>): boolean => 'speculators_model_type' in cj;

const TOP = new Set(['architectures', 'draft_vocab_size', 'norm_before_residual', 'norm_before_fc', 'target_hidden_size']);

/**
 * A speculators config.json as the flat config the decoder layer is read from, the way vLLM
 * builds its draft config (SpeculatorsConfig.extract_transformers_pre_trained_config +
 * update_eagle3): transformer_layer_config, then draft_vocab_size, norm_before_residual
 * (true when missing, as vLLM has it) and norm_before_fc over it. `field(key)` names a key
 * where the file has it (`transformer_layer_config.<key>` for the layer's).
 */
export function flattenSpeculatorsConfig(cj: Record<string, unknown>, file: string): { flat: Record<string, unknown>; field: (k: string) => string } {
  if (cj.speculators_model_type !== 'eagle3') throw new ModelFormatError(`${file}: speculators_model_type ${JSON.stringify(cj.speculators_model_type)} is not an EAGLE3 draft ("eagle3")`, { detail: { field: 'speculators_model_type' } });
  const tl = cj.transformer_layer_config;
  if (tl === null || typeof tl !== 'object' || Array.isArray(tl)) throw new ModelFormatError(`${file}: transformer_layer_config must be an object (the draft's decoder layer config)`, { detail: { field: 'transformer_layer_config' } });
  const layer = tl as Record<string, unknown>;
  const flat: Record<string, unknown> = {
    ...layer, architectures: cj.architectures, draft_vocab_size: cj.draft_vocab_size,
    norm_before_residual: cj.norm_before_residual ?? true, norm_before_fc: cj.norm_before_fc ?? false,
  };
  if (cj.target_hidden_size !== undefined && cj.target_hidden_size !== null) flat.target_hidden_size = cj.target_hidden_size;
  return { flat, field: (k) => (!TOP.has(k) && k in layer ? `transformer_layer_config.${k}` : k) };
}
