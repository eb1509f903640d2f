"""Keep the memory of values read as bytes mapped from one read to the next (glibc only).

`get` and `batch_get` return bytes objects that the engine fills in place, so their memory
comes from malloc. glibc serves an allocation above its mmap threshold (128 KiB at start,
then raised to the largest chunk freed) with a fresh mapping, and gives free memory above
its trim threshold at the top of the heap back to the kernel. A batch of 64 x 256 KiB, freed
all at once, went back every time, and the next batch faulted its 4,096 pages in again:
7.7-9.3 ms per `batch_get` against 3.6-3.8 ms for `batch_get_into` into reused buffers, on
a segment-less client over tcp (docs/PERFORMANCE.md). With the mmap threshold at glibc's
largest dynamic value (32 MiB) and the trim threshold at twice that, as glibc pairs them
itself, both take 3.4-3.9 ms.

The cost: values below 32 MiB come from the heap, and up to 64 MiB of free memory may stay
mapped at the top of each malloc arena. The setting is process-wide, so it is made once, on
the first Store, and only where the C library is glibc; `tune_malloc=False`
(MOONCAKE_TUNE_MALLOC=0) leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import logging
import platform
import threading

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20                       # glibc's DEFAULT_MMAP_THRESHOLD_MAX (64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

_lock = threading.Lock()
_done: bool | None = None       # None: not tried yet; then whether the thresholds were set


def tune_once() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; whether they are set."""
    global _done
    with _lock:
        if _done is None:
            _done = _apply()
        return _done


def _apply() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc thresholds: mmap %d, trim %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD,
              "set" if ok else "refused")
    return ok
