"""Keys (docs/wire.md, "Keys"): everything derives from the job secret by HKDF-SHA256.

``Keys.from_env()`` reads ``DRAFTWIRE_SECRET`` or the file named by ``DRAFTWIRE_SECRET_FILE``
(surrounding whitespace trimmed); no secret means auth off (``None``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Mapping, Optional

from .errors import AuthError, InvalidArgumentError

SALT = b"draftwire/v1"
MIN_SECRET_BYTES = 16


def hkdf(ikm: bytes, info: bytes, length: int, salt: bytes = SALT) -> bytes:
    """RFC 5869 HKDF-SHA256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class Keys:
    """The MAC key, NATS credentials and store tokens of one job secret."""

    def __init__(self, secret: str):
        if not isinstance(secret, str):
            raise InvalidArgumentError("the secret must be a str")
        s = secret.encode("utf-8")
        if len(s) < MIN_SECRET_BYTES:
            raise InvalidArgumentError(f"the job secret must be at least {MIN_SECRET_BYTES} bytes, got {len(s)}")
        self.mac_key = hkdf(s, b"draftwire/v1/mac", 32)
        self.nats_user = "dw-" + hkdf(s, b"draftwire/v1/nats-user", 8).hex()
        self.nats_pass = base64.urlsafe_b64encode(hkdf(s, b"draftwire/v1/nats-pass", 24)).rstrip(b"=").decode("ascii")
        self._store_key = hkdf(s, b"draftwire/v1/store-token", 32)

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256(K, data), 32 bytes."""
        return hmac256(self.mac_key, data)

    def verify(self, data: bytes, mac: object) -> bool:
        return isinstance(mac, (bytes, bytearray)) and hmac.compare_digest(self.mac(data), bytes(mac))

    def store_token(self, store_id: str) -> str:
        return hmac256(self._store_key, store_id.encode("utf-8")).hex()

    def store_marker_mac(self, store_id: str, job: str) -> str:
        return self.mac(b"draftwire/v1/store-marker\x00" + store_id.encode("utf-8") + b"\x00" + job.encode("utf-8")).hex()

    @staticmethod
    def from_env(env: Optional[Mapping[str, str]] = None) -> Optional["Keys"]:
        secret = secret_from_env(env)
        return Keys(secret) if secret else None

    def __repr__(self) -> str:  # never the secret or keys
        return f"Keys(nats_user={self.nats_user!r})"


def secret_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """DRAFTWIRE_SECRET, else the contents of DRAFTWIRE_SECRET_FILE (trimmed), else None."""
    env = os.environ if env is None else env
    s = env.get("DRAFTWIRE_SECRET")
    if s:
        return s
    path = env.get("DRAFTWIRE_SECRET_FILE")
    if path:
        try:
            with open(path, "r", encoding="utf-8") as f:
                s = f.read().strip()
        except OSError as e:
            raise AuthError(f"cannot read DRAFTWIRE_SECRET_FILE {path}: {e.strerror}") from e
        if not s:
            raise AuthError(f"DRAFTWIRE_SECRET_FILE {path} is empty")
        return s
    return None
