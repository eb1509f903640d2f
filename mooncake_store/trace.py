"""Request traces of prefix-structured KV-cache traffic: parsing, the
unbounded-cache bound, and an exact block-level simulation of any eviction policy.

The format (../shared/traces/README.md) is JSON lines, one request each:
``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``.
``hash_ids`` are chained prefix hashes: two requests share their first k ids
exactly when their prompts share the first k 512-token blocks.

A *prefix hit* is a block that is cached while every block before it in the
same request is cached too: that is what a serving engine can reuse.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import InvalidParams

BLOCK_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class Request:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Trace:
    path: str
    requests: tuple[Request, ...]

    @property
    def blocks(self) -> int:
        return sum(len(r.hash_ids) for r in self.requests)

    @property
    def distinct_blocks(self) -> int:
        seen: set[int] = set()
        for r in self.requests:
            seen.update(r.hash_ids)
        return len(seen)

    def head(self, n: int | None) -> "Trace":
        if n is None or n >= len(self.requests):
            return self
        return Trace(self.path, self.requests[:n])


class TraceError(InvalidParams):
    """A malformed trace; the message names the file and line."""


# ---- parsing ------------------------------------------------------------------------

def _field(obj: dict, name: str, kinds: tuple[type, ...], where: str):
    if name not in obj:
        raise TraceError(f"{where}: missing field {name!r}")
    val = obj[name]
    if isinstance(val, bool) or not isinstance(val, kinds):
        raise TraceError(f"{where}: field {name!r} must be {kinds[0].__name__}, got {val!r}")
    if val < 0:
        raise TraceError(f"{where}: field {name!r} must be >= 0, got {val!r}")
    return val


def parse_request(line: str, where: str) -> Request:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ts = _field(obj, "timestamp", (int, float), where)
    if isinstance(ts, float) and not math.isfinite(ts):
        raise TraceError(f"{where}: field 'timestamp' must be finite, got {ts!r}")
    inp = _field(obj, "input_length", (int,), where)
    out = _field(obj, "output_length", (int,), where)
    ids = obj.get("hash_ids")
    if not isinstance(ids, list):
        raise TraceError(f"{where}: field 'hash_ids' must be a list of block ids, got {ids!r}"
                         if "hash_ids" in obj else f"{where}: missing field 'hash_ids'")
    for i, h in enumerate(ids):
        if isinstance(h, bool) or not isinstance(h, int) or h < 0:
            raise TraceError(f"{where}: hash_ids[{i}] must be an integer >= 0, got {h!r}")
    if len(set(ids)) != len(ids):
        # A chained prefix hash cannot repeat inside one prompt.
        raise TraceError(f"{where}: hash_ids repeats a block id")
    return Request(float(ts), inp, out, tuple(ids))


def parse_lines(lines: Iterable[str], path: str = "<trace>") -> Trace:
    reqs: list[Request] = []
    last_ts = -math.inf
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        req = parse_request(line, where)
        if req.timestamp_ms < last_ts:
            raise TraceError(f"{where}: timestamp {req.timestamp_ms:g} goes back in time "
                             f"(previous {last_ts:g})")
        last_ts = req.timestamp_ms
        reqs.append(req)
    if not reqs:
        raise TraceError(f"{path}: trace has no requests")
    return Trace(path, tuple(reqs))


def load_trace(path: str, limit: int | None = None) -> Trace:
    """Read and validate a JSONL trace; `limit` keeps only the first N requests."""
    if limit is not None and limit <= 0:
        raise InvalidParams(f"limit: must be > 0, got {limit}")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TraceError(f"trace {path!r}: {e.strerror}") from None
    with f:
        lines: Iterable[str] = f
        if limit is not None:
            lines = _first_requests(f, limit)
        try:
            return parse_lines(lines, path)
        except UnicodeDecodeError:
            raise TraceError(f"trace {path!r}: not UTF-8 text") from None


def _first_requests(lines: Iterable[str], limit: int) -> Iterator[str]:
    n = 0
    for line in lines:
        if n >= limit:
            return
        if line.strip():
            n += 1
        yield line


# ---- bounds and simulation ------------------------------------------------------------

@dataclasses.dataclass
class SimResult:
    policy: str
    capacity_blocks: int
    requests: int = 0
    blocks: int = 0
    hits: int = 0
    inserts: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.blocks if self.blocks else 0.0


def unbounded_hit_rate(trace: Trace) -> float:
    """Prefix-hit rate of an infinite cache: the ceiling for every policy."""
    seen: set[int] = set()
    hits = total = 0
    for r in trace.requests:
        n = 0
        for h in r.hash_ids:
            if h not in seen:
                break
            n += 1
        hits += n
        total += len(r.hash_ids)
        seen.update(r.hash_ids)
    return hits / total if total else 0.0


def capacity_blocks(trace: Trace, pct: float) -> int:
    """`pct` percent of the trace's distinct blocks, at least one block."""
    if not 0 < pct:
        raise InvalidParams(f"capacity_pct: must be > 0, got {pct}")
    return max(1, int(trace.distinct_blocks * pct / 100.0))


