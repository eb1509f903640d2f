"""The cold tiers (SSD, then S3/OSS) of a cluster storage node.

The master decides what moves; this module does the moving on the node and
serves cold reads without the master in the byte path:

  * `demote` (a master task): copy one verified record from the node's DRAM
    segment into the first cold tier (compressed when worth it);
  * `promote` (a master task): write the verified value back into a slice of
    the node's DRAM segment the master reserved;
  * `forget` (a master task): drop the node's cold copy of a key (removed or
    replaced object);
  * `gather` (a master task): demote a striped object: read its parts from the
    nodes holding them, verify each, store the joined value as one record;
  * `fetch` (a master task): copy a cold object from another node's tier (its
    staging RPC, then the transfer engine) into this node's first tier, so an
    object keeps its copy count when a node dies;
  * a full tier pushes its least recently used records one tier down, or drops
    them in the last tier; those moves are reported to the master with the
    next heartbeat (`take_report`);
  * `stage(key, tier)` (an RPC from clients): load the verified value into a
    staging buffer registered with the node's transfer engine and answer where
    it is, with its CRC and a ticket; the client reads it over tcp/shm and
    hands the ticket back with its next call (or it expires). STAGE_SERVERS
    RPC servers, one thread each, serve these calls side by side.

A node keeps at most one cold copy of a key: a demotion removes the key from
its other tiers. A restarted node lists every verified record of its tiers in
its registration (`registration()`), so the objects are readable again.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from .._engine import ffi, lib
from ..codec import FIXED_SIZE, MAX_KEY_LEN, encode_header
from ..config import Config
from ..errors import (ChecksumMismatch, InvalidParams, ObjectNotFound, StoreError,
                      TransferFailed)
from ..master.allocator import Allocator
from . import inventory
from .segment import DramSegment
from .tier import TierBackend
from .tiering import (_COLD_HIGH, _codec, _elem_size, _header_bytes, push_down, read_value,
                      store_record, verified_record)

log = logging.getLogger("mooncake_store.node")

TICKET_TTL_S = 10.0          # a staged value not released by then is freed anyway
MAX_REPORT = 4096            # moves/drops reported per heartbeat
MAX_PARTS = 4096             # parts of one striped object a gather accepts
MAX_FOREIGN_S3 = 4           # other nodes' S3 prefixes kept open for rescues
STAGE_SERVERS = 4            # staging RPC servers (one thread each): cold reads staged at once


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
                         "demote_failures": 0, "promote_failures": 0, "gathered": 0,
                         "fetched": 0, "rescued": 0, "stage_peak": 0}
        self._stage = DramSegment(stage_bytes, "mcs-stage")
        rc = engine.register_memory(self._stage.base, self._stage.size, fd=self._stage.fd)
        if rc != 0:
            self._stage.close()
            raise StoreError("cannot register the staging buffer with the transfer engine", rc)
        self._stage_alloc = Allocator(stage_bytes, 64)
        self._tickets: dict[int, tuple[int, int, float, bool]] = {}  # id -> (addr, len, until, own)
        self._ticket_ids = itertools.count(1)
        self._peers: Any = None              # RPC clients of other nodes (fetch)
        self._foreign: dict[str, TierBackend] = {}   # other nodes' S3 prefixes (rescue)
        self.inventory = self._scan()
        # Several small RPC servers: each serves one stage call at a time on its own thread,
        # so up to STAGE_SERVERS cold reads load from the tiers at once. The first one's
        # address names the node's copies; clients learn the others from `stage_servers`.
        handlers = {"stage": self.rpc_stage, "release": self.rpc_release,
                    "stage_servers": self.rpc_stage_servers}
        self._servers = []
        try:
            for _ in range(_stage_servers()):
                self._servers.append(RpcServer(handlers, host, 0, config.auth_token).start())
        except BaseException:
            for srv in self._servers:
                srv.close()
            raise
        self.rpc = self._servers[0]
        self._active = 0                     # stage calls in progress (stats: peak)

    @property
    def address(self) -> str:
        return self.rpc.address

    def rpc_stage_servers(self) -> list:
        """Every staging server of this node (the first is the one copies are named by)."""
        return [srv.address for srv in self._servers]

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
                "usage": self.usage(), "s3": self._s3_identity()}

    def _s3_identity(self) -> dict | None:
        """Where this node's S3 objects live: a node of the same service and bucket can
        read them when this one dies (rescue)."""
        s3 = self.backends.get("s3")
        c = getattr(s3, "cfg", None)
        if c is None:
            return None
        return {"endpoint": c.endpoint_url or "", "bucket": c.bucket, "prefix": c.prefix}

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
            self._placed(tier, key)
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

    # ---- values that come from elsewhere: striped objects, a peer's cold copy -------------------
    def gather(self, mounted: dict, key: str, size: int, parts: list, tier: str | None = None) -> bool:
        """Demote (or persist) a striped object: read its k part records, from this node's
        segment or over the transfer engine from the nodes holding them, check that each
        verifies and names part i of k of `key`, `size` bytes in all, and store the joined
        value as one ordinary record of `key`. One record keeps cold reads, promotion,
        push-down and warm restart exactly as for any other object.
        `parts`: [segment, endpoint, address, length] per part, in order."""
        tier = tier or self.order[0]
        try:
            if tier not in self.backends or not _parts_ok(key, size, parts):
                raise InvalidParams(f"malformed gather task for {key!r}")
            raw = bytearray(sum(p[3] for p in parts))
            spans = self._read_parts(mounted, raw, parts)
            views, crc, flags, epoch = [], 0, 0, 0
            mv = memoryview(raw)
            base = ffi.from_buffer(raw)
            info = ffi.new("mcs_rec_info *")
            for i, (at, length) in enumerate(spans):
                if not inventory.verify_part(base + at, length, key, [i, len(parts), size]) \
                        or lib.mcs_rec_check_header(base + at, length, ffi.NULL, 0, info) != 0 \
                        or info.codec != 0:
                    raise ChecksumMismatch(f"part {i} of {key!r} failed verification")
                hlen, vlen = info.header_len, info.value_len
                views.append(mv[at + hlen:at + hlen + vlen])
                crc = lib.mcs_crc32c_combine(crc, info.value_crc, vlen) if i else info.value_crc
                flags, epoch = info.flags, max(epoch, info.epoch)
            if sum(len(v) for v in views) != size:
                raise ChecksumMismatch(f"the parts of {key!r} do not add up to {size} bytes")
            self._store_value(tier, key, views, size, crc, flags, epoch)
            self.counters["gathered"] += 1
            return True
        except StoreError as e:
            self.counters["demote_failures"] += 1
            log.warning("gathering striped %r into %s failed: %s", key, tier, e)
            return False

    def _read_parts(self, mounted: dict, raw: bytearray, parts: list) -> list[tuple[int, int]]:
        """Copy every part record into `raw`, back to back: local parts with a memcpy, the
        others in one transfer batch per node, all submitted before any is waited on."""
        from ..transfer import READ

        base = ffi.from_buffer(raw)
        addr0 = int(ffi.cast("uintptr_t", base))
        local = self.engine.get_local_hostname()
        by_peer: dict[str, list] = {}
        spans, at = [], 0
        for seg, endpoint, addr, length in parts:
            m = mounted.get(seg)
            if m is not None and endpoint == local:
                off = addr - m.segment.base
                if off < 0 or off + length > m.segment.size:
                    raise InvalidParams(f"part at {addr:#x} lies outside segment {seg}")
                ffi.memmove(base + at, m.segment.ptr + off, length)
            else:
                by_peer.setdefault(endpoint, []).append((addr0 + at, addr, length))
            spans.append((at, length))
            at += length
        pending = []
        try:
            for endpoint, reqs in by_peer.items():
                pending.append(self.engine.submit(endpoint, READ, [r[0] for r in reqs],
                                                  [r[1] for r in reqs], [r[2] for r in reqs]))
        finally:
            statuses = [self.engine.wait(bid) for bid in pending]
        if any(x.state != "completed" for st in statuses for x in st):
            raise TransferFailed("reading a part from its node failed")
        return spans

    def fetch(self, key: str, src: str, src_tier: str, size: int, tier: str | None = None) -> bool:
        """Copy `key` (`size` bytes) from the cold tier of the node whose staging RPC is `src`
        into our `tier` (default: the first): stage there, read over the transfer engine,
        check the CRC, store. Re-replication of a cold object after a node holding a copy
        died."""
        tier = tier or self.order[0]
        if tier not in self.backends or not isinstance(key, str) or not isinstance(src, str) \
                or not isinstance(size, int) or size <= 0:
            return False
        try:
            peer = self._peer(src)
            st = peer.call("stage", key, src_tier, [])
            try:
                n, addr, endpoint = int(st["len"]), int(st["addr"]), str(st["endpoint"])
                if n != size:   # the peer's numbers: never trusted for an allocation
                    raise ChecksumMismatch(f"{src} staged {n} bytes of {key!r}, not {size}")
                buf = bytearray(n)
                self.engine.read(endpoint, int(ffi.cast("uintptr_t", ffi.from_buffer(buf))),
                                 addr, n)
            finally:
                try:
                    peer.call("release", st["ticket"])
                except StoreError:
                    pass   # the ticket expires on the peer by itself
            crc = lib.mcs_crc32c(0, ffi.from_buffer(buf), n)
            if crc != st["crc"]:
                raise ChecksumMismatch(f"the staged copy of {key!r} changed in transit")
            self._store_value(tier, key, [memoryview(buf)], n, crc, int(st.get("flags", 0)),
                              int(st.get("epoch", 0)))
            self.counters["fetched"] += 1
            return True
        except (StoreError, KeyError, TypeError, ValueError) as e:
            self.counters["demote_failures"] += 1
            log.warning("fetching %r from %s (%s) failed: %s", key, src, src_tier, e)
            return False

    def rescue(self, key: str, prefix: str, size: int) -> bool:
        """Copy `key` from a dead node's S3 prefix (same service and bucket as ours) into our
        own S3 tier, verbatim and verified: its S3 copy stays readable through this node.
        The dead node's object is left in place (if that node returns, its record is judged
        like any returning record)."""
        own = self.backends.get("s3")
        if own is None or not isinstance(key, str) or not isinstance(prefix, str) or not prefix \
                or prefix == own.cfg.prefix or not isinstance(size, int) or size <= 0:
            return False
        kb = _kb(key)
        try:
            hdr, value = self._foreign_s3(prefix).read_record(kb)   # header and CRC verified
            if hdr.raw_len != size:
                raise ChecksumMismatch(f"{prefix}{key!r} holds {hdr.raw_len} bytes, not {size}")
            own.put(kb, value, header=_header_bytes(own, kb, hdr))
            self._placed("s3", key)
            self.counters["rescued"] += 1
            return True
        except StoreError as e:
            self.counters["demote_failures"] += 1
            log.warning("rescuing %r from S3 prefix %r failed: %s", key, prefix, e)
            return False

    def _foreign_s3(self, prefix: str) -> TierBackend:
        """A read-only view of another node's S3 prefix, with our settings (a few cached)."""
        import dataclasses

        from .s3 import S3Tier

        tier = self._foreign.pop(prefix, None)
        if tier is None:
            c = self.backends["s3"].cfg
            kw = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)
                  if f.name not in ("bucket", "prefix")}
            tier = S3Tier(c.bucket, prefix, **{**kw, "writers": 1, "create_bucket": False})
        self._foreign[prefix] = tier
        while len(self._foreign) > MAX_FOREIGN_S3:
            self._foreign.pop(next(iter(self._foreign))).close()
        return tier

    def _peer(self, addr: str) -> Any:
        """An RPC client of another node's staging server (cold worker thread only)."""
        if self._peers is None:
            from ..rpc.client import RpcClients

            self._peers = RpcClients(max(1000, self.config.rpc_timeout_ms), self.config.auth_token)
        return self._peers.get(addr)

    def _store_value(self, tier: str, key: str, views: list, size: int, crc: int, flags: int,
                     epoch: int) -> None:
        """Store a verified value (parts stored concatenated) as the key's one cold copy on
        this node: compressed when the codec saves enough, else verbatim under a header
        whose CRC the tier re-checks while copying."""
        kb = _kb(key)
        backend = self.backends[tier]
        self._make_room(tier, 4096 + size)
        codec = _codec()
        done = False
        if codec is not None and self.config.cold_codec != "none":
            value = views[0] if len(views) == 1 else b"".join(views)
            cid, payload = codec.encode(value, elem_size=_elem_size(flags, value),
                                        codec=self.config.cold_codec)
            if cid != 0:
                backend.put(kb, payload, codec=cid, raw_len=size, flags=flags, epoch=epoch)
                done = True
            views = [value]
        if not done:
            backend.put(kb, views, header=encode_header(kb, size, crc, epoch=epoch, flags=flags))
        self._placed(tier, key)

    def _placed(self, tier: str, key: str) -> None:
        """`key` now has its copy in `tier`: one cold copy per key on a node."""
        with self._lock:
            stale = [t for t in self.order if t != tier and self._lru[t].pop(key, 1) is None]
            self._report.pop(key, None)   # an older move/drop of this key is moot now
            self._touch(tier, key)
        for t in stale:
            self.backends[t].remove(_kb(key))

    # ---- cold reads (RPC from clients) -------------------------------------------------------------------
    def rpc_stage(self, key: str, tier: str, release: list | None = None) -> dict:
        with self._lock:
            self._active += 1
            self.counters["stage_peak"] = max(self.counters["stage_peak"], self._active)
        try:
            return self._stage_one(key, tier, release)
        finally:
            with self._lock:
                self._active -= 1

    def _stage_one(self, key: str, tier: str, release: list | None) -> dict:
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
            with self._lock:
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
                "flags": hdr.flags, "epoch": hdr.epoch, "ticket": ticket}

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
        for srv in self._servers:
            srv.close()
        if self._peers is not None:
            self._peers.close()
        for tier in self._foreign.values():
            tier.close()
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


