"""examples/hf_producer.py against a real chat job: a seeded tiny Llama written by
transformers (test/support/tiny_chat_model.py, the real Llama-3 tokenizer), `draftwire run
--rollout external --target --dataset`. The job trains one sample per training row; the ids
and masks are what `draftwire capture` (and the job's own row preparation) computes for the
same dataset, and the features follow the aux-layer convention capture uses."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import PKG, ROOT, need_node, python_env

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from draftwire.chat import Row, mask_conversation, read_dataset, special_ids  # noqa: E402

TOKENIZER = ROOT / "node_modules" / "@lenml" / "tokenizer-llama3" / "models"
ROWS = [
    {"id": "a1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Danube."}]},
    {"id": "a2", "conversations": [{"from": "human", "value": "Hi 👋"}, {"from": "gpt", "value": "Hello! 你好"}, {"from": "human", "value": "Again?"}, {"from": "gpt", "value": "Hello again."}]},
    {"id": "a3", "conversations": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}]},
    {"messages": [{"role": "user", "content": "Tell me about cats."}, {"role": "assistant", "content": "Cats are small, independent and curious animals that many people love, " * 3}]},
    {"messages": [{"role": "user", "content": 3}]},  # malformed: reported and skipped
    {"conversations": [{"from": "human", "value": "What are rivers?"}, {"from": "gpt", "value": "Rivers are flowing water."}]},
    {"id": "held", "messages": [{"role": "user", "content": "Last one?"}, {"role": "assistant", "content": "Yes, the last."}]},
]


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory):
    need_node()
    d = tmp_path_factory.mktemp("hf")
    data = d / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    clean = d / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in ROWS if not (r.get("messages") and r["messages"][0]["content"] == 3)))
    model = d / "model"
    r = subprocess.run([sys.executable, str(ROOT / "test" / "support" / "tiny_chat_model.py"), str(model), str(TOKENIZER), "bf16", str(clean)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, model, data


def test_hf_producer_example(jobs, chat_setup):
    d, model, data = chat_setup
    job = jobs("hf", "--target", str(model), "--dataset", str(data), "--max-len", "48", "--draft-vocab", "128", "--eval-rows", "1",
               "--eval-max-new", "4", "--ttt", "2", "--batch", "2")
    spec = json.loads((job.run_dir / "job.json").read_text())
    env = python_env(DRAFTWIRE_SECRET=job.secret)
    r = subprocess.run([sys.executable, str(PKG / "examples" / "hf_producer.py"), "--run-dir", str(job.run_dir), "--threads", "1"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    rows = spec["chat"]["rows"]
    assert (out["rows"], out["produced"], out["held"], out["skippedBad"], out["truncated"]) == (rows, rows, 1, 1, 1), out
    assert out["badLines"][0]["line"] == 5
    s = job.finish()
    assert s["audit"]["ok"], s["audit"]["problems"]
    assert (s["samples"], s["audit"]["consumed"], s["audit"]["dead"]) == (rows, rows, 0)
    assert s["input"] == {"producers": ["hf-0"], "closed": "producers"}
    assert all(np.isfinite(s["lossCurve"])) and max(s["lossCurve"]) > 0
    lengths = {e["ref"]["sampleId"]: e["ref"]["numTokens"] for e in job.ledger() if e["type"] == "put"}

    # What `draftwire capture` writes for the same dataset: the same ids and masks (and so
    # the same lengths the job trained), the features in the same aux-layer convention.
    cap = d / "capture"
    c = subprocess.run(["node", str(ROOT / "bin" / "draftwire.js"), "capture", "--target", str(model), "--dataset", str(data), "--out", str(cap),
                        "--max-len", "48", "--draft-vocab", "64", "--dtype", "f32", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr[-3000:]
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    specials = special_ids(tok, spec["chat"]["eosTokenIds"])
    tvars = spec["chat"]["templateVars"]
    spec_ex = importlib.util.spec_from_file_location("hf_producer", PKG / "examples" / "hf_producer.py")
    ex = importlib.util.module_from_spec(spec_ex)
    spec_ex.loader.exec_module(ex)
    m = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
    aux_layers = spec["target"]["config"]["auxLayers"]
    held = [r for r in read_dataset(str(data)) if isinstance(r, Row)][-1].id
    checked = 0
    for row in read_dataset(str(data)):
        if not isinstance(row, Row):
            continue
        t = load_file(str(cap / f"{row.id}.safetensors"))
        mine = mask_conversation(tok, row.messages, max_len=48, vars=tvars, specials=specials)
        assert mine.ids.tolist() == t["input_ids"].tolist(), row.id
        assert mine.mask.tolist() == t["loss_mask"].tolist(), row.id
        if row.id != held:
            assert lengths[f"hf-0-{row.id}"] == len(mine.ids), row.id
        aux, last = ex.features(m, mine.ids, aux_layers)
        for got, want in ((aux, t["aux_hidden_state"]), (last, t["hidden_state"])):
            rel = float(np.linalg.norm(got.numpy() - want) / np.linalg.norm(want))
            assert rel < 1e-4, (row.id, rel)
        checked += 1
    assert checked == len(ROWS) - 1 and len(lengths) == rows
