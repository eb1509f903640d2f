"""The master service: the ObjectIndex behind an RPC server, plus node membership and repair.

Clients call the index operations (put_start/put_end/get_replicas/...). Nodes
register their segments (with an inventory of the records already in them, so a
restarted or newly elected master rebuilds its index from the nodes), heartbeat,
and receive repair tasks in the heartbeat answers: the master never calls a node
and never carries object bytes; a node copies a replica from a peer node itself.

A node silent for node_ttl_ms is declared dead: its replicas are dropped and every
object that fell below its replica count gets a new replica on another node.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..errors import InvalidParams, Unavailable
from ..replica import ReplicateConfig, Slice
from ..rpc import RpcServer
from .cluster_index import ClusterIndex
from .cluster_tiers import ClusterTiering
from . import stripe_repair
from .index import ObjectIndex
from .reserve import RESERVE_USE_MS
from .tombstones import PER_HEARTBEAT, Tombstones
from .wire import lookup_to_wire, packed_to_wire, rc_from_wire, replicas_to_wire

log = logging.getLogger("mooncake_store.master")

REPAIRS_PER_TICK = 256
HEAT_TAU_S = 2.0          # decay time constant of the per-object read rate
NODE_CALLS = {"register_node", "adopt_inventory", "heartbeat", "task_done", "leave", "zap_done"}
TASKS_PER_HEARTBEAT = 64
MAX_DROPPED = 65_536       # dropped segment names remembered, to know a node that comes back


@dataclass
class SegmentDesc:
    name: str
    endpoint: str     # the owning node's transfer engine, "host:port"
    base: int         # address of byte 0 of the segment in the node's process
    size: int
    tier: str
    node_id: str


def _cold_part(tier: Any) -> str:
    """How a cold tier's pending inventory is named in NodeRec.adopting (apart from segments)."""
    return f"cold:{tier}"


@dataclass
class NodeRec:
    node_id: str
    endpoint: str
    segments: list[str]
    last_seen: float
    tasks: list[dict] = field(default_factory=list)
    joined: float = field(default_factory=time.monotonic)   # the clock etcd reads are timed by
    adopting: set[str] = field(default_factory=set)    # segments whose inventory is still coming
    returning: set[str] = field(default_factory=set)   # segments this master had dropped


@dataclass
class Task:
    key: str
    slice: Slice
    node_id: str
    deadline: float
    group: dict | None = None    # the parts of one striped replica being copied together


