"""The SampleRef (docs/wire.md, "The SampleRef"): its canonical encoding and MAC.

The canonical map holds fields 1-11 in the table's order, ``features`` sorted by name with
each value exactly ``{dtype, shape}``, ``producer`` exactly ``{node, actor, incarnation}``;
encoded with wire.pack (map 16 everywhere, integers >= 2^32 as float 64). ``mac`` =
HMAC-SHA256(K, canonical bytes), appended as field 12 when auth is on.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping, Optional

from .errors import InvalidArgumentError
from .keys import Keys
from .wire import pack

ORDER = ("v", "job", "sampleId", "generation", "uri", "features", "numTokens", "bytes", "checksum", "producer", "createdAt")
ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
FEATURE_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
DTYPES = ("f32", "bf16", "f16", "i32", "u8")
MAX_REF_BYTES = 4096


def check_id(value: Any, what: str) -> str:
    """An id of docs/wire.md's conventions (and usable as a file name: no leading dot)."""
    if not isinstance(value, str) or not ID_RE.match(value) or value in (".", "..") or value.startswith("."):
        raise InvalidArgumentError(f"{what} must match [A-Za-z0-9._:-]{{1,200}} and not start with '.', got {value!r}",
                                   detail={"field": what, "found": value})
    return value


def _uint(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or int(v) != v or v > 2 ** 53 - 1:
        raise InvalidArgumentError(f"{what} must be an unsigned integer, got {v!r}", detail={"field": what, "found": v})
    return int(v)


def dir_uri(store_id: str, sample_id: str, generation: int) -> str:
    return f"dir://{store_id}/{sample_id}?g={generation}"


def canonical(ref: Mapping[str, Any]) -> Dict[str, Any]:
    """The canonical map (fields 1-11, no mac) of ``ref``; validates the fields it orders."""
    missing = [k for k in ORDER if k not in ref]
    if missing:
        raise InvalidArgumentError(f"SampleRef lacks {', '.join(missing)}", detail={"field": missing[0]})
    feats = ref["features"]
    if not isinstance(feats, Mapping) or not 1 <= len(feats) <= 64:
        raise InvalidArgumentError("SampleRef features must be a map of 1..64 tensors", detail={"field": "features"})
    features: Dict[str, Any] = {}
    for name in sorted(feats):
        if not FEATURE_RE.match(name):
            raise InvalidArgumentError(f"feature name {name!r} is not allowed", detail={"field": f"features.{name}"})
        f = feats[name]
        if f.get("dtype") not in DTYPES:
            raise InvalidArgumentError(f"feature {name}: dtype {f.get('dtype')!r} is not one of {DTYPES}", detail={"field": f"features.{name}.dtype"})
        shape = [_uint(d, f"features.{name}.shape") for d in f.get("shape", [])]
        if len(shape) > 8:
            raise InvalidArgumentError(f"feature {name}: rank above 8", detail={"field": f"features.{name}.shape"})
        features[name] = {"dtype": f["dtype"], "shape": shape}
    p = ref["producer"]
    producer = {"node": check_id(p["node"], "producer.node"), "actor": check_id(p["actor"], "producer.actor"),
                "incarnation": _uint(p["incarnation"], "producer.incarnation")}
    out = {
        "v": 1,
        "job": check_id(ref["job"], "job"),
        "sampleId": check_id(ref["sampleId"], "sampleId"),
        "generation": _uint(ref["generation"], "generation"),
        "uri": ref["uri"],
        "features": features,
        "numTokens": _uint(ref["numTokens"], "numTokens"),
        "bytes": _uint(ref["bytes"], "bytes"),
        "checksum": ref["checksum"],
        "producer": producer,
        "createdAt": _uint(ref["createdAt"], "createdAt"),
    }
    if _uint(ref["v"], "v") != 1:
        raise InvalidArgumentError(f"SampleRef v must be 1, got {ref['v']!r}", detail={"field": "v"})
    if not isinstance(out["uri"], str) or not isinstance(out["checksum"], str):
        raise InvalidArgumentError("SampleRef uri and checksum must be strings", detail={"field": "uri"})
    return out


def canonical_bytes(ref: Mapping[str, Any]) -> bytes:
    """The MAC input: the canonical encoding of ``ref`` without its mac."""
    return pack(canonical(ref))


def sign(keys: Optional[Keys], ref: Mapping[str, Any]) -> Dict[str, Any]:
    """The canonical ref with its ``mac`` (none with auth off)."""
    out = canonical(ref)
    if keys is not None:
        out["mac"] = keys.mac(pack(out))
    if len(pack(out)) > MAX_REF_BYTES:
        raise InvalidArgumentError(f"SampleRef of {len(pack(out))} bytes is over the {MAX_REF_BYTES}-byte limit")
    return out


def verify(keys: Keys, ref: Mapping[str, Any]) -> bool:
    return keys.verify(canonical_bytes(ref), ref.get("mac"))


def encode(ref: Mapping[str, Any]) -> bytes:
    """The ref as sent (canonical fields, then mac when present)."""
    out = canonical(ref)
    if ref.get("mac") is not None:
        out["mac"] = bytes(ref["mac"])
    return pack(out)


def to_json(ref: Mapping[str, Any]) -> str:
    """The ref as the file metadata's ``draftwire.ref`` (mac as lowercase hex)."""
    out: Dict[str, Any] = dict(canonical(ref))
    if ref.get("mac") is not None:
        out["mac"] = bytes(ref["mac"]).hex()
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)
