"""A DRAM segment: one memfd mapping that other processes on the host can map too.

The memfd (rather than anonymous memory) is what lets a same-host peer map the
segment from its file descriptor and copy with no server in between (issue [B]'s
shm transport). The address is stable for the segment's life.
"""
from __future__ import annotations

import errno
import mmap
import os

import threading

from .._engine import ffi, lib
from ..errors import InvalidParams, NoSpace


def host_memory() -> int:
    """Bytes of memory this process may use: the machine's RAM, or its cgroup's limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max",                      # cgroup v2
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes"):   # v1 ("unlimited" is huge)
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


class DramSegment:
    def __init__(self, size: int, name: str = "mooncake_store") -> None:
        if size <= 0:
            raise InvalidParams(f"segment size must be > 0, got {size}")
        mem = host_memory()
        if size > mem:   # the mapping would succeed, then the OOM killer would end the process
            raise InvalidParams(f"a {size / 2**30:.1f} GiB DRAM segment is more than this "
                                f"host's memory ({mem / 2**30:.1f} GiB)")
        self.size = size
        self.name = name
        try:
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            self.fd = -1  # no memfd: anonymous memory, same-process use only
        try:
            if self.fd >= 0:
                os.ftruncate(self.fd, size)
                self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            else:
                self._map = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        except OSError as e:
            self._close_fd()
            raise NoSpace(f"cannot map a {size}-byte segment: {e.strerror}") from None
        self._cdata = ffi.from_buffer(self._map)
        self.base = int(ffi.cast("uintptr_t", self._cdata))
        self.ptr = ffi.cast("char *", self._cdata)
        self._stop = ffi.new("int *")
        self._prefaulter: threading.Thread | None = None

    def prefault(self, background: bool = True) -> None:
        """Fault the pages in ahead of use (first-touch faults cost ~10x a copy)."""
        def run() -> None:
            lib.mcs_prefault(self.ptr, self.size, self._stop)

        if not background:
            run()
            return
        self._prefaulter = threading.Thread(target=run, name="mstore-prefault", daemon=True)
        self._prefaulter.start()

    def written_ranges(self) -> list[tuple[int, int]]:
        """[start, end) ranges that may hold data, in order: a memfd's holes were never
        written, so an inventory scan skips them instead of faulting in (and so
        allocating) every page of a fresh segment."""
        if self.fd < 0:
            return [(0, self.size)]
        out, pos = [], 0
        try:
            while pos < self.size:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
                pos = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
                out.append((start, pos))
        except OSError as e:
            if e.errno != errno.ENXIO:     # ENXIO: no data past pos
                return [(0, self.size)]    # no SEEK_DATA here: look everywhere
        return out

    def view(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidParams(f"range [{offset}, +{length}) outside segment of {self.size} bytes")
        return memoryview(self._map)[offset:offset + length]

    def close(self) -> None:
        if self._map is None:
            return
        if self._prefaulter is not None:
            self._stop[0] = 1
            self._prefaulter.join()
        self._cdata = None
        self.ptr = None
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still exported; the mapping goes when the last view does
        self._map = None
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
