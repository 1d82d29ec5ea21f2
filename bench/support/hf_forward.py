#!/usr/bin/env python3
"""The baseline of bench/hf-rollout.bench.ts: a Hugging Face target's forward alone in
transformers. usage: hf_forward.py DIR IDS.bin ROWS SEQ THREADS [LAST.bin]

IDS.bin holds ROWS·SEQ int32 token ids (little-endian), the sequences the native side runs.
Loads DIR with AutoModelForCausalLM in f32, runs one warm-up forward, then times ROWS forwards
of one sequence each (batch 1, as `draftwire capture` runs a row), model(ids,
output_hidden_states=True) under torch.inference_mode. Also times the same forwards with
logits_to_keep=1: the native capture computes no logits, transformers by default computes them
at every position. Writes row 0's post-norm last hidden state (f32 [SEQ, H]) to LAST.bin so the
caller can check both sides computed the same thing. Prints one JSON line.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def timed(model, rows, **kw):
    with torch.inference_mode():
        model(rows[0:1], output_hidden_states=True, **kw)  # warm-up: allocator, kernels
        t0 = time.perf_counter()
        for i in range(rows.shape[0]):
            out = model(rows[i:i + 1], output_hidden_states=True, **kw)
        return time.perf_counter() - t0, out


def main():
    d, ids_file, n, t, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    with open(ids_file, 'rb') as f:
        rows = torch.frombuffer(bytearray(f.read()), dtype=torch.int32).to(torch.long).reshape(n, t)
    full, _ = timed(model, rows)
    head1, _ = timed(model, rows, logits_to_keep=1)
    if len(sys.argv) > 6:
        with torch.inference_mode():
            last = model(rows[0:1], output_hidden_states=True, logits_to_keep=1).hidden_states[-1][0]
        with open(sys.argv[6], 'wb') as f:
            f.write(last.float().contiguous().numpy().tobytes())
    print(json.dumps({'threads': torch.get_num_threads(), 'loadSeconds': load, 'rows': n, 'seq': t,
                      'seconds': full, 'tokensPerSec': n * t / full,
                      'secondsHead1': head1, 'tokensPerSecHead1': n * t / head1,
                      'torch': torch.__version__, 'transformers': __import__('transformers').__version__}))


if __name__ == '__main__':
    main()
