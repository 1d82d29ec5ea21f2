#!/usr/bin/env python3
"""A Draftwire producer that runs a Hugging Face model itself (transformers, PyTorch) over a
chat dataset and feeds a job started with ``draftwire run --rollout external``:

    DRAFTWIRE_SECRET=... draftwire run --rollout external --target ./Llama-3.2-1B-Instruct \\
        --dataset chats.jsonl --max-len 2048 --workdir runs --job J &
    DRAFTWIRE_SECRET=... python hf_producer.py --run-dir runs/J

Per conversation (JSONL: ShareGPT ``{"conversations": [{"from", "value"}]}`` or OpenAI
``{"messages": [{"role", "content"}]}``): renders it with the tokenizer's chat template,
masks the loss to the assistant turns and their end-of-turn token (draftwire.chat, the same
prefix rendering as the job's own rollout), truncates it to the job's seqLen, runs the model
once (teacher forcing) and commits one sample: ``aux`` = the outputs of the job's three aux
layers (``target.config.auxLayers``, "output of decoder layer i" = ``hidden_states[i + 1]``)
concatenated, ``last`` = ``hidden_states[-1]`` (after the final norm). Rows the job holds out
for its accept-length prompts (its ``chat.evalRows`` last valid rows) and rows with nothing to
train on are skipped, as the job's own rollout skips them; rows already committed (a restart)
too. Then it declares its end, and the job trains what it committed and finishes.

Prints a JSON summary on stdout. Needs torch and transformers (pip install 'draftwire[hf]').
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from draftwire import InputClosed, SyncProducer
from draftwire.chat import BadRow, ChatTemplateError, mask_conversation, read_dataset, special_ids

log = logging.getLogger("hf_producer")


def features(model, ids, aux_layers, device="cpu"):
    """(aux [T, 3H], last [T, H]) of one conversation: the outputs of decoder layers
    ``aux_layers`` (transformers' ``hidden_states[i + 1]``) concatenated, and the final
    hidden state after the model's last norm (``hidden_states[-1]``)."""
    x = torch.as_tensor(ids, dtype=torch.long)[None].to(device)
    with torch.inference_mode():
        hs = model(input_ids=x, output_hidden_states=True).hidden_states
    return torch.cat([hs[i + 1][0] for i in aux_layers], dim=-1), hs[-1][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="the job's run directory (job.json, run.json)")
    ap.add_argument("--nats", help="the job's NATS URL (default: run.json's)")
    ap.add_argument("--dataset", help="JSONL conversations (default: the job's chat.dataset)")
    ap.add_argument("--model", help="the model directory (default: the job's target.dir)")
    ap.add_argument("--producer-id", default="hf-0")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--torch-dtype", choices=["float32", "bfloat16", "float16"], help="the forward's dtype (default float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--eval-rows", type=int, help="the last n valid rows are not produced (default: the job's chat.evalRows, else 0)")
    ap.add_argument("--limit", type=int, help="produce at most this many samples")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--no-end", action="store_true", help="do not declare the end (another run of this producer carries on)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if a.threads:
        torch.set_num_threads(a.threads)

    p = SyncProducer.connect(run_dir=a.run_dir, nats=a.nats, producer_id=a.producer_id)
    try:
        job = p.job
        chat = job.spec.get("chat") or {}
        if not job.aux_layers:
            raise SystemExit(f"hf_producer: job {job.job} has no Hugging Face target (target.config.auxLayers): start it with --target")
        model_dir = a.model or job.target_dir
        dataset = a.dataset or chat.get("dataset")
        if not model_dir or not dataset:
            raise SystemExit("hf_producer: --model and --dataset are needed (the job names neither)")
        dtype = getattr(torch, a.torch_dtype or ("float32" if a.device == "cpu" else "bfloat16"))
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(a.device).eval()
        layers = model.config.num_hidden_layers
        if max(job.aux_layers) + 1 > layers:
            raise SystemExit(f"hf_producer: aux layers {job.aux_layers} do not fit a model of {layers} layers")
        specials = special_ids(tok, chat.get("eosTokenIds") or [])
        tvars = chat.get("templateVars") or {}

        summary = {"job": job.job, "producer": p.producer.producer_id, "rows": 0, "produced": 0, "skippedBad": 0, "skippedNoSupervised": 0,
                   "skippedCommitted": 0, "held": 0, "truncated": 0, "tokens": 0, "badLines": []}
        valid = []
        for r in read_dataset(dataset):
            if isinstance(r, BadRow):
                summary["skippedBad"] += 1
                summary["badLines"].append({"line": r.line, "reason": r.reason})
                log.warning("%s:%d: %s (skipped)", dataset, r.line, r.reason)
                continue
            try:
                m = mask_conversation(tok, r.messages, max_len=job.seq_len, vars=tvars, specials=specials)
            except ChatTemplateError as e:
                summary["skippedBad"] += 1
                summary["badLines"].append({"line": r.line, "reason": f"chat template: {e.message}"})
                continue
            valid.append((r, m))
        held = a.eval_rows if a.eval_rows is not None else int(chat.get("evalRows") or 0)
        held = min(held, len(valid))
        summary["held"] = held
        train = valid[: len(valid) - held]

        done = p.committed()
        pending = []
        closed = False

        def drain(keep: int) -> None:
            nonlocal closed
            while len(pending) > keep:
                try:
                    pending.pop(0).result()
                    summary["produced"] += 1
                except InputClosed:
                    closed = True

        t0 = time.monotonic()
        for r, m in train:
            if closed:
                log.warning("the job's input is closed (it takes no more samples): stopping")
                break
            if m.supervised == 0 or len(m.ids) < 2:
                summary["skippedNoSupervised"] += 1
                continue
            summary["rows"] += 1
            summary["truncated"] += int(m.truncated)
            sid = p.sample_id(r.id)
            if sid in done:
                summary["skippedCommitted"] += 1
                continue
            if a.limit is not None and summary["produced"] + len(pending) >= a.limit:
                break
            aux, last = features(model, m.ids, job.aux_layers, a.device)
            # submit(): converts and copies now; writes and commits in the background while the
            # next conversation runs through the model.
            pending.append(p.submit(sid, ids=m.ids, aux=aux, last=last, mask=m.mask))
            summary["tokens"] += len(m.ids)
            drain(8)
        drain(0)
        summary["inputClosed"] = closed
        summary["seconds"] = time.monotonic() - t0
        if not a.no_end:
            summary["end"] = p.end()
        print(json.dumps(summary))
    finally:
        p.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
