"""The shared-directory feature store, producer side (docs/wire.md, "Sample files" and
"The shared-directory store").

- ``manifest``/``checksum``: blocks of whole rows of about ``block_bytes``, the sha256 of each,
  canonical JSON, ``sha256m:`` + sha256 of it.
- ``safetensors_header``: the header (``__metadata__`` first, tensors back to back in the
  order given, padded with spaces so the data section starts at a multiple of 8).
- ``publish``: written to ``.tmp-<pid>-<random>`` in the store directory, fsync'd, renamed to
  ``<sampleId>.g<generation>.safetensors``, the directory fsync'd; mode 0640.
- ``wait_marker``: waits for ``.draftwire-store.json`` (the job's processes create it) and
  checks its job, auth flag and MAC.
- ``Usage``: the store's bytes against the job's watermarks (BACKPRESSURE above the high one
  until usage falls to the low one), as the job's own writers do.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import AuthError, BackpressureError, DecodeError, DraftwireError, InvalidArgumentError
from .keys import Keys

BLOCK_BYTES = 1 << 20
FILE_MODE = 0o640
FILE_FORMAT = "draftwire/1"
MARKER = ".draftwire-store.json"
MARKER_FORMAT = "draftwire-store/1"
ST_DTYPE = {"f32": "F32", "bf16": "BF16", "f16": "F16", "i32": "I32", "u8": "U8"}
DW_DTYPE = {v: k for k, v in ST_DTYPE.items()}
ITEM_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "u8": 1}
DATA_RE = re.compile(r"^([A-Za-z0-9._:-]{1,200})\.g(0|[1-9][0-9]{0,15})\.safetensors$")

# A tensor of a sample: (name, Draftwire dtype, shape, little-endian bytes or a buffer).
Tensor = Tuple[str, str, Sequence[int], Any]


class StoreWriteError(DraftwireError):
    """A write into the store failed (disk full, permission): nothing was published."""
    code = "STORE_WRITE"
    default_retryable = True


def _mv(data: Any) -> memoryview:
    m = memoryview(data)
    return m.cast("B") if m.ndim != 1 or m.format != "B" else m


def data_path(store_dir: str, sample_id: str, generation: int) -> str:
    return os.path.join(store_dir, f"{sample_id}.g{generation}.safetensors")


# ---------------------------------------------------------------- manifest and checksum


def manifest_entry(name: str, dtype: str, shape: Sequence[int], data: Any, block_bytes: int = BLOCK_BYTES) -> Dict[str, Any]:
    buf = _mv(data)
    rows = int(shape[0]) if len(shape) else 1
    nbytes = len(buf)
    if nbytes == 0 or rows == 0:
        block_rows = max(1, rows)
        row_bytes = 0
    else:
        row_bytes = nbytes // rows
        block_rows = max(1, block_bytes // row_bytes)
    blocks = max(1, -(-rows // block_rows))
    digests = []
    for b in range(blocks):
        r0, r1 = b * block_rows, min(rows, (b + 1) * block_rows)
        digests.append(hashlib.sha256(buf[r0 * row_bytes:r1 * row_bytes] if row_bytes else buf).hexdigest())
    return {"name": name, "dtype": dtype, "shape": [int(d) for d in shape], "blockRows": block_rows, "digests": digests}


def manifest_json(tensors: Iterable[Tensor], block_bytes: int = BLOCK_BYTES) -> str:
    """The manifest's canonical JSON: no whitespace, keys in the document's order."""
    m = {"v": 1, "blockBytes": block_bytes, "tensors": [manifest_entry(n, d, s, b, block_bytes) for n, d, s, b in tensors]}
    return json.dumps(m, separators=(",", ":"))


def checksum_of(manifest: str) -> str:
    return "sha256m:" + hashlib.sha256(manifest.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- safetensors


def safetensors_header(tensors: Sequence[Tensor], metadata: Dict[str, str]) -> bytes:
    """``u64 LE length || header JSON`` padded so the data section starts at a multiple of 8."""
    header: Dict[str, Any] = {"__metadata__": dict(metadata)}
    off = 0
    for name, dtype, shape, data in tensors:
        n = len(_mv(data))
        want = ITEM_BYTES[dtype]
        for d in shape:
            want *= int(d)
        if n != want:
            raise InvalidArgumentError(f"tensor {name}: {n} bytes for shape {list(shape)} of {dtype} (expected {want})")
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": [int(d) for d in shape], "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h


def safetensors_bytes(tensors: Sequence[Tensor], metadata: Dict[str, str]) -> bytes:
    return safetensors_header(tensors, metadata) + b"".join(bytes(_mv(t[3])) for t in tensors)


def read_header(path: str) -> Tuple[Dict[str, Any], int]:
    """(header JSON, data section offset) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise DecodeError(f"{path}: not a safetensors file (short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise DecodeError(f"{path}: header of {n} bytes")
        raw = f.read(n)
    try:
        return json.loads(raw.decode("utf-8")), 8 + n
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"{path}: header is not JSON") from e


