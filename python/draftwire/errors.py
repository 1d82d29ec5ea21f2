"""Errors: one exception class per Draftwire error code (docs/wire.md, "Frames").

Every error has ``code`` (the stable string programs test), ``retryable`` (whether the same
request may succeed later) and ``detail`` (a dict, possibly empty: e.g. ``field``/``found``/
``expected`` of a SCHEMA refusal). An error reply from the job is raised as the class of its
code (``from_wire``); a code this package does not know is a plain :class:`DraftwireError`
carrying that code.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type


class DraftwireError(Exception):
    """Base class; also the class of codes without their own (``code`` says which)."""

    code: str = "DRAFTWIRE"
    default_retryable: bool = False

    def __init__(self, message: str, *, code: Optional[str] = None, retryable: Optional[bool] = None,
                 detail: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retryable = self.default_retryable if retryable is None else bool(retryable)
        self.detail: Dict[str, Any] = dict(detail or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, retryable={self.retryable}, detail={self.detail!r})"


class AuthError(DraftwireError):
    """Wrong or missing secret: NATS refused the credentials, a MAC did not verify, or the
    store marker belongs to another secret or job."""
    code = "AUTH"


class SchemaError(DraftwireError):
    """The sample does not match the job's schema; ``detail['field']`` names the field."""
    code = "SCHEMA"


class InvalidArgumentError(DraftwireError):
    """Malformed input: a bad id, shape, dtype, option; or a commit of a sample already consumed."""
    code = "INVALID_ARGUMENT"


class StaleGenerationError(DraftwireError):
    """The ledger holds a newer generation of this sample."""
    code = "STALE_GENERATION"


class BackpressureError(DraftwireError):
    """The store is above its high watermark; the producer waits (backoff) and retries."""
    code = "BACKPRESSURE"
    default_retryable = True


class UnavailableError(DraftwireError):
    """Nobody answers the subject (NATS 503: the queue is not up, or restarting), or the
    connection is gone."""
    code = "UNAVAILABLE"
    default_retryable = True


class RequestTimeoutError(DraftwireError):
    """No reply within the request's attempts."""
    code = "TIMEOUT"
    default_retryable = True


class InputClosed(DraftwireError):
    """The job takes no more samples (every producer ended, or its --samples were reached):
    stop producing."""
    code = "INPUT_CLOSED"


InputClosedError = InputClosed


class DecodeError(DraftwireError):
    """Bytes from the wire or disk that do not decode into the expected record."""
    code = "DECODE"


_BY_CODE: Dict[str, Type[DraftwireError]] = {
    c.code: c for c in (AuthError, SchemaError, InvalidArgumentError, StaleGenerationError, BackpressureError,
                        UnavailableError, RequestTimeoutError, InputClosed, DecodeError)
}


def error_class(code: str) -> Type[DraftwireError]:
    return _BY_CODE.get(code, DraftwireError)


def from_wire(err: Any, subject: str = "") -> DraftwireError:
    """The exception for an error reply's ``error`` map ``{code, message, retryable, detail?}``."""
    if not isinstance(err, dict):
        return DecodeError(f"reply from {subject}: malformed error {err!r}")
    code = err.get("code") if isinstance(err.get("code"), str) else "INTERNAL"
    message = err.get("message") if isinstance(err.get("message"), str) else "remote error"
    retryable = err.get("retryable")
    detail = err.get("detail") if isinstance(err.get("detail"), dict) else {}
    detail = dict(detail)
    if subject:
        detail.setdefault("subject", subject)
    cls = error_class(code)
    return cls(message, code=code, retryable=bool(retryable) if isinstance(retryable, bool) else None, detail=detail)
