"""Cluster operations on the ObjectIndex: nodes come and go, replicas are added and adopted.

ObjectIndex (index.py) knows segments and objects but not nodes. These helpers
take its lock and work on its tables directly, the way TieringHooks does, so the
index module itself needs no cluster knowledge:

- unmount(segment): a node died or left; its replicas vanish, objects with no
  replica left are gone, the keys that lost a replica are returned for repair.
- adopt(segment, inventory): a node (re)joined with records found in its
  segment (a restarted master rebuilds its index this way).
- add_replica_start/end: reserve room for one more replica on a chosen segment,
  then attach it once the copy is verified (or free it when the copy failed).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from ..replica import Replica, Slice
from .departures import LOST
from .index import PIN_NONE, Obj, ObjectIndex
from .objmeta import on_segment
from .stripe_repair import is_striped, mend


class ClusterIndex:
    def __init__(self, index: ObjectIndex) -> None:
        self.ix = index
        self.striped = StripedPuts(self)

    def unmount(self, segment: str) -> list[str]:
        """Forget a segment and every replica on it; returns keys that still have a replica."""
        ix = self.ix
        damaged: list[str] = []
        with ix.lock:
            if ix.segments.pop(segment, None) is None:
                return damaged
            for key, obj in on_segment(ix._objects, segment):
                reps = obj.replicas
                if is_striped(reps):   # regroup the parts that survive
                    reps = mend(ix, reps, segment)
                else:
                    reps = [r for r in reps if not _on(r, segment)]
                obj.replicas = reps
                if reps or obj.tier != "dram":
                    damaged.append(key)
                    continue
                ix.policy.on_remove(key)   # before the object goes: a bound policy reads it
                del ix._objects[key]
                ix.departures.note(key, LOST)
                ix.counters["lost"] = ix.counters.get("lost", 0) + 1
            for key, obj in list(ix._pending.items()):
                if _touches(obj.replicas, segment):
                    # The writer's put_end will fail; free what sits on surviving segments.
                    del ix._pending[key]
                    ix._free_replicas([r for r in obj.replicas if not _on(r, segment)])
            ix._graveyard = [(t, [r for r in reps if not _on(r, segment)])
                             for t, reps in ix._graveyard]
        return damaged

    def adopt(self, segment: str, inventory: Iterable[Sequence], returning: bool = False,
              replicated: dict[str, int] | None = None) -> int:
        """Record objects found in `segment`: entries (key, offset, length, size, flags).
        Returns how many entries became replicas (an entry whose range is not free or whose
        size disagrees with a known object of the same key is skipped). `replicated`, when
        given, gets key -> replica count for each whole object this gave a further replica.

        `returning`: this master dropped the segment earlier (its node went silent and came
        back, or restarted on the same memory). Its records of keys the index knows now are
        either copies that repair already replaced or values written again meanwhile, and a
        record carries no version to tell which; so they are freed (and their headers zapped,
        master/tombstones.py), never attached. Keys the index does not know come back."""
        ix = self.ix
        n = 0
        stripes: list[tuple] = []
        with ix.lock:
            seg = ix.segments.get(segment)
            if seg is None:
                return 0
            refused, fresh = [], []
            for entry in inventory:
                key, offset, length, size, _flags = entry
                if returning and _known(ix, key):
                    refused.append((offset, length))
                elif STRIPE_SEP in key:
                    stripes.append((key, offset, length, _flags))
                else:
                    fresh.append(entry)
            self._refuse(segment, refused)
            taken = seg.allocator.reserve_many([(e[1], e[2]) for e in fresh])
            for (key, offset, length, size, flags), ok in zip(fresh, taken):
                if not ok:
                    continue
                obj = ix._objects.get(key)
                if obj is not None and (obj.size != size or _touches(obj.replicas, segment)):
                    seg.allocator.free(offset, length)
                    continue
                replica = (Slice(segment, offset, length),)
                if obj is None:
                    obj = Obj(key, size, [replica], PIN_NONE, 0.0, 0.0)
                    obj.complete, obj.flags = True, flags
                    ix._objects[key] = obj
                    ix.policy.on_insert(key, size)
                else:
                    obj.replicas = (*obj.replicas, replica)
                    if replicated is not None and not is_striped(obj.replicas):
                        replicated[key] = len(obj.replicas)
                n += 1
        for skey, offset, length, flags in stripes:   # outside the lock: it takes it itself
            n += self.striped.adopt_stripe(segment, skey, offset, length, flags)
        return n

    def _refuse(self, segment: str, ranges: list[tuple[int, int]]) -> None:
        # Reserved first so the frees go through the index's hook like any other.
        ix = self.ix
        taken = ix.segments[segment].allocator.reserve_many(ranges)
        for (offset, length), ok in zip(ranges, taken):
            if ok:
                ix._free_replicas([(Slice(segment, offset, length),)])
                ix.counters["stale_refused"] = ix.counters.get("stale_refused", 0) + 1

    def replicas(self, key: str) -> list[Replica] | None:
        with self.ix.lock:
            obj = self.ix._objects.get(key)
            if obj is None or not obj.complete:
                return None
            return list(obj.replicas)

    def add_replica_start(self, key: str, segment: str) -> Slice | None:
        """Reserve room on `segment` for one more replica of key (None: no room / no object)."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            seg = ix.segments.get(segment)
            if obj is None or seg is None or not obj.replicas or _touches(obj.replicas, segment) \
                    or len(obj.replicas[0]) != 1:   # striped replicas are not repaired (yet)
                return None
            length = sum(s.length for s in obj.replicas[0])
            off = seg.allocator.alloc(length)
            return None if off is None else Slice(segment, off, length)

    def add_replica_end(self, key: str, sl: Slice, ok: bool) -> bool:
        """Attach a verified copy, or free its room. False when it was not attached."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if ok and obj is not None and obj.replicas and sl.segment in ix.segments \
                    and sum(s.length for s in obj.replicas[0]) == sl.length:
                obj.replicas = (*obj.replicas, (sl,))
                return True
            ix._free_replicas([(sl,)])
            return False

    def drop_replica(self, key: str, keep: int) -> int:
        """Free replicas beyond the first `keep` (newest first); space of a leased object is
        parked until its lease ends. Returns how many were dropped."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is None or len(obj.replicas) <= keep:
                return 0
            extra, obj.replicas = obj.replicas[keep:], obj.replicas[:keep]
            ix._graveyard_or_free(extra, obj.lease_until)
            return len(extra)

    def object_count(self) -> int:
        return len(self.ix._objects)


