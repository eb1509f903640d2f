"""A storage node process: DRAM segment(s) served by a transfer engine, kept known to the master,
and optionally cold tiers below them (`--ssd PATH:SIZE`, Config s3_*: node/cold.py)."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..config import Config
from .agent import Mounted, NodeAgent
from .cold import NodeCold, open_backends
from .segment import DramSegment

log = logging.getLogger("mooncake_store.node")


class StorageNode:
    def __init__(self, cfg: Config, dram: int, host: str = "127.0.0.1", port: int = 0,
                 node_id: str | None = None, ssd: str = "", stage_bytes: int = 64 << 20) -> None:
        from ..client.cluster import MasterClient, leader_resolve_for, master_addresses
        from ..transfer import TransferEngine

        self.engine = TransferEngine(f"{host}:{port}", auth_token=cfg.auth_token or None,
                                     timeout_ms=max(1000, cfg.rpc_timeout_ms))
        self.endpoint = self.engine.get_local_hostname()
        self.segment = DramSegment(dram, f"mcs-node-{self.endpoint}")
        self.master = MasterClient(master_addresses(cfg), cfg.rpc_timeout_ms, cfg.auth_token,
                                   leader_resolve_for(cfg))
        self.cold = None
        backends = open_backends(cfg, ssd)
        if backends:
            try:
                self.cold = NodeCold(self.engine, backends, cfg, host, stage_bytes)
            except BaseException:
                for _, b in backends:
                    b.close()
                raise
        self.agent = NodeAgent(self.master, self.engine, [Mounted(self.endpoint, self.segment)],
                               cfg.heartbeat_ms, node_id, self.cold)
        self.membership = join_etcd(cfg, self.agent)
        self.metrics = None

    def start(self) -> "StorageNode":
        self.agent.start()
        # After the first inventory scan, which skips the memfd's holes: faulting the
        # pages in now keeps first-touch faults off the first puts (as the embedded store).
        self.segment.prefault()
        return self

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.membership is not None:
            self.membership.close()
        self.agent.close()
        if self.cold is not None:
            self.cold.close()
        self.master.close()
        self.engine.close()
        self.segment.close()


def join_etcd(cfg: Config, agent: NodeAgent) -> Any:
    """With an etcd metadata server: hold this node's membership lease (None otherwise)."""
    if not cfg.metadata_server.startswith("etcd://"):
        return None
    from ..meta.election import NodeMembership

    segs = [{"name": m.name, "base": m.segment.base, "size": m.segment.size, "tier": m.tier}
            for m in agent.mounted.values()]
    return NodeMembership(cfg.metadata_server, cfg.cluster_id, agent.node_id, agent.endpoint, segs,
                          cfg.node_ttl_ms)


def run_until_signal(closeable: Any, ready_line: str) -> None:
    """Print the ready line (fixtures and scripts wait for it), then serve until SIGINT/SIGTERM."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(ready_line, flush=True)
    while not done.wait(1.0):
        pass
    closeable.close()
