"""Crash points for tests: ``DRAFTWIRE_PY_FAILPOINT=name[:n][,name[:n]...]`` kills this process
with SIGKILL the n-th time (default the first) it reaches point ``name``:

- ``before-rename``: a sample's temp file is written and fsync'd, not yet renamed;
- ``after-write``: the sample file is published (renamed), its commit not yet sent;
- ``after-commit``: the commit was answered.
"""
from __future__ import annotations

import os
import signal
from typing import Dict, Optional

_counts: Dict[str, int] = {}
_plan: Optional[Dict[str, int]] = None


def _load() -> Dict[str, int]:
    global _plan
    if _plan is None:
        _plan = {}
        for item in filter(None, (s.strip() for s in os.environ.get("DRAFTWIRE_PY_FAILPOINT", "").split(","))):
            name, _, n = item.partition(":")
            _plan[name] = int(n) if n else 1
    return _plan


def hit(name: str) -> None:
    plan = _load()
    if name not in plan:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == plan[name]:
        os.kill(os.getpid(), signal.SIGKILL)
