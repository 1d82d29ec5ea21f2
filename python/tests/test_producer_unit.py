"""The producer without a job: its checks on a sample (each names the field), the dtypes it
writes, and what put() does with each kind of answer from the queue (a scripted bus)."""
from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest

from draftwire import (AuthError, BackpressureError, InputClosed, InvalidArgumentError, Keys, Producer, RequestTimeoutError,
                       SchemaError)
from draftwire import errors as E
from draftwire import failpoints, sampleref
from draftwire import store as st
from draftwire.arrays import f32_to_bf16_bits
from draftwire.job import JobInfo, load_job
from draftwire.keys import secret_from_env

SECRET = "unit-test-secret-0123456789"
H, L, V = 4, 16, 100


class ScriptedBus:
    """Answers queue.commit from a script: a dict (the reply) or an exception per call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    async def request(self, name, payload, key=None, **kw):
        self.calls.append((name, payload, key))
        if name == "queue.committed":
            return {"sampleIds": payload.get("prefix", "") and [x for x in ["py-0", "py-1", "other-0"] if x.startswith(payload["prefix"])]}
        a = self.answers.pop(0) if self.answers else "ok"
        if a == "ok":
            ref = payload["ref"]
            return {"sampleId": ref["sampleId"], "generation": ref["generation"], "status": "added"}
        if isinstance(a, BaseException):
            raise a
        return a

    async def close(self):
        pass


def offline(tmp_path, bus=None, **over):
    p = Producer()
    p.job = JobInfo(job="j", run_dir=str(tmp_path), store_dir=str(tmp_path), store_id="s", seq_len=L, hidden=H, vocab=V, budget=None,
                    store_high_bytes=over.pop("high", None), store_low_bytes=over.pop("low", None))
    p.keys = Keys(SECRET)
    p.bus = bus or ScriptedBus()
    p.producer_id, p.prefix, p.node, p.store_id = "py", "py-", "n1", "s"
    p.incarnation = p._gen = 1733000000000
    p._usage = st.Usage(str(tmp_path), p.job.store_high_bytes, p.job.store_low_bytes, refresh_s=0.0)
    p.input_supported = False
    for k, v in over.items():
        setattr(p, k, v)
    return p


def good(T=5, dtype=np.float32):
    rng = np.random.default_rng(T)
    return dict(ids=rng.integers(0, V, T), aux=rng.standard_normal((T, 3 * H)).astype(dtype),
                last=rng.standard_normal((T, H)).astype(dtype), mask=np.r_[np.zeros(1, bool), np.ones(T - 2, bool), np.zeros(1, bool)])


@pytest.mark.parametrize("change,field,cls,match", [
    (dict(aux=np.zeros((5, H), np.float32)), "aux", SchemaError, r"aux has shape \[5, 4\], the job expects \[5, 12\]"),
    (dict(last=np.zeros((5, H + 1), np.float32)), "last", SchemaError, r"last has shape"),
    (dict(mask=np.ones(4, np.uint8)), "mask", SchemaError, r"mask has shape \[4\]"),
    (dict(mask=np.full(5, 2, np.uint8)), "mask", InvalidArgumentError, r"only 0 and 1"),
    (dict(mask=np.ones(5, np.float32)), "mask", SchemaError, r"bool or u8"),
    (dict(ids=np.array([1, 2, 3, 4, V])), "ids", InvalidArgumentError, r"ids\[4\] = 100 is outside the target's vocabulary \[0, 100\)"),
    (dict(ids=np.array([1, -1, 3, 4, 5])), "ids", InvalidArgumentError, r"ids\[1\]"),
    (dict(ids=np.zeros((5, 1), np.int32)), "ids", SchemaError, r"ids must be \[T\]"),
    (dict(aux=np.zeros((5, 3 * H), np.int32)), "aux", SchemaError, r"floating-point"),
])
def test_prepare_names_the_field(tmp_path, change, field, cls, match):
    p = offline(tmp_path)
    with pytest.raises(cls, match=match) as e:
        p.prepare("py-x", **{**good(), **change})
    assert e.value.detail["field"] == field


def test_prepare_lengths_ids_and_prefix(tmp_path):
    p = offline(tmp_path)
    for T in (1, L + 1):
        with pytest.raises(SchemaError, match=f"T = {T} tokens, the job takes 2..{L}"):
            p.prepare("py-x", **good(T) if T > 1 else dict(ids=[1], aux=np.zeros((1, 12)), last=np.zeros((1, 4)), mask=[0]))
    for T in (2, L):
        assert p.prepare("py-x", **good(T)).num_tokens == T
    with pytest.raises(InvalidArgumentError, match="prefix"):
        p.prepare("other-x", **good())
    for bad in (".hidden", "a b", "x" * 201, "py-ä"):
        with pytest.raises(InvalidArgumentError):
            p.prepare(bad, **good())
    assert p.sample_id(7) == "py-7"


def test_dtypes_written(tmp_path):
    import torch

    s = good()
    p = offline(tmp_path)
    t = {n: a for n, _, _, a in p.prepare("py-a", **s).tensors}
    assert t["ids"].dtype == np.int32 and t["mask"].dtype == np.uint8
    assert np.array_equal(t["aux"], f32_to_bf16_bits(s["aux"]))  # bf16: RNE from f32
    tb = torch.from_numpy(s["aux"]).to(torch.bfloat16)
    t2 = {n: a for n, _, _, a in p.prepare("py-a", **dict(s, aux=tb, last=torch.from_numpy(s["last"]))).tensors}
    assert np.array_equal(t2["aux"], tb.view(torch.int16).numpy().view(np.uint16))  # torch bf16: bits as they are
    p16 = offline(tmp_path, dtype="f16")
    pr = p16.prepare("py-a", **s)
    assert [x[1] for x in pr.tensors] == ["i32", "f16", "f16", "u8"] and pr.tensors[1][3].dtype == np.float16
    p32 = offline(tmp_path, dtype="f32")
    assert np.array_equal(p32.prepare("py-a", **dict(s, aux=s["aux"].astype(np.float16))).tensors[1][3], s["aux"].astype(np.float16).astype(np.float32))
    with pytest.raises(InvalidArgumentError):
        asyncio.run(Producer.connect(run_dir=str(tmp_path), dtype="f64"))


def test_put_writes_a_verifiable_file_and_signs_the_ref(tmp_path):
    bus = ScriptedBus()
    p = offline(tmp_path, bus)
    r = asyncio.run(p.put("py-a", **good()))
    assert r.status == "added" and os.path.basename(r.path) == f"py-a.g{r.generation}.safetensors"
    assert os.stat(r.path).st_mode & 0o777 == 0o640
    v = st.verify_file(r.path)
    (name, payload, key), = bus.calls
    ref = payload["ref"]
    assert (name, key) == ("queue.commit", f"commit:py-a:{r.generation}")
    assert ref["checksum"] == v["checksum"] and sampleref.verify(Keys(SECRET), ref)
    assert ref["uri"] == f"dir://s/py-a?g={r.generation}" and ref["numTokens"] == 5
    assert ref["bytes"] == 5 * 4 + 5 * 12 * 2 + 5 * 4 * 2 + 5
    assert v["ref"]["mac"] == ref["mac"].hex() and v["ref"]["producer"] == {"node": "n1", "actor": "py", "incarnation": p.incarnation}
    import torch
    from safetensors.torch import load_file

    f = load_file(r.path)  # PyTorch's reader opens it as it is
    assert f["ids"].tolist() == good()["ids"].tolist() and f["mask"].dtype == torch.uint8 and f["aux"].dtype == torch.bfloat16
    assert torch.equal(f["aux"], torch.from_numpy(good()["aux"]).to(torch.bfloat16))
    # generations strictly increase
    r2 = asyncio.run(p.put("py-a2", **good()))
    assert r2.generation > r.generation


@pytest.mark.parametrize("error", [
    E.SchemaError("last", detail={"field": "last"}), E.AuthError("mac"), E.InvalidArgumentError("consumed"),
    E.StaleGenerationError("older"), E.InputClosed("closed"),
])
def test_a_refused_commit_deletes_its_file(tmp_path, error):
    p = offline(tmp_path, ScriptedBus(error))
    with pytest.raises(type(error)):
        asyncio.run(p.put("py-a", **good()))
    assert [f for f in os.listdir(tmp_path) if "py-a" in f or f.startswith(".tmp-")] == []
    if isinstance(error, InputClosed):  # and the producer stops
        with pytest.raises(InputClosed):
            asyncio.run(p.put("py-b", **good()))


def test_retryable_refusals_are_retried_and_timeouts_keep_the_file(tmp_path):
    bp = E.BackpressureError("high", detail={})
    p = offline(tmp_path, ScriptedBus(bp, bp, E.DraftwireError("later", code="SOMETHING", retryable=True), "ok"))
    r = asyncio.run(p.put("py-a", **good()))
    assert r.status == "added" and p.stats["backpressureWaits"] == 2
    # no answer at all: it may have been committed, so the file stays (a restart decides)
    p = offline(tmp_path, ScriptedBus(E.RequestTimeoutError("no reply")))
    with pytest.raises(RequestTimeoutError):
        asyncio.run(p.put("py-t", **good()))
    assert len([f for f in os.listdir(tmp_path) if f.startswith("py-t.")]) == 1


def test_store_backpressure_waits_then_gives_up(tmp_path):
    (tmp_path / "x-0.g1.safetensors").write_bytes(b"\0" * 5000)
    p = offline(tmp_path, high=4000, low=1000, backpressure_wait_s=0.3)
    with pytest.raises(BackpressureError) as e:
        asyncio.run(p.put("py-a", **good()))
    assert e.value.detail["highWatermarkBytes"] == 4000 and p.stats["backpressureWaits"] > 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith("py-a")]

    async def freed_later():
        async def free():
            await asyncio.sleep(0.2)
            os.unlink(tmp_path / "x-0.g1.safetensors")
        p2 = offline(tmp_path, high=4000, low=1000, backpressure_wait_s=5)
        t = asyncio.ensure_future(free())
        r = await p2.put("py-b", **good())
        await t
        return r
    assert asyncio.run(freed_later()).status == "added"


def test_leftovers_of_a_crashed_run(tmp_path):
    """A file of an id this producer (actor) wrote but never committed is removed before that
    id is written again, or by end(); a committed one, or another producer's, is left."""
    old = offline(tmp_path, ScriptedBus())
    paths = {sid: asyncio.run(old.put(sid, **good())).path for sid in ("py-0", "py-1", "py-2", "py-3")}
    other = offline(tmp_path, ScriptedBus(), producer_id="intruder")
    foreign = asyncio.run(other.put("py-9", **good())).path
    p = offline(tmp_path, ScriptedBus())  # committed: py-0, py-1 (ScriptedBus's queue.committed)
    p._leftovers = st.scan_samples(str(tmp_path), p.prefix)
    r = asyncio.run(p.put("py-2", **good()))  # the old py-2 file goes before the new one is written
    assert not os.path.exists(paths["py-2"]) and os.path.exists(r.path)
    assert os.path.exists(paths["py-0"]) and os.path.exists(paths["py-3"])
    asyncio.run(p.end())
    assert not os.path.exists(paths["py-3"]), "never committed: removed at end()"
    assert os.path.exists(paths["py-0"]) and os.path.exists(paths["py-1"]), "committed: kept"
    assert os.path.exists(foreign), "another producer's file is not ours to remove"
    assert p.stats["leftoversRemoved"] == 2


