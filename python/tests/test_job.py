"""The package against real jobs (`draftwire run --rollout external`: its own nats-server with
the secret's credentials, the queue, janitor, coordinator and a rank process): the job trains
exactly what Python produced; a wrong secret is refused; a producer killed at any point leaves
no committed half-sample and its restart neither loses nor repeats a sample."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from conftest import need_node, python_env, run_producer
from draftwire import AuthError, InputClosed, Keys, Producer, SchemaError, SyncProducer
from draftwire.bus import Bus
from draftwire.store import DATA_RE, verify_file


@pytest.fixture(autouse=True)
def _node():
    need_node()


def sample(rng, T, H, vocab, dtype=np.float32):
    ids = rng.integers(0, vocab, T)
    aux = rng.standard_normal((T, 3 * H)).astype(dtype)
    last = rng.standard_normal((T, H)).astype(dtype)
    mask = np.ones(T, dtype=bool)
    mask[-1] = False
    return dict(ids=ids, aux=aux, last=last, mask=mask)


def puts_by_id(job):
    return Counter(e["ref"]["sampleId"] for e in job.ledger() if e["type"] == "put")


def test_job_trains_what_python_produced(jobs):
    """Two producers (--producers 2): an asyncio one that is restarted midway (it skips what it
    committed) and a SyncProducer using submit(); lengths vary, f32/f16/torch-bf16 inputs."""
    import torch

    job = jobs("py1", "--producers", "2", "--batch-wait-ms", "300")
    env_secret = job.secret

    async def async_part(first, stop):
        p = await Producer.connect(run_dir=str(job.run_dir), secret=env_secret, producer_id="pa")
        try:
            done = await p.committed()
            rng = np.random.default_rng(1)
            made = []
            for i in range(stop):
                s = sample(rng, 2 + (i * 5) % (p.job.seq_len - 1), p.job.hidden, p.job.vocab, np.float16 if i % 2 else np.float32)
                sid = p.sample_id(f"{i:04d}")
                if sid in done:
                    continue
                r = await p.put(sid, **s)
                assert (r.status, r.sample_id) == ("added", sid)
                made.append(sid)
            return done, made, (await p.end()) if stop == 6 else None
        finally:
            await p.close()

    done0, made0, _ = asyncio.run(async_part(0, 3))
    assert (done0, len(made0)) == (set(), 3)
    # restarted (a new incarnation): the first three are skipped, not produced again
    done1, made1, end_a = asyncio.run(async_part(0, 6))
    assert done1 == set(made0) and len(made1) == 3
    assert end_a["state"] == "ended" and end_a["closed"] is False, end_a  # pb is still open

    sp = SyncProducer.connect(run_dir=str(job.run_dir), secret=env_secret, producer_id="pb", dtype="bf16")
    try:
        H, rng = sp.job.hidden, np.random.default_rng(2)
        futs = []
        for i in range(5):
            T = 3 + i
            s = sample(rng, T, H, sp.job.vocab)
            s["aux"] = torch.from_numpy(s["aux"]).to(torch.bfloat16)  # bits taken as they are
            futs.append(sp.submit(sp.sample_id(i), **s))
            s["aux"].zero_()  # submit copied it: reusing the buffer changes nothing
        results = [f.result(30) for f in futs]
        assert [r.status for r in results] == ["added"] * 5
        end_b = sp.end()
    finally:
        sp.close()
    # the reply carries the queue role's term (docs/wire.md "Terms of the singleton roles")
    assert end_b == {"producer": "pb", "state": "ended", "closed": True, "committed": 11, "budget": 11, "term": 1}

    s = job.finish()
    assert s["samples"] == 11 and s["audit"]["ok"], s["audit"]
    assert (s["audit"]["committed"], s["audit"]["consumed"], s["audit"]["dead"]) == (11, 11, 0)
    assert s["input"] == {"producers": ["pa", "pb"], "closed": "producers"}
    assert s["storeAfter"] == {"samples": 0, "bytes": 0, "tempFiles": 0}
    assert all(n == 1 for n in puts_by_id(job).values()) and len(puts_by_id(job)) == 11


def test_wrong_secret_and_bad_refs_are_refused(jobs):
    job = jobs("py2", "--samples", "1")
    # a wrong secret: the store marker's MAC does not verify (before anything is sent) ...
    with pytest.raises(AuthError, match="does not verify with this secret"):
        asyncio.run(Producer.connect(run_dir=str(job.run_dir), secret="not-the-job-secret-at-all", wait_s=10))
    # ... and NATS itself refuses the credentials it derives
    with pytest.raises(AuthError, match="refused the credentials"):
        asyncio.run(Bus.connect(job.nats_url, Keys("not-the-job-secret-at-all"), "py2"))
    # no secret at all, for a job that has one
    env = python_env()
    env.pop("DRAFTWIRE_SECRET", None)
    r = run_producer(["produce-random", "--run-dir", str(job.run_dir), "-n", "1", "--wait-s", "10"], env)
    assert r.returncode == 1 and "AUTH: job py2 runs with a secret" in r.stderr, r.stderr

    async def refused():
        p = await Producer.connect(run_dir=str(job.run_dir), secret=job.secret, producer_id="bad")
        try:
            rng = np.random.default_rng(0)
            H, L = p.job.hidden, p.job.seq_len
            with pytest.raises(SchemaError, match="aux has shape") as e:  # checked here, before any write
                await p.put(p.sample_id("s"), **dict(sample(rng, 4, H, p.job.vocab), aux=np.zeros((4, H), np.float32)))
            assert e.value.detail["field"] == "aux"
            with pytest.raises(SchemaError, match=f"2..{L}"):
                await p.put(p.sample_id("s"), **sample(rng, L + 1, H, p.job.vocab))
            # a ref signed with another key: the queue refuses it (AUTH) and the file goes
            good = p.keys
            p.keys = Keys("another-secret-signs-this-ref")
            with pytest.raises(AuthError) as e:
                await p.put(p.sample_id("mac"), **sample(rng, 4, H, p.job.vocab))
            assert not e.value.retryable
            p.keys = good
            assert [f for f in os.listdir(job.store_dir) if f.startswith("bad-")] == []
            r = await p.put(p.sample_id("ok"), **sample(rng, 4, H, p.job.vocab))  # the --samples 1
            with pytest.raises(InputClosed):
                await p.put(p.sample_id("late"), **sample(rng, 4, H, p.job.vocab))
            assert [f for f in os.listdir(job.store_dir) if f.startswith("bad-late")] == []
            return r
        finally:
            await p.close()

    r = asyncio.run(refused())
    assert r.status == "added"
    s = job.finish()
    assert s["samples"] == 1 and s["audit"]["ok"] and s["input"]["closed"] == "samples"
    assert list(puts_by_id(job)) == ["bad-ok"]


def _committed(job, producer="py-c"):
    async def q():
        p = await Producer.connect(run_dir=str(job.run_dir), secret=job.secret, producer_id=producer)
        try:
            return await p.committed()
        finally:
            await p.close()
    return asyncio.run(q())


def _our_files(job, prefix="py-c-"):
    return sorted(f for f in os.listdir(job.store_dir) if f.startswith(prefix) and DATA_RE.match(f))


def test_killed_producer_leaves_no_half_sample_and_restarts_without_repeats(jobs):
    N = 100
    job = jobs("py3", "--producers", "1", "--batch-wait-ms", "300", "--store-high-mb", "64")
    args = ["produce-random", "--run-dir", str(job.run_dir), "--producer-id", "py-c", "-n", str(N), "--min-T", "8", "-v"]

    # 1. killed between the rename and the commit of its 4th sample: a published, uncommitted file
    r = run_producer(args, python_env(DRAFTWIRE_SECRET=job.secret, DRAFTWIRE_PY_FAILPOINT="after-write:4"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _committed(job) == {f"py-c-{i:06d}" for i in range(3)}
    orphan = [f for f in _our_files(job) if f.startswith("py-c-000003.")]
    assert len(orphan) == 1, _our_files(job)

    # 2. restarted, killed before the rename of its 2nd sample: the orphan is gone before
    #    000003 is written again; only a temp file is left of 000004
    r = run_producer(args, python_env(DRAFTWIRE_SECRET=job.secret, DRAFTWIRE_PY_FAILPOINT="before-rename:2"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (job.store_dir / orphan[0]).exists()
    assert _committed(job) == {f"py-c-{i:06d}" for i in range(4)}
    assert [f for f in os.listdir(job.store_dir) if f.startswith(".tmp-")], "the temp file of the killed write"

    # 3. plain SIGKILLs at random points of the run (writing, renaming, committing, waiting)
    rnd = random.Random(int(os.environ.get("DRAFTWIRE_TEST_SEED", "0")) or None)
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-m", "draftwire", *args], env=python_env(DRAFTWIRE_SECRET=job.secret),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdout.readline()  # it committed one sample
        time.sleep(rnd.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()

    # Every file of ours in the store now is complete and verifies; the committed ones are
    # readable by the ranks (the audit below: none dead).
    before = _committed(job)
    for f in _our_files(job):
        verify_file(str(job.store_dir / f))

    # 4. the last run finishes and declares the end: it skips exactly what was committed
    r = run_producer([*args, "--end"], python_env(DRAFTWIRE_SECRET=job.secret))
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["skipped"] == len(before) and out["produced"] == N - len(before), out
    assert out["end"]["closed"] is True

    s = job.finish()
    assert s["audit"]["ok"], s["audit"]["problems"]
    assert (s["samples"], s["audit"]["committed"], s["audit"]["consumed"], s["audit"]["dead"]) == (N, N, N, 0)
    puts = puts_by_id(job)
    assert sorted(puts) == [f"py-c-{i:06d}" for i in range(N)]
    assert set(puts.values()) == {1}, "every sample committed exactly once"
    # no orphan: nothing of ours is left (the janitor freed what was consumed; the run's
    # sweep removed the dead writers' temp files)
    assert s["storeAfter"] == {"samples": 0, "bytes": 0, "tempFiles": 0}, s["storeAfter"]


def test_backpressure_waits_until_the_ranks_drain_the_store(jobs):
    """A store watermark of a few samples: puts wait (the producer's own measure of the store,
    and the queue's BACKPRESSURE refusals, retried under the same key) and all 24 are trained."""
    job = jobs("py4", "--producers", "1", "--store-high-mb", "0.04", "--batch-wait-ms", "200")

    async def go():
        p = await Producer.connect(run_dir=str(job.run_dir), secret=job.secret, producer_id="bp")
        try:
            rng = np.random.default_rng(3)
            await asyncio.gather(*(p.put(p.sample_id(i), **sample(rng, p.job.seq_len, p.job.hidden, p.job.vocab)) for i in range(24)))
            await p.end()
            return dict(p.stats)
        finally:
            await p.close()

    stats = asyncio.run(go())
    assert stats["samples"] == 24 and stats["backpressureWaits"] > 0, stats
    s = job.finish()
    assert s["audit"]["ok"] and (s["samples"], s["audit"]["dead"]) == (24, 0), s["audit"]
    assert set(puts_by_id(job).values()) == {1}
