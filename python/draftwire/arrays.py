"""Tensors in, little-endian bytes out: numpy arrays, torch tensors or lists, converted to the
sample file's dtypes (docs/wire.md, "Tensors of a training sample").

Floating features (``aux``, ``last``) are written as ``bf16`` (default), ``f16`` or ``f32``:
bf16 from f32/f16 input by round-to-nearest-even (numpy), a torch bf16 tensor's bits as they
are (torch input of another float dtype is converted by torch, also round-to-nearest-even).
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np

from .errors import InvalidArgumentError, SchemaError

FLOAT_DTYPES = ("bf16", "f16", "f32")
_LE = sys.byteorder == "little"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _torch_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of f32 values, round to nearest even; NaNs stay (quiet) NaNs."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    r = u >> 16
    r &= 1
    r += u
    r += 0x7FFF  # wraps only for NaNs with the sign bit set, fixed below
    out = np.empty(u.shape, dtype=np.uint16)
    np.right_shift(r, 16, out=out, casting="unsafe")
    if np.isnan(a).any():
        nan = np.isnan(a)
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _le(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LE):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def float_feature(x: Any, dtype: str, field: str) -> np.ndarray:
    """``x`` as a contiguous little-endian array of the file dtype ``dtype`` (bf16 as uint16 bits)."""
    if dtype not in FLOAT_DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}", detail={"field": "dtype", "found": dtype})
    if _is_torch(x):
        import torch

        if not x.is_floating_point():
            raise SchemaError(f"{field} must be floating point (f32, f16 or bf16), got a torch {x.dtype}",
                              detail={"field": field, "found": str(x.dtype), "expected": "f32|f16|bf16"})
        want = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
        t = x.detach()
        if t.dtype != want:
            t = t.to(want)
        t = t.cpu().contiguous()
        if dtype == "bf16":
            return t.view(torch.int16).numpy().view(np.uint16)
        return _le(t.numpy())
    a = np.asarray(x)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise SchemaError(f"{field} must be a floating-point array (f32, f16), got {a.dtype}",
                          detail={"field": field, "found": str(a.dtype), "expected": "f32|f16"})
    if dtype == "bf16":
        return _le(f32_to_bf16_bits(a.astype(np.float32, copy=False)))
    return _le(a.astype(np.float16 if dtype == "f16" else np.float32, copy=False))


def int_feature(x: Any, field: str) -> np.ndarray:
    """Integer ids as int32 (values are checked by the caller)."""
    a = _torch_numpy(x) if _is_torch(x) else np.asarray(x)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and np.all(np.mod(a, 1) == 0):
            pass
        elif a.size:
            raise SchemaError(f"{field} must hold integers, got {a.dtype}", detail={"field": field, "found": str(a.dtype), "expected": "integer"})
    if a.size and (a.min() < -(2 ** 31) or a.max() >= 2 ** 31):
        raise InvalidArgumentError(f"{field}: values outside int32", detail={"field": field})
    return _le(a.astype(np.int32, copy=False))


def mask_feature(x: Any, field: str = "mask") -> np.ndarray:
    """A loss mask (bool, or integers 0/1) as uint8."""
    a = _torch_numpy(x) if _is_torch(x) else np.asarray(x)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a.astype(np.uint8))
    if a.dtype.kind not in "iu":
        raise SchemaError(f"{field} must be bool or u8 (0/1), got {a.dtype}", detail={"field": field, "found": str(a.dtype), "expected": "u8|bool"})
    if a.size and (a.min() < 0 or a.max() > 1):
        raise InvalidArgumentError(f"{field} must hold only 0 and 1, found {int(a.min())}..{int(a.max())}", detail={"field": field})
    return np.ascontiguousarray(a.astype(np.uint8, copy=False))


def shape_of(a: np.ndarray) -> Tuple[int, ...]:
    return tuple(int(d) for d in a.shape)
