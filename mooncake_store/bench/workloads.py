"""The store workloads, phase by phase: the workload of the Mooncake anchor's bench_mooncake.py
expressed against our `Store` (Pythonic face).

A `Worker` owns one store client plus a source and a destination buffer (numpy, pages faulted in
up front). Each public method is one phase and returns a flat dict of counts, seconds and
latency percentiles; `runner.py` decides which phases run and adds the ceilings and ratios.

APIs: `bytes` = put(key, bytes) / get(key); `zc` = put_from / get_into with int addresses into
the numpy buffers; `zc_batch` = batch_put_from / batch_get_into. Keys are unique per phase; the
working set is capped and recycled by an untimed batch_remove(force=True). The first read of
every get phase is compared byte for byte with the reference copy of the source.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import StoreError
from .stats import MiB, lat_stats, now

REMOVE_CHUNK = 1024


SMALL_KEYS_CAP = 65_536


class Worker:
    def __init__(self, store: Any, buf_bytes: int, seed: int = 1234) -> None:
        self.s = store
        rng = np.random.default_rng(seed)
        self.src = rng.integers(0, 256, buf_bytes, dtype=np.uint8)
        self.ref = self.src.copy()                  # never handed to the store
        self.dst = np.ones(buf_bytes, np.uint8)
        self.src_p, self.dst_p = self.src.ctypes.data, self.dst.ctypes.data
        store.register_buffer(self.src)
        store.register_buffer(self.dst)
        self.nb = buf_bytes

    def _slot(self, i: int, size: int) -> int:
        return (i % (self.nb // size)) * size

    def _pool_bytes(self) -> int:
        try:
            return int(self.s.stats().get("capacity") or 0)
        except Exception:  # noqa: BLE001 - a bench sizing hint, not a result
            return 0

    def _remove(self, keys: list[str]) -> int:
        bad = 0
        for j in range(0, len(keys), REMOVE_CHUNK):
            bad += sum(1 for r in self.s.batch_remove(keys[j:j + REMOVE_CHUNK], force=True)
                       if r != 0)
        return bad

    def _verify(self, key_idx: int, size: int, got: Any) -> bool:
        o = self._slot(key_idx, size)
        return bool(np.array_equal(np.frombuffer(got, np.uint8, size), self.ref[o:o + size]))

    def warmup(self, prefix: str, fill_bytes: int) -> dict:
        """Put buffer-sized values until `fill_bytes` are stored, then remove them all."""
        size = min(16 * MiB, self.nb)
        keys: list[str] = []
        ops = 0
        t0 = now()
        for i in range(max(1, fill_bytes // size)):
            k = f"{prefix}/{i}"
            try:
                self.s.put_from(k, self.src_p, size)
            except StoreError:
                break
            keys.append(k)
            ops += 1
        secs = now() - t0
        self._remove(keys)
        return {"ops": ops, "bytes": ops * size, "value_size": size, "secs": round(secs, 4)}

    # ---- throughput: put -------------------------------------------------------------------
    def _put_call(self, mode: str, prefix: str, i: int, size: int, batch_n: int,
                  val: bytes | None) -> tuple[list[str], int]:
        """One timed call; returns the keys it wrote and how many succeeded."""
        s = self.s
        if mode == "zc_batch":
            ks = [f"{prefix}/{i + j}" for j in range(batch_n)]
            ptrs = [self.src_p + self._slot(i + j, size) for j in range(batch_n)]
            rcs = s.batch_put_from(ks, ptrs, [size] * batch_n)
            return ks, sum(1 for r in rcs if r == 0)
        k = f"{prefix}/{i}"
        try:
            if mode == "zc":
                s.put_from(k, self.src_p + self._slot(i, size), size)
            else:
                s.put(k, val)
            return [k], 1
        except StoreError:
            return [k], 0

    def put_tp(self, prefix: str, size: int, mode: str, budget: float, max_bytes: int,
               ws_keys: int, batch_n: int) -> dict:
        if mode not in ("bytes", "zc", "zc_batch"):
            raise ValueError(f"unknown put mode {mode!r}")
        n_per_call = batch_n if mode == "zc_batch" else 1
        val = bytes(self.ref[:size]) if mode == "bytes" else None
        live: list[str] = []
        lat: list[float] = []
        i = ops = fails = nbytes = 0
        paused = 0.0
        t_start = now()
        while now() - t_start - paused < budget and nbytes < max_bytes:
            if len(live) >= ws_keys:           # recycle space, untimed
                tp = now()
                self._remove(live)
                live = []
                paused += now() - tp
            t0 = now()
            ks, ok = self._put_call(mode, prefix, i, size, n_per_call, val)
            lat.append(now() - t0)
            live.extend(ks)
            i += n_per_call
            ops += ok
            fails += n_per_call - ok
            nbytes += ok * size
        wall = now() - t_start - paused
        self._remove(live)
        return {"ops": ops, "fails": fails, "bytes": nbytes, "secs": round(wall, 4),
                "calls": len(lat), **lat_stats(lat)}

    def populate(self, prefix: str, size: int, n: int) -> dict:
        batch = max(1, min(256, (16 * MiB) // size))
        fails = 0
        for st in range(0, n, batch):
            m = min(batch, n - st)
            rcs = self.s.batch_put_from([f"{prefix}/{st + j}" for j in range(m)],
                                        [self.src_p + self._slot(st + j, size) for j in range(m)],
                                        [size] * m)
            fails += sum(1 for r in rcs if r != 0)
        return {"fails": fails}

    def cleanup(self, prefix: str, n: int) -> dict:
        return {"remove_fails": self._remove([f"{prefix}/{i}" for i in range(n)])}

    # ---- throughput: get -------------------------------------------------------------------
    def _get_call(self, mode: str, prefix: str, i: int, n: int, size: int,
                  batch_n: int) -> tuple[int, bool | None]:
        """One timed call; returns (successful reads, verification of this call or None)."""
        s = self.s
        check = i == 0
        if mode == "zc_batch":
            kis = [(i + j) % n for j in range(batch_n)]
            offs = [self._slot(j, size) for j in range(batch_n)]
            rcs = s.batch_get_into([f"{prefix}/{k}" for k in kis],
                                   [self.dst_p + o for o in offs], [size] * batch_n)
            ok = sum(1 for r in rcs if r == size)
            ver = None
            if check and rcs[-1] == size:
                ver = self._verify(kis[-1], size, self.dst[offs[-1]:offs[-1] + size])
            return ok, ver
        ki = i % n
        try:
            if mode == "zc":
                o = self._slot(i, size)
                got = s.get_into(f"{prefix}/{ki}", self.dst_p + o, size)
                view = self.dst[o:o + size]
            else:
                view = s.get(f"{prefix}/{ki}")
                got = len(view)
        except StoreError:
            return 0, None
        ok = int(got == size)
        return ok, (self._verify(ki, size, view) if check and ok else None)

    def get_tp(self, prefix: str, size: int, n: int, mode: str, budget: float, max_bytes: int,
               batch_n: int) -> dict:
        if mode not in ("bytes", "zc", "zc_batch"):
            raise ValueError(f"unknown get mode {mode!r}")
        n_per_call = batch_n if mode == "zc_batch" else 1
        lat: list[float] = []
        verified: list[bool] = []
        i = ops = fails = nbytes = 0
        t_start = now()
        while now() - t_start < budget and nbytes < max_bytes:
            t0 = now()
            ok, ver = self._get_call(mode, prefix, i, n, size, n_per_call)
            lat.append(now() - t0)
            if ver is not None:
                verified.append(ver)
            i += n_per_call
            ops += ok
            fails += n_per_call - ok
            nbytes += ok * size
        wall = now() - t_start
        return {"ops": ops, "fails": fails, "bytes": nbytes, "secs": round(wall, 4),
                "calls": len(lat), "verified": all(verified) if verified else None,
                **lat_stats(lat)}

    # ---- small objects, one thread -----------------------------------------------------------
    def small_ops(self, prefix: str, size: int, budget: float,
                  max_ops: int = 2_000_000) -> dict:
        s = self.s
        val = bytes(self.ref[:size])
        out: dict[str, Any] = {}
        keys: list[str] = []

        def run(name: str, fn: Any, limit: int = max_ops) -> None:
            lat: list[float] = []
            fails = i = 0
            t_start = now()
            while now() - t_start < budget and i < limit:
                t0 = now()
                try:
                    ok = fn(i)
                except StoreError:
                    ok = False
                lat.append(now() - t0)
                fails += not ok
                i += 1
            wall = now() - t_start
            out[name] = {"ops": len(lat) - fails, "fails": fails, "secs": round(wall, 4),
                         "ops_per_s": round((len(lat) - fails) / wall, 1), **lat_stats(lat)}

        def put(i: int) -> bool:
            k = f"{prefix}/b{i}"
            keys.append(k)
            s.put(k, val)
            return True

        # Written keys must stay resident for the read phases: the two put phases together
        # fill at most 40% of the pool (and at most SMALL_KEYS_CAP keys each).
        cap = self._pool_bytes()
        per_phase = SMALL_KEYS_CAP if not cap else \
            max(1024, min(SMALL_KEYS_CAP, int(0.2 * cap / (size + 128))))
        run("put", put, limit=min(max_ops, per_phase))
        nb = len(keys)

        def put_from(i: int) -> bool:
            k = f"{prefix}/z{i}"
            keys.append(k)
            s.put_from(k, self.src_p + self._slot(i, size), size)
            return True

        run("put_from", put_from, limit=min(max_ops, per_phase))
        dst = self.dst_p
        run("get", lambda i: len(s.get(keys[i % nb])) == size)
        run("get_into", lambda i: s.get_into(keys[i % nb], dst + self._slot(i, size), size) == size)
        run("is_exist", lambda i: s.exists(keys[i % nb]))
        run("is_exist_miss", lambda i: not s.exists(f"{prefix}/missing{i}"))
        verified = self._verify(0, size, s.get(keys[0]))
        out["_remove_fails"] = self._remove(keys)
        out["_verified"] = verified
        return out

    # ---- batches of medium objects ---------------------------------------------------------
    def batch_put_bench(self, prefix: str, nkeys: int, size: int, budget: float,
                        ws_batches: int) -> dict:
        lat: list[float] = []
        live: list[str] = []
        done = fails = b = 0
        paused = 0.0
        ptrs = [self.src_p + self._slot(j, size) for j in range(nkeys)]
        sizes = [size] * nkeys
        t_start = now()
        while now() - t_start - paused < budget:
            if len(live) >= ws_batches * nkeys:
                tp = now()
                self._remove(live)
                live = []
                paused += now() - tp
            ks = [f"{prefix}/{b}/{j}" for j in range(nkeys)]
            t0 = now()
            rcs = self.s.batch_put_from(ks, ptrs, sizes)
            lat.append(now() - t0)
            ok = sum(1 for r in rcs if r == 0)
            done += ok
            fails += nkeys - ok
            live.extend(ks)
            b += 1
        wall = now() - t_start - paused
        self._remove(live)
        return {"batches": len(lat), "fails": fails, "bytes": done * size, "secs": round(wall, 4),
                "batches_per_s": round(len(lat) / wall, 2), **lat_stats(lat)}

    def populate_groups(self, prefix: str, groups: int, nkeys: int, size: int) -> dict:
        fails = 0
        ptrs = [self.src_p + self._slot(j, size) for j in range(nkeys)]
        for g in range(groups):
            rcs = self.s.batch_put_from([f"{prefix}/{g}/{j}" for j in range(nkeys)], ptrs,
                                        [size] * nkeys)
            fails += sum(1 for r in rcs if r != 0)
        return {"fails": fails}

    def batch_get_bench(self, prefix: str, groups: int, nkeys: int, size: int, budget: float,
                        mode: str) -> dict:
        if mode not in ("zc_batch", "bytes_batch"):
            raise ValueError(f"unknown batch get mode {mode!r}")
        lat: list[float] = []
        done = fails = g = 0
        ptrs = [self.dst_p + self._slot(j, size) for j in range(nkeys)]
        sizes = [size] * nkeys
        verified = None
        t_start = now()
        while now() - t_start < budget:
            ks = [f"{prefix}/{g % groups}/{j}" for j in range(nkeys)]
            t0 = now()
            if mode == "zc_batch":
                rcs = self.s.batch_get_into(ks, ptrs, sizes)
                lat.append(now() - t0)
                ok = sum(1 for r in rcs if r == size)
                if g == 0:
                    verified = all(self._verify(j, size, self.dst[o:o + size])
                                   for j, o in ((j, self._slot(j, size)) for j in range(nkeys)))
            else:
                vals = self.s.batch_get(ks)
                lat.append(now() - t0)
                ok = sum(1 for v in vals if v is not None and len(v) == size)
                if g == 0:
                    verified = all(v is not None and self._verify(j, size, v)
                                   for j, v in enumerate(vals))
            done += ok
            fails += nkeys - ok
            g += 1
        wall = now() - t_start
        return {"batches": len(lat), "fails": fails, "bytes": done * size, "secs": round(wall, 4),
                "batches_per_s": round(len(lat) / wall, 2), "verified": verified,
                **lat_stats(lat)}

    def cleanup_groups(self, prefix: str, groups: int, nkeys: int) -> dict:
        return {"remove_fails": self._remove([f"{prefix}/{g}/{j}" for g in range(groups)
                                              for j in range(nkeys)])}
