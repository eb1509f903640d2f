"""Small helpers shared by the workloads: sizes, latency percentiles, throughput fields."""
from __future__ import annotations

import time

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
now = time.perf_counter

_UNITS = {"": 1, "B": 1, "K": KiB, "KB": KiB, "KIB": KiB, "M": MiB, "MB": MiB, "MIB": MiB,
          "G": GiB, "GB": GiB, "GIB": GiB}


def parse_size(text: str) -> int:
    """'4K', '64KiB', '1M', '16MB', '4096' -> bytes (binary units); ValueError names the token."""
    s = text.strip().upper()
    num = s.rstrip("KMGIB")
    unit = s[len(num):]
    if not num or unit not in _UNITS:
        raise ValueError(f"bad size {text!r} (examples: 4K, 64K, 1M, 16M, 4096)")
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"bad size {text!r} (examples: 4K, 64K, 1M, 16M, 4096)") from None
    n = int(value * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"size must be > 0, got {text!r}")
    return n


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(tok) for tok in text.split(",") if tok.strip()]
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def human_size(n: int) -> str:
    for unit, suffix in ((GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def lat_stats(lat: list[float]) -> dict:
    """Per-call latencies in seconds -> microsecond percentiles (nearest rank)."""
    if not lat:
        return {}
    a = sorted(lat)
    n = len(a)

    def q(p: float) -> float:
        return round(a[min(n - 1, int(p * n))] * 1e6, 1)

    return {"p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99),
            "mean_us": round(sum(a) / n * 1e6, 1), "max_us": round(a[-1] * 1e6, 1)}


def rate_fields(nbytes: int, ops: int, secs: float) -> dict:
    secs = max(secs, 1e-9)
    return {"GBps": round(nbytes / secs / 1e9, 4), "ops_per_s": round(ops / secs, 1)}