def _on(replica: Replica, segment: str) -> bool:
    return any(s.segment == segment for s in replica)


def _touches(replicas: Iterable[Replica], segment: str) -> bool:
    return any(_on(r, segment) for r in replicas)


# ---- striping -----------------------------------------------------------------------------------
STRIPE_SEP = "\x00"


def stripe_key(key: str, replica: int, part: int, parts: int, total: int) -> str:
    """The key written in the header of one stripe: findable by an inventory scan, and
    carrying what is needed to reassemble the object from its stripes."""
    return f"{key}{STRIPE_SEP}{replica}/{part}/{parts}/{total}"


def _known(ix: ObjectIndex, key: str) -> bool:
    """Whether the index has (or is writing) the object a record or stripe part belongs to."""
    if STRIPE_SEP in key:
        parsed = parse_stripe_key(key)
        key = parsed[0] if parsed is not None else key
    return key in ix._objects or key in ix._pending


def parse_stripe_key(skey: str) -> tuple[str, int, int, int, int] | None:
    base, sep, rest = skey.rpartition(STRIPE_SEP)
    if not sep:
        return None
    try:
        r, i, k, total = (int(x) for x in rest.split("/"))
    except ValueError:
        return None
    return base, r, i, k, total


def stripe_parts(size: int, stripe: int) -> list[int]:
    k = -(-size // stripe)
    base, extra = divmod(size, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


class StripedPuts:
    """put_start for values above the stripe size: each replica is several slices on
    different segments, each slice one self-contained record (header + part)."""

    def __init__(self, cluster: ClusterIndex) -> None:
        self.c = cluster
        self.partial: dict[tuple[str, int, int], dict] = {}   # inventory stripes waiting for siblings

    def put_start(self, key: str, size: int, rc, stripe: int, upsert: bool) -> list[Replica] | None:
        from ..codec import header_size
        from ..errors import NoSpace
        from .index import PIN_HARD, PIN_SOFT

        ix = self.c.ix
        parts = stripe_parts(size, stripe)
        now = ix.clock()
        with ix.lock:
            if key in ix._pending or (not upsert and key in ix._objects):
                return None
            segs = sorted((s for s in ix.segments.values() if s.tier == "dram"),
                          key=lambda s: s.used - s.capacity)
            if not segs:
                raise NoSpace("no segment is mounted")
            replicas: list[Replica] = []
            try:
                for r in range(rc.replica_num if len(segs) > 1 else 1):
                    slices = []
                    for i, n in enumerate(parts):
                        length = header_size(len(stripe_key(key, r, i, len(parts), size).encode())) + n
                        # Part i of replica r on segment (i + r) mod S: neighbours differ.
                        for j in range(len(segs)):
                            seg = segs[(i + r + j) % len(segs)]
                            off = seg.allocator.alloc(length)
                            if off is not None:
                                slices.append(Slice(seg.name, off, length))
                                break
                        else:
                            raise NoSpace(f"no room for stripe {i} of {key!r}")
                    replicas.append(tuple(slices))
            except NoSpace:
                ix._free_replicas(replicas + ([tuple(slices)] if slices else []))
                raise
            pin, pin_until = 0, 0.0
            if rc.with_hard_pin:
                pin = PIN_HARD
            elif rc.with_soft_pin:
                pin, pin_until = PIN_SOFT, now + (rc.soft_pin_ttl_ms or ix.config.soft_pin_ttl_ms) / 1000
            obj = Obj(key, size, replicas, pin, pin_until, now + ix.config.put_timeout_ms / 1000.0)
            ix._pending[key] = obj
            return replicas

    def adopt_stripe(self, segment: str, skey: str, offset: int, length: int, flags: int) -> bool:
        """An inventory entry that is one stripe: reserve it; attach a replica whenever a copy
        of every part has been seen (they may come from several nodes, in any order). Parts
        are grouped by object, part count and size, not by the replica number in their
        header: after a node loss a replica is regrouped from parts of several (stripe_repair)."""
        parsed = parse_stripe_key(skey)
        if parsed is None:
            return False
        key, r, i, k, total = parsed
        if not 0 <= i < k:
            return False
        ix = self.c.ix
        with ix.lock:
            seg = ix.segments.get(segment)
            if seg is None or not seg.allocator.reserve(offset, length):
                return False
            group = self.partial.setdefault((key, k, total), {"parts": {}})
            parts = group["parts"]
            parts.setdefault(i, []).append(Slice(segment, offset, length))
            if not all(parts.get(j) for j in range(k)):
                return True
            replica = tuple(parts[j].pop(0) for j in range(k))
            if not any(parts.values()):
                del self.partial[(key, k, total)]
            obj = ix._objects.get(key)
            if obj is None:
                obj = Obj(key, total, [replica], 0, 0.0, 0.0)
                obj.complete, obj.flags = True, flags
                ix._objects[key] = obj
                ix.policy.on_insert(key, total)
            elif obj.size == total:
                obj.replicas = (*obj.replicas, replica)
            else:
                ix._free_replicas([replica])
            return True
