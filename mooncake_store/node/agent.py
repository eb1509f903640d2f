"""NodeAgent: keeps a node's segments known to the master.

It registers the segments (with an inventory of the records already in them),
heartbeats, re-registers when the master no longer knows it (master restart or
a new leader), and runs the repair tasks the master hands out in heartbeat
answers: copy one replica from a peer node into our segment with the transfer
engine, verify the record, report. A node with cold tiers (node/cold.py) also
registers their records, runs demote/promote/forget tasks and sends the tiers'
moves and drops with its heartbeats. Used by `mstore node` and by cluster clients
that contribute a segment (global_segment_size > 0).
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from .._engine import ffi, lib
from ..errors import StoreError
from . import inventory

log = logging.getLogger("mooncake_store.node")


ZAP_DRAIN_PAUSE_S = 0.1   # between heartbeats while the master has more zaps than one batch
ADOPT_PART = 32_768       # inventory entries per adopt_inventory call (~0.2 s of the master)
ADOPT_TIMEOUT_MS = 60_000


@dataclass
class Mounted:
    name: str
    segment: Any      # DramSegment
    tier: str = "dram"


class NodeAgent:
    def __init__(self, master: Any, engine: Any, mounted: list[Mounted], heartbeat_ms: int = 1000,
                 node_id: str | None = None, cold: Any = None) -> None:
        self.cold = cold              # NodeCold, or None for a DRAM-only node
        self.master = master          # anything with .call(method, *args) (MasterClient)
        self.engine = engine          # TransferEngine serving the segments
        self.mounted = {m.name: m for m in mounted}
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.endpoint = engine.get_local_hostname()
        self.heartbeat_s = heartbeat_ms / 1000.0
        self.registered = False
        self.counters = {"registrations": 0, "heartbeats": 0, "tasks_ok": 0, "tasks_failed": 0,
                         "master_errors": 0, "zapped": 0, "zap_skipped": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Cold-tier tasks run on their own thread, in order: a slow SSD or S3 must never
        # hold up the heartbeats (a silent node is declared dead).
        self._cold_q: queue.SimpleQueue = queue.SimpleQueue()
        self._cold_thread: threading.Thread | None = None
        for m in mounted:
            rc = engine.register_memory(m.segment.base, m.segment.size, fd=m.segment.fd)
            if rc != 0:
                raise StoreError(f"cannot register segment {m.name} with the transfer engine", rc)

    def start(self) -> "NodeAgent":
        try:
            if not self.registered:
                self.register()
        except StoreError as e:   # the master may come up later; the loop keeps trying
            log.warning("node %s: first registration failed: %s", self.node_id, e)
        self._thread = threading.Thread(target=self._loop, name="mcs-node-agent", daemon=True)
        self._thread.start()
        if self.cold is not None:
            self._cold_thread = threading.Thread(target=self._cold_loop, name="mcs-node-cold",
                                                 daemon=True)
            self._cold_thread.start()
        return self

    def register(self) -> None:
        segs = [{"name": m.name, "base": m.segment.base, "size": m.segment.size, "tier": m.tier}
                for m in self.mounted.values()]
        inv = {m.name: inventory.scan(m.segment.ptr, m.segment.size, _written(m.segment))
               for m in self.mounted.values()}
        extra, cold_inv = (), {}
        if self.cold is not None:
            reg = self.cold.registration()
            cold_inv = reg.get("inventory") or {}
            extra = (dict(reg, inventory={t: len(e) for t, e in cold_inv.items()}),)
        counts = {name: len(entries) for name, entries in inv.items()}
        reply = self.master.call("register_node", self.node_id, self.endpoint, segs, counts, *extra)
        # The records follow in parts, each a short hold of the master; a part the master is
        # slow to take must not time out into a registration from scratch.
        for name, entries in inv.items():
            self._send_parts(name, entries, False)
        for tier, entries in cold_inv.items():
            self._send_parts(tier, entries, True)
        self.heartbeat_s = reply.get("heartbeat_ms", self.heartbeat_s * 1000) / 1000.0
        self.registered = True
        self.counters["registrations"] += 1

    def _send_parts(self, where: str, entries: list, cold: bool) -> None:
        timeout = max(getattr(self.master, "timeout_ms", 0), ADOPT_TIMEOUT_MS)
        for lo in range(0, len(entries), ADOPT_PART):
            self.master.call("adopt_inventory", self.node_id, where, entries[lo:lo + ADOPT_PART],
                             lo + ADOPT_PART >= len(entries), cold, timeout_ms=timeout)

    def close(self, leave: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._cold_thread is not None:
            self._cold_thread.join(timeout=30)
            self._cold_thread = None
        if leave and self.registered:
            try:
                self.master.call("leave", self.node_id, timeout_ms=1000)
            except StoreError:
                pass

    def _loop(self) -> None:
        pause = self.heartbeat_s
        while not self._stop.wait(pause):
            pause = self.heartbeat_s
            try:
                if not self.registered:
                    self.register()
                    continue
                reply = self._heartbeat()
                self.counters["heartbeats"] += 1
                if not reply.get("known"):
                    self.registered = False
                    self.register()
                    continue
                tasks = reply.get("tasks", ())
                for task in tasks:
                    self._run_task(task)
                if reply.get("zaps"):
                    self._run_zaps(reply["zaps"])
                if reply.get("more_zaps"):
                    # A mass removal: drain it in ~10x fewer seconds than one batch per
                    # heartbeat, still leaving the master's lock free most of the time.
                    pause = min(pause, ZAP_DRAIN_PAUSE_S)
                if tasks and self._cold_q.qsize() < 64:
                    pause = 0   # more may be queued (demotions): ask again, the worker keeps up
            except StoreError as e:
                self.counters["master_errors"] += 1
                log.debug("node %s: master call failed: %s", self.node_id, e)
            except Exception:  # noqa: BLE001 - the agent must keep heartbeating
                log.exception("node agent iteration failed")

    def _run_zaps(self, zaps: list) -> None:
        ids, zapped, skipped = inventory.zap_records(self.mounted, zaps)
        self.counters["zapped"] += zapped
        self.counters["zap_skipped"] += skipped
        if ids:
            self.master.call("zap_done", self.node_id, ids)

    def _heartbeat(self) -> dict:
        if self.cold is None:
            return self.master.call("heartbeat", self.node_id)
        report = self.cold.take_report()
        try:
            return self.master.call("heartbeat", self.node_id, report)
        except BaseException:
            self.cold.restore_report(report)
            raise

    def _run_task(self, task: dict) -> None:
        kind = task.get("kind", "repair")
        if kind == "repair":
            self._repair(task)
        elif self.cold is not None:
            self._cold_q.put(task)
        elif kind != "forget":
            self.master.call("task_done", self.node_id, task["id"], False)

    def _cold_loop(self) -> None:
        while not self._stop.is_set():
            try:
                task = self._cold_q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._run_cold(task)
            except StoreError as e:
                self.counters["master_errors"] += 1
                log.debug("node %s: cold task answer failed: %s", self.node_id, e)
            except Exception:  # noqa: BLE001 - the worker must survive a bad task
                log.exception("cold-tier task failed")

    def _run_cold(self, task: dict) -> None:
        kind = task.get("kind")
        if kind == "forget":
            self.cold.forget(task["key"])
            return   # no answer expected
        m = self.mounted.get(task.get("segment"))
        if kind == "gather":     # a striped object, joined into one cold record (node/cold.py)
            ok = self.cold.gather(self.mounted, task["key"], task["size"], task["parts"],
                                  task.get("tier"))
        elif kind == "fetch":    # a cold copy from another node's tier
            ok = self.cold.fetch(task["key"], task["src"], task["src_tier"], task.get("size", 0),
                                 task.get("tier"))
        elif kind == "rescue":   # a dead node's S3 object, copied into our S3 prefix
            ok = self.cold.rescue(task["key"], task["prefix"], task.get("size", 0))
        elif m is None:
            ok = False
        elif kind == "demote":
            ok = self.cold.demote(m.segment, task["offset"], task["length"], task["key"],
                                  task.get("tier"))
        else:
            ok = self.cold.promote(m.segment, task["offset"], task["length"], task["key"],
                                   task["tier"])
        self.counters["tasks_ok" if ok else "tasks_failed"] += 1
        self.master.call("task_done", self.node_id, task["id"], ok)

    def _repair(self, task: dict) -> None:
        """Copy one record from a peer node into our segment, verify it, report."""
        m = self.mounted.get(task["segment"])
        ok = False
        if m is not None and 0 <= task["offset"] and task["offset"] + task["length"] <= m.segment.size:
            dst = m.segment.base + task["offset"]
            try:
                self.engine.read(task["src"], dst, task["src_addr"], task["length"])
                ptr = m.segment.ptr + task["offset"]
                ok = inventory.verify_part(ptr, task["length"], task["key"], task["part"]) \
                    if task.get("part") else _verify(ptr, task["length"], task["key"])
            except StoreError as e:
                log.info("repair of %r from %s failed: %s", task["key"], task["src"], e)
        self.counters["tasks_ok" if ok else "tasks_failed"] += 1
        self.master.call("task_done", self.node_id, task["id"], ok)


def _verify(ptr: Any, length: int, key: str) -> bool:
    kb = key.encode("utf-8", "surrogatepass")
    info = ffi.new("mcs_rec_info *")
    if lib.mcs_rec_check_header(ptr, length, kb, len(kb), info) != 0:
        return False
    return lib.mcs_crc32c(0, ptr + info.header_len, info.value_len) == info.value_crc


def _written(segment: Any) -> Any:
    """Where a segment may hold records (None: anywhere; a GPU segment has no memfd)."""
    ranges = getattr(segment, "written_ranges", None)
    return ranges() if ranges is not None else None
