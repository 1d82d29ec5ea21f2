"""``python -m draftwire``: smoke-test producers and small tools.

  python -m draftwire produce-random --run-dir runs/J -n 64 [--producer-id py-0] [--nats URL] [--end]
  python -m draftwire committed --run-dir runs/J [--producer-id py-0 | --prefix P]
  python -m draftwire end --run-dir runs/J --producer-id py-0
  python -m draftwire verify FILE.safetensors...

Exit status: 0 ok, 1 refused or failed (the message names the error code), 2 bad input.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import List, Optional

import numpy as np

from .errors import DraftwireError, InputClosed
from .producer import Producer
from .store import verify_file


def _connect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run-dir", help="the job's run directory (job.json; run.json names the NATS URL)")
    g.add_argument("--job-file", help="the job spec (job.json)")
    p.add_argument("--nats", help="the job's NATS URL (default: run.json's)")
    p.add_argument("--producer-id", default="py-0", help="this producer's id, unique in the job (default py-0)")
    p.add_argument("--prefix", help="sample id prefix (default '<producer-id>-')")
    p.add_argument("--store-dir", help="the job's store as this machine mounts it (default: job.json's storeDir)")
    p.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the job (run.json, store, queue)")


async def _connect(a: argparse.Namespace, dtype: str = "bf16") -> Producer:
    return await Producer.connect(a.job_file, run_dir=a.run_dir, nats=a.nats, producer_id=a.producer_id, prefix=a.prefix,
                                  dtype=dtype, store_dir=a.store_dir, wait_s=a.wait_s)


def random_sample(rng: np.random.Generator, T: int, H: int, vocab: int):
    ids = rng.integers(0, vocab, size=T, dtype=np.int64)
    aux = rng.standard_normal((T, 3 * H), dtype=np.float32)
    last = rng.standard_normal((T, H), dtype=np.float32)
    mask = np.ones(T, dtype=np.uint8)
    mask[: max(1, T // 4)] = 0
    mask[-1] = 0
    return ids, aux, last, mask


async def produce_random(a: argparse.Namespace) -> dict:
    p = await _connect(a, a.dtype)
    try:
        job = p.job
        done = await p.committed() if not a.no_skip else set()
        T_max = min(a.T or job.seq_len, job.seq_len)
        T_min = min(a.min_T or T_max, T_max)
        rng = np.random.default_rng(a.seed)
        out = {"job": job.job, "producer": p.producer_id, "produced": 0, "skipped": 0, "bytes": 0, "ids": []}
        t0 = time.monotonic()
        closed = False
        for i in range(a.start, a.start + a.n):
            T = int(rng.integers(T_min, T_max + 1))
            ids, aux, last, mask = random_sample(rng, max(2, T), job.hidden, job.vocab)
            sid = p.sample_id(f"{i:06d}")
            if sid in done:
                out["skipped"] += 1
                continue
            try:
                r = await p.put(sid, ids=ids, aux=aux, last=last, mask=mask)
            except InputClosed as e:
                print(f"draftwire: {e}: stopping after {out['produced']} samples", file=sys.stderr)
                closed = True
                break
            out["produced"] += 1
            out["bytes"] += r.bytes
            out["ids"].append(sid)
            if a.verbose:
                print(f"committed {sid} g{r.generation} {r.status}", flush=True)
        secs = time.monotonic() - t0
        out.update(seconds=secs, samplesPerSec=out["produced"] / secs if secs else 0.0,
                   mbPerSec=out["bytes"] / secs / 1e6 if secs else 0.0, inputClosed=closed, stats=p.stats)
        if a.end:
            out["end"] = await p.end()
        return out
    finally:
        await p.close()


async def committed_cmd(a: argparse.Namespace) -> dict:
    p = await _connect(a)
    try:
        ids = sorted(await p.committed())
        return {"job": p.job.job, "prefix": p.prefix, "count": len(ids), "sampleIds": ids}
    finally:
        await p.close()


async def end_cmd(a: argparse.Namespace) -> dict:
    p = await _connect(a)
    try:
        return {"job": p.job.job, "producer": p.producer_id, "reply": await p.end()}
    finally:
        await p.close()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m draftwire", description="Draftwire producer tools (docs/wire.md).")
    ap.add_argument("--log", default="warning", choices=["debug", "info", "warning", "error"])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("produce-random", help="commit N random samples of the job's shapes (smoke test)")
    _connect_args(p)
    p.add_argument("-n", type=int, default=16, help="samples (default 16)")
    p.add_argument("--start", type=int, default=0, help="first sample number (ids are <prefix><number:06d>)")
    p.add_argument("--T", type=int, help="tokens per sample at most (default: the job's seqLen)")
    p.add_argument("--min-T", type=int, help="tokens per sample at least (default: --T; lengths are drawn between)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--end", action="store_true", help="declare this producer finished afterwards (queue.input end)")
    p.add_argument("--no-skip", action="store_true", help="do not skip ids already committed")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per committed sample")

    p = sub.add_parser("committed", help="list this producer's committed sample ids")
    _connect_args(p)

    p = sub.add_parser("end", help="declare a producer finished (queue.input end)")
    _connect_args(p)

    p = sub.add_parser("verify", help="check sample files against their checksum manifest")
    p.add_argument("files", nargs="+")

    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log.upper(), format="%(levelname)s %(name)s: %(message)s")
    if a.cmd == "produce-random" and (a.n < 0 or (a.T is not None and a.T < 2) or (a.min_T is not None and a.min_T < 2)):
        ap.error("-n must be >= 0, --T and --min-T >= 2")
    try:
        if a.cmd == "verify":
            out = {"files": []}
            for f in a.files:
                v = verify_file(f)
                out["files"].append({"file": f, "checksum": v["checksum"], "sampleId": (v["ref"] or {}).get("sampleId")})
        else:
            out = asyncio.run({"produce-random": produce_random, "committed": committed_cmd, "end": end_cmd}[a.cmd](a))
    except DraftwireError as e:
        detail = f" detail={json.dumps(e.detail, default=str)}" if e.detail else ""
        print(f"draftwire: {e}{detail}", file=sys.stderr)
        return 2 if e.code == "INVALID_ARGUMENT" else 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