def simulate_lru(trace: Trace, capacity: int) -> SimResult:
    """The reference LRU of issue [E], written out directly (no policy object):
    count the request's leading cached blocks as hits, then touch every block
    in order, inserting the missing ones and evicting the least recent."""
    res = SimResult("lru", capacity)
    cache: OrderedDict[int, None] = OrderedDict()
    for r in trace.requests:
        ids = r.hash_ids
        n = _leading(cache, ids)
        res.requests += 1
        res.blocks += len(ids)
        res.hits += n
        for h in ids:
            if h in cache:
                cache.move_to_end(h)
                continue
            if len(cache) >= capacity:
                cache.popitem(last=False)
                res.evictions += 1
            cache[h] = None
            res.inserts += 1
    return res


def _leading(cache, ids: Sequence[int]) -> int:
    n = 0
    for h in ids:
        if h not in cache:
            break
        n += 1
    return n


def block_key(block_id: int) -> str:
    """The store key of a trace block (short, so the object header stays 64 bytes)."""
    return f"b{block_id}"


def simulate_policy(trace: Trace, capacity: int, policy_factory: Callable[[], object],
                    name: str | None = None) -> SimResult:
    """Drive a real `EvictionPolicy` with the calls the store's index makes during
    a replay (see `replay`), with capacity counted in blocks. For LRU it differs
    from `simulate_lru` only for a cached block behind a missing one (the store's
    put does not touch it; `simulate_lru` does); on the shipped trace both give
    identical hit and eviction counts at 2-50% capacity.

    Per request: longest_prefix(keys) -> hint_prefix(keys); batch get of the
    leading hits -> hint_prefix(hits) and on_access each; batch put of the rest,
    one key at a time: a key already present is left alone (put keeps the first
    value and touches nothing); a new key first evicts (best victim first, never
    the key being written) until one block is free, then on_insert.
    """
    policy = policy_factory()
    res = SimResult(name or getattr(policy, "name", "?"), capacity)
    cached: set[str] = set()
    for r in trace.requests:
        keys = [block_key(h) for h in r.hash_ids]
        res.requests += 1
        res.blocks += len(keys)
        policy.hint_prefix(keys)
        n = _leading(cached, keys)
        res.hits += n
        if n:
            hit = keys[:n]
            policy.hint_prefix(hit)
            for k in hit:
                policy.on_access(k)
        for k in keys[n:]:
            if k in cached:
                continue  # put of a present key is a no-op: the store does not touch it
            if len(cached) >= capacity:
                _evict_one(policy, cached, protect=k)
                res.evictions += 1
            cached.add(k)
            policy.on_insert(k, 1)
            res.inserts += 1
    return res


def _evict_one(policy, cached: set[str], protect: str) -> None:
    for victim in policy.victims():
        if victim != protect and victim in cached:
            break
    else:
        raise RuntimeError(f"policy {policy.name!r} offered no victim with "
                           f"{len(cached)} objects cached")
    cached.discard(victim)
    policy.on_remove(victim)


# ---- replay through the real store -------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: spreads block ids over all bits