def _stage_servers() -> int:
    """STAGE_SERVERS, or MOONCAKE_STAGE_SERVERS (1..16) for measurements."""
    try:
        n = int(os.environ.get("MOONCAKE_STAGE_SERVERS", STAGE_SERVERS))
    except ValueError:
        raise InvalidParams("MOONCAKE_STAGE_SERVERS must be an integer") from None
    if not 1 <= n <= 16:
        raise InvalidParams(f"MOONCAKE_STAGE_SERVERS must be 1..16, got {n}")
    return n


def _parts_ok(key: str, size: int, parts: list) -> bool:
    """A gather task's numbers are sane: a size, 2..MAX_PARTS parts of plausible lengths."""
    if not isinstance(key, str) or not isinstance(size, int) or size <= 0 \
            or not isinstance(parts, list) or not 1 < len(parts) <= MAX_PARTS:
        return False
    most = size + len(parts) * (FIXED_SIZE + MAX_KEY_LEN + 128)   # values + their headers
    for p in parts:
        if not (isinstance(p, (list, tuple)) and len(p) == 4 and isinstance(p[0], str)
                and isinstance(p[1], str) and isinstance(p[2], int) and p[2] > 0
                and isinstance(p[3], int) and FIXED_SIZE < p[3] <= most):
            return False
    return size < sum(p[3] for p in parts) <= most


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

