"""Tensors as stored values: a 64-byte-aligned description (dtype, shape) then the raw bytes.

    b"MTEN" | u8 version | u8 ndim | u16 len(dtype name) | dtype name | u64 shape[ndim] | pad to 64

The raw bytes start 64-byte aligned so a loaded buffer can be viewed as the
tensor without another copy.
"""
from __future__ import annotations

import struct
from typing import Any

from ..errors import InvalidParams, StoreError

MAGIC = b"MTEN"
VERSION = 1
ALIGN = 64
MAX_NDIM = 64


def _torch():
    try:
        import torch
    except ImportError:
        raise InvalidParams("tensor APIs need torch: pip install 'mooncake_store[torch]'") from None
    return torch


def is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "dtype") and hasattr(obj, "shape")


def encode_meta(t: Any) -> bytes:
    name = str(t.dtype).removeprefix("torch.").encode()
    if t.dim() > MAX_NDIM:
        raise InvalidParams(f"tensor has {t.dim()} dims; at most {MAX_NDIM} are supported")
    body = MAGIC + struct.pack("<BBH", VERSION, t.dim(), len(name)) + name + \
        struct.pack(f"<{t.dim()}Q", *t.shape)
    return body + bytes(-len(body) % ALIGN)


def host_bytes_view(t: Any) -> Any:
    """The tensor's bytes as a contiguous CPU uint8 tensor (a copy only when needed)."""
    torch = _torch()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.view(torch.uint8).reshape(-1) if t.numel() else torch.empty(0, dtype=torch.uint8)


def decode(buf: Any) -> Any:
    """A uint8 CPU tensor holding meta+data -> the tensor (a view of `buf`)."""
    torch = _torch()
    raw = bytes(buf[:ALIGN].tolist()) if hasattr(buf, "tolist") else bytes(buf[:ALIGN])
    if len(raw) < 8 or raw[:4] != MAGIC:
        raise StoreError("value is not a stored tensor (bad tensor magic)")
    version, ndim, name_len = struct.unpack_from("<BBH", raw, 4)
    meta_len = 8 + name_len + 8 * ndim
    meta_len += -meta_len % ALIGN
    if version != VERSION or ndim > MAX_NDIM or meta_len > len(buf):
        raise StoreError("corrupt tensor description")
    if meta_len > ALIGN:
        raw = bytes(buf[:meta_len].tolist()) if hasattr(buf, "tolist") else bytes(buf[:meta_len])
    try:
        name = raw[8:8 + name_len].decode("ascii")
    except UnicodeDecodeError:
        raise StoreError("corrupt tensor description (dtype name)") from None
    shape = struct.unpack_from(f"<{ndim}Q", raw, 8 + name_len)
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StoreError(f"unknown tensor dtype {name!r}")
    data = buf[meta_len:]
    n = 1
    for d in shape:
        n *= d
    elem = torch.empty((), dtype=dtype).element_size()
    if len(data) != n * elem:
        raise StoreError("tensor byte count does not match its shape")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    return data.view(dtype).reshape(shape)


def element_size_of(value: Any) -> int | None:
    """Element width of a stored tensor value (meta + data), or None when unreadable."""
    raw = bytes(value[:ALIGN])
    if len(raw) < 8 or raw[:4] != MAGIC:
        return None
    name_len = struct.unpack_from("<H", raw, 6)[0]
    name = raw[8:8 + name_len].decode("ascii", "replace")
    return _ELEMENT_SIZES.get(name)


_ELEMENT_SIZES = {"float64": 8, "int64": 8, "uint64": 8, "complex64": 8, "float32": 4,
                  "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2, "int16": 2,
                  "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}
