"""The GPU section of `mstore bench` (`--device cuda`): put_from / get_into of device tensors
through the store's local DRAM segment, next to the pinned host<->device copy ceiling.

The store holds host memory only, so a device tensor reaches it the way a serving engine's
KV connector does it: one copy between the device tensor and a pinned host staging buffer
(registered with the store), and one zero-copy put_from / get_into of that staging buffer.
The ceiling of each direction is a torch copy of a pinned host tensor to / from the device of
the same size, measured in the same run; results are ratios to it.

`device="cpu"` runs the same phases with plain CPU tensors (no pinning, no synchronisation):
that keeps the code path testable on machines without a GPU.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from .stats import GiB, MiB, human_size, lat_stats, now, rate_fields

DEFAULT_GPU_SIZES = [64 * 1024, MiB, 4 * MiB, 16 * MiB]
TO_DEVICE, FROM_DEVICE = "host_to_device", "device_to_host"
Emit = Callable[[dict], None]


class NoCuda(RuntimeError):
    """CUDA cannot be used here; the message is the one-line reason."""


def cuda_unavailable_reason(torch_mod: Any = None) -> str | None:
    """None when a CUDA device can be used, else a one-line reason (never raises)."""
    if torch_mod is None:
        try:
            import torch as torch_mod
        except ImportError:
            return "torch is not installed (pip install torch)"
    try:
        if torch_mod.version.cuda is None:
            return f"torch {torch_mod.__version__} is a CPU-only build (no CUDA support)"
        if not torch_mod.cuda.is_available():
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
        if torch_mod.cuda.device_count() < 1:
            return "no CUDA device is visible (device count 0)"
    except Exception as e:  # noqa: BLE001 - a broken driver must be a reason, not a traceback
        return f"CUDA initialisation failed: {type(e).__name__}: {e}"
    return None


@dataclasses.dataclass
class GpuPlan:
    device: str = "cuda"
    sizes: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_GPU_SIZES))
    seconds: float = 0.5            # per phase
    max_gib: float = 4.0            # byte cap per phase
    ws_mib: int = 256               # keys recycled within this working set
    seg_mib: int = 768              # the local DRAM segment
    tag: str = "gpu"

    def validate(self) -> None:
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError("sizes must be > 0")
        if max(self.sizes) * 2 > self.ws_mib * MiB or self.ws_mib * MiB > self.seg_mib * MiB * 0.8:
            raise ValueError(f"working set ({self.ws_mib} MiB) must hold two values of the "
                             f"largest size and stay below 80% of the segment ({self.seg_mib} MiB)")


def check_device(device: str) -> None:
    """Raise NoCuda with the reason when `device` asks for CUDA that is not there."""
    if device.startswith("cuda"):
        why = cuda_unavailable_reason()
        if why:
            raise NoCuda(why)


class _Device:
    """What differs between cuda and cpu: allocation, pinning, synchronisation."""

    def __init__(self, torch: Any, name: str) -> None:
        self.torch = torch
        self.dev = torch.device(name)
        self.cuda = self.dev.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def host(self, nbytes: int) -> Any:
        """Host staging memory: pinned when a device needs DMA from it."""
        return self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=self.cuda)

    def tensor(self, nbytes: int, seed: int) -> Any:
        g = self.torch.Generator().manual_seed(seed)
        t = self.torch.randint(0, 256, (nbytes,), dtype=self.torch.uint8, generator=g)
        return t.to(self.dev)


class GpuRunner:
    """Ceilings and store phases per size; every record goes to `emit`."""

    def __init__(self, plan: GpuPlan, emit: Emit, on_phase: Callable[[str], None] = lambda n: None,
                 store_factory: Callable[[int], Any] | None = None) -> None:
        plan.validate()
        check_device(plan.device)
        import torch

        self.plan, self._emit, self.on_phase = plan, emit, on_phase
        self.d = _Device(torch, plan.device)
        self._store_factory = store_factory or _embedded_store
        self.run_id = f"{os.getpid()}_{int(time.time())}"

    def emit(self, rec: dict) -> None:
        from .runner import IMPL

        self._emit({"impl": IMPL, "tag": self.plan.tag, **rec})

    def run(self) -> None:
        p, d = self.plan, self.d
        name = d.torch.cuda.get_device_name(d.dev) if d.cuda else "cpu"
        self.emit({"test": "params", "device": str(d.dev), "device_name": name,
                   "sizes": p.sizes, "seconds": p.seconds, "ws_mib": p.ws_mib,
                   "seg_mib": p.seg_mib, "master": "embedded", "cpus": os.cpu_count(),
                   "torch": d.torch.__version__, "pinned": d.cuda})
        # On the cpu path torch's copy is a memcpy; its intra-op threads only fight the
        # store's thread on a small, shared machine (40x slower at load 5 on 2 cores).
        threads = d.torch.get_num_threads()
        if not d.cuda:
            d.torch.set_num_threads(1)
        store = self._store_factory(p.seg_mib * MiB)
        try:
            for size in p.sizes:
                self._size(store, size)
        finally:
            store.close()
            d.torch.set_num_threads(threads)

    def _size(self, store: Any, size: int) -> None:
        p, d = self.plan, self.d
        n = max(2, p.ws_mib * MiB // size)
        nslots = max(1, min(n, (256 * MiB) // size))   # distinct device sources, bounded memory
        src = d.tensor(nslots * size, seed=size).view(nslots, size)
        dst = d.torch.empty((nslots, size), dtype=d.torch.uint8, device=d.dev)
        staging = d.host(size)
        addr = store.register_buffer(staging)
        try:
            ceil = {FROM_DEVICE: self._ceiling(src, staging, FROM_DEVICE),
                    TO_DEVICE: self._ceiling(src, staging, TO_DEVICE)}
            prefix = f"{self.run_id}/{size}"
            self.on_phase(f"{human_size(size)}: put_from of a {d.dev.type} tensor")
            r = self._put_phase(store, src, staging, prefix, n)
            populate_fails = r.pop("populate_fails")
            self._emit_tp("put", size, r, ceil[FROM_DEVICE])
            self.on_phase(f"{human_size(size)}: get_into a {d.dev.type} tensor")
            r = self._get_phase(store, src, dst, staging, prefix, n)
            self._emit_tp("get", size, r, ceil[TO_DEVICE], populate_fails=populate_fails)
            _remove(store, [f"{prefix}/{i}" for i in range(n)])
        finally:
            store.unregister_buffer(addr)

    def _ceiling(self, dev_t: Any, staging: Any, direction: str) -> float:
        """GB/s of a torch copy between the pinned staging tensor and device memory."""
        p, d = self.plan, self.d
        self.on_phase(f"{human_size(staging.numel())}: ceiling {direction.replace('_', ' ')}")
        nslots = dev_t.shape[0]
        nbytes = ops = 0
        budget, cap = p.seconds, int(p.max_gib * GiB)
        d.sync()
        t0 = now()
        while now() - t0 < budget and nbytes < cap:
            row = dev_t[ops % nslots]
            if direction == TO_DEVICE:
                row.copy_(staging, non_blocking=True)
            else:
                staging.copy_(row, non_blocking=True)
            d.sync()   # the copy a phase waits for is the copy it measures
            ops += 1
            nbytes += staging.numel()
        secs = now() - t0
        gbps = rate_fields(nbytes, ops, secs)["GBps"]
        self.emit({"test": "ceiling_device_copy", "direction": direction,
                   "value_size": staging.numel(), "ops": ops, "bytes": nbytes,
                   "secs": round(secs, 4), "GBps": gbps, "pinned": d.cuda})
        return gbps

    def _put_phase(self, store: Any, src: Any, staging: Any, prefix: str, n: int) -> dict:
        """Device -> pinned staging -> put_from; keys recycled by an untimed remove."""
        p, d = self.plan, self.d
        size, nslots = staging.numel(), src.shape[0]
        lat: list[float] = []
        i = ops = fails = nbytes = 0
        paused = 0.0
        t_start = now()
        while now() - t_start - paused < p.seconds and nbytes < int(p.max_gib * GiB):
            if i and i % n == 0:
                tp = now()
                _remove(store, [f"{prefix}/{j}" for j in range(n)])
                paused += now() - tp
            t0 = now()
            staging.copy_(src[i % nslots], non_blocking=True)
            d.sync()
            try:
                store.put_from(f"{prefix}/{i % n}", staging)
                ops += 1
                nbytes += size
            except Exception:  # noqa: BLE001 - counted as a failed op and reported
                fails += 1
            lat.append(now() - t0)
            i += 1
        wall = now() - t_start - paused
        # Leave a full working set behind for the get phase (untimed).
        _remove(store, [f"{prefix}/{j}" for j in range(n)])
        populate_fails = 0
        for j in range(n):
            staging.copy_(src[j % nslots])
            d.sync()
            try:
                store.put_from(f"{prefix}/{j}", staging)
            except Exception:  # noqa: BLE001 - reported; the get phase then counts misses
                populate_fails += 1
        return {"ops": ops, "fails": fails, "bytes": nbytes, "secs": round(wall, 4),
                "calls": len(lat), "populate_fails": populate_fails, **lat_stats(lat)}

    def _get_phase(self, store: Any, src: Any, dst: Any, staging: Any, prefix: str,
                   n: int) -> dict:
        """get_into pinned staging -> device; the first read is checked byte for byte."""
        p, d = self.plan, self.d
        size, nslots = staging.numel(), src.shape[0]
        lat: list[float] = []
        i = ops = fails = nbytes = 0
        t_start = now()
        while now() - t_start < p.seconds and nbytes < int(p.max_gib * GiB):
            t0 = now()
            try:
                got = store.get_into(f"{prefix}/{i % n}", staging)
            except Exception:  # noqa: BLE001 - counted as a failed op and reported
                got = -1
            if got == size:
                dst[i % nslots].copy_(staging, non_blocking=True)
                d.sync()
                ops += 1
                nbytes += size
            else:
                fails += 1
            lat.append(now() - t0)
            i += 1
        wall = now() - t_start
        # Untimed check of one full round trip: key 0 holds src[0] (see _put_phase).
        verified = False
        try:
            if store.get_into(f"{prefix}/0", staging) == size:
                dst[0].copy_(staging)
                d.sync()
                verified = bool(d.torch.equal(dst[0], src[0]))
        except Exception:  # noqa: BLE001 - an unreadable key is a failed check, not a crash
            verified = False
        return {"ops": ops, "fails": fails, "bytes": nbytes, "secs": round(wall, 4),
                "calls": len(lat), "verified": verified, **lat_stats(lat)}

    def _emit_tp(self, op: str, size: int, r: dict, ceiling: float, **extra: Any) -> None:
        rates = rate_fields(r["bytes"], r["ops"], r["secs"])
        self.emit({"test": "gpu_throughput", "op": op, "api": "zc", "path": "local",
                   "device": str(self.d.dev), "value_size": size, **extra, **r, **rates,
                   "copy_GBps": ceiling,
                   "x_copy": round(rates["GBps"] / ceiling, 3) if ceiling else None})


def _embedded_store(seg_bytes: int) -> Any:
    from ..client.store import Store

    return Store(global_segment_size=seg_bytes, lease_ttl_ms=0)


def _remove(store: Any, keys: list[str]) -> None:
    for j in range(0, len(keys), 1024):
        store.batch_remove(keys[j:j + 1024], force=True)
