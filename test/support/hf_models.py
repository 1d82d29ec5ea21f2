#!/usr/bin/env python3
"""Seeded random tiny Hugging Face targets and their transformers reference outputs, for
test/equivalence/hf-target.test.ts. Usage: hf_models.py OUT_DIR

Writes OUT_DIR/<name>/ (save_pretrained) and OUT_DIR/<name>/reference.safetensors with
ids i32[T], logits f32[T, V], layers f32[L, T, H] (the output of every decoder layer, by
forward hooks) and last f32[T, H] (the output of model.model.norm, by a hook).
Models: llama (f32, llama3 rope scaling, head_dim != hidden/heads, GQA), llama_bf16 (bf16,
sharded with an index, tied), qwen2 (q/k/v biases), qwen3 (tied, qk-norm), llama_v4 (llama's
weights, config.json rewritten in the transformers-4 form: rope_theta + rope_scaling).
"""
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

L, T, V, H = 8, 24, 256, 64


def randomize(model, seed):
    """Weights big enough that every layer matters: matrices N(0, 1/fan_in), norms 1 + 0.2·N, biases 0.3·N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('norm.weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith('.bias'):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif 'embed_tokens' in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def reference(model, seed):
    model = model.float().eval()
    ids = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed + 1))
    outs, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda _m, _a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    hooks.append(model.model.norm.register_forward_hook(lambda _m, _a, o: outs.__setitem__('last', o.detach().clone())))
    with torch.no_grad():
        r = model(ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    layers = torch.stack([outs[i][0] for i in range(L)])
    # hidden_states[i+1] is decoder layer i's output except the last entry (after the norm in transformers 5)
    hs = r.hidden_states
    assert torch.equal(hs[1][0], layers[0]), 'hidden_states[1] is not layer 0 output'
    last_is_normed = torch.allclose(hs[-1][0], outs['last'][0])
    return {'ids': ids[0].to(torch.int32), 'logits': r.logits[0].float().contiguous(), 'layers': layers.contiguous(),
            'last': outs['last'][0].contiguous()}, last_is_normed


def save(model, out, name, seed, **kw):
    d = out / name
    model.save_pretrained(d, **kw)
    ref, normed = reference(model, seed)
    save_file(ref, str(d / 'reference.safetensors'))
    return {'name': name, 'hiddenStatesLastIsNormed': normed}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    report = []
    common = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, intermediate_size=128, rms_norm_eps=1e-5,
                  max_position_embeddings=256)

    torch.manual_seed(0)
    rope = {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
            'high_freq_factor': 4.0, 'original_max_position_embeddings': 32}
    cfg = LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_parameters=rope,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    randomize(m, 1)
    report.append(save(m, out, 'llama', 1))

    # transformers-4 form of the same model
    shutil.copytree(out / 'llama', out / 'llama_v4')
    cj = json.loads((out / 'llama_v4' / 'config.json').read_text())
    rp = cj.pop('rope_parameters')
    cj.pop('dtype', None)
    cj['torch_dtype'] = 'float32'
    cj['rope_theta'] = rp.pop('rope_theta')
    cj['rope_scaling'] = {('type' if k == 'rope_type' else k): v for k, v in rp.items()}
    (out / 'llama_v4' / 'config.json').write_text(json.dumps(cj, indent=2))

    cfg = LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg)
    randomize(m, 2)
    with torch.no_grad():  # bf16-representable weights; the reference runs in f32 (a bf16 cast would round inv_freq too)
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    ref, normed = reference(m, 2)
    d = out / 'llama_bf16'
    m.to(torch.bfloat16).save_pretrained(d, max_shard_size='100KB')
    save_file(ref, str(d / 'reference.safetensors'))
    report.append({'name': 'llama_bf16', 'hiddenStatesLastIsNormed': normed})

    cfg = Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    m = Qwen2ForCausalLM(cfg)
    randomize(m, 3)
    report.append(save(m, out, 'qwen2', 3))

    cfg = Qwen3Config(**common, num_attention_heads=4, num_key_value_heads=1, head_dim=24, tie_word_embeddings=True)
    m = Qwen3ForCausalLM(cfg)
    randomize(m, 4)
    report.append(save(m, out, 'qwen3', 4))

    (out / 'report.json').write_text(json.dumps(report))
    print(json.dumps(report))


if __name__ == '__main__':
    main()
