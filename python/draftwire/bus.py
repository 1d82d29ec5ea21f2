"""Sealed requests over NATS (nats-py), as docs/wire.md's "Frames" describe them.

One wildcard subscription (``_INBOX.<random>.*``) serves every request: each attempt gets a
fresh single-use reply subject under it, is sealed afresh (new ts, nonce) with the same
idempotency key, and accepts only a reply sealed for that subject and key. Timeouts, NATS's
503 no-responder answer (the queue not up yet, or restarting), replies that fail their checks,
and the job's own UNAVAILABLE/TIMEOUT refusals are retried within the request's attempts;
any other error reply is raised at once (the caller decides, e.g. BACKPRESSURE).
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import Any, Dict, Optional

import nats
import nats.errors

from .errors import AuthError, DraftwireError, RequestTimeoutError, UnavailableError
from .keys import Keys
from .wire import BadReply, open_reply, request_frame, seal

log = logging.getLogger("draftwire.bus")

#: Per-subject (timeout ms, attempts), from docs/wire.md's table.
TIMEOUTS = {
    "queue.commit": (5000, 21),
    "queue.committed": (5000, 21),
    "queue.input": (5000, 21),
    "queue.status": (2000, 3),
}


def _is_auth_failure(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return "authorization" in text or "authentication" in text or "auth" in type(e).__name__.lower()


class Bus:
    def __init__(self, nc: Any, keys: Optional[Keys], job: str):
        self.nc = nc
        self.keys = keys
        self.job = job
        self._prefix = nc.new_inbox()
        self._pending: Dict[str, asyncio.Future] = {}
        self._sub: Any = None
        self.counters = {"requests": 0, "attempts": 0, "timeouts": 0, "noResponders": 0, "badReplies": 0}

    @classmethod
    async def connect(cls, url: str, keys: Optional[Keys], job: str, *, name: str = "draftwire-py", wait_s: float = 30.0) -> "Bus":
        """Connects (reconnecting forever once connected). Credentials the server refuses are
        AuthError at once; a server that does not answer within ``wait_s`` UnavailableError."""
        errors: list = []
        refused = asyncio.Event()

        async def on_error(e: Exception) -> None:
            errors.append(e)
            log.debug("nats error: %s", e)
            if _is_auth_failure(e):
                refused.set()

        opts: Dict[str, Any] = dict(servers=[url], name=name, connect_timeout=min(5.0, wait_s), allow_reconnect=True,
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.25, error_cb=on_error)
        if keys is not None:
            opts.update(user=keys.nats_user, password=keys.nats_pass)
        task = asyncio.ensure_future(nats.connect(**opts))
        waiter = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        failure: Optional[BaseException] = None
        nc = None
        if task.done() and not task.cancelled():
            failure = task.exception()
            nc = task.result() if failure is None else None
        if nc is None:
            seen = [x for x in (failure, *errors) if x is not None]
            if refused.is_set() or any(_is_auth_failure(x) for x in seen):
                how = "the job's secret" if keys is not None else "no secret (the job has one: set DRAFTWIRE_SECRET)"
                raise AuthError(f"NATS at {url} refused the credentials derived from {how}: wrong secret? (Authorization Violation)",
                                detail={"url": url})
            last = seen[-1] if seen else "no answer"
            raise UnavailableError(f"cannot connect to NATS at {url} within {wait_s:.0f} s: {last}", detail={"url": url})
        bus = cls(nc, keys, job)
        bus._sub = await nc.subscribe(bus._prefix + ".*", cb=bus._on_reply)
        await nc.flush()
        return bus

    async def _on_reply(self, msg: Any) -> None:
        fut = self._pending.get(msg.subject)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def subject(self, name: str) -> str:
        return f"dw.{self.job}.{name}"

    async def request(self, name: str, payload: Any, *, key: Optional[str] = None, timeout_ms: Optional[int] = None,
                      attempts: Optional[int] = None) -> Any:
        """The reply's result of request ``name`` (``queue.commit``...) with ``payload``."""
        subject = self.subject(name)
        t_ms, n = TIMEOUTS.get(name, (5000, 3))
        timeout_ms = t_ms if timeout_ms is None else timeout_ms
        attempts = n if attempts is None else max(1, attempts)
        key = key or f"{name}:{secrets.token_hex(12)}"
        self.counters["requests"] += 1
        last: Optional[DraftwireError] = None
        for attempt in range(attempts):
            if attempt > 0:
                await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)) * (0.75 + random.random() * 0.5))
            if self.nc.is_closed:
                raise UnavailableError(f"request to {subject}: the NATS connection is closed")
            inbox = f"{self._prefix}.{secrets.token_hex(8)}"
            fut = asyncio.get_running_loop().create_future()
            self._pending[inbox] = fut
            self.counters["attempts"] += 1
            try:
                data = seal(self.keys, request_frame(subject, inbox, key, attempt, payload))
                await self.nc.publish(subject, data, reply=inbox)
                try:
                    msg = await asyncio.wait_for(fut, timeout_ms / 1000)
                except asyncio.TimeoutError:
                    self.counters["timeouts"] += 1
                    last = RequestTimeoutError(f"no reply on {subject} within {timeout_ms} ms", detail={"subject": subject})
                    continue
            finally:
                self._pending.pop(inbox, None)
            try:
                return open_reply(self.keys, msg.data, msg.headers, subject=subject, key=key, inbox=inbox)
            except BadReply as e:
                self.counters["badReplies"] += 1
                log.warning("dropped a reply on %s: %s", subject, e.message)
                last = e
            except UnavailableError as e:  # 503: nobody subscribes (yet), or the queue actor restarts
                self.counters["noResponders"] += 1
                last = e
            except RequestTimeoutError as e:
                last = e
        assert last is not None
        what = f"{attempts} attempt(s) of {timeout_ms} ms"
        if isinstance(last, BadReply):
            if last.code == "AUTH":
                raise AuthError(f"every reply on {subject} failed authentication ({what}): is this the job's secret? ({last.message})",
                                detail={"subject": subject})
            raise last
        if isinstance(last, UnavailableError):
            raise UnavailableError(f"{last.message} ({what})", detail={"subject": subject, "key": key})
        raise RequestTimeoutError(f"request to {subject} got no reply after {what}", detail={"subject": subject, "key": key})

    async def close(self) -> None:
        for f in self._pending.values():
            if not f.done():
                f.cancel()
        self._pending.clear()
        try:
            await self.nc.drain()
        except Exception:
            pass
        if not self.nc.is_closed:
            await self.nc.close()
