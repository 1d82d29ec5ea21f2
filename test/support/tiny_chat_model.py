#!/usr/bin/env python3
"""A seeded random tiny Llama-3-style chat model directory, for the end-to-end chat job tests:
usage: tiny_chat_model.py OUT_DIR TOKENIZER_DIR [dtype] [DATASET.jsonl]

LlamaForCausalLM with the real Llama-3 tokenizer's vocabulary (128256 ids), hidden 64, 8 layers,
4 heads / 2 kv heads, untied head, llama3 rope scaling, written with save_pretrained (bf16 by
default), plus the tokenizer files and a generation_config.json whose eos ids include
<|eot_id|> (as Llama-3 Instruct ships). The weights are N(0, 1/fan_in) so every layer matters.
With a dataset, the head rows of the tokens its texts use are scaled up, so the random target
mostly predicts tokens of the data (as a real model of that data would): the draft vocabulary
counted over the data then covers the target's argmax, and a draft has something to learn.
"""
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def main():
    out, tok = Path(sys.argv[1]), Path(sys.argv[2])
    dtype = {'bf16': torch.bfloat16, 'f32': torch.float32}[sys.argv[3] if len(sys.argv) > 3 else 'bf16']
    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                      'original_max_position_embeddings': 256},
        rope_theta=500000.0, bos_token_id=128000, eos_token_id=[128001, 128009])
    torch.manual_seed(11)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('norm.weight'):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif 'embed_tokens' in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        if len(sys.argv) > 4:
            from transformers import AutoTokenizer
            t = AutoTokenizer.from_pretrained(tok)
            ids = set()
            for line in open(sys.argv[4], encoding='utf-8'):
                for turn in json.loads(line).get('messages') or json.loads(line).get('conversations') or []:
                    text = turn.get('content', turn.get('value'))
                    if isinstance(text, str):
                        ids.update(t.encode(text, add_special_tokens=False))
            ids.add(128009)
            model.lm_head.weight[sorted(ids)] *= 4
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=128000, eos_token_id=[128001, 128009]).save_pretrained(out)
    for f in ('tokenizer.json', 'tokenizer_config.json'):
        shutil.copy(tok / f, out / f)
    print(json.dumps({'dir': str(out)}))


if __name__ == '__main__':
    main()