def test_publish_is_atomic(tmp_path, monkeypatch):
    data = [b"abc" * 1000]
    seen = []
    st.publish(str(tmp_path), "a.g1.safetensors", data, before_rename=lambda tmp: seen.append(os.listdir(tmp_path)))
    assert seen[0][0].startswith(f".tmp-{os.getpid()}-") and os.listdir(tmp_path) == ["a.g1.safetensors"]

    def full(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(st.StoreWriteError, match="disk full") as e:
        st.publish(str(tmp_path), "b.g1.safetensors", data)
    assert e.value.retryable and sorted(os.listdir(tmp_path)) == ["a.g1.safetensors"]


def test_marker_checks(tmp_path):
    k = Keys(SECRET)
    m = {"format": "draftwire-store/1", "storeId": "s1", "job": "j", "auth": True, "mac": k.store_marker_mac("s1", "j")}
    (tmp_path / st.MARKER).write_text(json.dumps(m))
    assert st.wait_marker(str(tmp_path), "j", k, 1) == "s1"
    with pytest.raises(AuthError, match="does not verify"):
        st.wait_marker(str(tmp_path), "j", Keys("another-secret-0123456789"), 1)
    with pytest.raises(AuthError, match="runs with a secret"):
        st.wait_marker(str(tmp_path), "j", None, 1)
    with pytest.raises(InvalidArgumentError, match="belongs to job"):
        st.wait_marker(str(tmp_path), "other", k, 1)
    with pytest.raises(E.DraftwireError, match="no store marker"):
        st.wait_marker(str(tmp_path / "none"), "j", k, 0.2)


def test_secret_sources(tmp_path):
    f = tmp_path / "s"
    f.write_text("  from-a-file-secret-123  \n")
    assert secret_from_env({"DRAFTWIRE_SECRET_FILE": str(f)}) == "from-a-file-secret-123"
    assert secret_from_env({"DRAFTWIRE_SECRET": "direct-secret-0123456", "DRAFTWIRE_SECRET_FILE": str(f)}) == "direct-secret-0123456"
    assert secret_from_env({}) is None
    with pytest.raises(AuthError):
        secret_from_env({"DRAFTWIRE_SECRET_FILE": str(tmp_path / "missing")})
    with pytest.raises(InvalidArgumentError, match="at least 16 bytes"):
        Keys("short")


def test_job_file(tmp_path):
    spec = {"job": "j", "runDir": str(tmp_path), "storeDir": str(tmp_path / "store"), "storeId": "j-store", "seqLen": 64,
            "draft": {"hidden": 32, "vocab": 256}, "steps": 3, "batch": 2, "dp": 2, "storeHighBytes": 10, "storeLowBytes": 5}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    j = load_job(str(tmp_path / "job.json"))
    assert (j.seq_len, j.hidden, j.vocab, j.budget, j.external) == (64, 32, 256, 12, False)
    spec["input"] = {"kind": "external", "samples": None, "producers": 2}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    j = load_job(str(tmp_path / "job.json"))
    assert (j.budget, j.external, j.producers) == (None, True, 2)
    del spec["seqLen"]
    (tmp_path / "job.json").write_text(json.dumps(spec))
    with pytest.raises(InvalidArgumentError, match="seqLen"):
        load_job(str(tmp_path / "job.json"))


def test_failpoint_plan(monkeypatch):
    monkeypatch.setenv("DRAFTWIRE_PY_FAILPOINT", "after-write:3, before-rename")
    monkeypatch.setattr(failpoints, "_plan", None)
    monkeypatch.setattr(failpoints, "_counts", {})
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
    for _ in range(4):
        failpoints.hit("after-write")
    failpoints.hit("after-commit")
    failpoints.hit("before-rename")
    assert len(killed) == 2


class InputBus(ScriptedBus):
    """queue.input answered by nobody (NATS 503) while queue.status answers: a job whose queue
    predates the producer-input protocol."""

    def __init__(self, serves_input):
        super().__init__()
        self.serves_input = serves_input

    async def request(self, name, payload, key=None, **kw):
        self.calls.append((name, payload, key))
        if name == "queue.input":
            if not self.serves_input:
                raise E.UnavailableError("no responder on dw.j.queue.input")
            return {"producer": payload["producer"], "state": "open" if payload["state"] == "open" else "ended", "closed": False, "committed": 0, "budget": None}
        if name == "queue.status":
            return {"depth": 0}
        return await super().request(name, payload, key)


def test_the_input_protocol(tmp_path):
    p = offline(tmp_path, InputBus(True), input_supported=True)
    assert asyncio.run(p._input("open"))["state"] == "open"
    (name, payload, key), = p.bus.calls
    assert (name, key) == ("queue.input", f"input:py:open:{p.incarnation}")
    assert payload == {"producer": "py", "state": "open", "incarnation": p.incarnation}
    assert asyncio.run(p.end())["state"] == "ended"
    with pytest.raises(InvalidArgumentError, match="ended"):
        asyncio.run(p.put("py-a", **good()))
    legacy = offline(tmp_path, InputBus(False), input_supported=True)
    assert asyncio.run(legacy._input("open", wait_s=5)) is None
    assert legacy.input_supported is False and asyncio.run(legacy.end()) is None


def test_cli_help():
    import subprocess
    import sys

    from conftest import python_env

    for args in (["--help"], ["produce-random", "--help"]):
        r = subprocess.run([sys.executable, "-m", "draftwire", *args], env=python_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage: python -m draftwire" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "draftwire", "produce-random", "--run-dir", "/nonexistent", "--wait-s", "0"],
                       env=python_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "INVALID_ARGUMENT: no job spec at /nonexistent/job.json" in r.stderr, r.stderr
