"""The wire format (docs/wire.md): msgpack as Draftwire writes it, sealed messages, frames,
and the checks a requester makes on a reply. Pure functions; the NATS client is in bus.py.

msgpack as Draftwire writes it ("msgpack conventions"): every map as map 16 (``0xde``) with
its keys in insertion order; arrays, strings and bins in their smallest form; integers
0 <= n < 2^32 and -2^31 <= n < 0 in their smallest form, any other integer (a millisecond
timestamp) as float 64, exact below 2^53. These bytes matter where a MAC covers an encoding
this side computes (the canonical SampleRef); for sealed messages any decodable form would do.
"""
from __future__ import annotations

import math
import secrets
import struct
import time
from typing import Any, Dict, Optional

import msgpack

from .errors import AuthError, DecodeError, DraftwireError, UnavailableError, from_wire
from .keys import Keys

MAX_MESSAGE_BYTES = 1 << 20
WINDOW_MS = 30_000
ENVELOPE_LABEL = b"draftwire/v1/envelope\x00"
_MAX_EXACT = 2 ** 53 - 1


# ---------------------------------------------------------------- encoding


def pack(v: Any) -> bytes:
    """msgpack bytes exactly as Draftwire (msgpackr, useRecords false) writes ``v``."""
    out = bytearray()
    _pack(v, out, 0)
    return bytes(out)


def _pack_int(v: int, out: bytearray) -> None:
    if 0 <= v < 0x80:
        out.append(v)
    elif 0 <= v < 0x100:
        out += b"\xcc" + struct.pack(">B", v)
    elif 0 <= v < 0x10000:
        out += b"\xcd" + struct.pack(">H", v)
    elif 0 <= v < 0x100000000:
        out += b"\xce" + struct.pack(">I", v)
    elif -32 <= v < 0:
        out += struct.pack(">b", v)
    elif -0x80 <= v < 0:
        out += b"\xd0" + struct.pack(">b", v)
    elif -0x8000 <= v < 0:
        out += b"\xd1" + struct.pack(">h", v)
    elif -0x80000000 <= v < 0:
        out += b"\xd2" + struct.pack(">i", v)
    else:
        if abs(v) > _MAX_EXACT:
            raise DraftwireError(f"integer {v} is beyond 2^53 - 1: not exact as float 64", code="INVALID_ARGUMENT")
        out += b"\xcb" + struct.pack(">d", float(v))


def _pack(v: Any, out: bytearray, depth: int) -> None:
    if depth > 32:
        raise DraftwireError("value nested deeper than 32", code="INVALID_ARGUMENT")
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        _pack_int(int(v), out)
    elif isinstance(v, float):
        # A JavaScript number is one type: an integral value is written as an integer.
        if math.isfinite(v) and v.is_integer() and -0x80000000 <= v < 0x100000000:
            _pack_int(int(v), out)
        else:
            out += b"\xcb" + struct.pack(">d", v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        n = len(b)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += b"\xd9" + struct.pack(">B", n)
        elif n < 0x10000:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += b
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        n = len(b)
        if n < 0x100:
            out += b"\xc4" + struct.pack(">B", n)
        elif n < 0x10000:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += b
    elif isinstance(v, (list, tuple)):
        n = len(v)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for x in v:
            _pack(x, out, depth + 1)
    elif isinstance(v, dict):
        if len(v) >= 0x10000:
            raise DraftwireError("map of 65536 entries or more", code="INVALID_ARGUMENT")
        out += b"\xde" + struct.pack(">H", len(v))
        for k, x in v.items():
            if not isinstance(k, str):
                raise DraftwireError(f"map key {k!r} is not a string", code="INVALID_ARGUMENT")
            _pack(k, out, depth + 1)
            _pack(x, out, depth + 1)
    else:
        # numpy scalars and the like
        item = getattr(v, "item", None)
        if callable(item):
            _pack(item(), out, depth)
            return
        raise DraftwireError(f"cannot encode a {type(v).__name__}", code="INVALID_ARGUMENT")


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is refused")


def unpack(data: bytes) -> Any:
    """Decodes msgpack (any form); extension types are refused. Integral float 64 values
    (how Draftwire writes integers >= 2^32: ``ts``, ``generation``...) become ints."""
    try:
        v = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext, timestamp=0)
    except DecodeError:
        raise
    except Exception as e:  # msgpack's ExtraData, FormatError, StackError, ValueError...
        raise DecodeError(f"not msgpack: {e}") from e
    return _ints(v, 0)


def _ints(v: Any, depth: int) -> Any:
    if depth > 32:
        raise DecodeError("msgpack nested deeper than 32")
    if isinstance(v, float):
        return int(v) if v.is_integer() and abs(v) <= _MAX_EXACT else v
    if isinstance(v, dict):
        return {k: _ints(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x, depth + 1) for x in v]
    if isinstance(v, msgpack.Timestamp):
        raise DecodeError("msgpack timestamps are refused")
    return v


# ---------------------------------------------------------------- sealed messages


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope_mac_input(ts: int, nonce: bytes, body: bytes) -> bytes:
    return ENVELOPE_LABEL + struct.pack(">q", int(ts)) + nonce + body