def verify_file(path: str) -> Dict[str, Any]:
    """Checks a sample file against its own manifest (format, layout, every block digest);
    returns ``{"manifest", "checksum", "ref"}`` (ref: the metadata's JSON, or None)."""
    header, start = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FILE_FORMAT:
        raise DecodeError(f"{path}: metadata format {meta.get('format')!r}")
    mj = meta.get("draftwire.manifest")
    m = json.loads(mj)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    tensors = []
    for t in m["tensors"]:
        h = header[t["name"]]
        b0, b1 = h["data_offsets"]
        if DW_DTYPE[h["dtype"]] != t["dtype"] or h["shape"] != t["shape"]:
            raise DecodeError(f"{path}: tensor {t['name']} differs from the manifest")
        tensors.append((t["name"], t["dtype"], t["shape"], data[b0:b1]))
    again = manifest_json(tensors, m["blockBytes"])
    if again != mj:
        raise DecodeError(f"{path}: the data does not match the manifest")
    ref = meta.get("draftwire.ref")
    return {"manifest": mj, "checksum": checksum_of(mj), "ref": json.loads(ref) if ref else None}


# ---------------------------------------------------------------- publishing


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(store_dir: str, final_name: str, parts: Sequence[Any], *, before_rename: Optional[Callable[[str], None]] = None) -> int:
    """Writes ``parts`` (buffers) atomically as ``final_name`` in ``store_dir``; returns the size.

    A reader sees all of it or nothing; a writer killed before the rename leaves only a
    ``.tmp-<pid>-<random>`` file (the job's janitor removes stale ones)."""
    final = os.path.join(store_dir, final_name)
    tmp = os.path.join(store_dir, f".tmp-{os.getpid()}-{secrets.token_hex(8)}")
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            for p in parts:
                mv = _mv(p)
                while len(mv):
                    n = os.write(fd, mv[: 1 << 30])
                    size += n
                    mv = mv[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename(tmp)
        os.rename(tmp, final)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        code = e.errno and os.strerror(e.errno)
        raise StoreWriteError(f"could not write {final_name} in {store_dir}: {code}{' (disk full)' if e.errno == 28 else ''}; nothing was published",
                              detail={"file": final_name, "errno": e.errno}) from e
    fsync_dir(store_dir)
    return size


def remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- marker


def wait_marker(store_dir: str, job: str, keys: Optional[Keys], timeout_s: float = 60.0) -> str:
    """Waits for the store marker; checks it and returns the storeId."""
    path = os.path.join(store_dir, MARKER)
    end = time.monotonic() + timeout_s
    while True:
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
            break
        except FileNotFoundError:
            if time.monotonic() > end:
                raise DraftwireError(f"no store marker {path} after {timeout_s:.0f} s: is the job running (its node creates the store)?",
                                     code="NOT_FOUND", retryable=True, detail={"path": path})
            time.sleep(0.1)
    try:
        m = json.loads(text)
    except ValueError as e:
        raise DecodeError(f"store marker {path} is not JSON") from e
    if not isinstance(m, dict) or m.get("format") != MARKER_FORMAT or not isinstance(m.get("storeId"), str) or not isinstance(m.get("auth"), bool):
        raise DecodeError(f"store marker {path} is malformed or of an unknown format")
    if m.get("job") != job:
        raise InvalidArgumentError(f"store {store_dir} belongs to job {m.get('job')!r}, not {job!r}", detail={"path": path})
    if m["auth"] and keys is None:
        raise AuthError(f"job {job} runs with a secret: set DRAFTWIRE_SECRET (or DRAFTWIRE_SECRET_FILE, or pass secret=)")
    if not m["auth"] and keys is not None:
        raise AuthError(f"job {job} runs without a secret, but this producer has one: unset DRAFTWIRE_SECRET")
    if keys is not None and m.get("mac") != keys.store_marker_mac(m["storeId"], job):
        raise AuthError(f"the store marker {path} does not verify with this secret: not the job's secret")
    return m["storeId"]


# ---------------------------------------------------------------- usage and backpressure


class Usage:
    """Bytes of the store's samples (and temp files) against the job's watermarks; rescans the
    directory at most every ``refresh_s``, counting this process's own writes in between."""

    def __init__(self, store_dir: str, high: Optional[int], low: Optional[int], refresh_s: float = 1.0):
        self.dir = store_dir
        self.high = high
        self.low = low if low is not None else (int(high * 0.8) if high else None)
        self.refresh_s = refresh_s
        self.bytes = 0
        self.at = 0.0
        self.pressured = False

    def scan(self) -> int:
        total = 0
        with os.scandir(self.dir) as it:
            for e in it:
                if DATA_RE.match(e.name) or e.name.startswith(".tmp-"):
                    try:
                        total += e.stat().st_size
                    except FileNotFoundError:
                        pass
        self.bytes, self.at = total, time.monotonic()
        return total

    def admit(self, nbytes: int) -> None:
        """Raises BackpressureError while the store is over its high watermark (until usage
        is back at the low one)."""
        if not self.high:
            return
        if time.monotonic() - self.at >= self.refresh_s or self.pressured or self.bytes + nbytes > self.high:
            self.scan()
        used = self.bytes
        if used + nbytes > self.high:
            self.pressured = True
        elif used <= self.low:
            self.pressured = False
        if self.pressured:
            raise BackpressureError(f"store {self.dir} is over its high watermark: {used} bytes used + {nbytes} to write, high {self.high}, resumes at {self.low}",
                                    detail={"usageBytes": used, "requestedBytes": nbytes, "highWatermarkBytes": self.high, "lowWatermarkBytes": self.low})

    def wrote(self, nbytes: int) -> None:
        self.bytes += nbytes

    def removed(self, nbytes: int) -> None:
        self.bytes = max(0, self.bytes - nbytes)


# ---------------------------------------------------------------- files left by a crashed run


def scan_samples(store_dir: str, prefix: str = "") -> Dict[str, List[Tuple[int, str]]]:
    """Published sample files whose id starts with ``prefix``: id -> [(generation, path)]."""
    out: Dict[str, List[Tuple[int, str]]] = {}
    with os.scandir(store_dir) as it:
        for e in it:
            m = DATA_RE.match(e.name)
            if m and m.group(1).startswith(prefix):
                out.setdefault(m.group(1), []).append((int(m.group(2)), e.path))
    for v in out.values():
        v.sort()
    return out


def file_actor(path: str) -> Optional[str]:
    """The ``producer.actor`` of the ref in a sample file's metadata (None when unreadable)."""
    try:
        header, _ = read_header(path)
        ref = json.loads((header.get("__metadata__") or {}).get("draftwire.ref") or "null")
        return ref["producer"]["actor"] if isinstance(ref, dict) else None
    except (OSError, DraftwireError, ValueError, KeyError, TypeError):
        return None
