"""Moving objects between DRAM and the cold tiers (SSD, then S3/OSS) by themselves.

One worker thread per store does all cold-tier I/O, so a put or get never waits
on a demotion:
  * when DRAM use passes `demote_watermark`, it copies least-recently-used
    objects down to the first cold tier (verbatim header, CRC re-checked while
    copying, or re-encoded by the cold codec) and then frees their DRAM;
  * a full cold tier pushes its own least-recently-used records one tier down,
    or gives them up when it is the last tier;
  * a read served from a cold tier queues a promotion back to DRAM
    (`promotion`: off / on-hit / on-second-hit);
  * removals and upserts queue deletion of stale cold copies, in order with the
    copies, so a stale copy can never overwrite a newer one.
Reads from a cold tier happen on the caller's thread (the tier verifies them).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from typing import Any, Sequence

from .._engine import ffi, lib
from ..codec import FLAG_TENSOR, decode_header
from ..config import Config
from ..errors import ChecksumMismatch, InvalidParams, StoreError, TransferFailed
from ..master.index import Obj, ObjectIndex, TieringHooks
from .tier import TierBackend

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5     # how often an idle worker re-checks DRAM fill
_COLD_HIGH = 0.95      # a cold tier above this fill pushes records down


def _codec():
    try:
        from .. import compress
    except ImportError:  # the codec module is optional: store raw
        return None
    return compress


class TierManager:
    def __init__(self, index: ObjectIndex, segments: dict[str, Any],
                 backends: Sequence[tuple[str, TierBackend]], config: Config) -> None:
        if not backends:
            raise InvalidParams("a tier manager needs at least one cold tier")
        self.hooks = TieringHooks(index)
        self.index = index
        self.segments = segments
        self.config = config
        self.order = [name for name, _ in backends]
        self.backends = dict(backends)
        self._lru: dict[str, OrderedDict[str, None]] = {n: OrderedDict() for n in self.order}
        self._lru_lock = threading.Lock()
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self._demote_lock = threading.Lock()
        self.healthy = True     # False while copies down fail: eviction may then drop
        self.counters = {"demoted": 0, "promoted": 0, "pushed_down": 0, "cold_dropped": 0,
                         "demote_failures": 0, "cold_read_failures": 0, "op_failures": 0}
        self._recover()
        index.tiering = self
        self._thread = threading.Thread(target=self._run, name="mstore-tiering", daemon=True)
        self._thread.start()

    # ---- called by the index under its lock: never block -------------------------------------
    def on_cold_hit(self, obj: Obj) -> None:
        self._touch(obj.tier, obj.key)
        obj.cold_hits += 1
        mode = self.config.promotion
        if mode == "on-hit" or (mode == "on-second-hit" and obj.cold_hits >= 2):
            self._ops.put(("promote", obj.key))
            self._wake.set()

    def on_demoted(self, obj: Obj) -> None:
        self._touch(obj.tier, obj.key)

    def forget(self, key: str, tiers: Sequence[str]) -> None:
        self._ops.put(("forget", key, tuple(tiers)))
        self._wake.set()

    # ---- called by the store --------------------------------------------------------------------
    def kick(self) -> None:
        """Wake the worker (after puts) when DRAM is filling up."""
        if self.hooks.dram_fill() > self.config.demote_watermark:
            self._wake.set()

    def demote_now(self, need: int) -> None:
        """Backpressure: a put found no room, so demote on the caller's thread."""
        with self._demote_lock:
            self._demote_batch(need)

    def persist(self, key: str, replica: Any) -> None:
        """Copy a just-written record to the last (most durable) tier on the caller's thread."""
        tier = self.order[-1]
        ok = self._copy_down(tier, key, replica)
        if not self.hooks.finish_copy_down(key, replica, tier, ok, free_dram=False) and ok:
            self.backends[tier].remove(key.encode())   # replaced meanwhile: drop the stale copy
        if not ok:
            raise TransferFailed(f"write-through of {key!r} to the {tier} tier failed")
        self._touch(tier, key)

    def read_into(self, tier: str, key: str, kb: bytes, dst: Any, dst_len: int, size: int) -> int:
        backend = self.backends[tier]
        try:
            return read_value(backend, kb, dst, dst_len)[1]
        except ChecksumMismatch:
            self.counters["cold_read_failures"] += 1
            if self.hooks.drop_cold(key, tier):
                self._forget_lru(tier, key)
            backend.remove(kb)
            raise

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until queued operations are done (tests, shutdown). True when drained."""
        done = threading.Event()
        self._ops.put(("barrier", done))
        self._wake.set()
        return done.wait(timeout)

    def stats(self) -> dict:
        tiers = {n: {"used": b.used, "capacity": b.capacity, "objects": len(self._lru[n])}
                 for n, b in self.backends.items()}
        return {"tiers": tiers, **self.counters}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        for b in self.backends.values():
            try:
                b.close()
            except Exception:  # noqa: BLE001 - closing must not mask other errors
                log.exception("closing tier backend failed")

    # ---- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(_IDLE_WAIT_S)
            self._wake.clear()
            try:
                self._drain_ops()
                while not self._closed and self.hooks.dram_fill() > self.config.demote_watermark:
                    with self._demote_lock:
                        if not self._demote_batch():
                            break
                    self._drain_ops()
            except Exception:  # noqa: BLE001 - the worker must survive a bad record
                log.exception("tiering worker error")
        self._drain_ops()

    def _drain_ops(self) -> None:
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            kind = op[0]
            try:
                if kind == "forget":
                    for tier in op[2]:
                        self.backends[tier].remove(op[1].encode())
                        self._forget_lru(tier, op[1])
                elif kind == "promote":
                    self._promote(op[1])
                elif kind == "barrier":
                    op[1].set()
            except StoreError as e:
                # Races with removals and upserts are expected under churn: count, don't shout.
                self.counters["op_failures"] += 1
                log.debug("tiering %s of %r failed: %s", kind, op[1], e)

    def _demote_batch(self, need: int = 0) -> bool:
        budget = max(need, int(self.config.eviction_ratio * self.index.capacity), 1)
        batch = self.hooks.demotion_batch(budget)
        if not batch:
            return False
        first = self.order[0]
        for key, replica, size, flags in batch:
            ok = self._copy_down(first, key, replica)
            self.healthy = ok
            if not ok:
                self.counters["demote_failures"] += 1
            if not self.hooks.finish_copy_down(key, replica, first, ok, free_dram=True):
                self.backends[first].remove(key.encode())
            elif ok:
                self.counters["demoted"] += 1
                self._touch(first, key)
        return True

    def _copy_down(self, tier: str, key: str, replica: Any) -> bool:
        sl = replica[0]
        seg = self.segments.get(sl.segment)
        if seg is None:
            return False
        ptr = seg.ptr + sl.offset
        try:
            hdr = verified_record(ptr, sl.length)
            if hdr is None:
                return False  # the DRAM copy changed under us (replaced): skip it
            self._make_room(tier, hdr.header_len + hdr.value_len)
            store_record(self.backends[tier], hdr, ptr, self.config.cold_codec)
            return True
        except StoreError as e:
            log.warning("demotion of %r to %s failed: %s", key, tier, e)
            return False

    def keeps(self, obj: Obj) -> bool:
        """Eviction asks: will the demoter copy this object down (so do not drop it)?"""
        return self.healthy

    def _make_room(self, tier: str, need: int) -> None:
        """Push the tier's least recently used records one tier down until `need` fits."""
        backend = self.backends[tier]
        cap = backend.capacity
        if not cap:
            return
        nxt = self._next_tier(tier)
        while backend.used + need > _COLD_HIGH * cap:
            with self._lru_lock:
                if not self._lru[tier]:
                    return
                key = next(iter(self._lru[tier]))
                del self._lru[tier][key]
            kb = key.encode()
            moved = nxt is not None and push_down(self.backends, tier, nxt, kb, self._make_room)
            if moved and self._move_cold(key, tier, nxt):
                self.counters["pushed_down"] += 1
                self._touch(nxt, key)
            elif self.hooks.drop_cold(key, tier) or not moved:
                self.counters["cold_dropped"] += 1
            backend.remove(kb)

    def _move_cold(self, key: str, src: str, dst: str) -> bool:
        ix = self.index
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is None or src not in obj.cold:
                return False
            obj.cold = tuple(dst if t == src else t for t in obj.cold)
            if obj.tier == src:
                obj.tier = dst
            return True

    def _promote(self, key: str) -> None:
        got = self.hooks.promotion_start(key)
        if got is None:
            return
        replica, tier, flags = got
        sl = replica[0]
        seg = self.segments[sl.segment]
        kb = key.encode()
        ok = False
        try:
            size = self.backends[tier].header(kb).raw_len
            tmp = bytearray(size)
            n = self.read_into(tier, key, kb, ffi.from_buffer(tmp), size, size)
            rc = lib.mcs_rec_write(seg.ptr + sl.offset, sl.length, kb, len(kb), ffi.from_buffer(tmp),
                                   n, 0, 0, flags, 0)
            ok = rc > 0
        except StoreError as e:
            self.counters["op_failures"] += 1
            log.debug("promotion of %r from %s failed: %s", key, tier, e)
        self.hooks.finish_promotion(key, replica, ok)
        if ok:
            self.counters["promoted"] += 1

    def _recover(self) -> None:
        """Warm restart: every verified record in a cold tier is readable again."""
        for tier in self.order:
            for kb, hdr, _loc in self.backends[tier].scan():
                try:
                    key = kb.decode()
                except UnicodeDecodeError:
                    continue
                self.hooks.add_cold(key, hdr.raw_len, hdr.flags, tier)
                self._touch(tier, key)

    # ---- per-tier LRU ----------------------------------------------------------------------------------
    def _touch(self, tier: str, key: str) -> None:
        with self._lru_lock:
            lru = self._lru[tier]
            lru[key] = None
            lru.move_to_end(key)

    def _forget_lru(self, tier: str, key: str) -> None:
        with self._lru_lock:
            self._lru[tier].pop(key, None)

    def _next_tier(self, tier: str) -> str | None:
        i = self.order.index(tier)
        return self.order[i + 1] if i + 1 < len(self.order) else None