class MasterService:
    def __init__(self, config: Config | None = None, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.monotonic, hot_reads_per_s: float = 0.0,
                 hot_max_replicas: int = 3) -> None:
        self.config = config or Config()
        # Hot objects: a decayed read rate per key read lately; above the threshold the
        # object gets extra replicas (up to the cap), dropped again once it cools down.
        self.hot_threshold = hot_reads_per_s
        self.hot_cap = hot_max_replicas
        self._heat: dict[str, list[float]] = {}   # key -> [rate, last update]
        self._hot: dict[str, int] = {}            # key -> replica count it had before it got hot
        self._rotate = 0
        self.clock = clock
        self.index = self._new_index()
        self.cluster = ClusterIndex(self.index)
        self.tombstones = Tombstones(clock)   # freed records, invalidated on their nodes
        self.tombstones.attach(self.index)
        self.tiers = ClusterTiering(self)      # cold tiers on nodes (demote/promote tasks)
        self.role = "leader"          # leader | recovering | standby (election: meta/election.py)
        self.leader_hint = ""
        self.membership = None        # the Elector when etcd is used
        self.elector = None
        self.metrics = None           # MetricsServer when --metrics-port is given
        self._expected: set[str] = set()
        self._recover_until = 0.0
        self._lock = threading.RLock()
        self.nodes: dict[str, NodeRec] = {}
        self.segdesc: dict[str, SegmentDesc] = {}
        self.want: dict[str, int] = {}           # keys asked for more than one replica
        self._repair: dict[str, None] = {}       # keys that may be under-replicated
        self._dropped: dict[str, None] = {}      # segments this master dropped (oldest first)
        self._tasks: dict[int, Task] = {}
        self._task_ids = itertools.count(1)
        self.counters = {"nodes_joined": 0, "nodes_lost": 0, "repairs_started": 0,
                         "repairs_done": 0, "repairs_failed": 0, "adopted": 0}
        self._stop = threading.Event()
        self.rpc = RpcServer(self._handlers(), host, port, self.config.auth_token)
        self._ticker: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.rpc.address

    def start(self) -> "MasterService":
        self.rpc.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="mcs-master-tick", daemon=True)
        self._ticker.start()
        return self

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.elector is not None:
            self.elector.close()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self.rpc.close()

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        names = ("ping", "put_start", "put_end", "put_revoke", "get_replicas", "batch_get_replicas",
                 "exists", "batch_exists", "longest_prefix", "size", "lease_remaining_ms", "keys",
                 "remove", "remove_many", "remove_each", "remove_by_regex", "remove_all", "stats",
                 "segments",
                 "batch_put_start", "batch_put_end", "batch_put_revoke", "stat", "why", "put_commit",
                 "batch_put_reserve", "batch_put_commit", "reserve_release",
                 "room", "persist", "persisted",
                 "register_node", "adopt_inventory", "heartbeat", "task_done", "leave", "zap_done")
        return {n: self._guard(getattr(self, "rpc_" + n)) for n in names}

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__[len("rpc_"):]
        # A recovering leader answers its nodes, and `stats` (so `mstore status` can show the
        # recovery: role, nodes still sending their records); clients wait until it leads.
        node_call = name in NODE_CALLS or name == "stats"

        def call(*args: Any) -> Any:
            role = self.role
            if role != "leader" and name != "ping" and not (role == "recovering" and node_call):
                # MasterClient retries "not ready" answers on the leader etcd names.
                raise Unavailable(f"not ready: this master is {role} "
                                  f"(leader: {self.leader_hint or 'unknown'})")
            return fn(*args)
        return call

    # ---- leadership (called by the Elector) -------------------------------------------------------
    def become_leader(self, expected_nodes: set[str]) -> None:
        """Lead with a fresh index; client calls wait until the nodes etcd lists have
        re-registered with their inventories (or node_ttl passes), so nothing reads as missing."""
        with self._lock:
            self._reset_state()
            self._expected = set(expected_nodes)
            self._recover_until = self.clock() + self.config.node_ttl_ms / 1000.0 + 1.0
            self.leader_hint = self.address
            self.role = "recovering" if self._expected else "leader"

    def step_down(self) -> None:
        with self._lock:
            self.role = "standby"
            self._reset_state()

    def _new_index(self) -> ObjectIndex:
        ix = ObjectIndex(self.config)
        ix.copies_in_flight = self._copies_in_flight
        ix.departures.listener = self._forget_want
        return ix

    def _forget_want(self, key: str) -> None:
        # From under the index lock, on any thread: a single dict pop needs no other lock
        # (the one loop over `want` iterates a copy).
        self.want.pop(key, None)

    def _copies_in_flight(self, segment: str) -> list[tuple[int, int, float]]:
        """Destination slices in `segment` of the copies nodes are making for us: a zap of
        an old record under one waits until the copy lands or fails (master/tombstones.py)."""
        slices = [t.slice for t in list(self._tasks.values())]
        slices += [t.slice for t in list(self.tiers._tasks.values()) if t.slice is not None]
        return [(sl.offset, sl.offset + sl.length, math.inf) for sl in slices
                if sl.segment == segment]

    def _reset_state(self) -> None:
        self.index = self._new_index()
        self.cluster = ClusterIndex(self.index)
        self.tombstones.attach(self.index)
        self.tiers.attach(self.index)
        self.nodes.clear()
        self.segdesc.clear()
        self.want.clear()
        self._repair.clear()
        self._tasks.clear()

    def _check_recovered(self, now: float) -> None:
        with self._lock:
            ready = {n for n, rec in self.nodes.items() if not rec.adopting}
            if self.role == "recovering" and (self._expected <= ready
                                              or now >= self._recover_until):
                missing = self._expected - ready
                if missing:
                    log.warning("recovery: %d node(s) did not re-register: %s", len(missing),
                                ", ".join(sorted(missing)))
                self.role = "leader"

    def _check_membership(self) -> None:
        """With etcd: a node whose lease expired is gone now, not after node_ttl of silence."""
        if self.membership is None:
            return
        seen = self.membership.alive_nodes()
        if seen is None:   # etcd silent lately: heartbeats alone decide
            return
        read_at, alive = seen
        with self._lock:
            # A node that registered after the read took its lease before registering, but
            # the read cannot show it: dropping it would bounce every joining node once.
            for node_id in [n for n, rec in self.nodes.items()
                            if n not in alive and rec.joined < read_at]:
                self._drop_node(node_id, "its etcd lease expired")

    # ---- client calls -------------------------------------------------------------------
    def rpc_ping(self) -> dict:
        return {"role": self.role, "leader": self.leader_hint or self.address}

    def rpc_put_start(self, key: str, size: int, rc: Any = None, upsert: bool = False) -> Any:
        cfg = rc_from_wire(rc)
        stripe = self.config.stripe_size
        if self._stripes(size, cfg):
            if size > self.config.max_value_size:
                raise InvalidParams(f"value of {size} bytes exceeds max_value_size")
            replicas = self.cluster.striped.put_start(_str(key), size, cfg or ReplicateConfig(), stripe,
                                                      bool(upsert))
        else:
            replicas = self.index.put_start(_str(key), size, cfg, upsert=bool(upsert))
        if replicas is not None and cfg is not None and cfg.replica_num > 1:
            with self._lock:
                self.want[key] = cfg.replica_num
        return replicas_to_wire(replicas)

    def _stripes(self, size: Any, cfg: ReplicateConfig | None) -> bool:
        stripe = self.config.stripe_size
        return bool(stripe and isinstance(size, int) and size > stripe and len(self.segdesc) > 1
                    and not (cfg and (cfg.preferred_segment or cfg.preferred_segments)))

    def rpc_batch_put_start(self, keys: list, sizes: list, rc: Any = None,
                            upsert: bool = False) -> list:
        """Per key: [0, replicas|None] or [code, message]."""
        try:
            cfg, fast = rc_from_wire(rc), True
        except InvalidParams:
            cfg, fast = None, False   # the per-key path reports it for every key
        if fast and isinstance(keys, list) and isinstance(sizes, list) and len(keys) == len(sizes) \
                and all(type(k) is str for k in keys) and all(type(n) is int for n in sizes) \
                and not (sizes and self._stripes(max(sizes), cfg)):
            # The common batch: one index call under one lock, no per-key RPC plumbing.
            got = self.index.batch_put_start(keys, sizes, cfg, bool(upsert))
            if cfg is not None and cfg.replica_num > 1:
                with self._lock:
                    for key, r in zip(keys, got):
                        if isinstance(r, list):
                            self.want[key] = cfg.replica_num
            return [[int(r.code), str(r)] if isinstance(r, Exception) else [0, replicas_to_wire(r)]
                    for r in got]
        out = []
        for key, size in zip(keys, sizes):
            try:
                out.append([0, self.rpc_put_start(key, size, rc, upsert)])
            except Exception as e:  # noqa: BLE001 - per-key result
                out.append([int(getattr(e, "code", -1)), str(e)])
        return out

    def rpc_put_end(self, key: str, flags: int = 0, reserve: Any = None) -> Any:
        """reserve = [owner, record bytes, reservation given back or 0]: the answer is then
        the owner's next reservation (master/reserve.py) or None."""
        if not (isinstance(reserve, list) and len(reserve) == 3) \
                or self._stripes(reserve[1], None):
            self.index.put_end(_str(key), flags)
            return None
        owner, record, give_back = reserve
        return self._reservation(self.index.put_end_reserve(_str(key), flags, owner, record,
                                                            give_back))

    def rpc_put_commit(self, owner: str, rid: int, key: str, size: int, flags: int = 0,
                       upsert: bool = False, record: int = 0) -> list:
        """A put written into a reservation: [COMMITTED | EXISTED | GONE, next reservation]."""
        if self._stripes(record, None):
            record = 0
        code, nxt = self.index.put_commit(_str(owner), rid, _str(key), size, flags,
                                          bool(upsert), record)
        return [code, self._reservation(nxt)]

    def rpc_reserve_release(self, owner: str, rid: int) -> bool:
        """The owner gives back a reservation it will not use (it is closing)."""
        return self.index.reserve_release(_str(owner), rid)

    def rpc_batch_put_reserve(self, owner: str, size: int, give_back: int = 0,
                              largest: int | None = None, records: Any = None) -> list | None:
        """A block of exactly `size` bytes for the batch of small puts the owner writes now
        (the held one, if any, goes back; `largest`: its largest value, which decides
        whether a block may be had with several segments mounted; `records`: the record
        lengths it lays out, tombstoned if it never commits): the block or None."""
        return self._reservation(self.index.batch_put_reserve(_str(owner), size, give_back,
                                                              largest, records), block=True)

    def rpc_batch_put_commit(self, owner: str, rid: int, keys: list, sizes: list, flags: int = 0,
                             upsert: bool = False, revoke: bool = False) -> Any:
        """A batch written into its block: per key codes (reserve.COMMITTED / EXISTED /
        error) or GONE; revoke gives the block back."""
        return self.index.batch_put_commit(_str(owner), rid, keys, sizes, flags, bool(upsert),
                                           bool(revoke))

    def _reservation(self, got: Any, block: bool = False) -> list | None:
        if got is None:
            return None
        rid, sl = got
        # How long the client may start writing into it, counted from before it asked: at
        # most half the timeout (the rest covers the write and commit), and short, because
        # a leader that took over knows nothing of it and may hand the slice out again.
        use_ms = min(self.config.put_timeout_ms // 2, RESERVE_USE_MS)
        if block:   # the client lays its records out at the allocator's alignment
            seg = self.index.segments.get(sl.segment)
            return [rid, replicas_to_wire([(sl,)]), use_ms, seg.allocator.align if seg else 64]
        return [rid, replicas_to_wire([(sl,)]), use_ms]

    def rpc_batch_put_end(self, keys: list, flags: int = 0) -> list:
        if isinstance(keys, list) and all(type(k) is str for k in keys):
            return self.index.batch_put_end_codes(keys, flags)
        out = []
        for key in keys:
            try:
                self.index.put_end(_str(key), flags)
                out.append(0)
            except Exception as e:  # noqa: BLE001
                out.append(int(getattr(e, "code", -1)))
        return out

    def rpc_put_revoke(self, key: str) -> None:
        self.index.put_revoke(_str(key))
        self._unwant_if_gone([key])

    def rpc_batch_put_revoke(self, keys: list) -> None:
        for key in keys:
            try:
                self.index.put_revoke(_str(key))
            except Exception:  # noqa: BLE001 - revoking what is gone is fine
                pass
        self._unwant_if_gone(keys)

    def _unwant_if_gone(self, keys: list) -> None:
        """A revoked put leaves no departure behind: forget its replica count here."""
        ix = self.index
        with ix.lock:
            for key in keys:
                if type(key) is str and key in self.want and key not in ix._objects \
                        and key not in ix._pending:
                    del self.want[key]

    def rpc_get_replicas(self, key: str) -> list:
        return self._spread(key, self.index.get_replicas(_str(key)))

    def rpc_batch_get_replicas(self, keys: list) -> list:
        out = []
        count = self.hot_threshold > 0
        for k, x in zip(keys, self.index.batch_get_packed(keys)):
            if type(x) is int:   # one packed replica: straight to the wire, nothing to rotate
                if count:
                    self._count_read(k)
                out.append(packed_to_wire(x))
            else:
                out.append(self._spread(k, x))
        return out

    def _spread(self, key: str, look: Any) -> list | None:
        """Count the read (hot-object detection) and rotate the replica order, so readers of
        a replicated object spread over its nodes instead of all reading the first."""
        if look is None:
            return None
        if self.hot_threshold > 0:
            self._count_read(key)
        w = lookup_to_wire(look)
        reps = w[1]
        if len(w) == 4 and len(reps) > 1:   # the 5-item form is one replica
            self._rotate += 1
            k = self._rotate % len(reps)
            w[1] = reps[k:] + reps[:k]
        return w

    def _count_read(self, key: str) -> None:
        now = self.clock()
        h = self._heat.get(key)
        if h is None:
            self._heat[key] = [1.0, now]
            return
        h[0] = h[0] * math.exp(-(now - h[1]) / HEAT_TAU_S) + 1.0
        h[1] = now
        if h[0] / HEAT_TAU_S > self.hot_threshold and key not in self._hot:
            replicas = self.cluster.replicas(key)
            if replicas and len(replicas[0]) == 1 and len(replicas) < self.hot_cap:
                with self._lock:
                    self._hot[key] = max(len(replicas), self.want.get(key, 1))
                    self.index.mark_hot(key, self._hot[key])   # its extras go first under pressure
                    self.want[key] = min(self.hot_cap, len(self.segdesc))
                    self._repair[key] = None
                    self.counters["hot_promotions"] = self.counters.get("hot_promotions", 0) + 1

    def _cool_down(self, now: float) -> None:
        """Forget cold heat entries; drop the extra replicas of objects no longer hot."""
        if not self._heat:
            return
        for key, (rate, t) in list(self._heat.items()):
            rate *= math.exp(-(now - t) / HEAT_TAU_S)
            if rate / HEAT_TAU_S >= self.hot_threshold / 4:
                continue
            del self._heat[key]
            base = self._hot.pop(key, None)
            if base is not None:
                self.index.unmark_hot(key)
                with self._lock:
                    self.want[key] = base
                    if base <= 1:
                        self.want.pop(key, None)
                dropped = self.cluster.drop_replica(key, base)
                self.counters["hot_demotions"] = self.counters.get("hot_demotions", 0) + bool(dropped)

    def rpc_exists(self, key: str) -> bool:
        return self.index.exists(_str(key))

    def rpc_batch_exists(self, keys: list) -> list:
        return self.index.batch_exists(keys)

    def rpc_longest_prefix(self, keys: list) -> int:
        return self.index.longest_prefix(keys)

    def rpc_size(self, key: str) -> int:
        return self.index.size(_str(key))

    def rpc_lease_remaining_ms(self, key: str) -> float:
        return self.index.lease_remaining_ms(_str(key))

    def rpc_keys(self, pattern: str | None = None) -> list:
        return self.index.keys(pattern)

    def rpc_remove(self, key: str, force: bool = False) -> None:
        self.index.remove(_str(key), bool(force))

    def rpc_remove_each(self, keys: list, force: bool = False) -> list:
        """Per key 0, OBJECT_NOT_FOUND or OBJECT_HAS_LEASE (Store.batch_remove)."""
        if type(keys) is not list:
            raise InvalidParams("remove_each needs a list of keys")
        return self.index.remove_each(keys, bool(force))

    def rpc_remove_many(self, keys: list, force: bool = False) -> int:
        return self.index.remove_many(keys, bool(force))

    def rpc_remove_by_regex(self, pattern: str, force: bool = False) -> int:
        return self.index.remove_by_regex(_str(pattern), bool(force))

    def rpc_remove_all(self, force: bool = False) -> int:
        return self.index.remove_all(bool(force))

    def rpc_stat(self, key: str) -> dict:
        """One object's size, replicas (with their nodes) and remaining lease."""
        key = _str(key)
        size = self.index.size(key)
        replicas = self.cluster.replicas(key) or []
        with self._lock:
            reps = [[{"segment": s.segment, "offset": s.offset, "length": s.length,
                      "endpoint": self.segdesc[s.segment].endpoint if s.segment in self.segdesc else ""}
                     for s in r] for r in replicas]
            want = self.want.get(key, 1)
        return {"key": key, "size": size, "replicas": reps, "replica_num": want,
                "lease_ms": self.index.lease_remaining_ms(key), **self.tiers.describe(key)}

    def rpc_why(self, key: str) -> dict:
        """Whether key is stored, and if not why not (ObjectIndex.why)."""
        return self.index.why(_str(key))

    def rpc_room(self, need: int, copies: int = 1) -> str:
        """Whether `copies` records of `need` bytes fit in DRAM now: yes / wait / no (put
        backpressure while nodes demote: client/cold_read.py)."""
        return self.tiers.room(int(need), max(1, min(int(copies), 16)))

    def rpc_persist(self, key: str) -> str:
        """Write-through of a just-written object to a node's durable tier (cluster_tiers.py)."""
        return self.tiers.persist(_str(key))

    def rpc_persisted(self, key: str) -> str:
        return self.tiers.persisted(_str(key))

    def rpc_stats(self) -> dict:
        st = self.index.stats()
        with self._lock:
            st["nodes"] = {n.node_id: {"endpoint": n.endpoint, "segments": n.segments,
                                       "last_seen_ms": int((self.clock() - n.last_seen) * 1000),
                                       "adopting": sorted(n.adopting)}
                           for n in self.nodes.values()}
            st["nodes_adopting"] = sum(1 for n in self.nodes.values() if n.adopting)
            st["repairs_pending"] = len(self._repair)
            st["repairs_in_flight"] = len(self._tasks)
            st.update(self.counters)
            st.update(self.tombstones.counters)
            st["cold"] = self.tiers.stats()
        st["segments"] = self.rpc_segments()
        st["role"] = self.role
        st["address"] = self.address
        return st

    def rpc_segments(self) -> dict:
        with self._lock:
            descs = list(self.segdesc.values())
        out = {}
        for d in descs:
            info = self.index.segments.get(d.name)
            out[d.name] = {"endpoint": d.endpoint, "base": d.base, "size": d.size, "tier": d.tier,
                           "node": d.node_id, "used": info.used if info else 0,
                           "capacity": info.capacity if info else 0}
        return out

    # ---- node calls ------------------------------------------------------------------------
    def rpc_register_node(self, node_id: str, endpoint: str, segments: list,
                          inventory: dict | None = None, cold: dict | None = None) -> dict:
        """A node joins (or rejoins after a master change) with its segments and their records.
        A segment's inventory is either its entries or their count: then they follow in
        adopt_inventory calls, so no single call holds the master for the whole of a large
        node (600,000 records took ~11 s, past the node's call timeout: it registered again
        and again)."""
        node_id, endpoint = _str(node_id), _str(endpoint)
        inventory = inventory or {}
        with self._lock:
            if node_id in self.nodes:
                self._drop_node(node_id, "re-registered")
            for seg in segments:
                old = self.segdesc.get(seg["name"])
                if old is not None:  # a restarted node reusing its name: the old one is gone
                    self._drop_node(old.node_id, "replaced by a new registration")
            rec = self.nodes[node_id] = NodeRec(node_id, endpoint, [], self.clock())
            for seg in segments:
                name = _str(seg["name"])
                self.index.add_segment(name, int(seg["size"]), seg.get("tier", "dram"), node_id)
                self.segdesc[name] = SegmentDesc(name, endpoint, int(seg["base"]), int(seg["size"]),
                                                 seg.get("tier", "dram"), node_id)
                rec.segments.append(name)
                if name in self._dropped:
                    rec.returning.add(name)
                self._dropped.pop(name, None)
                entries = inventory.get(name, ())
                if isinstance(entries, int):
                    if entries > 0:
                        rec.adopting.add(name)
                else:
                    self._adopt(rec, name, entries)
            names = rec.segments
            if isinstance(cold, dict):   # the node's cold tiers and what they hold
                inv = cold.get("inventory")
                if isinstance(inv, dict) and any(isinstance(n, int) for n in inv.values()):
                    # Counts: the records follow in adopt_inventory parts, as for segments.
                    rec.adopting |= {_cold_part(t) for t, n in inv.items()
                                     if isinstance(n, int) and n}
                    cold = dict(cold, inventory={})
                self.counters["adopted"] += self.tiers.add_node(node_id, cold)
            # A new node may be the room an under-replicated key waits for.
            for key in list(self.want):
                self._repair[key] = None
            self.counters["nodes_joined"] += 1
        log.info("node %s joined at %s with %d segment(s)", node_id, endpoint, len(names))
        return {"heartbeat_ms": self.config.heartbeat_ms, "node_ttl_ms": self.config.node_ttl_ms}

    def rpc_adopt_inventory(self, node_id: str, where: str, entries: list, last: bool,
                            cold: bool = False) -> int:
        """One part of a registered node's inventory: of its segment `where`, or with `cold`
        of its cold tier `where` ((key, size, flags) entries). Returns how many records it
        adopted; repeating a part adopts nothing twice (its ranges are no longer free)."""
        with self._lock:
            rec = self.nodes.get(_str(node_id))
            if rec is None or not self._has_part(rec, where, cold):
                kind = "cold tier" if cold else "segment"
                raise InvalidParams(f"adopt_inventory: {where!r} is not a {kind} of node "
                                    f"{node_id!r} (register first)")
            rec.last_seen = self.clock()   # sending its records, it cannot heartbeat meanwhile
            entries = entries if isinstance(entries, list) else []
            if cold:
                adopted = self.tiers.adopt_part(rec.node_id, where, entries)
                self.counters["adopted"] += adopted
            else:
                adopted = self._adopt(rec, where, entries)
            if last:
                rec.adopting.discard(_cold_part(where) if cold else where)
            # A node still sending its records is alive: recovery waits for the rest of them.
            if self.role == "recovering":
                self._recover_until = max(self._recover_until,
                                          self.clock() + self.config.node_ttl_ms / 1000.0)
            return adopted

    def _has_part(self, rec: NodeRec, where: Any, cold: bool) -> bool:
        if not cold:
            return where in rec.segments
        node = self.tiers.nodes.get(rec.node_id)
        return node is not None and where in node.tiers

    def _adopt(self, rec: NodeRec, segment: str, entries: Any) -> int:
        # A record carries no replica_num, and a rebuilt index knows none: an object found
        # on several nodes was put with (at least) that many, so losing one later is
        # repaired as it would have been before the failover.
        replicated: dict[str, int] = {}
        adopted = self.cluster.adopt(segment, entries, segment in rec.returning, replicated)
        self.counters["adopted"] += adopted
        for key, n in replicated.items():
            if n > self.want.get(key, 1):
                self.want[key] = n
        return adopted

    def rpc_heartbeat(self, node_id: str, cold_report: dict | None = None) -> dict:
        with self._lock:
            node = self.nodes.get(node_id)
            if node is None:
                return {"known": False, "tasks": []}
            node.last_seen = self.clock()
            if cold_report:
                self.tiers.apply_report(node_id, cold_report)
            tasks, node.tasks = node.tasks[:TASKS_PER_HEARTBEAT], node.tasks[TASKS_PER_HEARTBEAT:]
            zaps = self.tombstones.take(node.segments)
            return {"known": True, "tasks": tasks, "zaps": zaps,
                    "more_zaps": len(zaps) >= PER_HEARTBEAT}

    def rpc_zap_done(self, node_id: str, ids: list) -> int:
        """A node invalidated (or found overwritten) the freed records it was sent."""
        return self.tombstones.done(ids if isinstance(ids, list) else [])

    def rpc_task_done(self, node_id: str, task_id: int, ok: bool) -> bool:
        with self._lock:
            task = self._tasks.pop(task_id, None)
        if task is None:
            return self.tiers.task_done(node_id, task_id, ok)   # a demotion or promotion
        if task.group is not None:
            return self._stripe_part_done(task, bool(ok))
        attached = self.cluster.add_replica_end(task.key, task.slice, bool(ok))
        with self._lock:
            self.counters["repairs_done" if attached else "repairs_failed"] += 1
            if not attached:
                self._repair[task.key] = None
        return attached

    def rpc_leave(self, node_id: str) -> None:
        with self._lock:
            if node_id in self.nodes:
                self._drop_node(node_id, "left")

    # ---- membership and repair -----------------------------------------------------------------
    def _drop_node(self, node_id: str, why: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is None:
            return
        self.counters["nodes_lost"] += 1
        self.tiers.node_lost(node_id)
        for name in node.segments:
            self.segdesc.pop(name, None)
            self._dropped[name] = None
            if len(self._dropped) > MAX_DROPPED:
                del self._dropped[next(iter(self._dropped))]
            for key in self.cluster.unmount(name):
                self._repair[key] = None
        for tid in [t for t, task in self._tasks.items() if task.node_id == node_id]:
            task = self._tasks.pop(tid)   # its reserved room went with the segment
            if task.group is not None:
                self._stripe_part_done(task, False)
        log.warning("node %s (%s) dropped: %s", node_id, node.endpoint, why)

    def _tick_loop(self) -> None:
        period = max(0.02, min(0.2, self.config.heartbeat_ms / 2000.0))
        next_reclaim = next_membership = next_cool = 0.0
        while not self._stop.wait(period):
            try:
                now = self.clock()
                if now >= next_reclaim:
                    next_reclaim = now + 0.5
                    self.index.reclaim_expired()
                if self.role == "recovering":
                    self._check_recovered(now)
                if self.role == "leader":
                    self._expire_nodes(now)
                    self.tombstones.expire(now)
                    self.tiers.tick(now)
                    if now >= next_membership:
                        next_membership = now + 0.5
                        self._check_membership()
                    self._plan_repairs(now)
                    if self.hot_threshold > 0 and now >= next_cool:
                        next_cool = now + 0.5
                        self._cool_down(now)
            except Exception:  # noqa: BLE001 - the ticker must survive anything
                log.exception("master tick failed")

    def _expire_nodes(self, now: float) -> None:
        ttl = self.config.node_ttl_ms / 1000.0
        with self._lock:
            for node in [n for n in self.nodes.values() if now - n.last_seen > ttl]:
                self._drop_node(node.node_id, f"no heartbeat for {ttl:.1f} s")
            for tid in [t for t, task in self._tasks.items() if task.deadline <= now]:
                task = self._tasks.pop(tid)
                if task.group is not None:
                    self._stripe_part_done(task, False)
                    continue
                self.cluster.add_replica_end(task.key, task.slice, False)
                self._repair[task.key] = None

    def _absorb_cooled(self) -> None:
        """Hot objects whose extra replicas eviction dropped: want only their base count again
        (or the repair planner would copy the extras right back)."""
        for key in self.index.take_cooled():
            base = self._hot.pop(key, None)
            if base is not None:
                with self._lock:
                    self.want[key] = base
                    if base <= 1:
                        self.want.pop(key, None)

    def _plan_repairs(self, now: float) -> None:
        if self.index.cooled:
            self._absorb_cooled()
        with self._lock:
            if not self._repair:
                return
            busy = {t.key for t in self._tasks.values()}
            keys = [k for k in itertools.islice(self._repair, REPAIRS_PER_TICK) if k not in busy]
            for key in keys:
                del self._repair[key]
                self._repair_one(key, now)

    def _repair_striped(self, key: str, replicas: list, want: int, now: float) -> None:
        """One more replica of a striped object: the node that will hold each part copies it
        from a complete replica and verifies it; the replica is attached once every part is in."""
        src = replicas[0]
        if any(s.segment not in self.segdesc for s in src):
            return
        planned = stripe_repair.plan(self.index, key)
        if planned is None:
            if sum(d.tier == "dram" for d in self.segdesc.values()) > len(replicas):
                self._repair[key] = None   # room may come free: retried next tick
            return
        slices, size = planned
        group = {"key": key, "src": src, "slices": slices, "left": len(slices), "ok": True}
        deadline = now + 2 * self.config.node_ttl_ms / 1000.0 + 10.0
        for i, (sl, part) in enumerate(zip(slices, src)):
            dst, origin = self.segdesc[sl.segment], self.segdesc[part.segment]
            tid = next(self._task_ids)
            self._tasks[tid] = Task(key, sl, dst.node_id, deadline, group)
            self.nodes[dst.node_id].tasks.append({
                "id": tid, "key": key, "src": origin.endpoint, "src_addr": origin.base + part.offset,
                "segment": sl.segment, "offset": sl.offset, "length": sl.length,
                "part": [i, len(slices), size]})
        self.counters["repairs_started"] += 1
        if len(replicas) + 1 < want:
            self._repair[key] = None   # still short: another round later

    def _stripe_part_done(self, task: Task, ok: bool) -> bool:
        with self._lock:
            g = task.group
            g["left"] -= 1
            g["ok"] = g["ok"] and ok
            if g["left"] > 0:
                return ok
            attached = stripe_repair.attach(self.index, g["key"], g["src"], g["slices"], g["ok"])
            self.counters["repairs_done" if attached else "repairs_failed"] += 1
            if not attached:
                self._repair[g["key"]] = None
            return attached

    def _repair_one(self, key: str, now: float) -> None:
        replicas = self.cluster.replicas(key)
        if replicas is None:
            self.want.pop(key, None)
            return
        want = self.want.get(key, 1)
        if len(replicas) >= want or not replicas:
            return
        if len(replicas[0]) > 1:
            self._repair_striped(key, replicas, want, now)
            return
        held = {s.segment for r in replicas for s in r}
        src = next((self.segdesc.get(r[0].segment) for r in replicas
                    if r[0].segment in self.segdesc), None)
        if src is None:
            return
        # The target: an alive node without a replica, most free space first.
        cands = sorted((d for d in self.segdesc.values() if d.name not in held and d.tier == "dram"),
                       key=lambda d: self.index.segments[d.name].used - d.size
                       if d.name in self.index.segments else 0)
        for d in cands:
            sl = self.cluster.add_replica_start(key, d.name)
            if sl is None:
                continue
            tid = next(self._task_ids)
            ttl = self.config.node_ttl_ms / 1000.0
            self._tasks[tid] = Task(key, sl, d.node_id, now + 2 * ttl + 10.0)
            src_slice = replicas[0][0]
            self.nodes[d.node_id].tasks.append({
                "id": tid, "key": key, "src": src.endpoint, "src_addr": src.base + src_slice.offset,
                "segment": d.name, "offset": sl.offset, "length": sl.length})
            self.counters["repairs_started"] += 1
            if len(replicas) + 1 < want:
                self._repair[key] = None   # still short: another round later
            return
        if cands:
            self._repair[key] = None  # no room on any candidate now: retried next tick
        # No other node: nothing to do until one joins (register_node re-queues).


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidParams(f"expected a string, got {type(v).__name__}")
    return v
