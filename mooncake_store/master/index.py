"""The master's object index: key -> replicas, with allocation, leases, pins and eviction.

It carries no object bytes. A put is two-phase (put_start allocates and records
a pending object, put_end makes it visible), so a writer that dies in between
leaves only a pending entry that `reclaim_expired` frees after put_timeout_ms.
Space of an object that may still be read (a live read lease) is never handed
out again before the lease ends: removal with force and upsert park it in a
graveyard until then.
"""
from __future__ import annotations

import itertools
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..codec import header_size
from ..config import Config
from ..errors import (
    ErrorCode,
    InvalidParams,
    NoSpace,
    ObjectHasLease,
    ObjectNotFound,
    ReplicaNotReady,
    SegmentNotFound,
    StoreError,
)
from ..replica import Replica, ReplicateConfig, Slice
from .allocator import Allocator
from .departures import ABANDONED, CORRUPT, EVICTED, REMOVED, Departures, nearest_keys
from .objmeta import PIN_HARD, PIN_NONE, PIN_SOFT, Lookup, Obj
from .policy import make_policy
from .reserve import BLOCK_MAX, BLOCK_SPREAD_VALUE_MAX, Reservations

# why() compares a missing key with at most this many stored keys.
SIMILAR_SCAN = 200_000
# remove_all / remove_by_regex remove this many keys per hold of the index lock (~40 ms).
REMOVE_PART = 4096

# Obj and Lookup live in objmeta.py (packed layout); re-exported for the modules importing them.
__all__ = ["Obj", "ObjectIndex", "Lookup", "SegmentInfo", "TieringHooks",
           "PIN_NONE", "PIN_SOFT", "PIN_HARD"]


@dataclass
class SegmentInfo:
    name: str
    allocator: Allocator
    tier: str = "dram"
    node: str = ""

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    @property
    def used(self) -> int:
        return self.allocator.used


