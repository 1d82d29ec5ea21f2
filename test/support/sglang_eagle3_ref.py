#!/usr/bin/env python3
"""Independent float32 PyTorch reference for the SGLang EAGLE3 draft forward pass.

Follows the serving engines' published model code (not Draftwire's code):
  * sgl-project/sglang  python/sglang/srt/models/llama_eagle3.py
      (LlamaForCausalLMEagle3 / LlamaModel / LlamaDecoderLayer "midlayer")
  * vllm-project/vllm   vllm/model_executor/models/llama_eagle3.py
      (Eagle3LlamaForCausalLM, layer_idx == 0 path, norm_before_residual=False)
  * vllm-project/vllm   vllm/model_executor/layers/rotary_embedding/llama3_rope.py
      (llama3 inv_freq rescaling); "linear" scaling divides positions by factor.

Forward (one pass over T tokens, causal):
  h = fc(aux) if aux width == 3H else aux             (SGLang: fc when width != H)
  residual = h; e = input_layernorm(embed[ids]); h = hidden_norm(h)
      (norm_before_residual, vLLM's other branch, speculators' config field: residual = hidden_norm(h))
  x = cat([e, h]) (2H) -> q/k/v proj -> RoPE (rotate-half) -> GQA causal attn -> o_proj
  h, residual = post_attention_layernorm(x, residual)  (residual = x + residual; h = norm(residual))
  h = down(silu(gate(h)) * up(h)); out = norm(h + residual); logits = lm_head(out) [T, Vd]
  target_ids = argmax + d2t[argmax]

Usage: python3 sglang_eagle3_ref.py DRAFT_DIR INPUTS.safetensors OUT.safetensors
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file


PROG = "sglang_eagle3_ref"  # speculators_eagle3_ref.py, which reuses this file's math, sets its own


def die(msg):
    sys.stderr.write(PROG + ": error: " + msg + "\n")
    sys.exit(2)


def rms_norm(x, w, eps):
    x = x.float()
    return w.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def inv_freq(cfg, hd):
    base = float(cfg.get("rope_theta", 10000.0))
    f = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
    if kind == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wl = 2 * math.pi / f
        smooth = (old / wl - lo) / (hi - lo) if hi != lo else torch.zeros_like(f)
        f = torch.where(wl < old / hi, f,
                        torch.where(wl > old / lo, f / factor, (1 - smooth) * f / factor + smooth * f))
    elif kind not in ("default", "linear"):
        die(f"unsupported rope_scaling type {kind!r}")
    pos_scale = float(rs["factor"]) if kind == "linear" else 1.0
    return f.float(), pos_scale


def rope(x, cos, sin):  # x [T, n, hd], rotate-half (neox / Llama HF style)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def load_and_validate(draft_dir):
    cfg_path, st_path = os.path.join(draft_dir, "config.json"), os.path.join(draft_dir, "model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            die(f"missing file {p}")
    cfg = json.load(open(cfg_path))
    if "LlamaForCausalLMEagle3" not in (cfg.get("architectures") or []):
        die(f"config.json architectures {cfg.get('architectures')} lacks LlamaForCausalLMEagle3")
    w, d = validate(cfg, load_file(st_path), "midlayer.")
    return cfg, w, d


def validate(cfg, w, m):
    """Checks a flat Llama-style draft config and its tensors (the layer's under prefix m)."""
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "rms_norm_eps", "vocab_size", "draft_vocab_size"):
        if cfg.get(k) is None:
            die(f"config.json missing {k}")
    H, I, nh, nkv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    V, Vd = cfg["vocab_size"], cfg["draft_vocab_size"]
    if nh % nkv:
        die(f"num_attention_heads {nh} not a multiple of num_key_value_heads {nkv}")
    shapes = {
        "fc.weight": [H, 3 * H], m + "input_layernorm.weight": [H], m + "hidden_norm.weight": [H],
        m + "self_attn.q_proj.weight": [nh * hd, 2 * H], m + "self_attn.k_proj.weight": [nkv * hd, 2 * H],
        m + "self_attn.v_proj.weight": [nkv * hd, 2 * H], m + "self_attn.o_proj.weight": [H, nh * hd],
        m + "post_attention_layernorm.weight": [H], m + "mlp.gate_proj.weight": [I, H],
        m + "mlp.up_proj.weight": [I, H], m + "mlp.down_proj.weight": [H, I], "norm.weight": [H],
        "lm_head.weight": [Vd, H], "d2t": [Vd], "t2d": [V],
    }
    for name, shp in shapes.items():
        if name not in w:
            die(f"model.safetensors missing tensor {name}")
        if list(w[name].shape) != shp:
            die(f"tensor {name} has shape {list(w[name].shape)}, expected {shp}")
    d2t, t2d = w["d2t"], w["t2d"]
    if d2t.dtype != torch.int64:
        die(f"d2t dtype {d2t.dtype}, expected int64")
    if t2d.dtype != torch.bool:
        die(f"t2d dtype {t2d.dtype}, expected bool")
    if int(t2d.sum()) != Vd:
        die(f"t2d.sum() = {int(t2d.sum())} != draft_vocab_size {Vd}")
    tgt = torch.arange(Vd) + d2t
    if Vd > 1 and not bool((tgt[1:] > tgt[:-1]).all()):
        die("i + d2t[i] is not strictly increasing")
    if bool((tgt < 0).any()) or bool((tgt >= V).any()):
        die(f"i + d2t[i] outside [0, {V})")
    if not bool(t2d[tgt].all()):
        die("t2d[i + d2t[i]] is false for some draft id i")
    w = {k: (v.float() if v.is_floating_point() else v) for k, v in w.items()}
    return w, dict(H=H, I=I, nh=nh, nkv=nkv, hd=hd, V=V, Vd=Vd)


