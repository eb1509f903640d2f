"""Cold tiers on cluster nodes, the master's half: which object lives in which node's tier.

A node started with cold tiers (node/cold.py) registers them with the address
of its staging RPC. A cold copy is named `TIER@ADDRESS` ("ssd@10.0.0.5:41234")
in the index's existing per-object fields: `obj.cold` lists the copies,
`obj.tier` says where reads go ("dram" while DRAM replicas exist). A client
that finds such a tier in a lookup asks that node to stage the value and reads
it over the transfer engine (client/cold_read.py); the master carries no bytes.

What moves, and when (everything asynchronous, carried by heartbeat tasks):
  * demotion: on every tick, a node whose DRAM segment is fuller than
    `demote_watermark` gets `demote` tasks for its least recently used objects;
    the node copies each record into its first cold tier and acks; only then is
    the cold copy recorded and the DRAM freed (all replicas: the object now
    lives below). A striped object is demoted by the tiered node holding most of
    it (`gather`: the parts joined into one record). Eviction never drops an
    object a healthy tiered node is about to demote (`keeps`), so a full DRAM
    pushes back on puts instead of losing data;
  * copies: an object of replica_num n keeps n cold copies on distinct nodes
    (each DRAM holder copies its own replica before the DRAM goes; otherwise a
    tiered node `fetch`es one from a node holding a copy: master/cold_repair.py);
  * promotion: a cold read counts a hit; per `promotion` (off / on-hit /
    on-second-hit) the master reserves room in the holding node's DRAM and sends
    `promote`; the cold copy stays, so a later eviction is free;
  * removal and replacement send `forget` to the node holding the old copy,
    in order with later tasks for the same key;
  * a node's own moves (SSD full: pushed to S3, or dropped) arrive as events in
    its heartbeats; a lost node takes its cold copies with it (objects with
    another copy read that one and are repaired; objects with none are removed).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..codec import header_size
from ..replica import Replica, Slice
from .cold_repair import ColdRepair, retier as _retier, split_tier
from .index import PIN_HARD, PIN_NONE, PIN_SOFT, Obj
from .objmeta import with_rare_fields

log = logging.getLogger("mooncake_store.master")

DEMOTE_TASKS_PER_NODE = 256      # in flight per node
SCAN_PER_TICK = 20_000           # LRU entries looked at per tick when choosing victims
PROMOTIONS_PER_TICK = 64
MAX_QUEUED_PROMOTIONS = 4096     # hits beyond it are not queued (a later hit tries again)
UNHEALTHY_S = 5.0                # after a failed demotion, eviction may drop for this long
STARVED_S = 0.5                  # after eviction deferred to demotion, demote below the watermark


@dataclass
class ColdNode:
    node_id: str
    rpc: str
    tiers: list[str]
    usage: dict = field(default_factory=dict)
    demoting: int = 0            # demote tasks in flight
    unhealthy_until: float = 0.0
    s3: tuple = ()               # (endpoint, bucket, prefix) of its S3 tier, if any


@dataclass
class ColdTask:
    kind: str                     # demote | persist (demote keeping DRAM) | promote
    key: str
    node_id: str
    obj: Obj
    deadline: float
    replica: Replica | None = None   # demote: the DRAM replica copied
    slice: Slice | None = None       # promote: the reserved DRAM room
    tier: str = ""                   # qualified tier name
    src: str = ""                    # fetch: the qualified tier copied from


class ClusterTiering:
    """The index's `tiering` hook for a cluster master (see index.py: keeps, on_cold_hit,
    on_demoted, forget) plus the planner the master's ticker runs."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc
        self.nodes: dict[str, ColdNode] = {}
        self._by_rpc: dict[str, str] = {}
        self._tasks: dict[int, ColdTask] = {}
        self._promote: deque[str] = deque()   # appended under the index lock, drained by the tick
        self._forget: deque[tuple[str, tuple[str, ...]]] = deque()
        self._lock = threading.Lock()
        self._starved = -1e9            # last time eviction deferred to a demotion
        self._persist: dict[str, str] = {}   # key -> pending | ok | failed (write-through)
        self.repair = ColdRepair(self)       # cold copies: how many each object keeps
        self.counters = {"demotions": 0, "demote_failures": 0, "promotions": 0,
                         "promote_failures": 0, "cold_moves": 0, "cold_drops": 0, "cold_lost": 0,
                         "forgets": 0, "cold_copies_lost": 0, "cold_repairs": 0,
                         "cold_repair_failures": 0, "striped_demotions": 0, "rescues": 0,
                         "cold_rescued": 0, "rescue_failures": 0}
        self.attach(svc.index)

    def attach(self, index: Any) -> None:
        """A fresh index (new leader): hook into it; tasks of the old one are void."""
        index.tiering = self
        self.nodes.clear()
        self._by_rpc.clear()
        self._tasks.clear()
        self._promote.clear()
        self._forget.clear()
        self._persist.clear()
        self.repair.clear()

    @property
    def ix(self) -> Any:
        return self.svc.index

    # ---- index hooks (called under the index lock: never block, never take svc._lock) -------------
    def keeps(self, obj: Obj) -> bool:
        if not obj.replicas:
            return False
        now = self.svc.clock()
        if any(self._demoter(r, now) is not None for r in obj.replicas):
            # Eviction wanted this space: demote now even below the watermark (free
            # space may be too fragmented for the record that needs it).
            self._starved = now
            return True
        return False

    def _demoter(self, replica: Replica, now: float | None, busy_ok: bool = True) -> ColdNode | None:
        """The healthy tiered node that demotes this replica: the node of a single-slice
        replica; for a striped one, the tiered node holding most of its bytes (it gathers
        the other parts from their nodes). None when no such node exists."""
        segs = self.ix.segments
        held: dict[str, int] = {}
        for sl in replica:
            seg = segs.get(sl.segment)
            if seg is None:
                return None          # a part is gone: stripe repair regroups it first
            node = self.nodes.get(seg.node)
            if node is not None and (now is None or node.unhealthy_until <= now) \
                    and (busy_ok or node.demoting < DEMOTE_TASKS_PER_NODE):
                held[node.node_id] = held.get(node.node_id, 0) + sl.length
        if not held:
            return None
        return self.nodes[max(held, key=held.__getitem__)]

    def _demote_task(self, key: str, obj: Obj, replica: Replica, node: ColdNode, tid: int,
                     tier: str | None = None) -> dict | None:
        """The node task copying `replica` into the node's tier: `demote` for one record of
        its own segment, `gather` for a striped replica (parts read from their nodes).
        Call with svc._lock held (segment descriptors)."""
        if len(replica) == 1:
            sl = replica[0]
            task = {"kind": "demote", "id": tid, "key": key, "segment": sl.segment,
                    "offset": sl.offset, "length": sl.length}
        else:
            parts = []
            for sl in replica:
                d = self.svc.segdesc.get(sl.segment)
                if d is None:
                    return None
                parts.append([sl.segment, d.endpoint, d.base + sl.offset, sl.length])
            task = {"kind": "gather", "id": tid, "key": key, "size": obj.size, "parts": parts}
        if tier is not None:
            task["tier"] = tier
        return task

    def on_cold_hit(self, obj: Obj) -> None:
        obj.cold_hits += 1
        mode = self.svc.config.promotion
        if (mode == "on-hit" or (mode == "on-second-hit" and obj.cold_hits >= 2)) \
                and len(self._promote) < MAX_QUEUED_PROMOTIONS:
            self._promote.append(obj.key)

    def on_demoted(self, obj: Obj) -> None:
        """Eviction dropped the DRAM of an object with a cold copy: if it asked for more
        copies than it has below, the cold repair adds them (the planner checks)."""
        self.repair.queue(obj.key)

    def forget(self, key: str, tiers: tuple[str, ...]) -> None:
        self._forget.append((key, tuple(tiers)))
        self.repair.durable.discard(key)   # removed or replaced: a new put asks again

    # ---- nodes ---------------------------------------------------------------------------------------
    def add_node(self, node_id: str, cold: dict) -> int:
        """A node registered with cold tiers: remember where to read, adopt its records.
        Called with svc._lock held."""
        rpc, tiers = str(cold.get("rpc", "")), [str(t) for t in cold.get("tiers", ())]
        if not rpc or not tiers:
            return 0
        old = self._by_rpc.get(rpc)
        if old is not None and old != node_id:
            self.node_lost(old)
        s3 = cold.get("s3")
        s3 = tuple(str(s3.get(k, "")) for k in ("endpoint", "bucket", "prefix")) \
            if isinstance(s3, dict) else ()
        self.nodes[node_id] = ColdNode(node_id, rpc, tiers, dict(cold.get("usage") or {}), s3=s3)
        self._by_rpc[rpc] = node_id
        n = self._adopt(node_id, rpc, cold.get("inventory") or {})
        # A new tiered node may be the room a cold object short of copies waits for.
        # A copy: a departure (any thread, under the index lock) may pop from `want` meanwhile.
        self.repair.queue_many(list(self.svc.want))
        return n

    def adopt_part(self, node_id: str, tier: str, entries: list) -> int:
        """Part of a registered node's cold inventory (sent apart when it is large).
        Called with svc._lock held."""
        node = self.nodes.get(node_id)
        if node is None or tier not in node.tiers:
            return 0
        return self._adopt(node_id, node.rpc, {tier: entries})

    def _adopt(self, node_id: str, rpc: str, inventory: dict) -> int:
        """Records found in the node's tiers become readable again (warm restart). A record
        whose key is known with another size is stale: the node is told to forget it."""
        ix, n = self.ix, 0
        stale = []
        with ix.lock:
            for tier, entries in inventory.items():
                name = f"{tier}@{rpc}"
                for key, size, flags in entries:
                    obj = ix._objects.get(key)
                    if self.repair.stale(key, obj):
                        stale.append(key)   # written (or removed) since a node died with it
                        continue
                    if obj is None:
                        obj = Obj(key, size, [], PIN_NONE, 0.0, 0.0)
                        obj.complete, obj.flags, obj.tier, obj.cold = True, flags, name, (name,)
                        ix._objects[key] = obj
                        self.repair.revived(key, obj)
                        n += 1
                    elif obj.size == size and not any(split_tier(t)[1] == rpc for t in obj.cold):
                        obj.cold = obj.cold + (name,)
                        if obj.tier == "dram" and not obj.replicas:
                            obj.tier = name
                        n += 1
                    else:
                        stale.append(key)
        for key in stale:
            self._send(node_id, {"kind": "forget", "id": 0, "key": key})
        return n

    def node_lost(self, node_id: str) -> None:
        """A node died or left (before its segments are unmounted). Its cold copies are gone
        with it: dropped from the index, so neither reads nor `mstore stat` name them; an
        object with another copy reads from that one and is queued to get its copy count
        back; an object with no copy left is removed (counted in `cold_lost`), never served.
        Called with svc._lock held."""
        node = self.nodes.pop(node_id, None)
        ix = self.ix
        with ix.lock:
            segs = {name for name, seg in ix.segments.items() if seg.node == node_id}
            if node is not None:
                self._by_rpc.pop(node.rpc, None)
                self._drop_tasks(node_id)
            suffix = "@" + node.rpc if node is not None else None
            for key, obj in with_rare_fields(ix._objects):   # a cold copy is a rare field
                if not obj.cold:
                    continue   # DRAM-only objects: the segment's unmount deals with them
                if suffix is not None and any(t.endswith(suffix) for t in obj.cold):
                    gone = [t for t in obj.cold if t.endswith(suffix)]
                    obj.cold = tuple(t for t in obj.cold if not t.endswith(suffix))
                    self.counters["cold_copies_lost"] += 1
                    if not obj.cold and (obj.tier != "dram" or _dram_lost(obj.replicas, segs)) \
                            and self._rescue(key, obj, gone, node):
                        continue   # its last copy is in S3: another node copies it over
                    if obj.tier != "dram" and not _retier(ix, key, obj):
                        self.counters["cold_lost"] += 1
                        ix.counters["lost"] = ix.counters.get("lost", 0) + 1
                        self.repair.remember_lost(key, obj, True)
                        continue
                    self.repair.remember_lost(key, obj, False)
                    self.repair.queue(key)
                if obj.cold and obj.tier == "dram" and _dram_lost(obj.replicas, segs):
                    # Every DRAM replica goes with the node but a cold copy lives elsewhere:
                    # read that one (the unmount keeps an object whose tier is not DRAM).
                    obj.tier = obj.cold[0]
                    self.repair.queue(key)

    def _rescue(self, key: str, obj: Obj, gone: list[str], node: ColdNode) -> bool:
        """The last copy of key was in the S3 tier of `node`, which died: a live node using
        the same S3 service and bucket (another prefix) copies it into its own prefix; the
        copy is renamed when it acks. Meanwhile the object names the dead copy (reads fail
        as unreachable, never wrong). False when no node can. svc._lock and ix.lock held."""
        src = next((t for t in gone if split_tier(t)[0] == "s3"), None)
        if src is None or not node.s3:
            return False
        helper = next((n for n in self.nodes.values()
                       if n.s3 and n.s3[:2] == node.s3[:2] and n.s3[2] != node.s3[2]
                       and n.node_id in self.svc.nodes), None)
        if helper is None:
            return False
        obj.cold, obj.tier, obj.busy = (src,), src, True
        tid = next(self.svc._task_ids)
        self._register(tid, "rescue", key, helper.node_id, obj,
                       self.svc.clock() + 2 * self.svc.config.node_ttl_ms / 1000.0 + 60.0,
                       tier=f"s3@{helper.rpc}", src=src)
        self._send(helper.node_id, {"kind": "rescue", "id": tid, "key": key,
                                    "prefix": node.s3[2], "size": obj.size})
        self.counters["rescues"] += 1
        self.repair.remember_lost(key, obj, False)
        return True

    def _drop_tasks(self, node_id: str) -> None:
        """Tasks of a lost node are void; their objects are free for new tasks (ix.lock held)."""
        for tid in [t for t, task in self._tasks.items() if task.node_id == node_id]:
            task = self._tasks.pop(tid)
            task.obj.busy = False
            if task.kind == "persist" and task.key in self._persist:
                self._persist[task.key] = "failed"
            if task.slice is not None:
                self.ix._free_replicas([(task.slice,)])
            if task.kind == "fetch":
                self.repair.queue(task.key)
            if task.kind == "rescue":   # its helper died too: the copy is given up
                self.repair.finish_rescue(task, False, self.ix._objects.get(task.key) is task.obj)

    def apply_report(self, node_id: str, report: dict) -> None:
        """A node's heartbeat: its tiers' usage and the moves/drops it made itself."""
        node = self.nodes.get(node_id)
        if node is None or not isinstance(report, dict):
            return
        node.usage = dict(report.get("usage") or {})
        events = report.get("events") or ()
        if not events:
            return
        ix = self.ix
        with ix.lock:
            for ev in events:
                key, kind = ev[0], ev[1]
                obj = ix._objects.get(key)
                if obj is None:
                    continue
                src = f"{ev[2]}@{node.rpc}"
                if src not in obj.cold:
                    continue
                if kind == "moved":
                    dst = f"{ev[3]}@{node.rpc}"
                    obj.cold = tuple(dst if t == src else t for t in obj.cold)
                    if obj.tier == src:
                        obj.tier = dst
                    self.counters["cold_moves"] += 1
                    continue
                self.counters["cold_drops"] += 1
                obj.cold = tuple(t for t in obj.cold if t != src)
                if obj.tier == src and not _retier(ix, key, obj):
                    ix.counters["evictions"] += 1

    # ---- planning (the master's ticker) -----------------------------------------------------------------
    def tick(self, now: float) -> None:
        if not self.nodes and not self._forget:
            return
        with self.svc._lock:
            self._expire(now)
            with self.ix.lock:
                # Forgets go out before any task planned now, so a node never deletes a newer copy.
                forgets = self._drain_forgets()
                demotes = self._plan_demotions(now)
                promotes = self._plan_promotions(now)
                copies = self.repair.plan(now)
            for node_id, task in forgets + demotes + promotes + copies:
                self._send(node_id, task)

    def _start_demotion(self, key: str, obj: Obj, replica: Replica, node: ColdNode,
                        now: float) -> dict | None:
        """The task demoting `replica` of key to `node`'s first tier, registered and the
        object marked busy (None: no task could be built). The caller sends it."""
        tid = next(self.svc._task_ids)
        task = self._demote_task(key, obj, replica, node, tid)
        if task is None:
            return None
        obj.busy = True
        node.demoting += 1
        self._register(tid, "demote", key, node.node_id, obj,
                       now + 2 * self.svc.config.node_ttl_ms / 1000.0 + 10.0,
                       replica=replica, tier=f"{node.tiers[0]}@{node.rpc}")
        return task

    def _register(self, tid: int, kind: str, key: str, node_id: str, obj: Obj, deadline: float,
                  **kw: Any) -> None:
        """A task sent to a node, awaited until its answer or deadline (cold_repair.py too)."""
        self._tasks[tid] = ColdTask(kind, key, node_id, obj, deadline, **kw)

    def _send(self, node_id: str, task: dict) -> None:
        rec = self.svc.nodes.get(node_id)
        if rec is not None:
            rec.tasks.append(task)

    def _drain_forgets(self) -> list[tuple[str, dict]]:
        out = []
        while self._forget:
            key, tiers = self._forget.popleft()
            for node_id in {self._by_rpc.get(split_tier(t)[1]) for t in tiers} - {None}:
                out.append((node_id, {"kind": "forget", "id": 0, "key": key}))
                self.counters["forgets"] += 1
        return out

    def _plan_demotions(self, now: float) -> list[tuple[str, dict]]:
        ix, cfg = self.ix, self.svc.config
        budget: dict[str, int] = {}     # segment -> bytes still to demote this tick
        starved = now - self._starved < STARVED_S
        for node_id, node in self.nodes.items():
            rec = self.svc.nodes.get(node_id)
            if rec is None or node.demoting >= DEMOTE_TASKS_PER_NODE or node.unhealthy_until > now:
                continue
            for name in rec.segments:
                seg = ix.segments.get(name)
                if seg is None or seg.tier != "dram" or not seg.capacity:
                    continue
                over = seg.used - cfg.demote_watermark * seg.capacity
                if over > 0 or starved:
                    budget[name] = int(max(over, 0) + cfg.eviction_ratio * seg.capacity)
        if not budget:
            return []
        out = []
        for i, key in enumerate(ix.policy.victims()):
            if i >= SCAN_PER_TICK or not budget:
                break
            obj = ix._objects.get(key)
            if obj is None or obj.busy or obj.cold or obj.tier != "dram" or not obj.replicas \
                    or obj.pin == PIN_HARD or (obj.pin == PIN_SOFT and obj.pin_until > now):
                continue
            replica = next((r for r in obj.replicas if any(s.segment in budget for s in r)), None)
            if replica is None:
                continue
            node = self._demoter(replica, now, busy_ok=False)
            if node is None:
                if len(replica) == 1:   # its node has its hands full
                    budget.pop(replica[0].segment, None)
                continue
            task = self._start_demotion(key, obj, replica, node, now)
            if task is None:
                continue
            out.append((node.node_id, task))
            for sl in replica:
                if sl.segment in budget:
                    budget[sl.segment] -= sl.length
                    if budget[sl.segment] <= 0:
                        del budget[sl.segment]
        return out

    def _plan_promotions(self, now: float) -> list[tuple[str, dict]]:
        ix, out = self.ix, []
        ttl = self.svc.config.node_ttl_ms / 1000.0
        for _ in range(min(PROMOTIONS_PER_TICK, len(self._promote))):
            key = self._promote.popleft()
            obj = ix._objects.get(key)
            if obj is None or obj.busy or obj.tier == "dram":
                continue
            tier, rpc = split_tier(obj.tier)
            node_id = self._by_rpc.get(rpc)
            rec = self.svc.nodes.get(node_id) if node_id else None
            if rec is None:
                continue
            length = header_size(len(key.encode("utf-8", "surrogatepass"))) + obj.size
            for name in rec.segments:   # the holding node's own DRAM: a local copy
                seg = ix.segments.get(name)
                off = seg.allocator.alloc(length) if seg is not None else None
                if off is not None:
                    break
            else:
                continue   # no room now: a later hit tries again
            sl = Slice(name, off, length)
            obj.busy = True
            tid = next(self.svc._task_ids)
            self._tasks[tid] = ColdTask("promote", key, node_id, obj, now + 2 * ttl + 10.0,
                                        slice=sl, tier=obj.tier)
            out.append((node_id, {"kind": "promote", "id": tid, "key": key, "tier": tier,
                                  "segment": name, "offset": off, "length": length}))
        return out

    def _expire(self, now: float) -> None:
        for tid in [t for t, task in self._tasks.items() if task.deadline <= now]:
            self._finish(self._tasks.pop(tid), False)

    # ---- task answers --------------------------------------------------------------------------------------
    def task_done(self, node_id: str, task_id: int, ok: bool) -> bool:
        with self.svc._lock:
            task = self._tasks.get(task_id)
            if task is None or task.node_id != node_id:
                return False
            del self._tasks[task_id]
            attached, forget = self._finish(task, bool(ok))
            if forget:
                self._send(node_id, {"kind": "forget", "id": 0, "key": task.key})
            return attached

    def _finish(self, task: ColdTask, ok: bool) -> tuple[bool, bool]:
        """Apply a finished (or failed/expired) task: (attached, the node must forget it)."""
        ix = self.ix
        node = self.nodes.get(task.node_id)
        with ix.lock:
            obj = task.obj
            current = ix._objects.get(task.key) is obj
            obj.busy = False
            if task.kind == "promote":
                if ok and current and obj.tier == task.tier:
                    obj.replicas, obj.tier = [(task.slice,)], "dram"
                    ix.policy.on_insert(task.key, obj.size)
                    self.counters["promotions"] += 1
                    return True, False
                ix._free_replicas([(task.slice,)])
                self.counters["promote_failures"] += not ok
                return False, False
            if task.kind == "persist":
                return self._finish_persist(task, ok, current and task.replica in obj.replicas)
            if task.kind == "fetch":
                return self.repair.finish_fetch(task, ok, current)
            if task.kind == "rescue":
                return self.repair.finish_rescue(task, ok, current)
            if node is not None:
                node.demoting = max(0, node.demoting - 1)
            if current and ok and task.tier not in obj.cold:
                if task.replica not in obj.replicas:
                    # Same object, its DRAM evicted meanwhile (it had a cold copy already): the
                    # node verified the record's key and CRC, so this is a copy of this value.
                    obj.cold = obj.cold + (task.tier,)
                    self.repair.queue(task.key)
                    return True, False
            if not current or task.replica not in obj.replicas:
                # Removed or replaced meanwhile (its record may already be invalidated, so a
                # failure here is no fault of the node): a copy made is stale unless a newer
                # one is on its way to the same node (which will overwrite it).
                if not ok:
                    if current:
                        self.repair.queue(task.key)
                    return False, False
                newer = ix._objects.get(task.key)
                keep = newer is not None and (task.tier in newer.cold or any(
                    t.key == task.key and t.node_id == task.node_id and t.kind == "demote"
                    for t in self._tasks.values()))
                return False, not keep
            if not ok:
                self.counters["demote_failures"] += 1
                if node is not None:
                    node.unhealthy_until = self.svc.clock() + UNHEALTHY_S
                if obj.cold:     # a second copy failed: the object is below, DRAM may go
                    self.repair.queue(task.key)
                return False, False
            if task.tier not in obj.cold:
                obj.cold = obj.cold + (task.tier,)
            if self.repair.demote_more(task.key, obj):
                return True, False     # replica_num > 1: DRAM stays until the next copy is in
            ix.policy.on_remove(task.key)
            replicas, obj.replicas, obj.tier = obj.replicas, [], task.tier
            ix._graveyard_or_free(replicas, obj.lease_until)
            self.counters["demotions"] += 1
            self.counters["striped_demotions"] += len(task.replica) > 1
            ix.counters["demotions"] = ix.counters.get("demotions", 0) + 1
            return True, False

    # ---- write-through (ReplicateConfig.persist) ---------------------------------------------------------
    def persist(self, key: str) -> str:
        """Copy a just-written object to the most durable tier of a node holding it, keeping
        its DRAM. "pending" (poll `persisted`), or "none": no node holding it has a tier (as
        an embedded store without tiers, the put stands as it is)."""
        with self.svc._lock:
            ix, now = self.ix, self.svc.clock()
            with ix.lock:
                obj = ix._objects.get(key)
                if obj is None:
                    return "failed"
                if obj.cold:
                    return "ok"        # demoted already: a node's tier holds it
                if obj.busy:
                    return "busy"      # a demotion is copying it right now: ask again
                if not self._persist_task(key, obj, now):
                    return "none"
                self._persist[key] = "pending"
            return "pending"

    def _persist_task(self, key: str, obj: Obj, now: float) -> bool:
        """Send the write-through copy of a DRAM object to the last tier of a node holding
        (part of) a replica. False: no node holding it has a tier. svc._lock and ix.lock held."""
        for r in obj.replicas:
            node = self._demoter(r, None)   # health aside: a write-through is asked for now
            if node is None:
                continue
            tid = next(self.svc._task_ids)
            tier = node.tiers[-1]
            task = self._demote_task(key, obj, r, node, tid, tier)
            if task is None:
                continue
            obj.busy = True
            self.repair.durable.add(key)
            self._tasks[tid] = ColdTask("persist", key, node.node_id, obj,
                                        now + 2 * self.svc.config.node_ttl_ms / 1000.0 + 40.0,
                                        replica=r, tier=f"{tier}@{node.rpc}")
            self._send(node.node_id, task)
            return True
        return False

    def persisted(self, key: str) -> str:
        """pending | ok | failed; a final answer is given once."""
        with self.svc._lock:
            state = self._persist.get(key, "failed")
            if state != "pending":
                self._persist.pop(key, None)
            return state

    def _finish_persist(self, task: ColdTask, ok: bool, current: bool) -> tuple[bool, bool]:
        """Under the index lock: record the durable copy; the DRAM stays."""
        obj = task.obj
        if ok and current:
            obj.cold = obj.cold + (task.tier,)
            self.counters["persisted"] = self.counters.get("persisted", 0) + 1
        if task.key in self._persist:
            # Replaced meanwhile: the newer put decides about its own durability.
            self._persist[task.key] = "ok" if ok or not current else "failed"
        return ok and current, ok and not current

    def room(self, need: int, copies: int = 1) -> str:
        """For a put that found no room: "yes" (DRAM extents on `copies` segments, or on
        every segment when there are fewer, fit it now), "wait" (a healthy tiered node can
        demote to make it) or "no" (waiting cannot help: fail at once)."""
        ix, now = self.ix, self.svc.clock()
        stripe = self.svc.config.stripe_size
        with ix.lock:
            segs = [s for s in ix.segments.values() if s.tier == "dram"]
            if stripe and need > stripe and len(segs) > 1:
                return self._stripe_room(need * copies, stripe, segs, now)
            fit = sum(s.allocator.largest_free() >= s.allocator.round(need) for s in segs)
            if fit and fit >= min(copies, len(segs)):
                return "yes"
            for s in segs:
                node = self.nodes.get(s.node)
                if node is not None and node.unhealthy_until <= now and s.capacity >= need:
                    self._starved = now    # demote below the watermark: someone waits
                    return "wait"
            return "no"

    def _stripe_room(self, need: int, stripe: int, segs: list, now: float) -> str:
        """room() for a value that is striped: k parts of about need/k bytes (plus a header)
        anywhere in the DRAM segments. Counts whole parts per segment's largest free extent
        (now) or capacity (after demotions)."""
        k = -(-need // stripe)
        part = -(-need // k) + 4160          # the part's header, rounded up generously
        if sum(s.allocator.largest_free() // part for s in segs) >= k:
            return "yes"
        if any(self.nodes.get(s.node) is not None
               and self.nodes[s.node].unhealthy_until <= now for s in segs) \
                and sum(s.capacity // part for s in segs) >= k:
            self._starved = now
            return "wait"
        return "no"

    # ---- introspection ------------------------------------------------------------------------------------
    def describe(self, key: str) -> dict:
        """For `mstore stat`: where reads go and every cold copy with its node."""
        ix = self.ix
        with ix.lock:
            obj = ix._objects.get(key)
            if obj is None:
                return {}
            tier, cold = obj.tier, obj.cold
        copies = []
        for name in cold:
            t, rpc = split_tier(name)
            copies.append({"tier": t, "node": self._by_rpc.get(rpc, ""), "address": rpc})
        return {"tier": split_tier(tier)[0], "read_from": tier, "cold": copies}

    def stats(self) -> dict:
        return {"nodes": {n.node_id: {"rpc": n.rpc, "tiers": n.usage, "demoting": n.demoting}
                          for n in self.nodes.values()},
                "tasks_in_flight": len(self._tasks), **self.counters}


def _dram_lost(replicas: Any, segs: set[str]) -> bool:
    """Whether losing `segs` leaves no complete DRAM replica: for striped replicas, when
    some part has no copy elsewhere (the unmount regroups the surviving parts otherwise)."""
    if not replicas or not segs:
        return False
    k = len(replicas[0])
    if k == 1 or any(len(r) != k for r in replicas):
        return all(any(sl.segment in segs for sl in r) for r in replicas)
    return any(all(r[i].segment in segs for r in replicas) for i in range(k))
