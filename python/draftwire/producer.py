"""The producer: writes training samples into a running Draftwire job (docs/wire.md,
"Writing a producer") and commits them to its queue.

    p = await Producer.connect(run_dir="runs/J", producer_id="py-0")
    done = await p.committed()
    for key, (ids, aux, last, mask) in samples:
        sid = p.sample_id(key)
        if sid not in done:
            await p.put(sid, ids=ids, aux=aux, last=last, mask=mask)
    await p.end()
    await p.close()

``SyncProducer`` is the same API, blocking, for code that is not asyncio (a serving engine's
hidden-state hook, a plain PyTorch loop).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from . import failpoints, sampleref
from . import store as st
from .arrays import FLOAT_DTYPES, float_feature, int_feature, mask_feature, shape_of
from .bus import Bus
from .errors import (BackpressureError, DraftwireError, InputClosed, InvalidArgumentError, RequestTimeoutError,
                     SchemaError, UnavailableError)
from .job import JobInfo, load_job, nats_url_of
from .keys import Keys, secret_from_env
from .wire import now_ms

log = logging.getLogger("draftwire.producer")
PRODUCER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Prepared:
    """A sample converted and checked against the job, ready to write (see Producer.prepare)."""
    sample_id: str
    tensors: List[st.Tensor]
    num_tokens: int
    nbytes: int


@dataclass(frozen=True)
class PutResult:
    sample_id: str
    generation: int
    #: ``added`` (new), ``replaced`` (a newer generation of a pending sample), ``duplicate`` (a retry).
    status: str
    bytes: int
    path: str


def _node_id() -> str:
    h = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:60].strip("-")
    return h or "py"


class Producer:
    """An asyncio producer of one job. Create with :meth:`connect`."""

    def __init__(self) -> None:  # use connect()
        self.job: JobInfo
        self.keys: Optional[Keys] = None
        self.bus: Bus
        self.producer_id = ""
        self.prefix = ""
        self.node = ""
        self.dtype = "bf16"
        self.incarnation = 0
        self.store_id = ""
        self.block_bytes = st.BLOCK_BYTES
        #: Whether open/end are sent (``queue.input``): a job started with ``--rollout
        #: external``. A job with its own rollout (or whose queue does not serve queue.input)
        #: takes commits without them; its own budget decides when it ends.
        self.input_supported = True
        #: The queue's reply to the last open/end: ``{producer, state, closed, committed, budget}``.
        self.input_state: Optional[Dict[str, Any]] = None
        self.backpressure_wait_s = 600.0
        self.stats = {"samples": 0, "bytes": 0, "writeSeconds": 0.0, "commitSeconds": 0.0, "backpressureWaits": 0,
                      "backpressureRefusals": 0, "leftoversRemoved": 0, "refused": 0}
        self._gen = 0
        self._usage: st.Usage
        self._leftovers: Dict[str, List[Tuple[int, str]]] = {}
        self._committed: Optional[Set[str]] = None
        self._closed_input = False
        self._ended = False
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, job_file: Optional[str] = None, *, run_dir: Optional[str] = None, nats: Optional[str] = None,
                      secret: Optional[str] = None, producer_id: str = "py-0", dtype: str = "bf16",
                      prefix: Optional[str] = None, node: Optional[str] = None, store_dir: Optional[str] = None, wait_s: float = 60.0,
                      backpressure_wait_s: float = 600.0, block_bytes: int = st.BLOCK_BYTES) -> "Producer":
        """Connects to the job of ``job_file`` (or ``<run_dir>/job.json``).

        nats: the job's NATS URL; default: ``run.json``'s ``nats`` in the run directory (what
        ``draftwire run`` writes). secret: the job secret; default ``DRAFTWIRE_SECRET`` or the
        file ``DRAFTWIRE_SECRET_FILE``; none: auth off. producer_id: unique among the job's
        producers, ``[A-Za-z0-9_-]{1,64}``; sample ids must start with ``prefix`` (default
        ``"<producer_id>-"``), which is what :meth:`committed` asks the queue for. dtype: of
        ``aux`` and ``last`` in the files (``bf16``, ``f16`` or ``f32``). store_dir: the job's
        store directory as this machine mounts it (default: job.json's ``storeDir``). wait_s:
        how long to wait for run.json, the store marker and the queue."""
        if job_file is None and run_dir is None:
            raise InvalidArgumentError("Producer.connect needs job_file= or run_dir=")
        if not isinstance(producer_id, str) or not PRODUCER_ID_RE.match(producer_id):
            raise InvalidArgumentError(f"producer_id must match [A-Za-z0-9_-]{{1,64}}, got {producer_id!r}", detail={"field": "producer_id"})
        if dtype not in FLOAT_DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}", detail={"field": "dtype"})
        self = cls()
        self.job = load_job(job_file if job_file is not None else os.path.join(run_dir, "job.json"))  # type: ignore[arg-type]
        if store_dir is not None:
            self.job = dataclasses.replace(self.job, store_dir=store_dir)
        run_dir = run_dir if run_dir is not None else self.job.run_dir
        secret = secret if secret is not None else secret_from_env()
        self.keys = Keys(secret) if secret else None
        self.producer_id = producer_id
        self.prefix = f"{producer_id}-" if prefix is None else prefix
        if self.prefix and not sampleref.ID_RE.match(self.prefix):
            raise InvalidArgumentError(f"prefix {self.prefix!r} has characters a sample id cannot have", detail={"field": "prefix"})
        self.node = sampleref.check_id(node, "node") if node is not None else _node_id()
        self.dtype = dtype
        self.block_bytes = block_bytes
        self.backpressure_wait_s = backpressure_wait_s
        self.incarnation = now_ms()
        self.input_supported = self.job.external
        self._gen = self.incarnation
        t_end = time.monotonic() + wait_s
        url = nats if nats is not None else await asyncio.to_thread(nats_url_of, run_dir, wait_s)
        self.store_id = await asyncio.to_thread(st.wait_marker, self.job.store_dir, self.job.job, self.keys, max(1.0, t_end - time.monotonic()))
        self._usage = st.Usage(self.job.store_dir, self.job.store_high_bytes, self.job.store_low_bytes)
        self.bus = await Bus.connect(url, self.keys, self.job.job, name=f"draftwire-py-{producer_id}", wait_s=max(5.0, t_end - time.monotonic()))
        try:
            # Files of this prefix already in the store: a crashed earlier run's (see put()).
            self._leftovers = await asyncio.to_thread(st.scan_samples, self.job.store_dir, self.prefix)
            if self.input_supported:
                await self._input("open", max(1.0, t_end - time.monotonic()))
        except BaseException:
            await self.bus.close()
            raise
        return self

    async def close(self) -> None:
        """Closes the NATS connection (does not end the producer's input: see end())."""
        if self._closed:
            return
        self._closed = True
        await self.bus.close()

    async def __aenter__(self) -> "Producer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------ the producer-input protocol

    async def _input(self, state: str, wait_s: float = 105.0) -> Optional[Dict[str, Any]]:
        payload = {"producer": self.producer_id, "state": state, "incarnation": self.incarnation}
        key = f"input:{self.producer_id}:{state}:{self.incarnation}"
        end = time.monotonic() + wait_s
        while True:
            try:
                reply = await self.bus.request("queue.input", payload, key=key, attempts=1)
                break
            except UnavailableError:
                # Nobody serves queue.input: the queue is not up yet, or the job predates the
                # producer-input protocol (its queue answers queue.status, never queue.input).
                if await self._queue_answers() and await self._input_absent(payload, key):
                    self.input_supported = False
                    log.warning("job %s: its queue does not serve queue.input (a job without the producer-input protocol): "
                                "'%s' not sent; the job's own budget decides when it ends", self.job.job, state)
                    return None
            except RequestTimeoutError:
                pass
            if time.monotonic() > end:
                raise UnavailableError(f"the queue of job {self.job.job} did not answer queue.input ({state}) within {wait_s:.0f} s")
            await asyncio.sleep(0.25)
        if not isinstance(reply, dict):
            raise DraftwireError(f"queue.input answered {reply!r}", code="DECODE")
        self.input_state = reply
        if reply.get("closed") is True and state == "open":
            self._closed_input = True
            raise InputClosed(f"job {self.job.job} takes no more samples (its input is closed)", detail=dict(reply))
        return reply

    async def _queue_answers(self) -> bool:
        try:
            await self.bus.request("queue.status", {}, attempts=1)
            return True
        except DraftwireError:
            return False

    async def _input_absent(self, payload: Dict[str, Any], key: str) -> bool:
        try:
            await self.bus.request("queue.input", payload, key=key, attempts=1)
        except UnavailableError:
            return True
        except DraftwireError:
            return False
        return False

    async def end(self) -> Optional[Dict[str, Any]]:
        """Declares this producer finished (``queue.input`` state ``end``); first removes its
        own files that a crashed earlier run left uncommitted. Returns the queue's reply."""
        if self._ended:
            return self.input_state
        await self._remove_leftovers(all_ids=True)
        self._ended = True
        if not self.input_supported:
            log.info("job %s takes no open/end (not an external job): end() sent nothing", self.job.job)
            return None
        try:
            return await self._input("end")
        except InputClosed:
            self._closed_input = True
            return self.input_state

    # ------------------------------------------------------------ samples

    def sample_id(self, key: Any) -> str:
        """``<prefix><key>``: a sample id of this producer."""
        return sampleref.check_id(f"{self.prefix}{key}", "sample_id")

    async def committed(self, prefix: Optional[str] = None) -> Set[str]:
        """Sample ids the job's ledger holds (any state) that start with ``prefix`` (default
        this producer's): a restarted producer skips them."""
        p = self.prefix if prefix is None else prefix
        reply = await self.bus.request("queue.committed", {"prefix": p} if p else {})
        ids = reply.get("sampleIds") if isinstance(reply, dict) else None
        if not isinstance(ids, list):
            raise DraftwireError(f"queue.committed answered {reply!r}", code="DECODE")
        # A queue without the prefix field answers every id: filter here too.
        out = {x for x in ids if isinstance(x, str) and x.startswith(p)}
        if p == self.prefix:
            self._committed = set(out)
        return out

    def prepare(self, sample_id: str, *, ids: Any, aux: Any, last: Any, mask: Any, copy: bool = False) -> Prepared:
        """Converts a sample's tensors to the file's dtypes and checks them against the job's
        schema (T in [2, seqLen], ids [T] below the vocabulary, aux [T, 3H], last [T, H],
        mask [T] of 0/1). Raises SchemaError (a shape or dtype; ``detail['field']`` names the
        tensor) or InvalidArgumentError (a value, the id). ``copy``: own the bytes (the caller
        may reuse its buffers once this returns)."""
        sampleref.check_id(sample_id, "sample_id")
        if self.prefix and not sample_id.startswith(self.prefix):
            raise InvalidArgumentError(f"sample id {sample_id!r} does not start with this producer's prefix {self.prefix!r} "
                                       f"(use p.sample_id(key); committed() finds only ids under the prefix)", detail={"field": "sample_id"})
        H, L = self.job.hidden, self.job.seq_len
        i = int_feature(ids, "ids")
        if i.ndim != 1:
            raise SchemaError(f"{sample_id}: ids must be [T], got shape {list(i.shape)}", detail={"field": "ids", "found": list(i.shape), "expected": ["T"]})
        T = int(i.shape[0])
        if not 2 <= T <= L:
            raise SchemaError(f"{sample_id}: T = {T} tokens, the job takes 2..{L} (seqLen)", detail={"field": "ids", "found": [T], "expected": [f"2..{L}"]})
        if i.min() < 0 or i.max() >= self.job.vocab:
            bad = int(np.nonzero((i < 0) | (i >= self.job.vocab))[0][0])
            raise InvalidArgumentError(f"{sample_id}: ids[{bad}] = {int(i[bad])} is outside the target's vocabulary [0, {self.job.vocab})",
                                       detail={"field": "ids", "position": bad, "found": int(i[bad]), "expected": f"[0, {self.job.vocab})"})
        a = float_feature(aux, self.dtype, "aux")
        la = float_feature(last, self.dtype, "last")
        m = mask_feature(mask, "mask")
        for name, arr, want in (("aux", a, (T, 3 * H)), ("last", la, (T, H)), ("mask", m, (T,))):
            if shape_of(arr) != want:
                raise SchemaError(f"{sample_id}: {name} has shape {list(arr.shape)}, the job expects {list(want)} (T = {T}, H = {H})",
                                  detail={"field": name, "found": list(arr.shape), "expected": list(want)})
        if copy:
            i, a, la, m = (np.array(x, copy=True) for x in (i, a, la, m))
        tensors: List[st.Tensor] = [("ids", "i32", [T], i), ("aux", self.dtype, [T, 3 * H], a), ("last", self.dtype, [T, H], la), ("mask", "u8", [T], m)]
        return Prepared(sample_id, tensors, T, sum(x[3].nbytes for x in tensors))

    async def put(self, sample_id: str, *, ids: Any, aux: Any, last: Any, mask: Any) -> PutResult:
        """Writes one sample into the store and commits it (key ``commit:<sampleId>:<generation>``).

        Waits while the store is over its high watermark (BACKPRESSURE), retries what the
        queue refuses as retryable; a refused commit deletes its file and raises the error's
        class (InputClosed: the job takes no more samples; stop producing). Before writing,
        removes this producer's files of ``sample_id`` that a crashed earlier run left
        uncommitted."""
        return await self.put_prepared(self.prepare(sample_id, ids=ids, aux=aux, last=last, mask=mask))

    async def put_prepared(self, s: Prepared) -> PutResult:
        if self._closed or self._ended:
            raise InvalidArgumentError(f"put {s.sample_id}: the producer is {'closed' if self._closed else 'ended'}")
        if self._closed_input:
            raise InputClosed(f"put {s.sample_id}: job {self.job.job} takes no more samples (its input is closed)")
        sid = s.sample_id
        if sid in self._leftovers:
            await self._remove_leftovers(ids=[sid])
        await self._admit(s.nbytes)
        self._gen = gen = max(self._gen + 1, now_ms())
        t0 = time.monotonic()
        path, size, ref = await asyncio.to_thread(self._write, s, gen)
        self.stats["writeSeconds"] += time.monotonic() - t0
        self._usage.wrote(size)
        failpoints.hit("after-write")
        t1 = time.monotonic()
        try:
            reply = await self._commit(ref)
        except DraftwireError as e:
            if isinstance(e, (RequestTimeoutError, UnavailableError)):
                # Unknown whether the queue committed it: the file stays. A restarted producer
                # asks committed() and removes it if it is not (put() or end()).
                self._leftovers.setdefault(sid, []).append((gen, path))
                raise
            self.stats["refused"] += 1
            if st.remove(path):
                self._usage.removed(size)
            if isinstance(e, InputClosed):
                self._closed_input = True
            raise
        self.stats["commitSeconds"] += time.monotonic() - t1
        status = reply.get("status") if isinstance(reply, dict) else None
        if status not in ("added", "replaced", "duplicate") or reply.get("sampleId") != sid or reply.get("generation") != gen:
            raise DraftwireError(f"commit of {sid} g{gen} answered {reply!r}", code="DECODE")
        if status == "replaced":
            await asyncio.to_thread(self._remove_older, sid, gen)
        if self._committed is not None:
            self._committed.add(sid)
        self.stats["samples"] += 1
        self.stats["bytes"] += size
        failpoints.hit("after-commit")
        return PutResult(sid, gen, status, size, path)

    # ------------------------------------------------------------ internals

    def _write(self, s: Prepared, gen: int) -> Tuple[str, int, Dict[str, Any]]:
        mj = st.manifest_json(s.tensors, self.block_bytes)
        ref = sampleref.sign(self.keys, {
            "v": 1, "job": self.job.job, "sampleId": s.sample_id, "generation": gen,
            "uri": sampleref.dir_uri(self.store_id, s.sample_id, gen),
            "features": {n: {"dtype": d, "shape": list(sh)} for n, d, sh, _ in s.tensors},
            "numTokens": s.num_tokens, "bytes": s.nbytes, "checksum": st.checksum_of(mj),
            "producer": {"node": self.node, "actor": self.producer_id, "incarnation": self.incarnation},
            "createdAt": now_ms(),
        })
        meta = {"format": st.FILE_FORMAT, "draftwire.manifest": mj, "draftwire.ref": sampleref.to_json(ref)}
        header = st.safetensors_header(s.tensors, meta)
        name = f"{s.sample_id}.g{gen}.safetensors"
        size = st.publish(self.job.store_dir, name, [header, *(t[3] for t in s.tensors)],
                          before_rename=lambda _tmp: failpoints.hit("before-rename"))
        return os.path.join(self.job.store_dir, name), size, ref

    async def _admit(self, nbytes: int) -> None:
        end = time.monotonic() + self.backpressure_wait_s
        wait = 0.05
        while True:
            try:
                self._usage.admit(nbytes)
                return
            except BackpressureError:
                if time.monotonic() + wait > end:
                    raise
                self.stats["backpressureWaits"] += 1
                await asyncio.sleep(wait * (0.75 + random.random() * 0.5))
                wait = min(2.0, wait * 2)

    async def _commit(self, ref: Dict[str, Any]) -> Any:
        key = f"commit:{ref['sampleId']}:{ref['generation']}"
        end = time.monotonic() + self.backpressure_wait_s
        wait = 0.1
        while True:
            try:
                return await self.bus.request("queue.commit", {"ref": ref}, key=key)
            except (RequestTimeoutError, UnavailableError):
                raise
            except DraftwireError as e:
                if not e.retryable or time.monotonic() + wait > end:
                    raise
                if isinstance(e, BackpressureError):
                    self.stats["backpressureWaits"] += 1
                    self.stats["backpressureRefusals"] += 1
                log.info("commit of %s refused as retryable (%s); retrying in %.1f s", ref["sampleId"], e.code, wait)
                await asyncio.sleep(wait * (0.75 + random.random() * 0.5))
                wait = min(2.0, wait * 2)

    async def _remove_leftovers(self, ids: Optional[List[str]] = None, all_ids: bool = False) -> None:
        """Removes this producer's files of ``ids`` (or of every id found at connect) that the
        ledger does not hold: written by a run that crashed before its commit."""
        todo = list(self._leftovers) if all_ids else [i for i in (ids or []) if i in self._leftovers]
        if not todo:
            return
        committed = await self.committed() if all_ids or self._committed is None else self._committed
        for sid in todo:
            files = self._leftovers.pop(sid, [])
            if sid in committed:
                continue  # the ledger holds one of its generations: not ours to remove
            for _gen, path in files:
                if await asyncio.to_thread(st.file_actor, path) == self.producer_id and st.remove(path):
                    self.stats["leftoversRemoved"] += 1
                    log.info("removed %s: written by an earlier run of %s, never committed", os.path.basename(path), self.producer_id)

    def _remove_older(self, sid: str, gen: int) -> None:
        for g, path in st.scan_samples(self.job.store_dir, sid).get(sid, []):
            if g < gen and st.file_actor(path) == self.producer_id:
                st.remove(path)


class SyncProducer:
    """The Producer's API, blocking: an asyncio loop runs on a background thread.

        p = SyncProducer.connect(run_dir="runs/J", producer_id="hook-0")
        p.put(p.sample_id(req_id), ids=ids, aux=aux, last=last, mask=mask)
        fut = p.submit(...)        # returns at once (after copying the tensors); fut.result()
        p.end(); p.close()
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, producer: Producer, max_pending: int):
        self._loop, self._thread, self.producer = loop, thread, producer
        self._slots = threading.BoundedSemaphore(max_pending)

    @classmethod
    def connect(cls, job_file: Optional[str] = None, *, max_pending: int = 4, **kw: Any) -> "SyncProducer":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="draftwire-producer", daemon=True)
        thread.start()
        try:
            p = asyncio.run_coroutine_threadsafe(Producer.connect(job_file, **kw), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, p, max_pending)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def job(self) -> JobInfo:
        return self.producer.job

    def sample_id(self, key: Any) -> str:
        return self.producer.sample_id(key)

    def committed(self, prefix: Optional[str] = None) -> Set[str]:
        return self._run(self.producer.committed(prefix))

    def put(self, sample_id: str, *, ids: Any, aux: Any, last: Any, mask: Any) -> PutResult:
        return self._run(self.producer.put(sample_id, ids=ids, aux=aux, last=last, mask=mask))

    def submit(self, sample_id: str, *, ids: Any, aux: Any, last: Any, mask: Any) -> "concurrent.futures.Future[PutResult]":
        """Converts and copies the tensors now (the caller may reuse them when this returns),
        then writes and commits in the background; blocks while ``max_pending`` puts are in
        flight. The future raises what put() would."""
        s = self.producer.prepare(sample_id, ids=ids, aux=aux, last=last, mask=mask, copy=True)
        self._slots.acquire()
        fut = asyncio.run_coroutine_threadsafe(self.producer.put_prepared(s), self._loop)
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut

    def end(self) -> Optional[Dict[str, Any]]:
        return self._run(self.producer.end())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self.producer.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> "SyncProducer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
