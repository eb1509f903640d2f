"""The SSD tier: records in one preallocated file, at 4 KiB-aligned offsets.

Layout of a directory opened as an SSD tier:
    mcs_ssd.data  the preallocated data file (posix_fallocate'd to the capacity)
    mcs_ssd.meta  JSON: format, capacity, block size and the high-water mark
A record is `header + value`, starting at a 4 KiB boundary and padded to one.
The headers are the truth: a restart rebuilds the inventory by scanning them.
The meta file only bounds the scan (nothing was ever written past the
high-water mark), so a restart on a big, mostly empty file stays quick.

Crash safety without a journal:
  * a put writes the value blocks first and the block holding the header last,
    so a record without its header does not exist, and a header names a value
    that was written before it (under sync="always" also across power loss);
  * a remove overwrites the header block with zeros before the space can be
    reused, so a removed object cannot come back at the next restart;
  * a header that fails its CRC, or that claims bytes past the end of the
    file (truncated mid-record), is skipped at open and zeroed, so it stays dead
    even after the file is grown back to its capacity;
  * every read re-verifies the header and the value CRC (computed in the same
    pass as the copy out of the bounce buffer), so a flipped byte is reported
    as ChecksumMismatch and the record is dropped, never served.

I/O is O_DIRECT where the file system takes it (probed at open), through
page-aligned bounce buffers; otherwise buffered, with an fdatasync policy.
"""
from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from .._engine import ffi, lib
from ..codec import MAGIC, MAX_KEY_LEN, Header, decode_header, header_size
from ..config import parse_size
from ..errors import ChecksumMismatch, InvalidParams, NoSpace, ObjectNotFound, StoreClosed, \
    Unavailable
from ..master.allocator import Allocator
from .tier import PartCursor, TierBackend, dst_region, finish_header, key_bytes, make_record

BLOCK = 4096
DATA_NAME = "mcs_ssd.data"
META_NAME = "mcs_ssd.meta"
FORMAT = 1
MAX_HEAD = (header_size(MAX_KEY_LEN) + BLOCK - 1) // BLOCK * BLOCK  # blocks a header can span
_MAGIC_U32 = int.from_bytes(MAGIC, "little")
SYNC_POLICIES = ("always", "never", "periodic")
SPLIT_MIN = 2 << 20  # O_DIRECT reads this large go out as two concurrent requests


