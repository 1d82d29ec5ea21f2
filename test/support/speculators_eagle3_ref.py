#!/usr/bin/env python3
"""Independent reader of an EAGLE3 draft in vLLM's speculators format, run by the float32
reference layer of sglang_eagle3_ref.py (whose math follows the engines' llama_eagle3.py).

Names and config are mapped back to the layer as vLLM and speculators do (not as Draftwire does):
  * vllm-project/vllm  vllm/transformers_utils/config.py: a config.json is a speculators one
      when it has no model_type and has a speculators_config
  * vllm-project/vllm  vllm/transformers_utils/configs/speculators/base.py
      (validate_speculators_config: speculators_config.proposal_methods[0].speculative_tokens,
      .verifier.name_or_path, speculators_model_type, transformer_layer_config a dict;
      extract_transformers_pre_trained_config: the draft's config is transformer_layer_config
      updated by the algorithm's fields)
  * vllm-project/vllm  vllm/transformers_utils/configs/speculators/algos.py (update_eagle3:
      draft_vocab_size, target_hidden_size, norm_before_residual (True when missing),
      norm_before_fc (False when missing), eagle_aux_hidden_state_layer_ids)
  * vllm-project/vllm  vllm/model_executor/models/llama_eagle3.py (load_weights: t2d skipped,
      d2t -> draft_id_to_target_id, "midlayer." -> "layers.0.", everything else under model.
      except lm_head; embed_tokens optional (the target's is shared when absent); fc has no bias)
  * vllm-project/speculators  src/speculators/models/eagle3 (Eagle3SpeculatorConfig,
      Eagle3DecoderLayer: layers.0.{input_layernorm,hidden_norm,self_attn.*,post_attention_layernorm,mlp.*})

Usage: python3 speculators_eagle3_ref.py DRAFT_DIR INPUTS.safetensors OUT.safetensors
(INPUTS and OUT as sglang_eagle3_ref.py's.)
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.dont_write_bytecode = True  # no __pycache__ beside the test files
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sglang_eagle3_ref as ref  # noqa: E402

ref.PROG = "speculators_eagle3_ref"
die = ref.die

LAYER = ["input_layernorm.weight", "hidden_norm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
         "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
         "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
# Every name vLLM's Eagle3LlamaForCausalLM.load_weights has a parameter for (one layer, no biases).
KNOWN = {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "embed_tokens.weight"} | {"layers.0." + n for n in LAYER}


def draft_config(cj):
    """The draft's flat config, as vLLM builds it from a speculators config.json."""
    if "model_type" in cj:
        die(f"config.json has a top-level model_type {cj['model_type']!r}: vLLM would not read it as a speculators config")
    sc = cj.get("speculators_config")
    try:
        tokens = sc["proposal_methods"][0]["speculative_tokens"]
        verifier = sc["verifier"]["name_or_path"]
        kind = cj["speculators_model_type"]
    except (KeyError, IndexError, TypeError):
        die("invalid speculators config structure (speculators_config.proposal_methods[0].speculative_tokens, .verifier.name_or_path, speculators_model_type)")
    if kind != "eagle3":
        die(f"speculators_model_type {kind!r}, expected 'eagle3'")
    if sc.get("algorithm") != "eagle3" or sc.get("default_proposal_method") not in [m.get("proposal_type") for m in sc["proposal_methods"]]:
        die(f"speculators_config algorithm {sc.get('algorithm')!r} / default_proposal_method {sc.get('default_proposal_method')!r} do not name an eagle3 proposal method")
    tl = cj.get("transformer_layer_config")
    if not isinstance(tl, dict):
        die("transformer_layer_config must be a dictionary")
    if tl.get("model_type", "llama") != "llama":
        die(f"transformer_layer_config.model_type {tl.get('model_type')!r}: this reference runs a Llama layer")
    cfg = dict(tl)
    cfg["draft_vocab_size"] = cj.get("draft_vocab_size")
    if cj.get("target_hidden_size") is not None:
        cfg["target_hidden_size"] = cj["target_hidden_size"]
    cfg["norm_before_residual"] = cj.get("norm_before_residual", True)
    cfg["norm_before_fc"] = cj.get("norm_before_fc", False)
    if cj.get("eagle_aux_hidden_state_layer_ids"):
        cfg["eagle_aux_hidden_state_layer_ids"] = cj["eagle_aux_hidden_state_layer_ids"]
    if cfg["norm_before_fc"]:
        die("norm_before_fc is true: this reference has no input_norm before fc")
    if cfg.get("num_hidden_layers", 1) != 1:
        die(f"transformer_layer_config.num_hidden_layers {cfg.get('num_hidden_layers')}, expected 1")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        die("attention_bias / mlp_bias: the draft layer has no biases")
    if cfg.get("target_hidden_size") not in (None, cfg.get("hidden_size")):
        die(f"target_hidden_size {cfg['target_hidden_size']} != hidden_size {cfg.get('hidden_size')}")
    return cfg, int(tokens), verifier


def main(argv):
    if len(argv) != 4:
        die("usage: speculators_eagle3_ref.py DRAFT_DIR INPUTS.safetensors OUT.safetensors")
    torch.set_grad_enabled(False)
    cfg_path, st_path = os.path.join(argv[1], "config.json"), os.path.join(argv[1], "model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            die(f"missing file {p}")
    cfg, tokens, verifier = draft_config(json.load(open(cfg_path)))
    raw = load_file(st_path)
    names = {k.replace("midlayer.", "layers.0.") for k in raw}
    unknown = sorted(names - KNOWN)
    if unknown:
        die(f"tensors vLLM's loader has no parameter for: {unknown}")
    w = {k.replace("midlayer.", "layers.0."): v for k, v in raw.items()}
    w, d = ref.validate(cfg, w, "layers.0.")
    embed, ids, aux, pos = ref.read_inputs(argv[2], d)
    if "embed_tokens.weight" in w:  # vLLM uses the draft's own embedding when it ships one
        if list(w["embed_tokens.weight"].shape) != [d["V"], d["H"]]:
            die(f"embed_tokens.weight has shape {list(w['embed_tokens.weight'].shape)}, expected {[d['V'], d['H']]}")
        embed = w["embed_tokens.weight"]
    logits, tids = ref.forward(cfg, w, d, embed, ids, aux, pos, m="layers.0.", norm_before_residual=bool(cfg["norm_before_residual"]))
    print(f"speculators: verifier {verifier}, speculative_tokens {tokens}, aux layers {cfg.get('eagle_aux_hidden_state_layer_ids')}, "
          f"norm_before_residual {cfg['norm_before_residual']}, own embed_tokens {'embed_tokens.weight' in w}")
    ref.save_result(argv[3], logits, tids, d)


if __name__ == "__main__":
    main(sys.argv)
