"""Keeping striped objects at their replica count when nodes die.

A striped replica is k slices (parts) on several nodes; part i of replica r sits
on segment (i + r) mod S, so the copies of one part are on different nodes but
every replica usually touches every node. Losing a node therefore damages every
replica, yet each part still has a copy somewhere. Readers do not care which
replica a part came from (each part is a self-contained record naming the object,
its index, the part count and the total size), so:

- mend(): when a segment goes, the surviving copies of each part are regrouped
  into as many complete replicas as the scarcest part allows; leftover copies are
  freed. The object is lost only when some part has no copy left.
- plan() / attach(): a new replica is reserved part by part, each part on a
  segment holding no copy of that part, copied by the target nodes from a
  complete replica (the node verifies each part), and attached once every part
  has been copied and verified.

All three run under the index lock (plan and attach take it; mend is called by
ClusterIndex.unmount, which holds it).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..replica import Replica, Slice


def is_striped(replicas: Sequence[Replica]) -> bool:
    return bool(replicas) and len(replicas[0]) > 1


def mend(ix: Any, replicas: Sequence[Replica], segment: str) -> list[Replica]:
    """Complete replicas made of the parts that survive losing `segment` (caller holds the
    lock; the segment is already unmounted). Copies that fit no complete replica are freed."""
    k = len(replicas[0])
    if any(len(r) != k for r in replicas):   # not one striping: keep what is whole
        return [r for r in replicas if all(s.segment != segment for s in r)]
    copies = [[r[i] for r in replicas if r[i].segment != segment] for i in range(k)]
    n = min(len(c) for c in copies)
    whole = [tuple(copies[i][j] for i in range(k)) for j in range(n)]
    spare = [(c[j],) for c in copies for j in range(n, len(c))]
    if spare:
        ix._free_replicas(spare)
    if not whole:
        ix._free_replicas([(s,) for c in copies for s in c])
    return whole


def plan(ix: Any, key: str) -> tuple[list[Slice], int] | None:
    """Reserve one more striped replica of `key`: part i on a segment with no copy of part i,
    most free space first, consecutive parts on different segments where possible.
    Returns the slices and the object's size, or None (no object, not striped, no room)."""
    with ix.lock:
        obj = ix._objects.get(key)
        if obj is None or not getattr(obj, "complete", True):
            return None
        replicas = list(obj.replicas)
        if not is_striped(replicas):
            return None
        k = len(replicas[0])
        segs = sorted((s for s in ix.segments.values() if s.tier == "dram"),
                      key=lambda s: s.used - s.capacity)
        out: list[Slice] = []
        for i in range(k):
            held = {r[i].segment for r in replicas if len(r) == k}
            prev = out[-1].segment if out else None
            order = [s for s in segs if s.name not in held]
            order.sort(key=lambda s: s.name == prev)   # stable: the previous part's last
            for seg in order:
                off = seg.allocator.alloc(replicas[0][i].length)
                if off is not None:
                    out.append(Slice(seg.name, off, replicas[0][i].length))
                    break
            else:
                if out:
                    ix._free_replicas([tuple(out)])
                return None
        return out, obj.size


def attach(ix: Any, key: str, src: Replica, slices: Sequence[Slice], ok: bool) -> bool:
    """Add the copied parts as one more replica, or free them (copy failed, a target segment
    gone, or the object gone or replaced since: its parts are no longer those of `src`, the
    replica copied from, so the copy may hold an older value). False when not attached."""
    with ix.lock:
        obj = ix._objects.get(key)
        fits = obj is not None and is_striped(obj.replicas) and len(obj.replicas[0]) == len(slices) \
            and all(a.length == b.length for a, b in zip(obj.replicas[0], slices)) \
            and set(src) <= {s for r in obj.replicas for s in r}
        if ok and fits and all(s.segment in ix.segments for s in slices):
            obj.replicas = [*obj.replicas, tuple(slices)]
            return True
        ix._free_replicas([tuple(slices)])
        return False
