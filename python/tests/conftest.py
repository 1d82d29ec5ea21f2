"""Fixtures: real Draftwire jobs (``node bin/draftwire.js run --rollout external``, its own
nats-server and rank processes) in a temp directory, and producer subprocesses."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "python"
BIN = ROOT / "bin" / "draftwire.js"


TEST_TIMEOUT_S = int(os.environ.get("DRAFTWIRE_TEST_TIMEOUT_S", "180"))


@pytest.fixture(autouse=True)
def _time_limit(request):
    """No test hangs the suite: each fails after TEST_TIMEOUT_S (SIGALRM, main thread)."""
    def expired(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran over {TEST_TIMEOUT_S} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def python_env(**extra: str) -> Dict[str, str]:
    """The environment of a producer subprocess: this checkout's package first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("DRAFTWIRE_PY_FAILPOINT", None)
    env.update(extra)
    return env


class Job:
    """One `draftwire run --rollout external` process; finish() returns its --json summary."""

    def __init__(self, workdir: Path, name: str, args: List[str], secret: Optional[str], size: str = "tiny"):
        self.name, self.workdir, self.secret = name, workdir, secret
        self.run_dir = workdir / name
        self.log = workdir / f"{name}.stderr"
        self.out = workdir / f"{name}.stdout"
        env = dict(os.environ)
        env.pop("DRAFTWIRE_SECRET_FILE", None)
        if secret:
            env["DRAFTWIRE_SECRET"] = secret
        else:
            env.pop("DRAFTWIRE_SECRET", None)
        self._out = open(self.out, "wb")
        self._err = open(self.log, "wb")
        cmd = ["node", str(BIN), "run", "--rollout", "external", "--batch", "2", "--eval-every", "0", "--eval-prompts", "2",
               "--workdir", str(workdir), "--job", name, "--no-progress", "--json", *args]
        if "--target" not in args:
            cmd[5:5] = ["--size", size]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._out, stderr=self._err)
        self.summary: Optional[dict] = None

    def stderr(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_ready(self, timeout: float = 90.0) -> "Job":
        end = time.monotonic() + timeout
        marker = self.run_dir / "store" / ".draftwire-store.json"
        while not ((self.run_dir / "run.json").exists() and marker.exists()):
            if self.proc.poll() is not None:
                raise AssertionError(f"job {self.name} exited ({self.proc.returncode}) before it was ready:\n{self.stderr()}")
            if time.monotonic() > end:
                raise AssertionError(f"job {self.name} not ready after {timeout} s:\n{self.stderr()}")
            time.sleep(0.05)
        return self

    @property
    def nats_url(self) -> str:
        return json.loads((self.run_dir / "run.json").read_text())["nats"]

    @property
    def store_dir(self) -> Path:
        return self.run_dir / "store"

    def finish(self, timeout: float = 120.0) -> dict:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"job {self.name} did not finish in {timeout} s:\n{self.stderr()}")
        lines = self.out.read_text().strip().splitlines()
        assert rc == 0, f"job {self.name} exited {rc}:\n{self.stderr()}"
        self.summary = json.loads(lines[-1])
        return self.summary

    def ledger(self) -> List[dict]:
        return [json.loads(line) for line in (self.run_dir / "ledger.jsonl").read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._err.close()


@pytest.fixture
def jobs(tmp_path_factory):
    """jobs(name, *args, secret=...) starts a job and waits until producers can connect."""
    workdir = tmp_path_factory.mktemp("jobs")
    started: List[Job] = []

    def start(name: str, *args: str, secret: Optional[str] = "generate", ready: bool = True) -> Job:
        if secret == "generate":
            secret = secrets.token_hex(24)
        j = Job(workdir, name, list(args), secret)
        started.append(j)
        return j.wait_ready() if ready else j

    yield start
    for j in started:
        j.stop()


def need_node() -> None:
    if shutil.which("node") is None or not (ROOT / "node_modules").exists():
        pytest.fail("these tests run real Draftwire jobs: node and node_modules are needed (bash scripts/setup.sh)")


def run_producer(args: List[str], env: Dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "draftwire", *args], env=env, capture_output=True, text=True, timeout=timeout)
