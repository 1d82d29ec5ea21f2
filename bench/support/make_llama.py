#!/usr/bin/env python3
"""A seeded random Llama directory for bench/hf-rollout.bench.ts: usage: make_llama.py OUT_DIR [dtype]

LlamaForCausalLM, hidden 768, 12 layers, 12 heads / 4 kv heads, intermediate 2048, vocab 32000,
untied head (125M parameters, 100M outside the embedding), written with save_pretrained
in bf16 by default (what released checkpoints ship; both sides upcast it to f32 on load).
The values do not matter for timing; torch's own init, seeded, keeps the activations finite.
"""
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    out = Path(sys.argv[1])
    dtype = {'bf16': torch.bfloat16, 'f32': torch.float32}[sys.argv[2] if len(sys.argv) > 2 else 'bf16']
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=500000.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({'dir': str(out), 'params': params, 'dtype': str(dtype).removeprefix('torch.')}))


if __name__ == '__main__':
    main()