def _round(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class SSDLocation(NamedTuple):
    offset: int   # byte offset of the record (header) in the data file
    length: int   # header_len + value_len


@dataclass
class _Entry:
    offset: int
    header: Header
    readers: int = 0
    removed: bool = False    # gone from the index (a failing concurrent read means "removed")
    freeable: bool = False   # its head is zeroed on disk: the space may go back once unread

    @property
    def length(self) -> int:
        return self.header.header_len + self.header.value_len


class _BouncePool:
    """Page-aligned anonymous buffers (O_DIRECT needs aligned memory), reused."""

    def __init__(self, size: int, keep: int = 4) -> None:
        self.size = size
        self._keep = keep
        self._idle: list[tuple[mmap.mmap, Any]] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[mmap.mmap, Any]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        m = mmap.mmap(-1, self.size)
        return m, ffi.from_buffer("char[]", m, require_writable=True)

    def give(self, buf: tuple[mmap.mmap, Any]) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(buf)
                return
        self._drop(buf)

    @staticmethod
    def _drop(buf: tuple[mmap.mmap, Any]) -> None:
        m, cdata = buf
        ffi.release(cdata)
        m.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for b in idle:
            self._drop(b)


class SSDTier(TierBackend):
    name = "ssd"

    def __init__(self, path: str, capacity: int | str, *, direct: bool | None = None,
                 sync: str = "never", sync_interval_s: float = 1.0, chunk: int | str = 16 << 20,
                 verify_on_open: bool = False, drop_corrupt: bool = True) -> None:
        """Open (creating if needed) the SSD tier in directory `path`.

        capacity: bytes of the data file ("64GB" works); a reopen may grow it, never shrink it.
        direct: True = require O_DIRECT, False = buffered, None = O_DIRECT when supported.
        sync: "always" (fdatasync before put/remove return), "never", or "periodic"
              (at most one fdatasync per sync_interval_s, issued by a put).
        verify_on_open: also check every value CRC during the restart scan (reads it all).
        drop_corrupt: a record whose value fails its CRC on read is removed.
        """
        if sync not in SYNC_POLICIES:
            raise InvalidParams(f"sync must be one of {SYNC_POLICIES}, got {sync!r}")
        cap = parse_size(capacity, "capacity") // BLOCK * BLOCK
        if cap < BLOCK:
            raise InvalidParams(f"SSD capacity must be at least {BLOCK} bytes, got {capacity!r}")
        chunk_b = _round(max(parse_size(chunk, "chunk"), 2 * MAX_HEAD))
        self.path = os.path.abspath(path)
        self.sync = sync
        self.sync_interval_s = float(sync_interval_s)
        self.drop_corrupt = drop_corrupt
        self._lock = threading.Lock()
        self._index: dict[bytes, _Entry] = {}
        self._pool = _BouncePool(chunk_b)
        self._zero = None
        self._io_pool: ThreadPoolExecutor | None = None
        self.split_reads = True
        self._fd = -1
        self._closed = False
        self._last_sync = time.monotonic()
        self._stats = dict(puts=0, gets=0, removes=0, bytes_written=0, bytes_read=0,
                           checksum_errors=0, dropped_corrupt=0, recovered=0,
                           skipped_at_open=0, syncs=0)
        try:
            self._open(cap, direct, verify_on_open)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_spec(cls, spec: str, **kw) -> "SSDTier":
        """`PATH:SIZE` as given to a node's --ssd option."""
        path, sep, size = spec.rpartition(":")
        if not sep or not path:
            raise InvalidParams(f"--ssd expects PATH:SIZE, got {spec!r}")
        return cls(path, size, **kw)

    # ---- open / restart ---------------------------------------------------------------
    def _open(self, cap: int, direct: bool | None, verify: bool) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            data = os.path.join(self.path, DATA_NAME)
            self._fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise InvalidParams(f"cannot open SSD tier at {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Unavailable(f"SSD tier {self.path} is in use by another process") from None
        meta = self._read_meta()
        old_cap = meta.get("capacity", 0)
        if cap < old_cap:
            raise InvalidParams(f"SSD tier {self.path} holds {old_cap} bytes; cannot reopen it "
                                f"with a smaller capacity {cap}")
        self.direct = self._setup_direct(data, direct)
        self.split_reads = self.direct
        file_size = os.fstat(self._fd).st_size
        # Nothing was written past the high-water mark (older meta -> scan the whole file).
        limit = min(file_size, meta.get("hwm", file_size))
        self._capacity = cap
        self._hwm = limit
        self._step = max(64 << 20, cap // 64) // BLOCK * BLOCK
        self._zero = self._pool.take()
        ffi.memmove(self._zero[1], b"\0" * BLOCK, BLOCK)
        entries, bad = self._scan_file(limit, min(file_size, cap))
        if file_size < cap:
            self._grow(cap)
        for off in bad:  # torn/corrupt heads: zero them so growth never revives one
            self._zap(off)
        if verify:
            for kb, e in list(entries.items()):
                if not self._value_ok(e):
                    self._zap(e.offset)
                    del entries[kb]
                    self._stats["skipped_at_open"] += 1
        self._index = entries
        self._alloc = self._rebuild_allocator(entries.values())
        self._stats["recovered"] = len(entries)
        self._write_meta()
        if bad:
            self._sync()

    def _setup_direct(self, data: str, want: bool | None) -> bool:
        if want is False:
            return False
        # Switch the locked fd itself (a second open would be a second flock owner).
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            # Some file systems accept the flag and fail the first I/O: probe one block.
            if os.fstat(self._fd).st_size < BLOCK:
                os.posix_fallocate(self._fd, 0, BLOCK)
            buf = self._pool.take()
            try:
                with memoryview(buf[0]) as mv:
                    os.preadv(self._fd, [mv[:BLOCK]], 0)
            finally:
                self._pool.give(buf)
        except (OSError, AttributeError) as e:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)
            if want:
                raise InvalidParams(f"O_DIRECT I/O not supported for {data}: {e}") from None
            return False
        return True

    def _grow(self, cap: int) -> None:
        try:
            os.posix_fallocate(self._fd, 0, cap)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no room for a {cap}-byte SSD file in {self.path}") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(self._fd, cap)  # no fallocate here: a sparse file still works

    def _scan_file(self, limit: int, end: int) -> tuple[dict[bytes, _Entry], list[int]]:
        """Find every valid record head below `limit`; `end` = bytes the file really has."""
        entries: dict[bytes, _Entry] = {}
        bad: list[int] = []
        skip = 0
        pos = 0
        buf = self._pool.take()
        try:
            mv = memoryview(buf[0])
            while pos < limit:
                n = min(self._pool.size, _round(limit - pos))
                got = os.preadv(self._fd, [mv[:n]], pos)
                if got <= 0:
                    break
                # Records start on block boundaries: look at the first word of each block.
                words = np.frombuffer(buf[0], dtype="<u4", count=got // 4)[::BLOCK // 4]
                hits = np.flatnonzero(words == _MAGIC_U32).tolist()
                del words
                for i in hits:
                    off = pos + i * BLOCK
                    if off < skip:
                        continue
                    hdr = self._head_at(mv, i * BLOCK, got, off, end)
                    if hdr is None:
                        bad.append(off)
                        continue
                    self._admit(entries, bad, _Entry(off, hdr))
                    skip = off + _round(hdr.header_len + hdr.value_len)
                pos = max(pos + got // BLOCK * BLOCK, skip) if got >= BLOCK else limit
            mv.release()
        finally:
            self._pool.give(buf)
        self._stats["skipped_at_open"] += len(bad)
        return entries, bad

    def _head_at(self, mv: memoryview, at: int, got: int, off: int, end: int) -> Header | None:
        try:
            if at + MAX_HEAD <= got:
                hdr = decode_header(mv[at:at + MAX_HEAD])
            else:  # head straddles the chunk end: read it on its own
                hdr = decode_header(self._pread(off, MAX_HEAD))
        except ChecksumMismatch:
            return None
        if off + hdr.header_len + hdr.value_len > min(end, self._capacity) or hdr.value_len <= 0:
            return None  # truncated mid-record, or claims more than the tier holds
        return hdr

    def _admit(self, entries: dict[bytes, _Entry], bad: list[int], e: _Entry) -> None:
        # Remove-before-write means two records for one key cannot exist;
        # if they do anyway, keep the newer epoch (the first found on a tie).
        old = entries.get(e.header.key)
        if old is None or e.header.epoch > old.header.epoch:
            entries[e.header.key] = e
            if old is not None:
                bad.append(old.offset)
        else:
            bad.append(e.offset)

    def _rebuild_allocator(self, entries) -> Allocator:
        alloc = Allocator(self._capacity, BLOCK)
        spans = sorted((e.offset, _round(e.length)) for e in entries)
        if not spans:
            return alloc
        alloc.alloc(self._capacity)  # everything used, then free the gaps: O(records)
        cur = 0
        for off, ln in spans:
            if off > cur:
                alloc.free(cur, off - cur)
            cur = off + ln
        if cur < self._capacity:
            alloc.free(cur, self._capacity - cur)
        return alloc

    def _value_ok(self, e: _Entry) -> bool:
        try:
            self._read_entry(e, None)
            return True
        except ChecksumMismatch:
            return False

    # ---- meta ---------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        p = os.path.join(self.path, META_NAME)
        try:
            with open(p) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable meta: fall back to scanning the whole file
        if meta.get("format") != FORMAT or meta.get("block") != BLOCK:
            raise InvalidParams(f"{p}: unsupported SSD tier format {meta!r:.200}")
        return meta

    def _write_meta(self) -> None:
        p = os.path.join(self.path, META_NAME)
        tmp = p + ".tmp"
        body = json.dumps({"format": FORMAT, "block": BLOCK, "capacity": self._capacity,
                           "hwm": self._hwm})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
        dfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ---- raw I/O --------------------------------------------------------------------------
    def _pread(self, off: int, n: int) -> bytes:
        buf = self._pool.take()
        try:
            with memoryview(buf[0]) as mv:
                got = os.preadv(self._fd, [mv[:_round(n)]], off)
                return bytes(mv[:min(got, n)])
        finally:
            self._pool.give(buf)

    def _pwrite_all(self, mv: memoryview, off: int) -> None:
        done = 0
        while done < len(mv):
            done += os.pwritev(self._fd, [mv[done:]], off + done)

    def _pread_all(self, mv: memoryview, off: int) -> int:
        done = 0
        while done < len(mv):
            got = os.preadv(self._fd, [mv[done:]], off + done)
            if got <= 0:
                break
            done += got
        return done

    def _zap(self, off: int) -> None:
        """Zero the block at `off` (it holds the magic): that record no longer exists.
        One block only: the next block may already belong to another record."""
        with memoryview(self._zero[0]) as mv:
            self._pwrite_all(mv[:BLOCK], off)

    def _sync(self) -> None:
        os.fdatasync(self._fd)
        self._last_sync = time.monotonic()
        self._stats["syncs"] += 1

    def _after_write(self) -> None:
        if self.sync == "always":
            self._sync()
        elif self.sync == "periodic" and time.monotonic() - self._last_sync >= self.sync_interval_s:
            self._sync()

    # ---- put --------------------------------------------------------------------------------
    def put(self, key: bytes | str, value: Any, *, header: bytes | None = None, codec: int = 0,
            raw_len: int | None = None, flags: int = 0, epoch: int = 0) -> SSDLocation:
        self._check_open()
        spec = make_record(key, value, header, codec=codec, raw_len=raw_len, flags=flags,
                           epoch=epoch)
        h = spec.parsed
        length = h.header_len + h.value_len
        kb = spec.key
        try:
            off = self._allocate(length, kb)
        except NoSpace:
            if not self.remove(kb):  # a replace may reuse the old record's space
                raise
            off = self._allocate(length, kb)

        def retire_old() -> None:
            # Replacing: the old record dies after the new value is on disk and verified,
            # and before the new header lands, so a crash never leaves two records for
            # one key, and a put that fails keeps the old value.
            with self._lock:
                old = self._index.pop(kb, None)
            if old is not None:
                self._retire(kb, old)

        try:
            h = decode_header(self._write_record(off, spec, retire_old))
        except BaseException:
            with self._lock:
                self._alloc.free(off, length)
            raise
        with self._lock:
            prev = self._index.get(spec.key)
            self._index[spec.key] = _Entry(off, h)
            self._stats["puts"] += 1
            self._stats["bytes_written"] += length
        if prev is not None:  # a concurrent put of the same key landed first; ours wins
            self._retire(spec.key, prev)
        return SSDLocation(off, length)

    def _allocate(self, length: int, kb: bytes) -> int:
        with self._lock:
            off = self._alloc.alloc(length)
            if off is None:
                raise NoSpace(f"SSD tier full: no {length}-byte extent free for {kb!r:.60} "
                              f"({self._alloc.free_bytes} bytes free in fragments)")
            end = off + _round(length)
            if end > self._hwm:
                self._hwm = min(self._capacity, (end + self._step - 1) // self._step * self._step)
                try:
                    self._write_meta()  # before the record lands past the old mark
                except OSError:
                    self._alloc.free(off, length)
                    raise
            return off

    def _write_record(self, off: int, spec, before_head: Callable[[], None]) -> bytes:
        """Value blocks first, then the head block(s): a visible header implies its value.
        before_head runs once the value is written and its CRC checked."""
        h = spec.parsed
        hlen, vlen = h.header_len, h.value_len
        total = _round(hlen + vlen)
        head = min(total, _round(hlen))
        cursor = PartCursor(spec.parts)
        bufsz = self._pool.size
        if total <= bufsz:
            return self._write_small(off, spec, cursor, total, head, before_head)
        hb = self._pool.take()
        db = self._pool.take()
        try:
            crc = cursor.copy_into(hb[1] + hlen, head - hlen, 0)
            pos = head  # file-relative position within the record
            with memoryview(db[0]) as dmv:
                while pos < total:
                    n = min(bufsz, total - pos)
                    val = min(n, hlen + vlen - pos)  # value bytes in this chunk
                    crc = cursor.copy_into(db[1], val, crc)
                    if val < n:
                        ffi.memmove(db[1] + val, b"\0" * (n - val), n - val)
                    self._pwrite_all(dmv[:n], off + pos)
                    pos += n
            hdr = finish_header(spec, crc)
            if self.sync == "always":
                self._sync()
            before_head()
            ffi.memmove(hb[1], hdr, hlen)
            with memoryview(hb[0]) as hmv:
                self._pwrite_all(hmv[:head], off)
            self._after_write()
            return hdr
        finally:
            self._pool.give(db)
            self._pool.give(hb)

    def _write_small(self, off: int, spec, cursor: PartCursor, total: int, head: int,
                     before_head: Callable[[], None]) -> bytes:
        h = spec.parsed
        hlen, vlen = h.header_len, h.value_len
        b = self._pool.take()
        try:
            crc = cursor.copy_into(b[1] + hlen, vlen, 0)
            pad = total - hlen - vlen
            if pad:
                ffi.memmove(b[1] + hlen + vlen, b"\0" * pad, pad)
            hdr = finish_header(spec, crc)
            ffi.memmove(b[1], hdr, hlen)
            with memoryview(b[0]) as mv:
                if total > head:
                    self._pwrite_all(mv[head:total], off + head)
                    if self.sync == "always":
                        self._sync()
                before_head()
                self._pwrite_all(mv[:head], off)
            self._after_write()
            return hdr
        finally:
            self._pool.give(b)

    # ---- get ---------------------------------------------------------------------------------
    def get_into(self, key: bytes | str, dst: Any, size: int | None = None) -> int:
        kb = key_bytes(key)
        e = self._pin(kb)
        try:
            r = dst_region(dst, size)
            if r.size < e.header.value_len:
                raise InvalidParams(f"buffer of {r.size} bytes is smaller than the "
                                    f"{e.header.value_len}-byte value of {kb!r:.60}")
            return self._read_checked(kb, e, r.ptr)
        finally:
            self._unpin(kb, e)

    def read(self, key: bytes | str) -> bytes:
        return self.read_record(key)[1]

    def read_record(self, key: bytes | str) -> tuple[Header, bytes]:
        kb = key_bytes(key)
        e = self._pin(kb)
        try:
            out = bytearray(e.header.value_len)
            self._read_checked(kb, e, ffi.from_buffer("char[]", out, require_writable=True))
            return e.header, bytes(out)
        finally:
            self._unpin(kb, e)

    def header(self, key: bytes | str) -> Header:
        kb = key_bytes(key)
        with self._lock:
            e = self._index.get(kb)
            if e is None:
                raise ObjectNotFound(f"{kb!r:.80} is not on the SSD tier")
            return e.header

    def location(self, key: bytes | str) -> SSDLocation:
        kb = key_bytes(key)
        with self._lock:
            e = self._index.get(kb)
            if e is None:
                raise ObjectNotFound(f"{kb!r:.80} is not on the SSD tier")
            return SSDLocation(e.offset, e.length)

    def _read_checked(self, kb: bytes, e: _Entry, dst: Any) -> int:
        try:
            n = self._read_entry(e, dst)
        except ChecksumMismatch:
            if e.removed:  # the header was zeroed under us by a concurrent remove
                raise ObjectNotFound(f"{kb!r:.80} was removed during the read") from None
            with self._lock:
                self._stats["checksum_errors"] += 1
            if self.drop_corrupt:
                self._drop(kb, e)
            raise
        with self._lock:
            self._stats["gets"] += 1
            self._stats["bytes_read"] += e.length
        return n

    def _read_entry(self, e: _Entry, dst: Any) -> int:
        """Read and verify one record; copy the value to cdata `dst` (None = verify only)."""
        want = e.header
        if not self.direct and dst is not None:
            return self._read_buffered_into(e, dst)
        total = _round(want.header_len + want.value_len)
        b = self._pool.take()
        tail = None
        try:
            with memoryview(b[0]) as mv:
                n = min(total, self._pool.size)
                half = n // 2 // BLOCK * BLOCK
                if self.split_reads and half >= SPLIT_MIN // 2:
                    # Two requests in flight, and the first half is copied out while
                    # the second is still on its way.
                    tail = self._io().submit(self._pread_all, mv[half:n], e.offset + half)
                    got = self._pread_all(mv[:half], e.offset)
                else:
                    got = self._pread_all(mv[:n], e.offset)
                hdr = decode_header(mv[:min(got, MAX_HEAD)], limit=total)
                if hdr != want:
                    raise ChecksumMismatch(f"SSD record at {e.offset} is not the one indexed")
                hlen, vlen = hdr.header_len, hdr.value_len
                crc, done, pos = 0, 0, hlen
                while True:
                    take = min(vlen - done, got - pos)
                    if take <= 0:
                        raise ChecksumMismatch(f"SSD record at {e.offset} is truncated")
                    if dst is None:
                        crc = lib.mcs_crc32c(crc, b[1] + pos, take)
                    else:
                        crc = lib.mcs_copy_crc32c(dst + done, b[1] + pos, take, crc)
                    done += take
                    if done == vlen:
                        break
                    if tail is not None:
                        more, tail = tail.result(), None
                        if got == half:  # the tail continues the same buffer
                            got += more
                            pos = hlen + done
                            continue
                    rel = hlen + done  # next unread byte, relative to the record
                    start = rel // BLOCK * BLOCK  # O_DIRECT: read from an aligned offset
                    n = min(self._pool.size, total - start)
                    got = self._pread_all(mv[:n], e.offset + start)
                    pos = rel - start
            if crc != hdr.value_crc:
                raise ChecksumMismatch(f"value checksum mismatch in SSD record at {e.offset}")
            return vlen
        finally:
            if tail is not None:  # never hand the buffer back while a read fills it
                try:
                    tail.result()
                except OSError:
                    pass
            self._pool.give(b)

    def _read_buffered_into(self, e: _Entry, dst: Any) -> int:
        """Buffered I/O has no alignment rules: the kernel copies the value straight into
        dst (one copy, not two), then the CRC is taken over dst."""
        want = e.header
        hlen, vlen = want.header_len, want.value_len
        head = bytearray(hlen)
        val = ffi.buffer(dst, vlen)
        got = os.preadv(self._fd, [head, val], e.offset)
        with memoryview(val) as vmv:
            while hlen <= got < hlen + vlen:
                more = os.preadv(self._fd, [vmv[got - hlen:]], e.offset + got)
                if more <= 0:
                    break
                got += more
        if got < hlen + vlen:
            raise ChecksumMismatch(f"SSD record at {e.offset} is truncated")
        if decode_header(head, limit=_round(hlen + vlen)) != want:
            raise ChecksumMismatch(f"SSD record at {e.offset} is not the one indexed")
        if lib.mcs_crc32c(0, dst, vlen) != want.value_crc:
            raise ChecksumMismatch(f"value checksum mismatch in SSD record at {e.offset}")
        return vlen

    def _io(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._io_pool is None:
                self._io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssd-io")
            return self._io_pool

    # ---- pins and removal --------------------------------------------------------------------
    def _pin(self, kb: bytes) -> _Entry:
        self._check_open()
        with self._lock:
            e = self._index.get(kb)
            if e is None:
                raise ObjectNotFound(f"{kb!r:.80} is not on the SSD tier")
            e.readers += 1
            return e

    def _unpin(self, kb: bytes, e: _Entry) -> None:
        with self._lock:
            e.readers -= 1
            if e.freeable and e.readers == 0:
                self._alloc.free(e.offset, e.length)

    def remove(self, key: bytes | str) -> bool:
        kb = key_bytes(key)
        self._check_open()
        with self._lock:
            e = self._index.pop(kb, None)
            if e is None:
                return False
            self._stats["removes"] += 1
        self._retire(kb, e)
        return True

    def _retire(self, kb: bytes, e: _Entry) -> None:
        """Zero the head on disk, then free the space (after the last reader).
        If the zeroing fails the space stays allocated: reusing it could leave the old
        header valid on disk and bring the object back at the next restart."""
        with self._lock:
            e.removed = True
        zapped = False
        try:
            self._zap(e.offset)
            zapped = True
            if self.sync == "always":
                self._sync()
        finally:
            with self._lock:
                if not zapped:
                    self._stats["leaked_on_error"] = self._stats.get("leaked_on_error", 0) + 1
                else:
                    e.freeable = True
                    if e.readers == 0:
                        self._alloc.free(e.offset, e.length)

    def _drop(self, kb: bytes, e: _Entry) -> None:
        with self._lock:
            if self._index.get(kb) is not e:
                return
            del self._index[kb]
            self._stats["dropped_corrupt"] += 1
        self._retire(kb, e)

    def contains(self, key: bytes | str) -> bool:
        kb = key_bytes(key)
        with self._lock:
            return kb in self._index

    def keys(self) -> list[bytes]:
        with self._lock:
            return list(self._index)

    def scan(self) -> Iterator[tuple[bytes, Header, SSDLocation]]:
        with self._lock:
            snap = [(k, e.header, SSDLocation(e.offset, e.length)) for k, e in self._index.items()]
        return iter(snap)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # ---- accounting / lifecycle ------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def used(self) -> int:
        with self._lock:
            return self._alloc.used

    def stats(self) -> dict:
        with self._lock:
            st = dict(self._stats)
            st.update(tier=self.name, path=self.path, capacity=self._capacity,
                      used=self._alloc.used, objects=len(self._index), direct=self.direct,
                      sync=self.sync, largest_free=self._alloc.largest_free())
        return st

    def flush(self) -> None:
        """fdatasync the data file now (whatever the policy)."""
        self._check_open()
        self._sync()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("SSD tier is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd >= 0:
            try:
                if self.sync != "never":
                    os.fdatasync(self._fd)
            except OSError:
                pass
            os.close(self._fd)  # also drops the flock
            self._fd = -1
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=True)
        if self._zero is not None:
            self._pool.give(self._zero)
            self._zero = None
        self._pool.close()
