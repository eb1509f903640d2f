"""How many cold copies each object keeps, and getting them back when nodes die.

Cold copies (master/cluster_tiers.py: `obj.cold`, names `TIER@NODE_RPC`) count
as copies of an object:

  * an object of replica_num n keeps n cold copies on distinct nodes. When its
    first demotion is acked, its DRAM stays and the next node holding a DRAM
    replica copies that one into its own tier (`demote_more`, a local copy);
    the DRAM goes once n nodes hold a copy;
  * an object short of copies (its node died, a copy failed, its DRAM was
    evicted before the second copy) is queued; `plan` has a tiered node that
    holds none `fetch` one from a node that does (the node stages it there and
    reads it over the transfer engine), or, for a written-through object whose
    durable copy died, writes through again from a DRAM replica;
  * when a node dies holding an object's last copy in its S3 prefix, a live
    node on the same S3 service and bucket copies it into its own prefix
    (`rescue`, planned by ClusterTiering.node_lost; `finish_rescue` renames the
    copy or gives it up);
  * when a node dies holding a copy, the object it belonged to is remembered:
    a node coming back with that record may attach it only to the same object,
    never to one written under the key since (same size, other bytes).

Everything here runs under the master's svc._lock and the index lock (the
tiering tick, node loss, task answers), except `queue`, which eviction calls
under the index lock alone.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from .departures import LOST

REPAIRS_PER_TICK = 64
RETRY_S = 2.0                 # a failed or postponed cold copy is tried again after this
MAX_LOST_HISTORY = 1 << 20    # keys whose copy died with a node, remembered for its return


def split_tier(name: str) -> tuple[str, str]:
    """"ssd@host:port" -> ("ssd", "host:port"); "dram" -> ("dram", "")."""
    tier, _, where = name.partition("@")
    return tier, where


class ColdRepair:
    def __init__(self, tiers: Any) -> None:
        self.t = tiers                                  # the ClusterTiering it serves
        self.durable: set[str] = set()                  # keys written through
        self._queue: dict[str, None] = {}               # keys that may lack copies (ordered)
        self._later: deque[tuple[float, str]] = deque()
        self._lost_at: dict[str, Any] = {}              # key -> Obj, or None (it was lost)

    def clear(self) -> None:
        self.durable.clear()
        self._queue.clear()
        self._later.clear()
        self._lost_at.clear()

    def queue(self, key: str) -> None:
        """key may have fewer copies than it wants: look at it on the next tick."""
        self._queue[key] = None

    def queue_many(self, keys: Any) -> None:
        for key in itertools.islice(keys, 1 << 16):
            self._queue[key] = None

    # ---- records of nodes that come back -----------------------------------------------------
    # Per key, the objects ("eras") that had a copy on a node that died, each with whether it
    # was lost then. A returning record carries no version the master could compare, so it is
    # trusted only when exactly one era is known: it then holds that era's value. With two
    # (the key was written again and another node died meanwhile) records of the key are
    # refused: a copy may be lost, a wrong value is never attached.
    def remember_lost(self, key: str, obj: Any, lost: bool) -> None:
        """A node died with a copy of key; `obj` is the object it belonged to, `lost`
        whether that object died with it (no copy left)."""
        hist = self._lost_at
        eras = hist.pop(key, None) or []
        for i, (era, _) in enumerate(eras):
            if era is obj:
                eras[i] = (obj, lost)
                break
        else:
            if len(eras) < 2:
                eras.append((obj, lost))
        hist[key] = eras
        if len(hist) > MAX_LOST_HISTORY:   # the oldest go: their nodes are long back or gone
            for k in list(itertools.islice(hist, len(hist) - MAX_LOST_HISTORY)):
                del hist[k]

    def stale(self, key: str, obj: Any) -> bool:
        """Whether a returning node's record of key may belong to another value than the
        current object `obj` (None: the key is unknown now)."""
        eras = self._lost_at.get(key)
        if eras is None:
            return False            # no node died with it: the usual size check decides
        if len(eras) != 1:
            return True
        era, lost = eras[0]
        return era is not obj and not (obj is None and lost)

    def revived(self, key: str, obj: Any) -> None:
        """A returning record became the object again: more returning copies attach to it."""
        if key in self._lost_at:
            self._lost_at[key] = [(obj, False)]

    # ---- planning ------------------------------------------------------------------------------
    def plan(self, now: float) -> list[tuple[str, dict]]:
        """Tasks that give queued objects one more copy each (bounded per tick)."""
        while self._later and self._later[0][0] <= now:
            self._queue[self._later.popleft()[1]] = None
        t = self.t
        objects, out = t.ix._objects, []
        for _ in range(min(REPAIRS_PER_TICK, len(self._queue))):
            key = next(iter(self._queue))
            del self._queue[key]
            obj = objects.get(key)
            if obj is None or not obj.complete:
                continue
            if obj.busy:
                self._later.append((now + RETRY_S, key))
                continue
            if obj.replicas:   # in DRAM: only a written-through object wants a cold copy
                if key in self.durable and not obj.cold and not t._persist_task(key, obj, now):
                    self._later.append((now + RETRY_S, key))
                continue
            task = self._fetch(key, obj, now)
            if task is not None:
                out.append(task)
        return out

    def _fetch(self, key: str, obj: Any, now: float) -> tuple[str, dict] | None:
        t = self.t
        holders = {t._by_rpc.get(split_tier(name)[1]): name for name in obj.cold}
        holders.pop(None, None)
        if not holders or len(holders) >= t.svc.want.get(key, 1):
            return None
        target = self._target(set(holders), now)
        if target is None:
            return None   # no tiered node without a copy: one that joins re-queues it
        src = next(iter(holders.values()))
        tid = next(t.svc._task_ids)
        obj.busy = True
        t._register(tid, "fetch", key, target.node_id, obj,
                    now + 2 * t.svc.config.node_ttl_ms / 1000.0 + 30.0,
                    tier=f"{target.tiers[0]}@{target.rpc}", src=src)
        src_tier, src_rpc = split_tier(src)
        return target.node_id, {"kind": "fetch", "id": tid, "key": key, "src": src_rpc,
                                "src_tier": src_tier, "size": obj.size}

    def _target(self, exclude: set[str], now: float) -> Any:
        """A healthy tiered node (not in `exclude`) with the most free room in its first tier."""
        best, room = None, -1
        for node in self.t.nodes.values():
            if node.node_id in exclude or node.unhealthy_until > now \
                    or node.node_id not in self.t.svc.nodes:
                continue
            u = node.usage.get(node.tiers[0]) or {}
            free = int(u.get("capacity", 0)) - int(u.get("used", 0))
            if free > room:
                best, room = node, free
        return best

    def demote_more(self, key: str, obj: Any) -> bool:
        """An object of replica_num > 1 got a cold copy: have another node holding one of its
        DRAM replicas copy that one into its own tier before the DRAM goes, so the object
        never has fewer copies than it asked for. False when no such node is free (the
        object is queued: a fetch adds the missing copies)."""
        t = self.t
        want = t.svc.want.get(key, 1)
        if want <= 1:
            return False
        have = {t._by_rpc.get(split_tier(name)[1]) for name in obj.cold}
        if len(have - {None}) >= want:
            return False
        now = t.svc.clock()
        for r in obj.replicas:
            node = t._demoter(r, now, busy_ok=False)
            if node is None or node.node_id in have:
                continue
            task = t._start_demotion(key, obj, r, node, now)
            if task is None:
                continue
            t._send(node.node_id, task)
            return True
        self.queue(key)
        return False

    # ---- answers -------------------------------------------------------------------------------
    def finish_fetch(self, task: Any, ok: bool, current: bool) -> tuple[bool, bool]:
        """A fetch answered: (attached, the node must forget its copy)."""
        t, obj = self.t, task.obj
        if not ok:
            t.counters["cold_repair_failures"] += 1
            if current:
                self._later.append((t.svc.clock() + RETRY_S, task.key))
            return False, False
        if not current:
            # Removed or replaced meanwhile: the copy holds an old value (a same-object check,
            # so a source copy that moved or died meanwhile does not matter).
            newer = t.ix._objects.get(task.key)
            return False, not (newer is not None and task.tier in newer.cold)
        if task.tier not in obj.cold:
            obj.cold = obj.cold + (task.tier,)
        t.counters["cold_repairs"] += 1
        self.queue(task.key)   # still short? planned again
        return True, False

    def finish_rescue(self, task: Any, ok: bool, current: bool) -> tuple[bool, bool]:
        """A rescue of a dead node's S3 copy answered (or failed, or its helper died):
        rename the copy to the helper's, or give it up (an object with no copy left is
        removed and counted). Returns (attached, the helper must forget its copy)."""
        t, obj = self.t, task.obj
        if ok and current and task.src in obj.cold:
            obj.cold = tuple(task.tier if c == task.src else c for c in obj.cold)
            if obj.tier == task.src:
                obj.tier = task.tier
            t.counters["cold_rescued"] += 1
            return True, False
        if ok and not current:
            newer = t.ix._objects.get(task.key)
            return False, not (newer is not None and task.tier in newer.cold)
        t.counters["rescue_failures"] += not ok
        if current and task.src in obj.cold:
            obj.cold = tuple(c for c in obj.cold if c != task.src)
            if obj.tier == task.src and not retier(t.ix, task.key, obj):
                t.counters["cold_lost"] += 1
                t.ix.counters["lost"] = t.ix.counters.get("lost", 0) + 1
                self.remember_lost(task.key, obj, True)
        return False, False


def retier(ix: Any, key: str, obj: Any) -> bool:
    """Point reads at the copy that is left after one went away; False (and the object
    dropped from the index) when none is left. Call under ix.lock."""
    if obj.cold:
        obj.tier = obj.cold[0]
    elif obj.replicas:
        obj.tier = "dram"
    else:
        del ix._objects[key]
        ix.departures.note(key, LOST)
        return False
    return True
