"""`Store`: the Pythonic client. Raises typed exceptions; batch calls return per-key codes.

Control goes to the master (an in-process ObjectIndex in embedded mode); bytes go
straight between the caller's memory and the segment through the C record
functions, which verify the header and checksum in the same pass as the copy.
"""
from __future__ import annotations

import ctypes
import os
from bisect import bisect_right
import threading
import time
from typing import Any, Sequence

from .._engine import ffi, lib
from ..codec import FLAG_TENSOR
from ..config import Config
from ..errors import (
    ChecksumMismatch,
    ErrorCode,
    InvalidParams,
    NoSpace,
    StoreClosed,
    StoreError,
    TransferFailed,
)
from ..master.index import Lookup, ObjectIndex
from ..node.segment import DramSegment
from ..replica import Replica, ReplicateConfig
from . import tensors
from .buffers import Region, region
from .malloc_tune import tune_once

# Replicas of a value at least this large on several nodes are written at once; below it
# ClusterData would run them one after another anyway (the record-write threshold).
OVERLAP_WRITES_MIN = 64 << 10

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


class BufferHandle(bytearray):
    """A value read into memory the caller owns; buffer protocol plus Mooncake's ptr()/size()."""

    def ptr(self) -> int:
        return int(ffi.cast("uintptr_t", ffi.from_buffer(self)))

    def size(self) -> int:
        return len(self)


def _code(exc: BaseException) -> int:
    return int(exc.code) if isinstance(exc, StoreError) else int(ErrorCode.INTERNAL_ERROR)


