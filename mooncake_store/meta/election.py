"""Master leader election and node membership on etcd.

Election: a master campaigns by creating the leader key with its lease in one
transaction (create-if-absent). The winner keeps the lease alive; standbys poll
the key and campaign again as soon as it disappears (the leader's lease expired
or it stepped down). A leader that cannot refresh its lease steps down and
forgets its index, so two masters never both act as leader for long, and a new
leader always rebuilds from the nodes.

Membership: each node holds a key under nodes/ with its own lease (plus its
segment descriptors under segments/). The leader reads the node list when it
takes over (to know whom to wait for while it rebuilds its index) and on every
tick (a node whose lease expired is dropped at once, without waiting for the
heartbeat timeout).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from ..errors import StoreError
from .etcd import EtcdClient, LeaseKeeper, cluster_prefix, leader_key, node_key, segment_key

log = logging.getLogger("mooncake_store.meta")


class Elector:
    def __init__(self, service: Any, endpoints: str, cluster_id: str, ttl_ms: int) -> None:
        self.svc = service
        self.etcd = EtcdClient(endpoints)
        self.cluster_id = cluster_id
        self.ttl_s = max(2, (ttl_ms + 999) // 1000)
        self.key = leader_key(cluster_id)
        self._keeper: LeaseKeeper | None = None
        self._alive: tuple[float, set[str]] | None = None   # (when read, node ids) from etcd
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        service.role = "standby"
        service.membership = self

    def start(self) -> "Elector":
        self._thread = threading.Thread(target=self._loop, name="mcs-elector", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._keeper is not None:
            self._keeper.close(revoke=True)   # hand over at once instead of after the TTL
            self._keeper = None

    def alive_nodes(self) -> tuple[float, set[str]] | None:
        """(when read, the nodes holding a membership lease then), as read by this thread
        within the last 2 s (time.monotonic()); None when etcd has not answered lately (the
        master then keeps its nodes and its own heartbeat timeout decides), so the master's
        ticker never waits on etcd. A node that registered after the read may be missing."""
        alive = self._alive
        if alive is None or time.monotonic() - alive[0] > 2.0:
            return None
        return alive

    def _read_nodes(self) -> set[str]:
        prefix = cluster_prefix(self.cluster_id) + "nodes/"
        nodes = {k[len(prefix):] for k in self.etcd.get_prefix(prefix)}
        self._alive = (time.monotonic(), nodes)
        return nodes

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                if self._keeper is None:
                    self._campaign()
                elif self.etcd.get(self.key) != self.svc.address:
                    self._step_down("leader key lost")
                else:
                    self._read_nodes()
            except StoreError as e:
                log.debug("election: %s", e)
            except Exception:  # noqa: BLE001 - the elector must keep running
                log.exception("election loop failed")

    def _campaign(self) -> None:
        current = self.etcd.get(self.key)
        if current == self.svc.address:
            # Our own key from a lease we no longer keep (we stepped down while etcd was
            # unreachable, and it came back with the lease still counting): nobody else
            # writes our address, so clear it instead of waiting for the lease to run out.
            self.etcd.delete_if(self.key, self.svc.address)
            current = self.etcd.get(self.key)
        self.svc.leader_hint = current or ""
        if current is not None:
            return
        keeper = LeaseKeeper(self.etcd, self.ttl_s, on_lost=lambda: self._step_down("lease lost"))
        if self.etcd.create(self.key, self.svc.address, keeper.lease):
            self._keeper = keeper
            expected = self._read_nodes()
            log.warning("master %s is now the leader (waiting for %d node(s))",
                        self.svc.address, len(expected))
            self.svc.become_leader(expected)
        else:
            keeper.close(revoke=True)

    def _step_down(self, why: str) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            log.warning("master %s steps down: %s", self.svc.address, why)
            self.svc.step_down()
            threading.Thread(target=keeper.close, kwargs={"revoke": True}, daemon=True).start()


class NodeMembership:
    """A node's presence in etcd: nodes/<id> and segments/<name>, all on one lease."""

    def __init__(self, endpoints: str, cluster_id: str, node_id: str, endpoint: str,
                 segments: list[dict], ttl_ms: int) -> None:
        self.etcd = EtcdClient(endpoints)
        self.ttl_s = max(2, (ttl_ms + 999) // 1000)
        self.items = {node_key(cluster_id, node_id):
                      json.dumps({"endpoint": endpoint, "segments": [s["name"] for s in segments]})}
        for seg in segments:
            self.items[segment_key(cluster_id, seg["name"])] = json.dumps(
                {**seg, "endpoint": endpoint, "node": node_id})
        self.keeper: LeaseKeeper | None = None
        self._closed = False
        self._join()

    def _join(self) -> None:
        keeper = LeaseKeeper(self.etcd, self.ttl_s, on_lost=self._rejoin_later)
        for key, value in self.items.items():
            self.etcd.put(key, value, keeper.lease)
        self.keeper = keeper

    def _rejoin_later(self) -> None:
        """The lease expired (etcd was unreachable too long): join again until it works."""
        def retry() -> None:
            if self._closed:
                return
            try:
                self._join()
            except StoreError:
                threading.Timer(1.0, retry).start()
        threading.Timer(0.1, retry).start()

    def close(self) -> None:
        self._closed = True
        if self.keeper is not None:
            self.keeper.close(revoke=True)
