"""Turn what callers hand us (int pointers, numpy arrays, torch tensors, any buffer)
into a (cdata pointer, size) pair the C data path can use, with bounds known."""
from __future__ import annotations

from typing import Any

from .._engine import ffi
from ..errors import InvalidParams


class Region:
    """A pointer and a byte length, plus whatever object must stay alive meanwhile."""

    __slots__ = ("ptr", "size", "_keep")

    def __init__(self, ptr: Any, size: int, keep: Any = None) -> None:
        self.ptr = ptr
        self.size = size
        self._keep = keep


def _torch_region(t: Any, writable: bool) -> Region:
    if t.device.type != "cpu":
        raise InvalidParams(f"tensor on {t.device} given where host memory is needed; "
                            "use get_tensor_into_cuda / put_tensor for CUDA tensors")
    if not t.is_contiguous():
        raise InvalidParams("tensor must be contiguous")
    size = t.numel() * t.element_size()
    return Region(ffi.cast("char *", t.data_ptr()), size, t)


def region(buf: Any, size: int | None = None, writable: bool = False) -> Region:
    """Resolve `buf` (+ optional `size`) to a Region.

    An int is a raw address and needs `size`. For objects with a known length,
    `size` may only shrink the region: asking for more than the buffer holds is
    an InvalidParams error, never an overrun.
    """
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidParams(f"size must be a non-negative int, got {size!r}")
    if isinstance(buf, bool):
        raise InvalidParams("buffer must be a pointer, array, tensor or buffer, got bool")
    if isinstance(buf, int):
        if buf <= 0:
            raise InvalidParams(f"null or negative pointer {buf}")
        if size is None:
            raise InvalidParams("a raw pointer needs an explicit size")
        return Region(ffi.cast("char *", buf), size)
    if type(buf).__module__.startswith("torch"):
        r = _torch_region(buf, writable)
    else:
        try:
            cdata = ffi.from_buffer("char[]", buf, require_writable=writable)
        except (TypeError, ValueError, BufferError):
            kind = "writable buffer" if writable else "buffer"
            raise InvalidParams(f"expected an int pointer, numpy array, torch tensor or "
                                f"{kind}, got {type(buf).__name__}") from None
        r = Region(cdata, len(cdata), buf)
    if size is not None:
        if size > r.size:
            raise InvalidParams(f"size {size} exceeds the buffer's {r.size} bytes")
        r.size = size
    return r