def forward(cfg, w, d, embed, ids, aux, pos, m="midlayer.", norm_before_residual=False):
    H, nh, nkv, hd, eps = d["H"], d["nh"], d["nkv"], d["hd"], float(cfg["rms_norm_eps"])
    T = ids.shape[0]
    embeds = embed[ids]
    h = aux @ w["fc.weight"].T if aux.shape[-1] != H else aux
    # vLLM llama_eagle3.py: _norm_after_residual (default) keeps the residual before hidden_norm.
    residual = h
    e = rms_norm(embeds, w[m + "input_layernorm.weight"], eps)
    h = rms_norm(h, w[m + "hidden_norm.weight"], eps)
    if norm_before_residual:
        residual = h
    x = torch.cat([e, h], dim=-1)
    q = (x @ w[m + "self_attn.q_proj.weight"].T).view(T, nh, hd)
    k = (x @ w[m + "self_attn.k_proj.weight"].T).view(T, nkv, hd)
    v = (x @ w[m + "self_attn.v_proj.weight"].T).view(T, nkv, hd)
    f, pscale = inv_freq(cfg, hd)
    ang = (pos.float() / pscale)[:, None] * f[None, :]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    rep = nh // nkv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, nh * hd)
    o = attn @ w[m + "self_attn.o_proj.weight"].T
    residual = o + residual
    h = rms_norm(residual, w[m + "post_attention_layernorm.weight"], eps)
    g, u = h @ w[m + "mlp.gate_proj.weight"].T, h @ w[m + "mlp.up_proj.weight"].T
    h = (torch.nn.functional.silu(g) * u) @ w[m + "mlp.down_proj.weight"].T
    out = rms_norm(h + residual, w["norm.weight"], eps)
    logits = out @ w["lm_head.weight"].T
    am = logits.argmax(-1)
    return logits, am + w["d2t"][am]


def read_inputs(path, d):
    if not os.path.isfile(path):
        die(f"missing inputs file {path}")
    inp = load_file(path)
    for k in ("embed_tokens", "input_ids", "aux", "positions"):
        if k not in inp:
            die(f"inputs missing tensor {k}")
    embed, ids, aux, pos = inp["embed_tokens"].float(), inp["input_ids"].long(), inp["aux"].float(), inp["positions"].long()
    T, H, V = ids.shape[0] if ids.dim() == 1 else -1, d["H"], d["V"]
    if ids.dim() != 1 or T < 1:
        die(f"input_ids shape {list(ids.shape)}, expected [T] with T >= 1")
    if list(embed.shape) != [V, H]:
        die(f"embed_tokens shape {list(embed.shape)}, expected {[V, H]}")
    if list(aux.shape) not in ([T, 3 * H], [T, H]):
        die(f"aux shape {list(aux.shape)}, expected {[T, 3 * H]}")
    if list(pos.shape) != [T]:
        die(f"positions shape {list(pos.shape)}, expected {[T]}")
    if bool((ids < 0).any()) or bool((ids >= V).any()):
        die(f"input_ids outside [0, {V})")
    return embed, ids, aux, pos


def save_result(path, logits, tids, d):
    save_file({"logits": logits.float().contiguous(), "target_ids": tids.long().contiguous()}, path)
    print(f"ok: T={logits.shape[0]} Vd={d['Vd']} logits {list(logits.shape)} target_ids {tids.tolist()[:8]}")


def main(argv):
    if len(argv) != 4:
        die("usage: sglang_eagle3_ref.py DRAFT_DIR INPUTS.safetensors OUT.safetensors")
    torch.set_grad_enabled(False)
    cfg, w, d = load_and_validate(argv[1])
    embed, ids, aux, pos = read_inputs(argv[2], d)
    logits, tids = forward(cfg, w, d, embed, ids, aux, pos)
    save_result(argv[3], logits, tids, d)


if __name__ == "__main__":
    main(sys.argv)
