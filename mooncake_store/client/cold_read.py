"""Cluster reads of objects that live in a node's cold tier (SSD or S3), and put backpressure.

A lookup whose tier is `TIER@ADDRESS` (master/cluster_tiers.py) names the node's
staging RPC. The node loads the verified value into a buffer registered with its
transfer engine and answers where it is, its length, its CRC32C and a ticket;
the client copies it straight into the caller's buffer over the transfer engine
(shm on the same host, tcp otherwise), checks the CRC over the destination, and
hands the ticket back with its next stage call (tickets also expire on the node).
The master never carries the bytes. A node has several staging servers, taken in
turn, so several reads of one node are staged at once; a read whose copy fails
(its node died, the copy went) tries the object's other cold copies.

In a cluster Store this object takes the place the embedded TierManager has
(`Store._tiers`): `read_into` for cold lookups, `demote_now` when a put finds
DRAM full of objects still being demoted (wait, bounded, for room).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from .._engine import ffi, lib
from ..errors import InvalidParams, NoSpace, RpcFailed, RpcTimeout, StoreError, TransferFailed
from ..rpc.client import RpcClients

log = logging.getLogger("mooncake_store.client")

ROOM_WAIT_S = 5.0        # how long a put waits for demotions to make room
MAX_PENDING_RELEASES = 64
PERSIST_WAIT_S = 60.0    # a write-through to S3 retries for up to 30 s on the node
ROOM_AGAIN_S = 1.0       # a put asking again this soon after a "yes" needed more room
MAX_STAGE_SERVERS = 16
MAX_FALLBACKS = 4        # other cold copies a read tries after the one its lookup named


class ColdReader:
    def __init__(self, session: Any, timeout_ms: int = 5000, token: str = "") -> None:
        self.session = session
        self.timeout_ms = timeout_ms
        self.token = token
        self._clients = RpcClients(timeout_ms, token)
        self._release: dict[str, list[int]] = {}   # node address -> tickets to hand back
        self._lock = threading.Lock()
        self._last_room = (0, -1e9, 1)                # need, when answered "yes", copies asked
        self._servers: dict[str, list[str]] = {}      # node address -> its staging servers
        self._turn = itertools.count()
        self._used: set[str] = set()                  # staging servers read from (stats)
        self.counters = {"cold_reads": 0, "cold_read_bytes": 0, "cold_read_failures": 0,
                         "cold_read_fallbacks": 0, "put_room_waits": 0}

    def read_into(self, tier_name: str, key: str, kb: bytes, dst: Any, dst_len: int,
                  size: int) -> int:
        """Read the copy the lookup named; when that fails (its node died and the master
        has not noticed yet, the copy was dropped or fails verification), ask the master
        for the object's other cold copies and read one of those. Every copy is checked
        against its CRC, so a fallback never serves other bytes than the first would have."""
        try:
            return self._read_copy(tier_name, key, dst, dst_len)
        except InvalidParams:
            raise
        except StoreError as first:
            tried = {tier_name}
            for _ in range(MAX_FALLBACKS):
                other = self._other_copy(key, tried)
                if other is None:
                    break
                tried.add(other)
                try:
                    n = self._read_copy(other, key, dst, dst_len)
                except InvalidParams:
                    raise
                except StoreError:
                    continue
                self.counters["cold_read_fallbacks"] += 1
                return n
            raise first

    def _stage(self, addr: str, key: str, tier: str, release: list) -> dict:
        """One stage call on one of the node's staging servers, taken in turn (each serves
        one call at a time, so several readers of one node are staged at once). A server
        that does not answer makes the node's list be asked again next time."""
        server = self._server_of(addr)
        try:
            return self._clients.get(server).call("stage", key, tier, release)
        except (RpcFailed, RpcTimeout):
            with self._lock:
                self._servers.pop(addr, None)
            raise

    def _server_of(self, addr: str) -> str:
        with self._lock:
            servers = self._servers.get(addr)
        if servers is None:
            try:
                got = self._clients.get(addr).call("stage_servers")
            except InvalidParams:   # a node without several servers
                got = [addr]
            servers = [a for a in got[:MAX_STAGE_SERVERS] if isinstance(a, str) and ":" in a] \
                if isinstance(got, list) else []
            servers = servers or [addr]
            with self._lock:
                self._servers[addr] = servers
        with self._lock:
            server = servers[next(self._turn) % len(servers)]
            self._used.add(server)
        return server

    def _other_copy(self, key: str, tried: set[str]) -> str | None:
        """A cold copy of key not tried yet, from the master (raises ObjectNotFound when the
        object is gone meanwhile)."""
        st = self.session.master.call("stat", key)
        for c in st.get("cold") or ():
            name = f"{c.get('tier')}@{c.get('address')}"
            if name not in tried:
                return name
        return None

    def _read_copy(self, tier_name: str, key: str, dst: Any, dst_len: int) -> int:
        tier, _, addr = tier_name.partition("@")
        if not addr:
            raise TransferFailed(f"key {key!r}: tier {tier_name!r} names no node")
        with self._lock:
            release = self._release.pop(addr, [])
        try:
            st = self._stage(addr, key, tier, release)
        except (RpcFailed, RpcTimeout) as e:
            self.counters["cold_read_failures"] += 1
            raise TransferFailed(f"key {key!r}: the node holding its {tier} copy is "
                                 f"unreachable: {e}") from None
        n = int(st["len"])
        try:
            if n > dst_len:
                raise InvalidParams(f"buffer of {dst_len} bytes is smaller than the "
                                    f"{n}-byte value of {key!r}")
            try:
                self.session.engine.read(st["endpoint"], int(ffi.cast("uintptr_t", dst)),
                                         int(st["addr"]), n)
            except StoreError as e:
                self.counters["cold_read_failures"] += 1
                raise TransferFailed(f"key {key!r}: reading the staged {tier} copy failed: "
                                     f"{e}") from None
            if lib.mcs_crc32c(0, ffi.cast("char *", dst), n) != st["crc"]:
                self.counters["cold_read_failures"] += 1
                raise TransferFailed(f"key {key!r}: the staged {tier} copy changed in transit")
        finally:
            with self._lock:
                pend = self._release.setdefault(addr, [])
                if len(pend) < MAX_PENDING_RELEASES:
                    pend.append(st["ticket"])
        self.counters["cold_reads"] += 1
        self.counters["cold_read_bytes"] += n
        return n

    # ---- what Store calls on its tier manager ---------------------------------------------------------
    def kick(self) -> None:
        """Demotion runs on the master's clock: nothing to wake here."""

    def demote_now(self, need: int) -> None:
        """A put found no room: the master keeps objects a node is about to demote, so wait
        (bounded) until some DRAM segment has a free extent the record fits in; at once
        NoSpace when no node has a cold tier to demote to (a DRAM-only cluster).
        Store does not say how many replicas the put wants, so a put that fails again right
        after a "yes" for the same size asks for one more segment with room each time (a
        replica_num=2 put waits for two)."""
        self.counters["put_room_waits"] += 1
        now = time.monotonic()
        last_need, last_at, copies = self._last_room
        copies = copies + 1 if last_need == need and now - last_at < ROOM_AGAIN_S else 1
        deadline = now + ROOM_WAIT_S
        delay = 0.01
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
            answer = self.session.master.call("room", need, copies)
            if answer == "yes":
                self._last_room = (need, time.monotonic(), copies)
                return
            if answer != "wait":   # no node can demote to make room: fail now
                raise NoSpace(f"no DRAM room for {need} bytes and no cold tier to make it")
        raise NoSpace(f"no DRAM room for {need} bytes after waiting {ROOM_WAIT_S:.0f} s "
                      "for demotions")

    def persist(self, key: str, replica: Any) -> None:
        """Write-through (ReplicateConfig.persist): the node holding the new replica copies it
        to its most durable tier; return once the master recorded that copy. TransferFailed
        when it failed (Store then withdraws the object). A cluster whose node has no cold
        tier keeps the put as it is, like an embedded store without tiers."""
        state = self.session.master.call("persist", key)
        deadline = time.monotonic() + PERSIST_WAIT_S
        delay = 0.005
        while state in ("pending", "busy") and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            state = self.session.master.call("persisted" if state == "pending" else "persist", key)
        if state not in ("ok", "none"):
            raise TransferFailed(f"write-through of {key!r} to a durable tier "
                                 f"{'timed out' if state == 'pending' else 'failed'}")

    def stats(self) -> dict:
        return {**self.counters, "cold_read_servers": len(self._used)}

    def close(self) -> None:
        self._clients.close()
