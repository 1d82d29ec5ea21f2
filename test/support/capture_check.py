#!/usr/bin/env python3
"""Checks a `draftwire capture` directory against transformers, independently of Draftwire:
usage: capture_check.py CAPTURE_DIR MODEL_DIR DATASET.jsonl AUX_IDS(a,b,c)

For every <id>.safetensors: input_ids equal apply_chat_template(messages) of the dataset row
with that id (rows not truncated), aux_hidden_state equals cat(hidden_states[i + 1] for i in
AUX_IDS) and hidden_state the output of the final norm, from transformers' own f32 forward of
the same ids. vocab.safetensors: d2t int64 offsets into t2d (bool) marks. Prints JSON.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def rel(a, b):
    return float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1e-30))


def messages_of(row):
    if 'messages' in row:
        return [{'role': m['role'], 'content': m['content']} for m in row['messages']]
    roles = {'human': 'user', 'gpt': 'assistant', 'system': 'system'}
    return [{'role': roles.get(m.get('from'), m.get('role')), 'content': m.get('value', m.get('content'))} for m in row['conversations']]


def main():
    cap, model_dir, data, aux = Path(sys.argv[1]), sys.argv[2], sys.argv[3], [int(x) for x in sys.argv[4].split(',')]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    rows = {}
    for line in open(data, encoding='utf-8'):
        r = json.loads(line)
        if 'id' in r:
            rows[str(r['id'])] = messages_of(r)
    out = {'files': 0, 'idsChecked': 0, 'idsEqual': True, 'maxRelAux': 0.0, 'maxRelLast': 0.0, 'dtypes': set()}
    hooked = {}
    model.model.norm.register_forward_hook(lambda m, i, o: hooked.__setitem__('last', o))
    for f in sorted(cap.glob('*.safetensors')):
        if f.name == 'vocab.safetensors':
            continue
        t = load_file(str(f))
        ids = t['input_ids'].long()
        if f.stem in rows:
            want = tok.apply_chat_template(rows[f.stem], tokenize=True, return_dict=False)
            want = want['input_ids'] if isinstance(want, dict) else list(want)
            out['idsChecked'] += 1
            out['idsEqual'] = out['idsEqual'] and want[: len(ids)] == ids.tolist()
        with torch.inference_mode():
            hs = model(ids[None], output_hidden_states=True).hidden_states
        want_aux = torch.cat([hs[i + 1][0] for i in aux], dim=-1)
        got_aux = t['aux_hidden_state'].float()
        got_last = t['hidden_state'].float()
        out['dtypes'].add(str(t['aux_hidden_state'].dtype))
        out['maxRelAux'] = max(out['maxRelAux'], rel(got_aux, want_aux))
        out['maxRelLast'] = max(out['maxRelLast'], rel(got_last, hooked['last'][0]))
        out['files'] += 1
    v = load_file(str(cap / 'vocab.safetensors'))
    d2t, t2d = v['d2t'], v['t2d']
    out['vocab'] = {'d2tDtype': str(d2t.dtype), 't2dDtype': str(t2d.dtype), 'draftVocab': int(d2t.shape[0]), 'vocab': int(t2d.shape[0]),
                    'consistent': bool(int(t2d.sum()) == d2t.shape[0] and all(bool(t2d[i + int(d2t[i])]) for i in range(d2t.shape[0])))}
    out['dtypes'] = sorted(out['dtypes'])
    print(json.dumps(out))


if __name__ == '__main__':
    main()