class Payloads:
    """Deterministic block contents: word i of block `h` is (i * MIX) ^ ((h + 1) * MIX).

    One XOR per word makes a block and one compare checks it, so a replay can
    verify every byte it reads without keeping the data around."""

    def __init__(self, block_bytes: int) -> None:
        if block_bytes < 8 or block_bytes % 8:
            raise InvalidParams(f"block_bytes: must be a positive multiple of 8, got {block_bytes}")
        self.block_bytes = block_bytes
        with np.errstate(over="ignore"):
            self._base = np.arange(block_bytes // 8, dtype=np.uint64) * _MIX

    def _seed(self, block_id: int) -> np.uint64:
        with np.errstate(over="ignore"):
            return np.uint64((block_id + 1) & 0xFFFF_FFFF_FFFF_FFFF) * _MIX

    def make(self, block_id: int, out: np.ndarray | None = None) -> np.ndarray:
        return np.bitwise_xor(self._base, self._seed(block_id), out=out)

    def check(self, block_id: int, buf: np.ndarray) -> bool:
        return bool(np.all(np.bitwise_xor(buf, self._base) == self._seed(block_id)))


def store_footprint(block_bytes: int, key: str = "b0") -> int:
    """Bytes one block takes in a DRAM segment: header + value, 64-byte aligned."""
    from .codec import ALIGN, header_size

    return (header_size(len(key.encode())) + block_bytes + ALIGN - 1) // ALIGN * ALIGN


@dataclasses.dataclass
class ReplayResult:
    policy: str
    capacity_pct: float | None
    capacity_blocks: int
    capacity_bytes: int
    block_bytes: int
    requests: int = 0
    blocks: int = 0
    hits: int = 0
    inserts: int = 0
    evictions: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    verified_gets: int = 0
    failed_gets: int = 0
    get_p50_us: float = 0.0
    get_p99_us: float = 0.0
    elapsed_s: float = 0.0
    sim_hit_rate: float | None = None
    bound: float | None = None

    @property
    def hit_rate(self) -> float:
        return self.hits / self.blocks if self.blocks else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hit_rate"] = self.hit_rate
        return d


def replay(trace: Trace, capacity_blocks: int, policy: str, block_bytes: int = 64 << 10,
           speed: float = 0.0, capacity_pct: float | None = None,
           on_request: Callable[[int], None] | None = None, max_seconds: float | None = None,
           ) -> ReplayResult:
    """Replay `trace` through an embedded `Store` holding exactly `capacity_blocks` blocks.

    Per request: longest_prefix(keys); batch_get_into the cached leading blocks
    and check every byte; batch_put_from the missing ones. The store is set up
    so that its eviction matches the block-counting simulation: capacity =
    blocks x footprint, no watermark eviction (high_watermark=1), no extra
    eviction batch (eviction_ratio ~ 0), and no read leases (lease_ttl_ms=0;
    with leases, blocks just read could not be evicted and the cache would
    hold fewer useful blocks than it counts)."""
    from . import Store  # the store is heavy; the simulation does not need it

    if capacity_blocks <= 0:
        raise InvalidParams(f"capacity: must be at least one block, got {capacity_blocks}")
    if speed < 0:
        raise InvalidParams(f"speed: must be >= 0 (0 = as fast as possible), got {speed}")
    pay = Payloads(block_bytes)
    longest_key = block_key(max(h for r in trace.requests for h in r.hash_ids))
    foot = store_footprint(block_bytes, longest_key)
    cap_bytes = capacity_blocks * foot
    res = ReplayResult(policy, capacity_pct, capacity_blocks, cap_bytes, block_bytes)
    lat: list[int] = []
    max_len = max(len(r.hash_ids) for r in trace.requests)
    words = block_bytes // 8
    rbufs = [np.empty(words, dtype=np.uint64) for _ in range(max_len)]
    wbufs = [np.empty(words, dtype=np.uint64) for _ in range(max_len)]
    t_first = trace.requests[0].timestamp_ms
    start = time.perf_counter()
    deadline = None if max_seconds is None else start + max_seconds
    with Store(capacity=cap_bytes, eviction_policy=policy, high_watermark=1.0,
               eviction_ratio=1e-12, lease_ttl_ms=0, max_batch_size=max(65536, max_len)) as store:
        for i, r in enumerate(trace.requests):
            if speed > 0:
                _wait_until(start + (r.timestamp_ms - t_first) / 1000.0 / speed, deadline)
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"replay stopped after {max_seconds:g} s at request {i}")
            ids = r.hash_ids
            keys = [block_key(h) for h in ids]
            n = store.longest_prefix(keys)
            if n:
                t0 = time.perf_counter_ns()
                got = store.batch_get_into(keys[:n], rbufs[:n])
                lat.append(time.perf_counter_ns() - t0)
                for h, code, buf in zip(ids, got, rbufs):
                    if code == block_bytes and pay.check(h, buf):
                        res.verified_gets += 1
                    else:
                        res.failed_gets += 1
                res.bytes_read += n * block_bytes
            if n < len(ids):
                todo = ids[n:]
                for h, buf in zip(todo, wbufs):
                    pay.make(h, out=buf)
                codes = store.batch_put_from(keys[n:], wbufs[:len(todo)])
                bad = [c for c in codes if c != 0]
                if bad:
                    raise RuntimeError(f"request {i}: put failed with code {bad[0]} "
                                       f"(capacity {capacity_blocks} blocks)")
            res.requests += 1
            res.blocks += len(ids)
            res.hits += n
            if on_request is not None:
                on_request(i)
        st = store.stats()
    res.elapsed_s = time.perf_counter() - start
    res.evictions = int(st.get("evictions", 0))
    res.inserts = int(st.get("puts", 0))
    res.bytes_written = res.inserts * block_bytes
    if lat:
        arr = np.array(lat, dtype=np.float64) / 1000.0
        res.get_p50_us = float(np.percentile(arr, 50))
        res.get_p99_us = float(np.percentile(arr, 99))
    return res


def _wait_until(t: float, deadline: float | None) -> None:
    # Bounded: never sleeps past the replay's own deadline.
    while True:
        now = time.perf_counter()
        end = t if deadline is None else min(t, deadline)
        if now >= end:
            return
        time.sleep(min(end - now, 0.05))