class Store:
    """A KV-cache store client. `Store()` runs embedded: master and one DRAM segment here."""

    def __init__(self, config: Config | dict | None = None, **kwargs: Any) -> None:
        if isinstance(config, Config):
            cfg = config.replace(**kwargs) if kwargs else config
        else:
            cfg = Config.load(values=config, **kwargs)
        self.config = cfg
        if cfg.tune_malloc:
            tune_once()
        self._segments: dict[str, DramSegment] = {}
        self._remote = None      # cluster mode: the data plane to other nodes' segments
        self._cluster = None
        if not cfg.embedded:
            self._init_cluster(cfg)
            return
        self._index = ObjectIndex(cfg)
        self._registered: dict[int, int] = {}
        self._epoch = time.time_ns() & 0x7FFF_FFFF_FFFF_FFFF
        self._next_reclaim = 0.0
        self._closed = False
        self._close_lock = threading.Lock()
        # The local segment is named like a transfer peer ("host:port"); embedded stores
        # have no port, so the process id stands in and keeps names unique per host.
        self.hostname = f"{cfg.local_hostname.split(':')[0]}:{os.getpid()}"
        if cfg.global_segment_size > 0:
            self.mount_segment(self.hostname, cfg.global_segment_size)
        self._tiers = self._open_cold_tiers(cfg)

    def _init_cluster(self, cfg: Config) -> None:
        """Cluster mode: index calls go to the master, bytes to the nodes (client/cluster.py)."""
        from .cluster import ClusterSession
        from .put_batch import put_reserved, reserved_put_size
        from .cold_read import ColdReader

        # Small puts go through reservations: their write plus one round trip.
        self._reserved = (reserved_put_size, put_reserved)

        self._registered = {}
        self._epoch = time.time_ns() & 0x7FFF_FFFF_FFFF_FFFF
        self._next_reclaim = float("inf")
        self._closed = False
        self._close_lock = threading.Lock()
        self._tiers = None
        self._cluster = ClusterSession(cfg)
        self._index, self._remote = self._cluster.index, self._cluster.data
        # Cold lookups (a node's SSD/S3) and put backpressure, in the TierManager's place.
        self._tiers = ColdReader(self._cluster, cfg.rpc_timeout_ms, cfg.auth_token)
        self.hostname = self._cluster.hostname
        try:
            if cfg.global_segment_size > 0:
                self._segments[self.hostname] = DramSegment(cfg.global_segment_size, self.hostname)
                self._cluster.contribute(self._segments, cfg)
            else:
                self._cluster.master.call("ping")   # fail at construction, not at first put
        except BaseException:
            self.close()
            raise

    def _open_cold_tiers(self, cfg: Config) -> Any:
        backends = []
        if cfg.enable_ssd_offload:
            from ..node.ssd import SSDTier

            backends.append(("ssd", SSDTier(cfg.ssd_offload_path,
                                            cfg.ssd_capacity or 4 * cfg.global_segment_size)))
        if cfg.s3_bucket:
            from ..node.s3 import S3Tier

            backends.append(("s3", S3Tier.from_config(cfg)))
        if not backends:
            return None
        from ..node.tiering import TierManager

        return TierManager(self._index, self._segments, backends, cfg)

    # ---- lifecycle ------------------------------------------------------------------------
    def mount_segment(self, name: str, size: int) -> None:
        seg = DramSegment(size, name)
        seg.prefault()
        self._segments[name] = seg
        self._index.add_segment(name, seg.size)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._tiers is not None:
                self._tiers.close()
            if self._cluster is not None:
                self._cluster.close()
            for seg in self._segments.values():
                seg.close()
            self._segments.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("store is closed")

    # ---- keys -------------------------------------------------------------------------------
    def _key(self, key: Any) -> tuple[str, bytes]:
        if isinstance(key, str):
            kb = key.encode("utf-8", "surrogatepass")
        elif isinstance(key, (bytes, bytearray)):
            kb = bytes(key)
            try:
                key = kb.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParams("key bytes must be valid UTF-8") from None
        else:
            raise InvalidParams(f"key must be str or bytes, got {type(key).__name__}")
        if not kb:
            raise InvalidParams("key must not be empty")
        if len(kb) > self.config.max_key_len:
            raise InvalidParams(f"key of {len(kb)} bytes exceeds max_key_len "
                                f"({self.config.max_key_len})")
        return key, kb

    def _keys(self, keys: Sequence[Any]) -> list[tuple[str, bytes]]:
        if isinstance(keys, (str, bytes)) or not hasattr(keys, "__len__"):
            raise InvalidParams("keys must be a list of keys")
        if len(keys) > self.config.max_batch_size:
            raise InvalidParams(f"batch of {len(keys)} keys exceeds max_batch_size "
                                f"({self.config.max_batch_size})")
        return [self._key(k) for k in keys]

    # ---- data path -----------------------------------------------------------------------------
    def _write_replicas(self, kb: bytes, replicas: list[Replica], src: Any, n: int,
                        flags: int) -> None:
        if len(replicas[0]) > 1:   # striped over several nodes (cluster mode only)
            self._remote.write_striped(kb, replicas, src, n, self._epoch, flags)
            return
        remote = [r[0] for r in replicas if r[0].segment not in self._segments]
        if len(remote) > 1 and n >= OVERLAP_WRITES_MIN:
            # Several nodes at once: the engine overlaps them (ClusterData._write_records).
            self._remote.write_replicas(kb, remote, src, n, self._epoch, flags)
            replicas = [r for r in replicas if r[0].segment in self._segments]
        for replica in replicas:
            sl = replica[0]
            seg = self._segments.get(sl.segment)
            if seg is None:
                self._remote.write(sl, kb, src, n, self._epoch, flags)
                continue
            rc = lib.mcs_rec_write(seg.ptr + sl.offset, sl.length, kb, len(kb), src, n,
                                   self._epoch, 0, flags, 0)
            if rc < 0:
                raise StoreError(f"record write failed ({rc})", ErrorCode.INVALID_WRITE)

    def _read_replicas(self, key: str, kb: bytes, look: Lookup, dst: Any, dst_len: int) -> int:
        if look.tier != "dram":
            if dst_len < look.size:
                raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the "
                                    f"{look.size}-byte value")
            return self._tiers.read_into(look.tier, key, kb, dst, dst_len, look.size)
        if look.replicas and len(look.replicas[0]) > 1:   # striped (cluster mode only)
            return self._read_striped(key, look, dst, dst_len)
        unreachable = 0
        for replica in look.replicas:
            sl = replica[0]
            seg = self._segments.get(sl.segment)
            if seg is not None:
                n = lib.mcs_rec_read(seg.ptr + sl.offset, sl.length, kb, len(kb), dst, dst_len,
                                     ffi.NULL)
            elif self._remote is not None:
                n = self._remote.read(sl, kb, dst, dst_len)
            else:
                continue
            if n >= 0:
                return n
            if n == ErrorCode.INVALID_PARAMS:
                raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the "
                                    f"{look.size}-byte value")
            unreachable += n == ErrorCode.TRANSFER_FAIL
        if unreachable:   # an unreachable replica may be intact: do not drop the object
            raise TransferFailed(f"key {key!r}: no replica could be reached")
        # Every replica failed verification: never serve it again.
        drop = getattr(self._index, "drop_if_current", None)
        if drop is not None:
            drop(key, look.replicas)
        else:   # a remote master: drop by key
            self._index.remove_many([key], force=True)
        raise ChecksumMismatch(f"key {key!r}: stored bytes failed verification; object dropped")

    def _read_striped(self, key: str, look: Lookup, dst: Any, dst_len: int) -> int:
        n = self._remote.read_striped(key, look, dst, dst_len)
        if n >= 0:
            return n
        if n == ErrorCode.INVALID_PARAMS:
            raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the "
                                f"{look.size}-byte value")
        if n == ErrorCode.TRANSFER_FAIL:
            raise TransferFailed(f"key {key!r}: no replica could be reached")
        self._index.remove_many([key], force=True)
        raise ChecksumMismatch(f"key {key!r}: stored bytes failed verification; object dropped")

    def _put(self, key: Any, src: Region, config: ReplicateConfig | None, upsert: bool,
             flags: int = 0) -> None:
        self._check_open()
        key, kb = self._key(key)
        if src.size == 0:
            raise InvalidParams("value must not be empty")
        record = 0
        if self._remote is not None:
            size_of, put_reserved = self._reserved
            record = size_of(config, src.size, kb)
            if record and put_reserved(self, key, kb, src, record, upsert, flags):
                return
        self._maybe_reclaim()
        try:
            replicas = self._index.put_start(key, src.size, config, upsert=upsert)
        except NoSpace:
            if self._tiers is None:
                raise
            for attempt in range(3):   # demotions (on a cluster: node tasks) free room over time
                self._tiers.demote_now(src.size + len(kb) + 64)
                try:
                    replicas = self._index.put_start(key, src.size, config, upsert=upsert)
                    break
                except NoSpace:
                    if attempt == 2:
                        raise
        if replicas is None:
            return  # immutable: the first value stays
        try:
            self._write_replicas(kb, replicas, src.ptr, src.size, flags)
        except BaseException:
            self._index.put_revoke(key)
            raise
        if record:
            self._index.put_end(key, flags, record)   # and a reservation for the next put
        else:
            self._index.put_end(key, flags)
        if self._tiers is not None:
            if config is not None and config.persist:
                self._persist(key, replicas[0])
            self._tiers.kick()

    def _persist(self, key: str, replica: Replica) -> None:
        """Write-through: the put returns once the slowest (most durable) tier has the
        record; if it cannot, the object is withdrawn and the put fails."""
        try:
            self._tiers.persist(key, replica)
        except StoreError:
            self._index.remove_many([key], force=True)
            raise

    def _maybe_reclaim(self) -> None:
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + 1.0
            self._index.reclaim_expired()

    # ---- copying API ------------------------------------------------------------------------------
    def put(self, key: Any, value: Any, config: ReplicateConfig | None = None) -> None:
        self._put(key, region(value), config, upsert=False)

    def upsert(self, key: Any, value: Any, config: ReplicateConfig | None = None) -> None:
        self._put(key, region(value), config, upsert=True)

    def put_parts(self, key: Any, *parts: Any, config: ReplicateConfig | None = None) -> None:
        self.put(key, b"".join(bytes(memoryview(p)) for p in parts), config)

    def upsert_parts(self, key: Any, *parts: Any, config: ReplicateConfig | None = None) -> None:
        self.upsert(key, b"".join(bytes(memoryview(p)) for p in parts), config)

    def get(self, key: Any) -> bytes:
        self._check_open()
        key, kb = self._key(key)
        look = self._index.get_replicas(key)
        out = _new_bytes(None, look.size)
        self._read_replicas(key, kb, look, ffi.from_buffer(out), look.size)
        return out

    def get_buffer(self, key: Any) -> BufferHandle:
        self._check_open()
        key, kb = self._key(key)
        look = self._index.get_replicas(key)
        out = BufferHandle(look.size)
        self._read_replicas(key, kb, look, ffi.from_buffer(out), look.size)
        return out

    def exists(self, key: Any) -> bool:
        self._check_open()
        return self._index.exists(self._key(key)[0])

    def size(self, key: Any) -> int:
        self._check_open()
        return self._index.size(self._key(key)[0])

    def why(self, key: Any) -> dict:
        """Whether `key` is stored and, if not, why not: {"present": False, "reason":
        "evicted" | "removed" | "lost" | "abandoned" | "corrupt" | "writing" | "unknown",
        "detail", "seconds_ago": [least, most]} for a key that left recently (the index
        remembers the last 1,048,576 departures), or "unknown" with "similar": stored
        keys that look like it (a key built another way). {"present": True, "tier",
        "size"} otherwise."""
        self._check_open()
        return self._index.why(self._key(key)[0])

    def remove(self, key: Any, force: bool = False) -> None:
        self._check_open()
        self._index.remove(self._key(key)[0], force=force)

    def remove_all(self, force: bool = False) -> int:
        self._check_open()
        return self._index.remove_all(force)

    def remove_by_regex(self, pattern: str, force: bool = False) -> int:
        self._check_open()
        if not isinstance(pattern, str):
            raise InvalidParams("pattern must be a str")
        return self._index.remove_by_regex(pattern, force)

    def keys(self, pattern: str | None = None) -> list[str]:
        self._check_open()
        return self._index.keys(pattern)

    def longest_prefix(self, keys: Sequence[Any]) -> int:
        self._check_open()
        return self._index.longest_prefix([k for k, _ in self._keys(keys)])

    # ---- zero-copy -----------------------------------------------------------------------------------
    def register_buffer(self, buf: Any, size: int | None = None) -> int:
        r = region(buf, size)
        addr = int(ffi.cast("uintptr_t", r.ptr))
        self._registered[addr] = r.size
        self._sort_registered()
        return addr

    def unregister_buffer(self, ptr: int) -> None:
        if self._registered.pop(ptr, None) is None:
            raise InvalidParams(f"address {ptr:#x} is not registered")
        self._sort_registered()

    def _sort_registered(self) -> None:
        """The registered buffers' bases in order, for a bisect per zero-copy call; None when
        two of them overlap (then the first one registered that holds an address rules, as
        the linear scan decides)."""
        bases = sorted(self._registered)
        ends = [b + self._registered[b] for b in bases]
        disjoint = all(ends[i] <= bases[i + 1] for i in range(len(bases) - 1))
        self._reg_sorted = (bases, ends) if disjoint else None

    def _zc_region(self, buf: Any, size: int | None, writable: bool) -> Region:
        r = region(buf, size, writable)
        if isinstance(buf, int):
            self._check_registered(buf, r.size)
        return r

    def _check_registered(self, addr: int, size: int) -> None:
        # A raw address inside a registered buffer must stay inside it.
        if not self._registered:
            return
        sorted_ = getattr(self, "_reg_sorted", None)
        if sorted_ is not None:
            bases, ends = sorted_
            k = bisect_right(bases, addr) - 1
            if k >= 0 and addr < ends[k] and addr + size > ends[k]:
                raise InvalidParams(f"[{addr:#x}, +{size}) runs past its registered buffer")
            return
        for base, length in self._registered.items():
            if base <= addr < base + length:
                if addr + size > base + length:
                    raise InvalidParams(f"[{addr:#x}, +{size}) runs past its registered buffer")
                return

    def put_from(self, key: Any, buf: Any, size: int | None = None,
                 config: ReplicateConfig | None = None) -> None:
        self._put(key, self._zc_region(buf, size, False), config, upsert=False)

    def upsert_from(self, key: Any, buf: Any, size: int | None = None,
                    config: ReplicateConfig | None = None) -> None:
        self._put(key, self._zc_region(buf, size, False), config, upsert=True)

    def get_into(self, key: Any, buf: Any, size: int | None = None) -> int:
        self._check_open()
        key, kb = self._key(key)
        dst = self._zc_region(buf, size, True)
        look = self._index.get_replicas(key)
        if dst.size < look.size:
            raise InvalidParams(f"buffer of {dst.size} bytes is smaller than the "
                                f"{look.size}-byte value of {key!r}")
        return self._read_replicas(key, kb, look, dst.ptr, dst.size)

    # ---- batches --------------------------------------------------------------------------------------
    @staticmethod
    def _same_len(*lists: Sequence[Any]) -> None:
        n = len(lists[0])
        if any(lst is not None and len(lst) != n for lst in lists[1:]):
            raise InvalidParams("batch lists must have the same length")

    def _each(self, fn: Any, *columns: Sequence[Any]) -> list[int]:
        out = []
        for args in zip(*columns):
            try:
                res = fn(*args)
                out.append(res if isinstance(res, int) else 0)
            except StoreError as e:
                out.append(int(e.code))
        return out

    def batch_put(self, keys: Sequence[Any], values: Sequence[Any],
                  config: ReplicateConfig | None = None) -> list[int]:
        self._check_open()
        self._same_len(keys, values)
        if self._cluster is not None:   # one RPC per step instead of two per key
            return self._cluster.batch_put(self, keys, lambda i: region(values[i]), config, False)
        return self._batch_put_local(keys, lambda i: region(values[i]), config, False)

    def batch_upsert(self, keys: Sequence[Any], values: Sequence[Any],
                     config: ReplicateConfig | None = None) -> list[int]:
        self._check_open()
        self._same_len(keys, values)
        if self._cluster is not None:
            return self._cluster.batch_put(self, keys, lambda i: region(values[i]), config, True)
        self._keys(keys)
        return self._each(lambda k, v: self.upsert(k, v, config), keys, values)

    def batch_put_from(self, keys: Sequence[Any], bufs: Sequence[Any],
                       sizes: Sequence[int] | None = None,
                       config: ReplicateConfig | None = None, upsert: bool = False) -> list[int]:
        self._check_open()
        self._same_len(keys, bufs, sizes)
        if self._cluster is not None:
            return self._cluster.batch_put(self, keys, self._pointer_regions(bufs, sizes)
                                           or (lambda i: self._zc_region(
                                               bufs[i], sizes[i] if sizes else None, False)),
                                           config, upsert)
        return self._batch_put_local(
            keys, lambda i: self._zc_region(bufs[i], sizes[i] if sizes else None, False),
            config, upsert)

    def _pointer_regions(self, bufs: Sequence[Any], sizes: Sequence[int] | None) -> Any:
        """make_region for the common zero-copy batch, raw addresses with their sizes, checked
        all at once (bounds against registered buffers included); None: anything else, for
        the per-key path (which reports a bad entry as that key's code)."""
        if not sizes or self._registered and getattr(self, "_reg_sorted", None) is None:
            return None
        ok = all(type(b) is int and b > 0 for b in bufs) and \
            all(type(n) is int and n >= 0 for n in sizes)
        if not ok:
            return None
        if self._registered:
            try:
                for b, n in zip(bufs, sizes):
                    self._check_registered(b, n)
            except InvalidParams:
                return None
        cast = ffi.cast
        return lambda i: Region(cast("char *", bufs[i]), sizes[i])

    def _batch_put_local(self, keys: Sequence[Any], region_of: Any,
                         config: ReplicateConfig | None, upsert: bool) -> list[int]:
        """Embedded batch put: one index call to start, one to end, copies in between."""
        pairs = self._keys(keys)
        codes = [0] * len(keys)
        todo: list[tuple[int, str, bytes, Region]] = []
        for i, (key, kb) in enumerate(pairs):
            try:
                src = region_of(i)
                if src.size == 0:
                    raise InvalidParams("value must not be empty")
                todo.append((i, key, kb, src))
            except StoreError as e:
                codes[i] = int(e.code)
        self._maybe_reclaim()
        starts = self._index.batch_put_start([t[1] for t in todo], [t[3].size for t in todo],
                                             config, upsert)
        done: list[str] = []
        written: list[tuple[int, str, Replica]] = []
        retry: list[tuple[int, str, Region]] = []
        for (i, key, kb, src), got in zip(todo, starts):
            if isinstance(got, NoSpace):
                retry.append((i, key, src))  # room appears once this batch's puts end
                continue
            if isinstance(got, StoreError):
                codes[i] = int(got.code)
                continue
            if got is None:
                continue  # exists: immutable
            try:
                self._write_replicas(kb, got, src.ptr, src.size, 0)
                done.append(key)
                written.append((i, key, got[0]))
            except StoreError as e:
                self._index.put_revoke(key)
                codes[i] = int(e.code)
        self._index.batch_put_end(done)
        if self._tiers is not None and config is not None and config.persist:
            for i, key, replica in written:
                try:
                    self._persist(key, replica)
                except StoreError as e:
                    codes[i] = int(e.code)
        for i, key, src in retry:   # one by one: each may evict (or demote) earlier ones
            codes[i] = self._retry_put(key, src, config, upsert)
        if self._tiers is not None:
            self._tiers.kick()
        return codes

    def _retry_put(self, key: str, src: Region, config: ReplicateConfig | None,
                   upsert: bool) -> int:
        try:
            self._put(key, src, config, upsert)
            return 0
        except StoreError as e:
            return int(e.code)

    def batch_put_gather(self, keys: Sequence[Any], all_bufs: Sequence[Sequence[Any]],
                         all_sizes: Sequence[Sequence[int]] | None = None,
                         config: ReplicateConfig | None = None) -> list[int]:
        """Put each key's value gathered from several buffers (pointers need sizes)."""
        self._check_open()
        self._same_len(keys, all_bufs, all_sizes)
        self._keys(keys)
        all_sizes = all_sizes if all_sizes is not None else [None] * len(keys)

        def one(key: Any, bufs: Sequence[Any], sizes: Sequence[int] | None) -> None:
            sizes = sizes if sizes is not None else [None] * len(bufs)
            if len(sizes) != len(bufs):
                raise InvalidParams("each key needs one size per buffer")
            parts = [self._zc_region(b, n, False) for b, n in zip(bufs, sizes)]
            value = bytearray(sum(p.size for p in parts))
            dst, at = ffi.from_buffer(value), 0
            for p in parts:
                ffi.memmove(dst + at, p.ptr, p.size)
                at += p.size
            self._put(key, region(value), config, upsert=False)

        return self._each(one, keys, all_bufs, all_sizes)

    def batch_get(self, keys: Sequence[Any]) -> list[bytes | None]:
        self._check_open()
        pairs = self._keys(keys)
        looks = self._index.batch_get_replicas([k for k, _ in pairs])
        if self._remote is not None:   # cluster: one transfer batch per node
            return self._remote.batch_get(self, pairs, looks)
        out: list[bytes | None] = []
        for (key, kb), look in zip(pairs, looks):
            if look is None:
                out.append(None)
                continue
            buf = _new_bytes(None, look.size)
            try:
                self._read_replicas(key, kb, look, ffi.from_buffer(buf), look.size)
                out.append(buf)
            except StoreError:
                out.append(None)
        return out

    def batch_get_into(self, keys: Sequence[Any], bufs: Sequence[Any],
                       sizes: Sequence[int] | None = None) -> list[int]:
        self._check_open()
        self._same_len(keys, bufs, sizes)
        pairs = self._keys(keys)
        looks = self._index.batch_get_replicas([k for k, _ in pairs])
        if self._remote is not None:   # cluster: one transfer batch per node
            return self._remote.batch_get_into(self, pairs, looks, bufs, sizes)
        sizes = sizes if sizes is not None else [None] * len(keys)
        out = []
        for (key, kb), look, buf, size in zip(pairs, looks, bufs, sizes):
            if look is None:
                out.append(int(ErrorCode.OBJECT_NOT_FOUND))
                continue
            try:
                dst = self._zc_region(buf, size, True)
                if dst.size < look.size:
                    raise InvalidParams("buffer smaller than the value")
                out.append(self._read_replicas(key, kb, look, dst.ptr, dst.size))
            except StoreError as e:
                out.append(int(e.code))
        return out

    def batch_exists(self, keys: Sequence[Any]) -> list[bool]:
        self._check_open()
        return self._index.batch_exists([k for k, _ in self._keys(keys)])

    def batch_remove(self, keys: Sequence[Any], force: bool = False) -> list[int]:
        """Per key 0 or a negative code (OBJECT_NOT_FOUND, OBJECT_HAS_LEASE); one call to
        the index (in cluster mode one RPC) for the whole list."""
        self._check_open()
        return self._index.remove_each([k for k, _ in self._keys(keys)], force)

    # ---- tensors ----------------------------------------------------------------------------------------
    def put_tensor(self, key: Any, tensor: Any, config: ReplicateConfig | None = None,
                   upsert: bool = False) -> None:
        if not tensors.is_tensor(tensor):
            raise InvalidParams(f"expected a torch.Tensor, got {type(tensor).__name__}")
        meta = tensors.encode_meta(tensor)
        data = tensors.host_bytes_view(tensor)
        value = bytearray(len(meta) + data.numel())
        value[:len(meta)] = meta
        if data.numel():
            ffi.memmove(ffi.from_buffer(value)[len(meta):len(value)],
                        ffi.cast("char *", data.data_ptr()), data.numel())
        self._put(key, region(value), config, upsert=upsert, flags=FLAG_TENSOR)

    def get_tensor(self, key: Any) -> Any:
        self._check_open()
        key, kb = self._key(key)
        torch = tensors._torch()
        look = self._index.get_replicas(key)
        if not look.flags & FLAG_TENSOR:
            raise InvalidParams(f"key {key!r} does not hold a tensor")
        buf = torch.empty(look.size, dtype=torch.uint8)
        self._read_replicas(key, kb, look, ffi.cast("char *", buf.data_ptr()), look.size)
        return tensors.decode(buf)

    def get_tensor_into(self, key: Any, out: Any) -> Any:
        """Load a stored tensor into `out` (CPU or CUDA), which must match its shape."""
        t = self.get_tensor(key)
        if tuple(out.shape) != tuple(t.shape):
            raise InvalidParams(f"target shape {tuple(out.shape)} != stored {tuple(t.shape)}")
        out.copy_(t)
        return out

    def batch_put_tensor(self, keys: Sequence[Any], tensors_: Sequence[Any],
                         config: ReplicateConfig | None = None) -> list[int]:
        self._check_open()
        self._same_len(keys, tensors_)
        return self._each(lambda k, t: self.put_tensor(k, t, config), keys, tensors_)

    def batch_get_tensor(self, keys: Sequence[Any]) -> list[Any]:
        self._check_open()
        out = []
        for key in keys:
            try:
                out.append(self.get_tensor(key))
            except StoreError:
                out.append(None)
        return out

    # ---- introspection -------------------------------------------------------------------------------------
    def stats(self) -> dict:
        st = self._index.stats()
        st["segments"] = {name: {"capacity": s.capacity, "used": s.used, "tier": s.tier}
                          for name, s in self._index.segments.items()}
        if self._tiers is not None:
            st.update(self._tiers.stats())
        st["mode"] = "embedded" if self._cluster is None else "cluster"
        st["pid"] = os.getpid()
        return st

    def lease_remaining_ms(self, key: Any) -> float:
        return self._index.lease_remaining_ms(self._key(key)[0])
