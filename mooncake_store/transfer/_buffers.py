"""Turning what callers pass as a buffer (int address, numpy array, CPU torch
tensor, bytes-like object) into (address, size, keepalive) for the C engine."""
from __future__ import annotations

from typing import Any

from .._engine import ffi
from ..errors import InvalidParams


def as_address(buf: Any, length: int | None = None, *, writable: bool = False) -> tuple[int, int, Any]:
    """(address, usable bytes, object to keep alive while C uses the memory).

    `length`, when given, must fit in the buffer; an int address has no known
    size, so its usable size is `length` itself."""
    if isinstance(buf, bool):
        raise InvalidParams(f"buffer must be an address or a buffer, got {buf!r}")
    if isinstance(buf, int):
        if buf <= 0:
            raise InvalidParams(f"buffer address must be > 0, got {buf}")
        if length is None:
            raise InvalidParams("length is required when the buffer is an int address")
        return buf, length, None
    addr, size, keep = _from_object(buf, writable)
    if length is not None and length > size:
        raise InvalidParams(f"length {length} exceeds the buffer's {size} bytes")
    return addr, size, keep


def _from_object(buf: Any, writable: bool) -> tuple[int, int, Any]:
    mod = type(buf).__module__
    if mod.startswith("torch"):
        if buf.device.type != "cpu":
            raise InvalidParams(f"tensor must be on the CPU, got {buf.device}")
        if not buf.is_contiguous():
            raise InvalidParams("tensor must be contiguous")
        return buf.data_ptr(), buf.numel() * buf.element_size(), buf
    if mod == "numpy":
        if not buf.flags["C_CONTIGUOUS"]:
            raise InvalidParams("numpy array must be C-contiguous")
        if writable and not buf.flags["WRITEABLE"]:
            raise InvalidParams("numpy array is read-only")
        return buf.ctypes.data, buf.nbytes, buf
    try:
        cdata = ffi.from_buffer(buf, require_writable=writable)
    except BufferError:
        raise InvalidParams(f"{type(buf).__name__} is read-only; reads need a writable buffer") from None
    except TypeError as e:
        raise InvalidParams(f"not a usable buffer ({type(buf).__name__}): {e}") from None
    size = len(cdata)
    if size == 0:
        raise InvalidParams("buffer is empty")
    return int(ffi.cast("uintptr_t", cdata)), size, cdata
