"""The job a producer feeds: what it reads from ``job.json`` (the spec ``draftwire run`` or an
operator writes in the run directory) and ``run.json`` (``draftwire run``'s running state:
``nats``, the embedded server's URL)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import DraftwireError, InvalidArgumentError


@dataclass(frozen=True)
class JobInfo:
    job: str
    run_dir: str
    store_dir: str
    store_id: str
    seq_len: int
    hidden: int
    vocab: int
    #: The samples the job trains: its rollout's steps x batch x dp (commits beyond it are never
    #: trained); an external job's --samples, or None (it trains until its producers end).
    budget: Optional[int]
    store_high_bytes: Optional[int]
    store_low_bytes: Optional[int]
    #: A Hugging Face target's aux layers, output convention: the output of decoder layer i
    #: (0-based), which is transformers' ``outputs.hidden_states[i + 1]``.
    aux_layers: Optional[List[int]] = None
    #: Started with ``draftwire run --rollout external``: producers declare open/end (queue.input).
    external: bool = False
    #: An external job closes its input once this many producers declared their end.
    producers: Optional[int] = None
    target_dir: Optional[str] = None
    spec: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def schema(self) -> Dict[str, Any]:
        """The sample schema: T in [2, seq_len], aux [T, 3H], last [T, H], ids/mask [T]."""
        return {"T": [2, self.seq_len], "ids": ["T"], "aux": ["T", 3 * self.hidden], "last": ["T", self.hidden], "mask": ["T"], "vocab": self.vocab}


def _need(o: Dict[str, Any], key: str, path: str) -> Any:
    cur: Any = o
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise InvalidArgumentError(f"job spec {path}: no {key!r}", detail={"file": path, "field": key})
        cur = cur[part]
    return cur


def load_job(path: str) -> JobInfo:
    """Reads a job.json."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError as e:
        raise InvalidArgumentError(f"no job spec at {path} (the run directory's job.json)", detail={"file": path}) from e
    except ValueError as e:
        raise InvalidArgumentError(f"job spec {path} is not JSON", detail={"file": path}) from e
    if not isinstance(spec, dict):
        raise InvalidArgumentError(f"job spec {path} is not a JSON object", detail={"file": path})
    run_dir = spec.get("runDir") or os.path.dirname(os.path.abspath(path))
    ints = {}
    for k in ("seqLen", "draft.hidden", "draft.vocab"):
        v = _need(spec, k, path)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidArgumentError(f"job spec {path}: {k} must be a positive integer, got {v!r}", detail={"file": path, "field": k})
        ints[k] = v
    inp = spec.get("input") if isinstance(spec.get("input"), dict) else None
    external = inp is not None and inp.get("kind") == "external"
    steps, batch, dp = spec.get("steps"), spec.get("batch"), spec.get("dp")
    if external:
        budget = inp.get("samples") if isinstance(inp.get("samples"), int) else None
    else:
        budget = steps * batch * dp if all(isinstance(x, int) for x in (steps, batch, dp)) else None
    target = spec.get("target") if isinstance(spec.get("target"), dict) else {}
    cfg = target.get("config") if isinstance(target.get("config"), dict) else {}
    aux = cfg.get("auxLayers")
    return JobInfo(
        job=_need(spec, "job", path), run_dir=run_dir, store_dir=_need(spec, "storeDir", path), store_id=spec.get("storeId", ""),
        seq_len=ints["seqLen"], hidden=ints["draft.hidden"], vocab=ints["draft.vocab"], budget=budget,
        store_high_bytes=spec.get("storeHighBytes"), store_low_bytes=spec.get("storeLowBytes"),
        aux_layers=list(aux) if isinstance(aux, list) else None, external=external,
        producers=inp.get("producers") if external else None,
        target_dir=target.get("dir"), spec=spec,
    )


def nats_url_of(run_dir: str, timeout_s: float = 0.0) -> str:
    """The ``nats`` URL in ``<run_dir>/run.json`` (``draftwire run`` writes it once its server
    is up); waits up to ``timeout_s`` for the file."""
    path = os.path.join(run_dir, "run.json")
    end = time.monotonic() + timeout_s
    while True:
        try:
            with open(path, "r", encoding="utf-8") as f:
                url = json.load(f).get("nats")
            if isinstance(url, str) and url:
                return url
            raise InvalidArgumentError(f"{path} has no nats URL", detail={"file": path})
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= end:
                raise DraftwireError(f"no {path}: is `draftwire run` running for this run directory? (or pass nats=)",
                                     code="NOT_FOUND", retryable=True, detail={"file": path})
            time.sleep(0.1)
