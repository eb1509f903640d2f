"""Runs a benchmark plan phase by phase and hands each result record to a callback.

`quick_plan()` is `mstore bench` (every size, short phases, < ~1 min on 2 cores);
`store_plan()` is `mstore bench store` (the Mooncake anchor's defaults). Both run the same
phases; a plan with `master` set also runs the remote (segment-less client) column.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Callable

from .. import __version__
from . import ceilings
from .clients import LocalClient, ProcessClient
from .stats import GiB, KiB, MiB, human_size as _hs, rate_fields

IMPL = f"mooncake_store-{__version__}"
DEFAULT_SIZES = [4 * KiB, 64 * KiB, MiB, 4 * MiB, 16 * MiB]
BATCH_KEYS, BATCH_VALUE = 64, 256 * KiB     # the batch phases: 64 x 256 KiB per call
BATCH_GROUPS = 8                             # ... over 8 distinct batches (128 MiB)
Emit = Callable[[dict], None]
OnPhase = Callable[[str], None]


@dataclasses.dataclass
class Plan:
    sizes: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_SIZES))
    seconds: float = 3.0                 # per throughput / batch phase
    small_seconds: float | None = None   # per small-op phase; default min(2, seconds)
    max_gib: float = 4.0                 # byte cap per throughput phase
    ws_mib: int = 512                    # working set per phase (recycled)
    max_keys: int = 16384
    seg_mib: int = 1536                  # capacity of the segment the writer holds
    buf_mib: int = 32                    # worker source / destination buffers
    put_modes: tuple[str, ...] = ("zc", "zc_batch", "bytes")
    get_modes: tuple[str, ...] = ("zc", "zc_batch", "bytes")
    lease_ttl_ms: int = 500              # as the anchor's master: leases end soon after reads
    master: str | None = None            # cluster master; None = embedded (local column only)
    transport: str = "shm"               # remote column: shm (same host, memfd) or tcp
    small: bool = True
    batch: bool = True
    tcp_ceiling: bool = False
    bulk_memcpy_mib: int = 0             # 0: skip the one-big-copy ceiling
    warmup: bool = True                  # touch the segment's pages once before timing
    tag: str = ""

    def __post_init__(self) -> None:
        if self.small_seconds is None:
            self.small_seconds = min(2.0, self.seconds)
        # Each worker buffer must hold one value (and a whole batch of the batch phases).
        need = max(max(self.sizes), BATCH_KEYS * BATCH_VALUE if self.batch else 0)
        self.buf_mib = max(self.buf_mib, -(-need // MiB))

    def validate(self) -> None:
        if self.transport not in ("shm", "tcp"):
            raise ValueError(f"transport must be shm or tcp, got {self.transport!r}")
        if self.seconds <= 0 or self.small_seconds <= 0:
            raise ValueError("--seconds must be > 0")
        if self.ws_mib <= 0 or self.seg_mib <= 0:
            raise ValueError("working set and segment sizes must be > 0")
        big = max(self.sizes)
        if big + 4 * KiB > self.seg_mib * MiB // 2:
            raise ValueError(f"value size {big} does not fit twice in a {self.seg_mib} MiB segment")
        ws = max(self.ws_mib * MiB, BATCH_GROUPS * BATCH_KEYS * BATCH_VALUE if self.batch else 0)
        if ws > self.seg_mib * MiB * 0.8:
            raise ValueError(f"working set ({ws // MiB} MiB, batch phases included) must stay "
                             f"below 80% of the segment ({self.seg_mib} MiB)")

    @property
    def remote(self) -> bool:
        return self.master is not None


def quick_plan(**overrides: Any) -> Plan:
    base = dict(seconds=0.3, small_seconds=0.3, max_gib=4.0, ws_mib=128, seg_mib=512,
                buf_mib=32, tag="quick")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Plan(**base)


def store_plan(**overrides: Any) -> Plan:
    base = dict(tcp_ceiling=True, bulk_memcpy_mib=256, tag="store")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Plan(**base)


def batch_keys(size: int) -> int:
    return max(1, min(256, (16 * MiB) // size))


def ws_keys(plan: Plan, size: int) -> int:
    n = batch_keys(size)
    keys = max(n, min(plan.ws_mib * MiB // size, plan.max_keys))
    return keys - keys % n


def count_phases(plan: Plan) -> int:
    paths = 2 if plan.remote else 1
    n = len(plan.sizes) * (2 + len(plan.put_modes) * paths + len(plan.get_modes) * paths
                           + (1 if plan.remote and plan.tcp_ceiling else 0))
    n += paths if plan.small else 0
    n += (3 * paths + 2 * (BATCH_VALUE not in plan.sizes)) if plan.batch else 0
    return n + plan.warmup + (1 if plan.tcp_ceiling else 0) + (1 if plan.bulk_memcpy_mib else 0)


class Runner:
    def __init__(self, plan: Plan, emit: Emit, on_phase: OnPhase = lambda name: None) -> None:
        plan.validate()
        self.plan = plan
        self._emit = emit
        self.on_phase = on_phase
        self.ceil: dict[str, Any] = {"memcpy": {}}
        self.run_id = f"{os.getpid()}_{int(time.time())}"

    def emit(self, rec: dict) -> None:
        self._emit({"impl": IMPL, "tag": self.plan.tag, **rec})

    # ---- clients --------------------------------------------------------------------------
    def _store_kwargs(self, segment_mib: int) -> dict:
        p = self.plan
        return {"master_server_addr": p.master or "", "global_segment_size": segment_mib * MiB,
                "lease_ttl_ms": p.lease_ttl_ms, "max_batch_size": 65536}

    def _open_clients(self) -> list[tuple[Any, str]]:
        """[(client, path)] in the order their phases run; the writer holds the segment."""
        p = self.plan
        buf = p.buf_mib * MiB
        if not p.remote:
            return [(LocalClient("writer", self._store_kwargs(p.seg_mib), buf), "local")]
        # The clients' own switch: with it off, same-host reads go over TCP as across hosts.
        env = {"MOONCAKE_SHM": "1" if p.transport == "shm" else "0"}
        writer = ProcessClient("writer", self._store_kwargs(p.seg_mib), buf, env)
        try:
            reader = ProcessClient("reader", self._store_kwargs(0), buf, env)
        except Exception:
            writer.close()
            raise
        return [(writer, "local"), (reader, f"remote_{p.transport}")]

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> None:
        p = self.plan
        self.emit({"test": "params", "sizes": p.sizes, "seconds": p.seconds,
                   "small_seconds": p.small_seconds, "max_gib": p.max_gib, "ws_mib": p.ws_mib,
                   "max_keys": p.max_keys, "seg_mib": p.seg_mib, "buf_mib": p.buf_mib,
                   "lease_ttl_ms": p.lease_ttl_ms, "master": p.master or "embedded",
                   "transport": p.transport if p.remote else "in-process",
                   "cpus": os.cpu_count(), "python": platform.python_version(),
                   "machine": platform.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._global_ceilings()
        clients = self._open_clients()
        try:
            if p.warmup:
                self._warmup(clients[0][0])
            arena = ceilings.CopyArena(p.ws_mib * MiB, p.buf_mib * MiB)
            for size in p.sizes:
                self._size_phases(clients, arena, size)
            if p.small:
                self._small_phases(clients)
            if p.batch:
                self._batch_phases(clients, arena)
            del arena
            stats = clients[0][0].stats()
            self.emit({"test": "store_stats", **{k: stats.get(k) for k in
                       ("capacity", "used", "objects", "evictions", "hits", "misses")}})
        finally:
            for client, _ in clients:
                client.close()

    def _warmup(self, writer: Any) -> None:
        """Fill the writer's segment once and empty it, untimed by the phases.

        The first write to a page of a fresh segment takes a page fault; steady-state
        phases should not pay it (a serving store is long-lived). The rate is recorded.
        """
        self.on_phase("warm-up: first touch of the segment")
        fill = int(self.plan.seg_mib * MiB * 0.85)
        r = writer.call("warmup", prefix=f"{self.run_id}/w", fill_bytes=fill)
        self.emit({"test": "warmup", **r, **rate_fields(r["bytes"], r["ops"], r["secs"])})

    def _global_ceilings(self) -> None:
        p = self.plan
        if p.bulk_memcpy_mib:
            self.on_phase("ceiling: memcpy (one big copy)")
            rec = ceilings.memcpy_bulk(p.bulk_memcpy_mib * MiB)
            self.ceil["memcpy_bulk"] = rec["GBps_best"]
            self.emit(rec)
        if p.tcp_ceiling:
            self.on_phase("ceiling: TCP loopback socket pair")
            rec = ceilings.tcp_loopback(max(1.0, min(p.seconds, 3.0)))
            self.ceil["tcp"] = rec["GBps"]
            self.emit(rec)

    def _ratios(self, gbps: float, size: int, path: str, op: str) -> dict:
        out = {}
        direction = ceilings.TO_STORE if "put" in op else ceilings.FROM_STORE
        mc = self.ceil["memcpy"].get((size, direction))
        if mc:
            out["memcpy_GBps"] = mc
            out["x_memcpy"] = round(gbps / mc, 3)
        if path != "local" and self.ceil.get("tcp"):
            out["x_tcp_ceiling"] = round(gbps / self.ceil["tcp"], 3)
        rt = self.ceil.get("tcp_rt", {}).get(size)
        if path != "local" and rt:
            out["tcp_rt_GBps"] = rt
            out["x_tcp_rt"] = round(gbps / rt, 3)
        return out

    def _size_phases(self, clients: list, arena: ceilings.CopyArena, size: int) -> None:
        p = self.plan
        hs = _hs(size)
        self._memcpy_ceiling(arena, size, ceilings.TO_STORE)
        if p.remote and p.tcp_ceiling:
            self.on_phase(f"{hs}: TCP round-trip ceiling")
            rec = ceilings.tcp_round_trips(size, min(p.seconds, 1.0))
            self.ceil.setdefault("tcp_rt", {})[size] = rec["GBps"]
            self.emit(rec)
        nb, nkeys = batch_keys(size), ws_keys(p, size)
        max_bytes = int(p.max_gib * GiB)
        for client, path in clients:
            for mode in p.put_modes:
                self.on_phase(f"{hs}: put {mode} ({path})")
                r = client.call("put_tp", prefix=f"{self.run_id}/p/{path}/{mode}/{size}",
                                size=size, mode=mode, budget=p.seconds, max_bytes=max_bytes,
                                ws_keys=nkeys, batch_n=nb)
                self._emit_tp("put", mode, path, client.role, size, nb, r)
        writer = clients[0][0]
        prefix = f"{self.run_id}/g/{size}"
        populated = writer.call("populate", prefix=prefix, size=size, n=nkeys)
        self._memcpy_ceiling(arena, size, ceilings.FROM_STORE)
        for client, path in clients:
            for mode in p.get_modes:
                self.on_phase(f"{hs}: get {mode} ({path})")
                r = client.call("get_tp", prefix=prefix, size=size, n=nkeys, mode=mode,
                                budget=p.seconds, max_bytes=max_bytes, batch_n=nb)
                self._emit_tp("get", mode, path, client.role, size, nb, r,
                              working_set_keys=nkeys, populate_fails=populated["fails"])
        writer.call("cleanup", prefix=prefix, n=nkeys)

    def _emit_tp(self, op: str, mode: str, path: str, role: str, size: int, nb: int, r: dict,
                 **extra: Any) -> None:
        rates = rate_fields(r["bytes"], r["ops"], r["secs"])
        self.emit({"test": "throughput", "op": op, "api": mode, "path": path, "client": role,
                   "value_size": size, "batch": nb if "batch" in mode else 1, **extra, **r,
                   **rates, **self._ratios(rates["GBps"], size, path, op)})

    def _small_phases(self, clients: list) -> None:
        p = self.plan
        for client, path in reversed(clients):
            self.on_phase(f"4K small ops ({path})")
            res = client.call("small_ops", prefix=f"{self.run_id}/s/{path}", size=4 * KiB,
                              budget=p.small_seconds)
            rf, ver = res.pop("_remove_fails"), res.pop("_verified")
            for op, r in res.items():
                self.emit({"test": "small_ops", "op": op, "path": path, "client": client.role,
                           "value_size": 4 * KiB, "threads": 1, "remove_fails": rf,
                           "verified": ver if op.startswith("get") else None, **r})

    def _memcpy_ceiling(self, arena: ceilings.CopyArena, size: int, direction: str) -> None:
        self.on_phase(f"{_hs(size)}: memcpy ceiling ({direction.replace('_', ' ')})")
        rec = ceilings.memcpy_chunks(arena, size, self.plan.seconds, direction,
                                     int(self.plan.max_gib * GiB))
        self.ceil["memcpy"][(size, direction)] = rec["GBps"]
        self.emit(rec)

    def _batch_phases(self, clients: list, arena: ceilings.CopyArena) -> None:
        p = self.plan
        nkeys, size, groups = BATCH_KEYS, BATCH_VALUE, BATCH_GROUPS
        for direction in (ceilings.TO_STORE, ceilings.FROM_STORE):
            if (size, direction) not in self.ceil["memcpy"]:
                self._memcpy_ceiling(arena, size, direction)
        for client, path in clients:
            self.on_phase(f"batch put 64 x 256K ({path})")
            r = client.call("batch_put_bench", prefix=f"{self.run_id}/bp/{path}", nkeys=nkeys,
                            size=size, budget=p.seconds, ws_batches=groups)
            self._emit_batch("batch_put_from", path, client.role, nkeys, size, r)
        writer = clients[0][0]
        prefix = f"{self.run_id}/bg"
        populated = writer.call("populate_groups", prefix=prefix, groups=groups, nkeys=nkeys,
                                size=size)
        for client, path in clients:
            for mode, api in (("zc_batch", "batch_get_into"), ("bytes_batch", "get_batch")):
                self.on_phase(f"batch {api} 64 x 256K ({path})")
                r = client.call("batch_get_bench", prefix=prefix, groups=groups, nkeys=nkeys,
                                size=size, budget=p.seconds, mode=mode)
                self._emit_batch(api, path, client.role, nkeys, size, r,
                                 populate_fails=populated["fails"])
        writer.call("cleanup_groups", prefix=prefix, groups=groups, nkeys=nkeys)

    def _emit_batch(self, op: str, path: str, role: str, nkeys: int, size: int, r: dict,
                    **extra: Any) -> None:
        gbps = round(r["bytes"] / max(r["secs"], 1e-9) / 1e9, 4)
        self.emit({"test": "batch", "op": op, "path": path, "client": role,
                   "keys_per_batch": nkeys, "value_size": size, **extra, **r, "GBps": gbps,
                   **self._ratios(gbps, size, path, op)})
