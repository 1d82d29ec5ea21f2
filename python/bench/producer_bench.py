#!/usr/bin/env python3
"""Python producer throughput against a real job, next to a same-run baseline.

    python3 python/bench/producer_bench.py [--size demo] [-n 100] [--json]

Starts ``draftwire run --rollout external --size SIZE --samples N`` (its nats-server, queue,
janitor, coordinator and a rank), then commits N full-length samples of the job's shapes
(ids i32 [T], aux [T, 3H], last [T, H], mask u8 [T]; f32 numpy input written as bf16) with
``Producer.put``: conversion, checksum manifest, temp write + fsync + rename + dir fsync, the
sealed commit and its verified reply, one sample at a time. Baseline, same run, same disk:
Python's raw ``os.write`` + ``os.fsync`` of the same bytes into files of the same directory
(no conversion, no manifest, no rename, no commit). Also the producer with 4 puts in flight
(asyncio.gather: one sample's commit overlaps the next one's write). Each is run twice,
interleaved; the better of each is reported. The job's rank trains while the producer runs (it shares the
CPUs), as it would in production. Prints a table, or JSON with --json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from draftwire import Producer  # noqa: E402
from draftwire import store as st  # noqa: E402


def start_job(workdir: str, job: str, size: str, n: int, secret: str) -> subprocess.Popen:
    env = dict(os.environ, DRAFTWIRE_SECRET=secret)
    log = open(os.path.join(workdir, f"{job}.log"), "wb")
    p = subprocess.Popen(["node", str(ROOT / "bin" / "draftwire.js"), "run", "--rollout", "external", "--size", size, "--samples", str(n),
                          "--batch", "2", "--eval-every", "0", "--eval-prompts", "1", "--store-high-mb", "100000", "--workdir", workdir,
                          "--job", job, "--no-progress", "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    run = Path(workdir, job)
    end = time.monotonic() + 120
    while not ((run / "run.json").exists() and (run / "store" / ".draftwire-store.json").exists()):
        if p.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"the job did not start; see {log.name}")
        time.sleep(0.05)
    return p


def samples(n: int, T: int, H: int, vocab: int):
    rng = np.random.default_rng(0)
    base = [dict(ids=rng.integers(0, vocab, T), aux=rng.standard_normal((T, 3 * H), dtype=np.float32),
                 last=rng.standard_normal((T, H), dtype=np.float32), mask=np.ones(T, np.uint8)) for _ in range(4)]
    return [base[i % 4] for i in range(n)]


async def producer_pass(run_dir: str, secret: str, pid: str, data, inflight: int = 1) -> dict:
    p = await Producer.connect(run_dir=run_dir, secret=secret, producer_id=pid)
    try:
        t0 = time.perf_counter()
        slots = asyncio.Semaphore(inflight)

        async def one(i, s):
            async with slots:
                return (await p.put(p.sample_id(i), **s)).bytes

        nbytes = sum(await asyncio.gather(*(one(i, s) for i, s in enumerate(data))))
        secs = time.perf_counter() - t0
        return {"samples": len(data), "bytes": nbytes, "seconds": secs, "stats": dict(p.stats)}
    finally:
        await p.close()


def raw_pass(directory: str, blobs) -> dict:
    t0 = time.perf_counter()
    nbytes = 0
    for i, b in enumerate(blobs):
        fd = os.open(os.path.join(directory, f"raw-{i}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            for part in b:
                os.write(fd, part)
                nbytes += len(part)
            os.fsync(fd)
        finally:
            os.close(fd)
    secs = time.perf_counter() - t0
    for i in range(len(blobs)):
        os.unlink(os.path.join(directory, f"raw-{i}.bin"))
    return {"samples": len(blobs), "bytes": nbytes, "seconds": secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="demo", choices=["tiny", "small", "demo"])
    ap.add_argument("-n", type=int, default=100, help="samples per pass")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    secret = secrets.token_hex(24)
    workdir = tempfile.mkdtemp(prefix="dw-pybench-")
    job = start_job(workdir, "bench", a.size, 4 * a.n, secret)
    try:
        run_dir = os.path.join(workdir, "bench")
        spec = json.loads(Path(run_dir, "job.json").read_text())
        T, H, V = spec["seqLen"], spec["draft"]["hidden"], spec["draft"]["vocab"]
        data = samples(a.n, T, H, V)
        # The baseline writes exactly the bytes the producer writes for a sample (bf16 converted).
        conv = asyncio.run(_prepared_bytes(run_dir, secret, data[:4]))
        blobs = [conv[i % 4] for i in range(a.n)]
        raw_dir = os.path.join(spec["storeDir"], "..", "raw-baseline")
        os.makedirs(raw_dir, exist_ok=True)
        prod, piped, raw = [], [], []
        for k in range(2):
            raw.append(raw_pass(raw_dir, blobs))
            prod.append(asyncio.run(producer_pass(run_dir, secret, f"bench{k}", data)))
            piped.append(asyncio.run(producer_pass(run_dir, secret, f"piped{k}", data, inflight=4)))
        best_p = min(prod, key=lambda r: r["seconds"])
        best_q = min(piped, key=lambda r: r["seconds"])
        best_r = min(raw, key=lambda r: r["seconds"])
        out = {
            "size": a.size, "T": T, "H": H, "samples": a.n, "sampleBytes": best_p["bytes"] // a.n,
            "producer": {"samplesPerSec": a.n / best_p["seconds"], "MBPerSec": best_p["bytes"] / best_p["seconds"] / 1e6,
                         "writeMsPerSample": 1e3 * best_p["stats"]["writeSeconds"] / a.n, "commitMsPerSample": 1e3 * best_p["stats"]["commitSeconds"] / a.n},
            "producer4InFlight": {"samplesPerSec": a.n / best_q["seconds"], "MBPerSec": best_q["bytes"] / best_q["seconds"] / 1e6},
            "rawWriteFsync": {"samplesPerSec": a.n / best_r["seconds"], "MBPerSec": best_r["bytes"] / best_r["seconds"] / 1e6},
        }
        out["producerVsRaw"] = out["producer"]["MBPerSec"] / out["rawWriteFsync"]["MBPerSec"]
        if a.json:
            print(json.dumps(out))
        else:
            print(f"Python producer, {a.size} shapes (T={T}, H={H}), {out['sampleBytes'] / 1e6:.2f} MB/sample, {a.n} samples, best of 2")
            print(f"  producer.put (convert+manifest+write+fsync+rename+commit): {out['producer']['samplesPerSec']:8.1f} samples/s {out['producer']['MBPerSec']:8.1f} MB/s"
                  f"   (write {out['producer']['writeMsPerSample']:.2f} ms, commit {out['producer']['commitMsPerSample']:.2f} ms per sample)")
            print(f"  the same, 4 puts in flight (asyncio.gather):                {out['producer4InFlight']['samplesPerSec']:8.1f} samples/s {out['producer4InFlight']['MBPerSec']:8.1f} MB/s")
            print(f"  raw os.write+fsync, same bytes, same dir:                  {out['rawWriteFsync']['samplesPerSec']:8.1f} samples/s {out['rawWriteFsync']['MBPerSec']:8.1f} MB/s")
            print(f"  producer / raw: {out['producerVsRaw']:.2f}")
    finally:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def _prepared_bytes(run_dir: str, secret: str, data):
    p = await Producer.connect(run_dir=run_dir, secret=secret, producer_id="benchprep")
    try:
        out = []
        for s in data:
            pr = p.prepare(p.sample_id("x"), **s)
            meta = {"format": st.FILE_FORMAT, "draftwire.manifest": st.manifest_json(pr.tensors)}
            out.append([st.safetensors_header(pr.tensors, meta), *(bytes(memoryview(t[3]).cast("B")) for t in pr.tensors)])
        return out
    finally:
        await p.close()


if __name__ == "__main__":
    sys.exit(main())