def seal(keys: Optional[Keys], frame: Dict[str, Any], *, ts: Optional[int] = None, nonce: Optional[bytes] = None) -> bytes:
    """The sealed message carrying ``frame``: ``{ts, nonce, body, mac}`` (``{body}`` with auth off)."""
    body = pack(frame)
    if keys is None:
        data = pack({"body": body})
    else:
        ts = now_ms() if ts is None else int(ts)
        nonce = secrets.token_bytes(16) if nonce is None else bytes(nonce)
        if len(nonce) != 16:
            raise DraftwireError("a nonce is 16 bytes", code="INVALID_ARGUMENT")
        mac = keys.mac(envelope_mac_input(ts, nonce, body))
        data = pack({"ts": ts, "nonce": nonce, "body": body, "mac": mac})
    if len(data) > MAX_MESSAGE_BYTES:
        raise DraftwireError(f"message of {len(data)} bytes is over the 1 MiB limit", code="INVALID_ARGUMENT")
    return data


def open_sealed(keys: Optional[Keys], data: bytes, *, now: Optional[int] = None, window_ms: int = WINDOW_MS) -> Dict[str, Any]:
    """The frame inside a sealed message, after its MAC and window checks (auth on).

    Raises DecodeError for a malformed message and AuthError for a bad MAC or a ``ts``
    outside the window."""
    env = unpack(data)
    if not isinstance(env, dict) or not isinstance(env.get("body"), bytes):
        raise DecodeError("not a sealed message (no body)")
    body = env["body"]
    if keys is not None:
        ts, nonce, mac = env.get("ts"), env.get("nonce"), env.get("mac")
        if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(nonce, bytes) or len(nonce) != 16 or not isinstance(mac, bytes):
            raise AuthError("message is not sealed (no ts/nonce/mac): does the job have a secret?")
        if not keys.verify(envelope_mac_input(ts, nonce, body), mac):
            raise AuthError("message MAC does not verify (another secret?)")
        t = now_ms() if now is None else now
        if abs(t - ts) > window_ms:
            raise AuthError(f"message sealed {t - ts} ms away from this clock (window {window_ms} ms): check the clocks")
    frame = unpack(body)
    if not isinstance(frame, dict):
        raise DecodeError("frame is not a map")
    return frame


# ---------------------------------------------------------------- frames


def request_frame(subject: str, reply: str, key: str, attempt: int, payload: Any) -> Dict[str, Any]:
    if not isinstance(key, str) or not 1 <= len(key) <= 256:
        raise DraftwireError("an idempotency key is 1..256 characters", code="INVALID_ARGUMENT")
    return {"k": "q", "s": subject, "r": reply, "i": key, "a": attempt, "d": payload}


def reply_frame(key: str, reply: str, result: Any = None) -> Dict[str, Any]:
    f: Dict[str, Any] = {"k": "r", "i": key}
    if result is not None:
        f["d"] = result
    f["r"] = reply
    return f


def error_frame(key: str, reply: str, code: str, message: str, retryable: bool, detail: Optional[dict] = None) -> Dict[str, Any]:
    e: Dict[str, Any] = {"code": code, "message": message, "retryable": retryable}
    if detail is not None:
        e["detail"] = detail
    return {"k": "e", "i": key, "error": e, "r": reply}


def is_no_responders(data: bytes, headers: Optional[dict]) -> bool:
    """NATS's own answer when nobody subscribes to the subject: empty, header ``Status: 503``."""
    if data:
        return False
    status = (headers or {}).get("Status")
    return status is None or str(status).strip().startswith("503")


class BadReply(DraftwireError):
    """A reply the requester drops (and retries): it fails its MAC or window (``code`` AUTH),
    answers another request (AUTH), or is malformed (DECODE). Not a refusal by the job."""


def open_reply(keys: Optional[Keys], data: bytes, headers: Optional[dict], *, subject: str, key: str, inbox: str,
               now: Optional[int] = None) -> Any:
    """What a requester accepts (docs/wire.md, "What a receiver checks", step 6): the reply's
    result ``d``, or the job's error reply raised as the class of its code.

    A 503 no-responder status is UnavailableError (retryable: the queue is not up yet, or is
    restarting). A reply that fails its MAC or window, answers another request (``i``) or is
    sealed for another inbox (``r``) raises BadReply (code AUTH), a malformed one BadReply
    (code DECODE): the requester drops it and retries."""
    if is_no_responders(data, headers):
        raise UnavailableError(f"no responder on {subject} (is the job's queue running?)", detail={"subject": subject})
    try:
        frame = open_sealed(keys, data, now=now)
    except (AuthError, DecodeError) as e:
        raise BadReply(f"reply on {subject}: {e.message}", code=e.code, detail={"subject": subject}) from e
    if frame.get("r") != inbox:
        raise BadReply(f"reply on {subject} is sealed for another inbox", code="AUTH", detail={"subject": subject})
    if frame.get("i") != key:
        raise BadReply(f"reply on {subject} answers another request (i={frame.get('i')!r})", code="AUTH", detail={"subject": subject})
    kind = frame.get("k")
    if kind == "e":
        raise from_wire(frame.get("error"), subject)
    if kind != "r":
        raise BadReply(f"reply on {subject} has frame kind {kind!r}", code="DECODE", detail={"subject": subject})
    return frame.get("d")
