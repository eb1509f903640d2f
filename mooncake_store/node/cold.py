"""The cold tiers (SSD, then S3/OSS) of a cluster storage node.

The master decides what moves; this module does the moving on the node and
serves cold reads without the master in the byte path:

  * `demote` (a master task): copy one verified record from the node's DRAM
    segment into the first cold tier (compressed when worth it);
  * `promote` (a master task): write the verified value back into a slice of
    the node's DRAM segment the master reserved;
  * `forget` (a master task): drop the node's cold copy of a key (removed or
    replaced object);
  * a full tier pushes its least recently used records one tier down, or drops
    them in the last tier; those moves are reported to the master with the
    next heartbeat (`take_report`);
  * `stage(key, tier)` (an RPC from clients): load the verified value into a
    staging buffer registered with the node's transfer engine and answer where
    it is, with its CRC and a ticket; the client reads it over tcp/shm and
    hands the ticket back with its next call (or it expires).

A node keeps at most one cold copy of a key: a demotion removes the key from
its other tiers. A restarted node lists every verified record of its tiers in
its registration (`registration()`), so the objects are readable again.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from .._engine import ffi, lib
from ..config import Config
from ..errors import ChecksumMismatch, InvalidParams, ObjectNotFound, StoreError
from ..master.allocator import Allocator
from .segment import DramSegment
from .tier import TierBackend
from .tiering import _COLD_HIGH, push_down, read_value, store_record, verified_record

log = logging.getLogger("mooncake_store.node")

TICKET_TTL_S = 10.0          # a staged value not released by then is freed anyway
MAX_REPORT = 4096            # moves/drops reported per heartbeat


def _kb(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _key(kb: bytes) -> str:
    return kb.decode("utf-8", "surrogatepass")


class NodeCold:
    def __init__(self, engine: Any, backends: Sequence[tuple[str, TierBackend]], config: Config,
                 host: str = "127.0.0.1", stage_bytes: int = 64 << 20) -> None:
        from ..rpc import RpcServer

        if not backends:
            raise InvalidParams("a node's cold store needs at least one tier")
        self.engine = engine
        self.config = config
        self.order = [n for n, _ in backends]
        self.backends = dict(backends)
        self._lru: dict[str, OrderedDict[str, None]] = {n: OrderedDict() for n in self.order}
        self._lock = threading.RLock()      # LRU lists, report, staging tickets (never held for I/O)
        self._report: dict[str, list] = {}   # key -> ["moved", src, dst] | ["dropped", tier]
        self.counters = {"demoted": 0, "promoted": 0, "forgotten": 0, "pushed_down": 0,
                         "cold_dropped": 0, "staged": 0, "stage_failures": 0,
                         "demote_failures": 0, "promote_failures": 0}
        self._stage = DramSegment(stage_bytes, "mcs-stage")
        rc = engine.register_memory(self._stage.base, self._stage.size, fd=self._stage.fd)
        if rc != 0:
            self._stage.close()
            raise StoreError("cannot register the staging buffer with the transfer engine", rc)
        self._stage_alloc = Allocator(stage_bytes, 64)
        self._tickets: dict[int, tuple[int, int, float, bool]] = {}  # id -> (addr, len, until, own)
        self._ticket_ids = itertools.count(1)
        self.inventory = self._scan()
        self.rpc = RpcServer({"stage": self.rpc_stage, "release": self.rpc_release},
                             host, 0, config.auth_token)
        self.rpc.start()

    @property
    def address(self) -> str:
        return self.rpc.address

    # ---- registration and heartbeats --------------------------------------------------------------
    def _scan(self) -> dict[str, list]:
        """Warm restart: every verified record of every tier (torn ones were skipped by the tier)."""
        out: dict[str, list] = {}
        for tier in self.order:
            entries = []
            for kb, hdr, _loc in self.backends[tier].scan():
                key = _key(kb)
                entries.append([key, hdr.raw_len, hdr.flags])
                self._lru[tier][key] = None
            out[tier] = entries
        return out

    def registration(self) -> dict:
        """What the master needs at (re)registration: where to read, tiers, their records."""
        inv, self.inventory = self.inventory, None   # the start-up scan serves the first one
        if inv is None:
            inv = self._current_inventory()
        return {"rpc": self.address, "tiers": list(self.order), "inventory": inv,
                "usage": self.usage()}

    def _current_inventory(self) -> dict[str, list]:
        """A re-registration (the master restarted): what the tiers hold now."""
        out: dict[str, list] = {}
        for tier in self.order:
            entries = []
            for kb, hdr, _loc in self.backends[tier].scan():
                entries.append([_key(kb), hdr.raw_len, hdr.flags])
            out[tier] = entries
        return out

    def usage(self) -> dict:
        return {n: {"used": b.used, "capacity": b.capacity, "objects": len(self._lru[n])}
                for n, b in self.backends.items()}

    def take_report(self) -> dict:
        """Moves and drops since the last heartbeat, plus tier usage (put back on failure)."""
        with self._lock:
            items = list(itertools.islice(self._report.items(), MAX_REPORT))
            for k, _ in items:
                del self._report[k]
        return {"events": [[k, *ev] for k, ev in items], "usage": self.usage()}

    def restore_report(self, report: dict) -> None:
        with self._lock:
            for k, *ev in report.get("events", ()):
                self._report.setdefault(k, ev)

    # ---- master tasks (all on the agent's one cold worker thread, in order) -----------------------
    # Tier I/O runs without the lock, so a slow SSD or a frozen S3 stalls only this worker:
    # the lock covers the LRU lists, the report and the staging tickets, briefly.
    def demote(self, segment: DramSegment, offset: int, length: int, key: str,
               tier: str | None = None) -> bool:
        """Copy a DRAM record into `tier` (default: the first; write-through names the last)."""
        if offset < 0 or length <= 0 or offset + length > segment.size:
            return False
        tier = tier or self.order[0]
        if tier not in self.backends:
            return False
        ptr = segment.ptr + offset
        try:
            hdr = verified_record(ptr, length)
            if hdr is None or hdr.key != _kb(key):
                return False
            self._make_room(tier, hdr.header_len + hdr.value_len)
            store_record(self.backends[tier], hdr, ptr, self.config.cold_codec)
            with self._lock:
                stale = [t for t in self.order if t != tier and self._lru[t].pop(key, 1) is None]
                self._report.pop(key, None)   # an older move/drop of this key is moot now
                self._touch(tier, key)
            for t in stale:                   # one cold copy per key on a node
                self.backends[t].remove(hdr.key)
            self.counters["demoted"] += 1
            return True
        except StoreError as e:
            self.counters["demote_failures"] += 1
            log.warning("demotion of %r to %s failed: %s", key, tier, e)
            return False

    def promote(self, segment: DramSegment, offset: int, length: int, key: str, tier: str) -> bool:
        backend = self.backends.get(tier)
        if backend is None or offset < 0 or offset + length > segment.size:
            return False
        kb = _kb(key)
        try:
            hdr = backend.header(kb)
            tmp = bytearray(max(hdr.raw_len, 1))
            _, n = read_value(backend, kb, ffi.from_buffer(tmp), len(tmp))
            with self._lock:
                if key in self._lru[tier]:
                    self._touch(tier, key)
            rc = lib.mcs_rec_write(segment.ptr + offset, length, kb, len(kb), ffi.from_buffer(tmp),
                                   n, hdr.epoch, 0, hdr.flags, 0)
            ok = rc > 0
        except ChecksumMismatch:
            self._drop_corrupt(tier, key)
            ok = False
        except StoreError as e:
            log.info("promotion of %r from %s failed: %s", key, tier, e)
            ok = False
        self.counters["promoted" if ok else "promote_failures"] += 1
        return ok

    def forget(self, key: str) -> None:
        with self._lock:
            held = [t for t in self.order if self._lru[t].pop(key, 1) is None]
            self._report.pop(key, None)
        for tier in held:
            self.backends[tier].remove(_kb(key))
        self.counters["forgotten"] += 1

    # ---- cold reads (RPC from clients) -------------------------------------------------------------------
    def rpc_stage(self, key: str, tier: str, release: list | None = None) -> dict:
        for t in release or ():
            self.rpc_release(t)
        if tier not in self.backends:
            raise ObjectNotFound(f"this node has no {tier!r} tier")
        if not isinstance(key, str):
            raise InvalidParams("key must be a string")
        kb = _kb(key)
        with self._lock:
            if key not in self._lru[tier]:
                # Pushed down since the master last heard: one copy per node, serve it.
                tier = next((t for t in self.order if key in self._lru[t]), None)
                if tier is None:
                    raise ObjectNotFound(f"key {key!r} is not in this node's cold tiers")
            self._touch(tier, key)
        backend = self.backends[tier]
        hdr = backend.header(kb)
        size = max(hdr.raw_len, 1)
        addr, own = self._stage_room(size)
        try:
            _, n = read_value(backend, kb, ffi.cast("char *", addr), size)
        except BaseException as e:
            self._unstage(addr, size, own)
            self.counters["stage_failures"] += 1
            if isinstance(e, ChecksumMismatch):
                self._drop_corrupt(tier, key)
            raise
        with self._lock:
            ticket = next(self._ticket_ids)
            self._tickets[ticket] = (addr, size, time.monotonic() + TICKET_TTL_S, own)
        self.counters["staged"] += 1
        crc = lib.mcs_crc32c(0, ffi.cast("char *", addr), n)
        return {"endpoint": self.engine.get_local_hostname(), "addr": addr, "len": n, "crc": crc,
                "flags": hdr.flags, "ticket": ticket}

    def rpc_release(self, ticket: int) -> bool:
        with self._lock:
            t = self._tickets.pop(ticket, None)
            if t is None:
                return False
            self._unstage(t[0], t[1], t[3])
            return True

    def _stage_room(self, n: int) -> tuple[int, bool]:
        with self._lock:
            off = self._stage_alloc.alloc(n)
            if off is None:
                now = time.monotonic()
                for tid in [t for t, v in self._tickets.items() if v[2] <= now]:
                    v = self._tickets.pop(tid)
                    self._unstage(v[0], v[1], v[3])
                off = self._stage_alloc.alloc(n)
            if off is not None:
                return self._stage.base + off, False
        # Larger than the staging area (or it is full of live tickets): a buffer of its own.
        return self.engine.allocate_managed_buffer(n), True

    def _unstage(self, addr: int, n: int, own: bool) -> None:
        if own:
            self.engine.free_managed_buffer(addr, n)
        else:
            with self._lock:
                self._stage_alloc.free(addr - self._stage.base, n)

    # ---- tier housekeeping ---------------------------------------------------------------------------------
    def _make_room(self, tier: str, need: int) -> None:
        """Push the tier's least recently used records one tier down until `need` fits.
        The record stays readable where it was until its copy below is complete."""
        backend = self.backends[tier]
        cap = backend.capacity
        if not cap:
            return
        i = self.order.index(tier)
        nxt = self.order[i + 1] if i + 1 < len(self.order) else None
        for _ in range(1 << 20):   # bounded: every pass removes one record
            with self._lock:
                if backend.used + need <= _COLD_HIGH * cap or not self._lru[tier]:
                    return
                key = next(iter(self._lru[tier]))
            kb = _kb(key)
            moved = nxt is not None and push_down(self.backends, tier, nxt, kb, self._make_room)
            with self._lock:
                self._lru[tier].pop(key, None)
                if moved:
                    self._touch(nxt, key)
                    self._note(key, ["moved", tier, nxt])
                else:
                    self._note(key, ["dropped", tier])
            backend.remove(kb)
            self.counters["pushed_down" if moved else "cold_dropped"] += 1

    def _note(self, key: str, event: list) -> None:
        prev = self._report.get(key)
        if prev is not None and prev[0] == "moved" and event[0] == "moved":
            event = ["moved", prev[1], event[2]]     # ssd -> s3 after an unreported move
        elif prev is not None and prev[0] == "moved" and event[0] == "dropped":
            event = ["dropped", prev[1]]
        self._report[key] = event

    def _drop_corrupt(self, tier: str, key: str) -> None:
        with self._lock:
            if self._lru[tier].pop(key, 1) is not None:
                return   # moved or forgotten meanwhile: not this copy's fault
            self._note(key, ["dropped", tier])
        self.backends[tier].remove(_kb(key))
        self.counters["cold_dropped"] += 1

    def _touch(self, tier: str, key: str) -> None:
        lru = self._lru[tier]
        lru[key] = None
        lru.move_to_end(key)

    def stats(self) -> dict:
        return {"tiers": self.usage(), **self.counters, "tickets": len(self._tickets)}

    def close(self) -> None:
        self.rpc.close()
        for b in self.backends.values():
            try:
                b.close()
            except Exception:  # noqa: BLE001 - closing must not mask other errors
                log.exception("closing tier backend failed")
        try:
            self.engine.unregister_memory(self._stage.base)
        except StoreError:
            pass
        self._stage.close()


def open_backends(cfg: Config, ssd: str = "") -> list[tuple[str, TierBackend]]:
    """The node's cold tiers from `--ssd PATH:SIZE` and the Config's s3_* fields."""
    out: list[tuple[str, TierBackend]] = []
    if ssd:
        from .ssd import SSDTier

        out.append(("ssd", SSDTier.from_spec(ssd)))
    elif cfg.enable_ssd_offload:
        from .ssd import SSDTier

        out.append(("ssd", SSDTier(cfg.ssd_offload_path,
                                   cfg.ssd_capacity or 4 * cfg.global_segment_size)))
    if cfg.s3_bucket:
        from .s3 import S3Tier

        try:
            out.append(("s3", S3Tier.from_config(cfg)))
        except BaseException:
            for _, b in out:
                b.close()
            raise
    return out