def verified_record(ptr: Any, length: int) -> Any:
    """The header of the DRAM record at ptr when header and value verify, else None."""
    rec = ffi.buffer(ptr, length)
    hdr = decode_header(rec, limit=length)
    if lib.mcs_crc32c(0, ptr + hdr.header_len, hdr.value_len) != hdr.value_crc:
        return None
    return hdr


def store_record(backend: TierBackend, hdr: Any, ptr: Any, cold_codec: str) -> None:
    """Put a verified DRAM record into a cold backend: compressed when the codec saves
    enough, else verbatim (header kept, its CRC re-checked while copying)."""
    value_ptr = ptr + hdr.header_len
    codec = _codec()
    if codec is not None and cold_codec != "none":
        value = ffi.buffer(value_ptr, hdr.value_len)
        cid, payload = codec.encode(value, elem_size=_elem_size(hdr.flags, value), codec=cold_codec)
        if cid != 0:
            backend.put(hdr.key, payload, codec=cid, raw_len=hdr.value_len, flags=hdr.flags,
                        epoch=hdr.epoch)
            return
    backend.put(hdr.key, (int(ffi.cast("uintptr_t", value_ptr)), hdr.value_len),
                header=bytes(ffi.buffer(ptr, hdr.header_len)))


def read_value(backend: TierBackend, kb: bytes, dst: Any, dst_len: int) -> tuple[Any, int]:
    """Copy the verified (decoded) value of kb into dst: (header, value length)."""
    hdr = backend.header(kb)
    if hdr.codec == 0:
        if hdr.value_len > dst_len:
            raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the value")
        return hdr, backend.get_into(kb, ffi.buffer(dst, dst_len))
    raw = _codec().decode(hdr.codec, backend.read(kb), hdr.raw_len)
    if len(raw) > dst_len:
        raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the value")
    ffi.memmove(dst, raw, len(raw))
    return hdr, len(raw)


def push_down(backends: dict, tier: str, nxt: str, kb: bytes, make_room: Any) -> bool:
    """Copy one verified record from `tier` to the next tier down, verbatim; False on failure."""
    backend = backends[tier]
    try:
        hdr, value = backend.read_record(kb)
        make_room(nxt, hdr.header_len + hdr.value_len)
        backends[nxt].put(kb, value, header=_header_bytes(backend, kb, hdr))
        return True
    except StoreError as e:
        log.warning("push-down of %r from %s failed: %s", kb, tier, e)
        return False


def _header_bytes(backend: TierBackend, kb: bytes, hdr: Any) -> bytes:
    """Re-encode a verified header so the next tier stores the record verbatim."""
    from ..codec import encode_header

    return encode_header(kb, hdr.value_len, hdr.value_crc, epoch=hdr.epoch, codec=hdr.codec,
                         raw_len=hdr.raw_len, flags=hdr.flags)


def _elem_size(flags: int, value: Any) -> int:
    """Shuffle width for the codec: the dtype's for tensors, 2 (fp16/bf16 KV) otherwise."""
    if flags & FLAG_TENSOR:
        from ..client.tensors import element_size_of

        width = element_size_of(value)
        if width in (1, 2, 4, 8):
            return width
    return 2
