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
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Sequence

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
    a replay (see `replay_calls`), with capacity counted in blocks.

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
