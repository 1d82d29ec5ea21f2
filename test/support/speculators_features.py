#!/usr/bin/env python3
"""Writes a vLLM speculators data-generation directory for a chat dataset, independently of
Draftwire: usage: speculators_features.py MODEL_DIR DATASET.jsonl OUT_DIR AUX_IDS(a,b,c)

For row i (0-based over the non-blank lines) of the dataset: hs_<i>.safetensors with token_ids
(int64 [T], apply_chat_template's ids, as the speculators' preprocessing tokenises) and
hidden_states (bf16 [T, 4, H], the model dtype vLLM writes): slots 0..2 the outputs of decoder
layers AUX_IDS (output convention; vLLM's layer ids 2, L/2, L-3 count the same layers as
inputs), slot 3 the output of the LAST decoder layer before the final norm (vLLM's layer id
num_hidden_layers). The states come from transformers' own f32 forward, by forward hooks on the
decoder layers (output_hidden_states' last entry is already post-norm). No loss_mask: as in
speculators, the trainer takes it from the dataset row. Prints JSON {files, layers}.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def messages_of(row):
    if 'messages' in row:
        return [{'role': m['role'], 'content': m['content']} for m in row['messages']]
    roles = {'human': 'user', 'gpt': 'assistant', 'system': 'system'}
    return [{'role': roles.get(m.get('from'), m.get('role')), 'content': m.get('value', m.get('content'))} for m in row['conversations']]


def ids_of(tok, messages):
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    return ids['input_ids'] if isinstance(ids, dict) else list(ids)


def main():
    model_dir, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    aux = [int(x) for x in sys.argv[4].split(',')]
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    layers = model.model.layers
    taps = aux + [len(layers) - 1]
    outputs = {}
    for j in taps:
        layers[j].register_forward_hook(lambda m, i, o, j=j: outputs.__setitem__(j, o[0] if isinstance(o, tuple) else o))
    rows = [json.loads(line) for line in open(data, encoding='utf-8') if line.strip()]
    for i, row in enumerate(rows):
        messages = messages_of(row)
        ids = ids_of(tok, messages)
        with torch.inference_mode():
            model(torch.tensor([ids]))
        hs = torch.stack([outputs[j][0] for j in taps], dim=1)  # [T, 4, H]
        tensors = {'token_ids': torch.tensor(ids, dtype=torch.int64), 'hidden_states': hs.to(torch.bfloat16).contiguous()}
        save_file(tensors, str(out / f'hs_{i}.safetensors'))
    print(json.dumps({'files': len(rows), 'layers': taps}))


if __name__ == '__main__':
    main()
