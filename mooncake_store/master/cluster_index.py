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
from .index import PIN_NONE, Obj, ObjectIndex


class ClusterIndex:
    def __init__(self, index: ObjectIndex) -> None:
        self.ix = index

    def unmount(self, segment: str) -> list[str]:
        """Forget a segment and every replica on it; returns keys that still have a replica."""
        ix = self.ix
        damaged: list[str] = []
        with ix.lock:
            if ix.segments.pop(segment, None) is None:
                return damaged
            for key, obj in list(ix._objects.items()):
                if not _touches(obj.replicas, segment):
                    continue
                obj.replicas = [r for r in obj.replicas if not _on(r, segment)]
                if obj.replicas or obj.tier != "dram":
                    damaged.append(key)
                    continue
                del ix._objects[key]
                ix.policy.on_remove(key)
                ix.counters["lost"] = ix.counters.get("lost", 0) + 1
            for key, obj in list(ix._pending.items()):
                if _touches(obj.replicas, segment):
                    # The writer's put_end will fail; free what sits on surviving segments.
                    del ix._pending[key]
                    ix._free_replicas([r for r in obj.replicas if not _on(r, segment)])
            ix._graveyard = [(t, [r for r in reps if not _on(r, segment)])
                             for t, reps in ix._graveyard]
        return damaged

    def adopt(self, segment: str, inventory: Iterable[Sequence]) -> int:
        """Record objects found in `segment`: entries (key, offset, length, size, flags).
        Returns how many entries became replicas (an entry whose range is not free or whose
        size disagrees with a known object of the same key is skipped)."""
        ix = self.ix
        n = 0
        with ix.lock:
            seg = ix.segments.get(segment)
            if seg is None:
                return 0
            for key, offset, length, size, flags in inventory:
                obj = ix._objects.get(key)
                if obj is not None and (obj.size != size or _touches(obj.replicas, segment)):
                    continue
                if not seg.allocator.reserve(offset, length):
                    continue
                replica = (Slice(segment, offset, length),)
                if obj is None:
                    obj = Obj(key, size, [replica], PIN_NONE, 0.0, 0.0)
                    obj.complete, obj.flags = True, flags
                    ix._objects[key] = obj
                    ix.policy.on_insert(key, size)
                else:
                    obj.replicas.append(replica)
                n += 1
        return n

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
            if obj is None or seg is None or not obj.replicas or _touches(obj.replicas, segment):
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
                obj.replicas.append((sl,))
                return True
            ix._free_replicas([(sl,)])
            return False

    def object_count(self) -> int:
        return len(self.ix._objects)


def _on(replica: Replica, segment: str) -> bool:
    return any(s.segment == segment for s in replica)


def _touches(replicas: Iterable[Replica], segment: str) -> bool:
    return any(_on(r, segment) for r in replicas)