class ObjectIndex:
    def __init__(self, config: Config | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or Config()
        self.clock = clock
        self.policy = make_policy(self.config.eviction_policy)
        self.lock = threading.Lock()
        self._rng = random.Random(0x6D63)  # placement draws: reproducible per master
        self.segments: dict[str, SegmentInfo] = {}
        self._objects: dict[str, Obj] = {}     # complete objects
        self._pending: dict[str, Obj] = {}     # put_start without put_end yet
        # Set by a cluster master: (start, end, until) of the destination slices of the
        # copies it has asked nodes to make in a segment (repairs, hot replicas, promotions).
        self.copies_in_flight: Callable[[str], list[tuple[int, int, float]]] | None = None
        # A policy that can keep its per-key state in our objects (Obj.pol) does: one
        # dict of a million keys instead of two. Hence on_insert after an object goes
        # into _objects, on_remove before it leaves, and pol handed on when replaced.
        bind = getattr(self.policy, "bind", None)
        if bind is not None:
            bind(self._objects)
        self._graveyard: list[tuple[float, list[Replica]]] = []
        self.lease_s = self.config.lease_ttl_ms / 1000.0
        # Set by a TierManager when cold tiers exist; None keeps eviction a plain drop.
        self.tiering = None
        # Set by the cluster master (master/tombstones.py): told of every freed slice, so the
        # node can invalidate the record's header and a rebuilt index does not find it again.
        self.on_free: Callable[[Slice], None] | None = None
        # Also set there: on a failed allocation, lends the header lines held for in-flight
        # zaps that can safely be reused and retries (the callable given) before eviction.
        self.on_no_room: Callable[[Callable[[], list[Replica] | None]],
                                  list[Replica] | None] | None = None
        self.counters = {"hits": 0, "misses": 0, "evictions": 0, "evicted_bytes": 0,
                         "puts": 0, "removes": 0, "reclaimed_puts": 0,
                         "reserved_puts": 0, "reclaimed_reservations": 0}
        # Hot objects (set by the master service): key -> how many replicas it keeps when
        # its extra read replicas go. Under pressure those extras are freed before any
        # object loses its last replica; the keys whose extras went wait in `cooled` for
        # the service to lower their wanted replica count.
        self.hot: dict[str, int] = {}
        self.cooled: list[str] = []
        self.reservations = Reservations(self)   # slices clients write small puts into first
        self.departures = Departures(clock)        # why a key is missing: recent departures

    # ---- segments -----------------------------------------------------------------------
    def add_segment(self, name: str, capacity: int, tier: str = "dram", node: str = "",
                    align: int = 64) -> SegmentInfo:
        with self.lock:
            if name in self.segments:
                raise StoreError(f"segment {name!r} already mounted", ErrorCode.SEGMENT_ALREADY_EXISTS)
            info = SegmentInfo(name, Allocator(capacity, align), tier, node)
            self.segments[name] = info
            return info

    @property
    def capacity(self) -> int:
        return sum(s.capacity for s in self.segments.values())

    @property
    def used(self) -> int:
        return sum(s.used for s in self.segments.values())

    # ---- writes ---------------------------------------------------------------------------
    def put_start(self, key: str, size: int, rc: ReplicateConfig | None = None,
                  upsert: bool = False) -> list[Replica] | None:
        """Allocate replicas for header+value. None: the key exists (put is a no-op)."""
        rc = rc or ReplicateConfig()
        self._check_size(size)
        now = self.clock()
        with self.lock:
            return self._put_start_locked(key, size, rc, upsert, now)

    def batch_put_start(self, keys: Sequence[str], sizes: Sequence[int],
                        rc: ReplicateConfig | None = None, upsert: bool = False
                        ) -> list[list[Replica] | None | StoreError]:
        """put_start for many keys under one lock: per key replicas, None (exists) or the error."""
        rc = rc or ReplicateConfig()
        now = self.clock()
        out: list[list[Replica] | None | StoreError] = []
        with self.lock:
            for key, size in zip(keys, sizes):
                try:
                    self._check_size(size)
                    out.append(self._put_start_locked(key, size, rc, upsert, now))
                except StoreError as e:
                    out.append(e)
        return out

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise InvalidParams(f"value size must be > 0, got {size}")
        if size > self.config.max_value_size:
            raise InvalidParams(f"value of {size} bytes exceeds max_value_size "
                                f"({self.config.max_value_size})")

    def _put_start_locked(self, key: str, size: int, rc: ReplicateConfig, upsert: bool,
                          now: float) -> list[Replica] | None:
        if key in self._pending or (not upsert and key in self._objects):
            return None
        replicas = self._allocate(header_size(len(key.encode())) + size, rc)
        pin, pin_until = PIN_NONE, 0.0
        if rc.with_hard_pin:
            pin = PIN_HARD
        elif rc.with_soft_pin:
            ttl = rc.soft_pin_ttl_ms or self.config.soft_pin_ttl_ms
            pin, pin_until = PIN_SOFT, now + ttl / 1000.0
        self._pending[key] = Obj(key, size, replicas, pin, pin_until,
                                 now + self.config.put_timeout_ms / 1000.0)
        return replicas

    def put_end(self, key: str, flags: int = 0) -> None:
        with self.lock:
            self._put_end_locked(key, flags)
            self._maybe_evict_locked()

    def put_end_reserve(self, key: str, flags: int, owner: str, record: int,
                        give_back: int = 0) -> tuple[int, Slice] | None:
        """put_end, then a reservation for the owner's next small put (reserve.py)."""
        with self.lock:
            self._put_end_locked(key, flags)
            self._maybe_evict_locked()
            return self.reservations.grant_locked(owner, record, give_back, self.clock())

    def put_commit(self, owner: str, rid: int, key: str, size: int, flags: int = 0,
                   upsert: bool = False, record: int = 0) -> tuple[int, tuple[int, Slice] | None]:
        """A put into a reservation: (COMMITTED | EXISTED | GONE, the next reservation)."""
        now = self.clock()
        with self.lock:
            code = self.reservations.commit_locked(owner, rid, key, size, flags, upsert, now)
            nxt = None
            if code == 0:
                self._maybe_evict_locked()
                nxt = self.reservations.grant_locked(owner, record, 0, now) if record else None
            return code, nxt

    def reserve_release(self, owner: str, rid: int) -> bool:
        """Free the owner's reservation `rid` now, unwritten (reserve.py); False if gone."""
        with self.lock:
            return self.reservations.release_locked(owner, rid)

    def batch_put_reserve(self, owner: str, size: int, give_back: int = 0,
                          largest: int | None = None, records: Any = None
                          ) -> tuple[int, Slice] | None:
        """A block of `size` bytes for the batch the owner writes now (reserve.py), or None.
        With one DRAM segment mounted, for any batch. With several, only for a batch whose
        values are all small (`largest`, the client's word, at most BLOCK_SPREAD_VALUE_MAX):
        the block is placed like one put, by free space, so the batch lands on one node
        where the normal path spreads its keys (reserve.py, on why that suits prefix
        chains); larger values go best straight from the caller's memory, key by key.
        records: the record lengths the client lays out, so that a block it never commits
        (it dies) is freed under a tombstone per record."""
        with self.lock:
            dram = sum(1 for seg in self.segments.values() if seg.tier == "dram")
            if dram != 1 and not (type(largest) is int
                                  and 0 < largest <= BLOCK_SPREAD_VALUE_MAX):
                return None
            layout = tuple(records) if type(records) in (list, tuple) else ()
            return self.reservations.grant_locked(owner, size, give_back, self.clock(),
                                                  BLOCK_MAX, written_now=True, layout=layout)

    def batch_put_commit(self, owner: str, rid: int, keys: list, sizes: list, flags: int = 0,
                         upsert: bool = False, revoke: bool = False) -> list[int] | int:
        """A batch written into its block: per key COMMITTED / EXISTED / an error code, or
        GONE for all (revoke: the client gives the block back, GONE too)."""
        now = self.clock()
        with self.lock:
            codes = self.reservations.commit_many_locked(owner, rid, keys, sizes, flags,
                                                         upsert, now, revoke)
            if type(codes) is list:
                self._maybe_evict_locked()
            return codes

    def batch_put_end(self, keys: Sequence[str], flags: int = 0) -> None:
        with self.lock:
            for key in keys:
                self._put_end_locked(key, flags)
            self._maybe_evict_locked()

    def batch_put_end_codes(self, keys: Sequence[str], flags: int = 0) -> list[int]:
        """put_end for many keys under one lock: per key 0 or the error code."""
        with self.lock:
            return self._batch_put_end_locked(keys, flags)

    def _batch_put_end_locked(self, keys: Sequence[str], flags: int) -> list[int]:
        out: list[int] = []
        for key in keys:
            try:
                self._put_end_locked(key, flags)
                out.append(0)
            except StoreError as e:
                out.append(int(e.code))
        self._maybe_evict_locked()
        return out

    def _put_end_locked(self, key: str, flags: int) -> None:
        if type(flags) is not int or not 0 <= flags <= 0xFF:
            raise InvalidParams(f"flags must be an int in [0, 255] (a header byte), got {flags!r}")
        obj = self._pending.pop(key, None)
        if obj is None:
            raise ObjectNotFound(f"no put in progress for key {key!r}")
        self._publish_locked(obj, flags)

    def _publish_locked(self, obj: Obj, flags: int) -> None:
        """Complete an object and make it the key's value (an old one goes, lease kept)."""
        key = obj.key
        obj.finish(flags)
        old = self._objects.get(key)
        if old is not None:
            obj.pol = old.pol   # the policy's state of the key (Obj.pol) goes on
            self._drop(old, keep_until=old.lease_until)
        self._objects[key] = obj
        self.policy.on_insert(key, obj.size)
        self.counters["puts"] += 1

    def put_revoke(self, key: str) -> None:
        with self.lock:
            obj = self._pending.pop(key, None)
            if obj is None:
                raise ObjectNotFound(f"no put in progress for key {key!r}")
            self._free_replicas(obj.replicas)

    # ---- reads ------------------------------------------------------------------------------
    def get_replicas(self, key: str) -> Lookup:
        now = self.clock()
        with self.lock:
            obj = self._objects.get(key)
            if obj is None:
                self.counters["misses"] += 1
                if key in self._pending:
                    raise ReplicaNotReady(f"key {key!r} is still being written")
                raise ObjectNotFound(f"key {key!r} not found")
            self.counters["hits"] += 1
            obj.lease_until = now + self.lease_s
            if obj._x is not None and obj.tier != "dram":
                return self._cold_lookup(obj)
            self.policy.on_access(key)
            return obj.lookup()

    def batch_get_replicas(self, keys: Sequence[str]) -> list[Lookup | None]:
        return self._batch_lookup(keys, packed=False)

    def batch_get_packed(self, keys: Sequence[str]) -> list[int | Lookup | None]:
        """batch_get_replicas for the wire: an object whose replica is one packed slice
        comes back as its packed bits (objmeta.unpack_loc reads them), any other as a
        Lookup, a missing one as None. Saves building a Lookup and Slice per key."""
        return self._batch_lookup(keys, packed=True)

    def _batch_lookup(self, keys: Sequence[str], packed: bool) -> list:
        # One loop for both answers: it is the hottest batch path, so no per-key calls.
        until = self.clock() + self.lease_s
        out: list = []
        with self.lock:
            self.policy.hint_prefix(keys)
            objects, on_access = self._objects, self.policy.on_access
            hits = 0
            for key in keys:
                obj = objects.get(key)
                if obj is None:
                    out.append(None)
                    continue
                hits += 1
                obj.lease_until = until
                if obj._x is None:
                    on_access(key)
                    out.append(obj._loc if packed else obj.lookup())
                elif obj.tier != "dram":
                    out.append(self._cold_lookup(obj))
                else:
                    on_access(key)
                    out.append(obj.lookup())
            self.counters["hits"] += hits
            self.counters["misses"] += len(keys) - hits
        return out

    def exists(self, key: str) -> bool:
        with self.lock:
            obj = self._objects.get(key)
            if obj is None:
                return False
            obj.lease_until = self.clock() + self.lease_s
            self.policy.on_access(key)
            return True

    def batch_exists(self, keys: Sequence[str]) -> list[bool]:
        until = self.clock() + self.lease_s
        out = []
        with self.lock:
            self.policy.hint_prefix(keys)
            for key in keys:
                obj = self._objects.get(key)
                if obj is not None:
                    obj.lease_until = until
                    self.policy.on_access(key)
                out.append(obj is not None)
        return out

    def longest_prefix(self, keys: Sequence[str]) -> int:
        """Number of leading keys present; leases them (a get usually follows)."""
        until = self.clock() + self.lease_s
        with self.lock:
            self.policy.hint_prefix(keys)
            n = 0
            for key in keys:
                obj = self._objects.get(key)
                if obj is None:
                    break
                obj.lease_until = until
                n += 1
            return n

    def size(self, key: str) -> int:
        with self.lock:
            obj = self._objects.get(key)
            if obj is None:
                raise ObjectNotFound(f"key {key!r} not found")
            return obj.size

    def lease_remaining_ms(self, key: str) -> float:
        with self.lock:
            obj = self._objects.get(key)
            return max(0.0, (obj.lease_until - self.clock()) * 1000.0) if obj else 0.0

    def keys(self, pattern: str | None = None) -> list[str]:
        with self.lock:
            keys = list(self._objects)
        if pattern is None:
            return keys
        rx = _compile(pattern)
        return [k for k in keys if rx.search(k)]

    def __len__(self) -> int:
        return len(self._objects)

    def why(self, key: str) -> dict:
        """Whether `key` is stored and, if not, why not: the reason it left (departures.py),
        a put in progress, or "unknown" with the stored keys that look most like it."""
        with self.lock:
            obj = self._objects.get(key)
            if obj is not None:
                return {"key": key, "present": True, "tier": obj.tier, "size": obj.size}
            if key in self._pending:
                return {"key": key, "present": False, "reason": "writing",
                        "detail": "a put of it is in progress (put_start, no put_end yet)"}
            gone = self.departures.explain(key)
            sample = None if gone else list(itertools.islice(self._objects, SIMILAR_SCAN))
        if gone:
            return {"key": key, "present": False, **gone}
        return {"key": key, "present": False, "reason": "unknown",
                "detail": f"not stored, and not among the last {self.departures.limit} keys "
                          "to leave: never stored here (a key built another way?), or "
                          "left long ago",
                "similar": nearest_keys(key, sample)}

    # ---- removal ------------------------------------------------------------------------------
    def remove(self, key: str, force: bool = False) -> None:
        with self.lock:
            obj = self._objects.get(key)
            if obj is None:
                raise ObjectNotFound(f"key {key!r} not found")
            if not force and obj.lease_until > self.clock():
                raise ObjectHasLease(f"key {key!r} has a read lease; use force=True")
            self._remove_locked(obj)

    def remove_many(self, keys: Iterable[str], force: bool = False) -> int:
        """How many of `keys` were removed (missing and leased ones are skipped)."""
        return self.remove_each(keys, force).count(0)

    def remove_each(self, keys: Iterable[str], force: bool = False) -> list[int]:
        """remove() of every key under one lock hold: per key 0, OBJECT_NOT_FOUND or
        OBJECT_HAS_LEASE (batch_remove, one call instead of one per key)."""
        now = self.clock()
        missing, leased = int(ErrorCode.OBJECT_NOT_FOUND), int(ErrorCode.OBJECT_HAS_LEASE)
        out = []
        with self.lock:
            for key in keys:
                obj = self._objects.get(key) if type(key) is str else None
                if obj is None:
                    out.append(missing)
                elif not force and obj.lease_until > now:
                    out.append(leased)
                else:
                    self._remove_locked(obj)
                    out.append(0)
        return out

    def remove_by_regex(self, pattern: str, force: bool = False) -> int:
        return self._remove_in_parts(self.keys(pattern), force)

    def remove_all(self, force: bool = False) -> int:
        return self._remove_in_parts(self.keys(), force)

    def _remove_in_parts(self, keys: list[str], force: bool) -> int:
        """remove_many of the keys (a snapshot, as before), a part per lock hold: in one
        hold, removing 300,000 keys stalled every other call for 2.4 s."""
        return sum(self.remove_many(keys[lo:lo + REMOVE_PART], force)
                   for lo in range(0, len(keys), REMOVE_PART))

    def _remove_locked(self, obj: Obj, why: int = REMOVED) -> None:
        self.policy.on_remove(obj.key)   # first: a bound policy reads the object
        del self._objects[obj.key]
        self.departures.note(obj.key, why)
        self.counters["removes"] += 1
        self._drop(obj, keep_until=obj.lease_until)

    def _cold_lookup(self, obj: Obj) -> Lookup:
        self.counters["cold_hits"] = self.counters.get("cold_hits", 0) + 1
        if self.tiering is not None:
            self.tiering.on_cold_hit(obj)
        return Lookup(obj.size, (), obj.flags, obj.tier)

    def unwritten_locked(self, segment: str) -> list[tuple[int, int, float]]:
        """Sorted (start, end, until) of the slices in `segment` handed to writes not known
        to be done: held reservations and batch blocks (until: the last moment a commit can
        name them), pending put_starts (until put_end, however long) and the copies a
        cluster master has asked nodes to make (`copies_in_flight`). A queued zap whose
        header line lies in one waits until then (master/tombstones.py): its old header is
        overwritten only if the write happens, and nothing written there later goes live."""
        spans = self.reservations.extents(segment)
        if self.copies_in_flight is not None:
            spans += self.copies_in_flight(segment)
        for obj in self._pending.values():
            for replica in obj.replicas:
                spans += [(sl.offset, sl.offset + sl.length, math.inf) for sl in replica
                          if sl.segment == segment]
        spans.sort()
        return spans

    # ---- maintenance ----------------------------------------------------------------------------
    def reclaim_expired(self) -> int:
        """Free puts whose writer never finished, and graveyard space whose leases ended."""
        now = self.clock()
        with self.lock:
            stale = [o for o in self._pending.values() if o.deadline <= now]
            for obj in stale:
                del self._pending[obj.key]
                self.departures.note(obj.key, ABANDONED)
                self._free_replicas(obj.replicas)
            self.counters["reclaimed_puts"] += len(stale)
            self.counters["reclaimed_reservations"] += self.reservations.reclaim_locked(now)
            self._sweep_graveyard(now)
            return len(stale)

    def stats(self) -> dict:
        with self.lock:
            return {"capacity": self.capacity, "used": self.used, "objects": len(self._objects),
                    "pending": len(self._pending), "reserved": len(self.reservations),
                    "policy": self.policy.name, **self.counters}

    # ---- allocation and eviction ------------------------------------------------------------------
    def _allocate(self, record: int, rc: ReplicateConfig) -> list[Replica]:
        want = rc.replica_num
        segs = self._candidate_segments(rc)
        if not segs:
            raise NoSpace("no segment is mounted")
        replicas = self._try_allocate(record, segs, want)
        if replicas is None and self._graveyard:
            self._release_graveyard()
            replicas = self._try_allocate(record, segs, want)
        if replicas is None and self.on_no_room is not None:
            replicas = self.on_no_room(lambda: self._try_allocate(record, segs, want))
        if replicas is None:
            self._evict_locked(record * want)
            replicas = self._try_allocate(record, segs, want)
        if replicas is None:
            raise NoSpace(f"no room for {record} bytes x {want} replica(s) "
                          f"after eviction (used {self.used} of {self.capacity})")
        return replicas

    def _candidate_segments(self, rc: ReplicateConfig) -> list[SegmentInfo]:
        segs = [s for s in self.segments.values() if s.tier == "dram"]
        preferred = list(rc.preferred_segments) + ([rc.preferred_segment]
                                                   if rc.preferred_segment else [])
        if preferred:
            unknown = [p for p in preferred if p not in self.segments]
            if unknown and len(unknown) == len(preferred):
                raise SegmentNotFound(f"preferred segment(s) not mounted: {', '.join(unknown)}")
            front = [self.segments[p] for p in preferred if p in self.segments]
            segs = front + [s for s in segs if s.name not in preferred]
        elif len(segs) > 1:
            # A random order weighted by free bytes (Efraimidis-Spirakis keys): a node gets
            # writes in proportion to its free space, so a newly joined empty node ramps up
            # instead of attracting every write, and nearly full nodes are rarely chosen.
            rnd = self._rng.random
            segs.sort(key=lambda s: math.log(rnd() or 1e-300) / max(s.capacity - s.used, 1),
                      reverse=True)
        return segs

    def _try_allocate(self, record: int, segs: list[SegmentInfo], want: int) -> list[Replica] | None:
        got: list[Replica] = []
        for seg in segs:
            off = seg.allocator.alloc(record)
            if off is not None:
                got.append((Slice(seg.name, off, record),))
                if len(got) == want:
                    break
        if not got or (len(got) < want and len(got) < len(segs)):
            self._free_replicas(got)
            return None
        return got  # fewer replicas than asked only when there are fewer segments

    def _maybe_evict_locked(self) -> None:
        cap = self.capacity
        if cap and self.used > self.config.high_watermark * cap:
            if self._graveyard:
                self._release_graveyard()
                if self.used <= self.config.high_watermark * cap:
                    return
            self._evict_locked(0)

    def _release_graveyard(self) -> None:
        """Under space pressure, space of removed-but-leased objects goes back before any
        live object is evicted. A reader still copying from it gets CHECKSUM_MISMATCH from
        the record check, never wrong bytes, and only for an object that is already gone."""
        for _until, replicas in self._graveyard:
            self._free_replicas(replicas)
        self._graveyard = []

    def drop_if_current(self, key: str, replicas: Sequence[Replica]) -> bool:
        """Drop `key` when these are still its replicas (a failed read must not drop a newer
        value that replaced the one it read)."""
        with self.lock:
            obj = self._objects.get(key)
            if obj is None or tuple(obj.replicas) != tuple(replicas):
                return False
            self._remove_locked(obj, CORRUPT)
            return True

    def mark_hot(self, key: str, keep: int) -> None:
        """key gets extra read replicas beyond its first `keep`, the first to go under pressure."""
        with self.lock:
            self.hot[key] = max(1, keep)

    def unmark_hot(self, key: str) -> None:
        with self.lock:
            self.hot.pop(key, None)

    def take_cooled(self) -> list[str]:
        """Keys whose hot extras eviction dropped since the last call."""
        with self.lock:
            out, self.cooled = self.cooled, []
            return out

    def _drop_hot_extras(self, target: int) -> int:
        """Free extra replicas of hot objects, least recently read first, until `target`
        bytes are free. Freed at once even under a read lease: a reader whose replica
        goes fails its record check and reads the next replica, and the kept ones stay."""
        freed = 0
        hot = self.hot
        for key in sorted(hot, key=lambda k: getattr(self._objects.get(k), "lease_until", 0.0)):
            if freed >= target:
                break
            keep = hot.pop(key)
            self.cooled.append(key)
            obj = self._objects.get(key)
            if obj is None or len(obj.replicas) <= keep or obj.busy:
                continue
            extra, obj.replicas = obj.replicas[keep:], obj.replicas[:keep]
            freed += sum(s.length for r in extra for s in r)
            self._free_replicas(extra)
            self.counters["hot_extras_dropped"] = \
                self.counters.get("hot_extras_dropped", 0) + len(extra)
        return freed

    def _evict_locked(self, need: int) -> int:
        """Free at least `need` bytes plus eviction_ratio of capacity; returns bytes freed.
        Extra replicas of hot objects go first; whole objects only when that is not enough."""
        target = need + int(self.config.eviction_ratio * self.capacity)
        freed = extras = self._drop_hot_extras(target) if self.hot else 0
        if freed >= target:
            return freed
        now = self.clock()
        chosen: list[Obj] = []
        soft: list[Obj] = []
        for key in self.policy.victims():
            obj = self._objects.get(key)
            if obj is None or obj.pin == PIN_HARD or obj.lease_until > now or obj.busy \
                    or obj.tier != "dram":
                continue
            if not obj.cold and self.tiering is not None and self.tiering.keeps(obj):
                continue  # the demoter will copy it down first: never drop what a tier can keep
            if obj.pin == PIN_SOFT and obj.pin_until > now:
                soft.append(obj)
                continue
            chosen.append(obj)
            freed += self._footprint(obj)
            if freed >= target:
                break
        for obj in soft:  # soft-pinned objects go last, only when nothing else is left
            if freed >= target:
                break
            chosen.append(obj)
            freed += self._footprint(obj)
        for obj in chosen:
            self.policy.on_remove(obj.key)
            if obj.cold:  # a verified copy lives below: this is a demotion, not a loss
                self._free_replicas(obj.replicas)
                obj.replicas, obj.tier = [], obj.cold[0]
                if self.tiering is not None:
                    self.tiering.on_demoted(obj)
                continue
            del self._objects[obj.key]
            self.departures.note(obj.key, EVICTED)
            self._free_replicas(obj.replicas)
        self.counters["evictions"] += len(chosen)
        self.counters["evicted_bytes"] += freed - extras
        return freed

    @staticmethod
    def _footprint(obj: Obj) -> int:
        return sum(s.length for r in obj.replicas for s in r)

    def _drop(self, obj: Obj, keep_until: float) -> None:
        if obj.cold and self.tiering is not None:
            self.tiering.forget(obj.key, obj.cold)
            obj.cold = ()
        self._graveyard_or_free(obj.replicas, keep_until)

    def _graveyard_or_free(self, replicas: list[Replica], keep_until: float) -> None:
        if keep_until > self.clock():
            self._graveyard.append((keep_until, replicas))
        else:
            self._free_replicas(replicas)

    def _sweep_graveyard(self, now: float) -> None:
        if not self._graveyard:
            return
        keep = []
        for until, replicas in self._graveyard:
            if until <= now:
                self._free_replicas(replicas)
            else:
                keep.append((until, replicas))
        self._graveyard = keep

    def _free_replicas(self, replicas: Iterable[Replica]) -> None:
        for replica in replicas:
            for sl in replica:
                seg = self.segments.get(sl.segment)
                if seg is not None:
                    seg.allocator.free(sl.offset, sl.length)
                    if self.on_free is not None:
                        self.on_free(sl)


# ---- hooks for the tier manager (mooncake_store/node/tiering.py) --------------------------------
class TieringHooks:
    """Index operations the tier manager's worker uses; each holds the lock briefly."""

    def __init__(self, index: "ObjectIndex") -> None:
        self.ix = index

    def dram_fill(self) -> float:
        ix = self.ix
        cap = sum(s.capacity for s in ix.segments.values() if s.tier == "dram")
        return ix.used / cap if cap else 0.0

    def demotion_batch(self, max_bytes: int) -> list[tuple[str, Replica, int, int]]:
        """LRU-first DRAM objects without a cold copy: (key, replica, size, flags); marked busy."""
        ix = self.ix
        out, total = [], 0
        with ix.lock:
            for key in ix.policy.victims():
                obj = ix._objects.get(key)
                if obj is None or obj.busy or obj.cold or obj.tier != "dram" or not obj.replicas:
                    continue
                # The replica handed out is also the busy token: finish_copy_down knows
                # the object is still this one when it finds the very same token.
                obj.busy = replica = obj.replicas[0]
                out.append((key, replica, obj.size, obj.flags))
                total += obj.size
                if total >= max_bytes:
                    break
        return out

    def finish_copy_down(self, key: str, replica: Replica, tier: str, ok: bool,
                         free_dram: bool) -> bool:
        """Record a finished cold copy; free the DRAM copy when asked. False: the object
        changed meanwhile (removed or replaced) and the cold copy must be deleted."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            # A demotion marked the object busy with this replica as token; a write-through
            # (persist) did not, and compares the replica itself.
            if obj is None or not obj.replicas or obj.replicas[0] != replica \
                    or (obj.busy and obj.busy is not replica):
                return not ok
            obj.busy = False
            if not ok:
                return True
            obj.cold = obj.cold + (tier,)
            if free_dram and obj.pin != PIN_HARD:
                ix.policy.on_remove(key)
                replicas, obj.replicas, obj.tier = obj.replicas, [], tier
                ix._graveyard_or_free(replicas, obj.lease_until)
                ix.counters["demotions"] = ix.counters.get("demotions", 0) + 1
            return True

    def promotion_start(self, key: str) -> tuple[Replica, str, int] | None:
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is None or obj.busy or obj.tier == "dram":
                return None
            record = header_size(len(key.encode())) + obj.size
            try:
                replicas = ix._allocate(record, ReplicateConfig())
            except NoSpace:
                return None
            obj.busy = True
            return replicas[0], obj.tier, obj.flags

    def finish_promotion(self, key: str, replica: Replica, ok: bool) -> None:
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is not None:
                obj.busy = False
            if obj is None or not ok or obj.tier == "dram":
                ix._free_replicas([replica])
                return
            obj.replicas, obj.tier = [replica], "dram"
            ix.policy.on_insert(key, obj.size)
            ix.counters["promotions"] = ix.counters.get("promotions", 0) + 1

    def drop_cold(self, key: str, tier: str) -> bool:
        """The tier gives up its copy of key. True when that was the last copy (object gone)."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is None or tier not in obj.cold:
                return False
            obj.cold = tuple(t for t in obj.cold if t != tier)
            if obj.tier != tier:
                return False
            if obj.cold:
                obj.tier = obj.cold[0]
                return False
            del ix._objects[key]
            ix.counters["evictions"] += 1
            return True

    def add_cold(self, key: str, size: int, flags: int, tier: str) -> bool:
        """Warm restart: an object found only in a cold tier becomes readable again."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is not None:
                if tier not in obj.cold:
                    obj.cold = obj.cold + (tier,)
                return False
            obj = Obj(key, size, [], PIN_NONE, 0.0, 0.0)
            obj.complete, obj.flags, obj.tier, obj.cold = True, flags, tier, (tier,)
            ix._objects[key] = obj
            return True


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidParams(f"bad regular expression {pattern!r}: {e}") from None
