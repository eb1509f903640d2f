"""Why a key is missing: a compact memory of the keys that left the index.

Users of KV caches ask of every miss whether the block was evicted, removed, lost
with a node, or never stored at all (a key built differently by another instance).
The index notes each departure here, in generations of Bloom filters: a departure
sets 10 bits chosen by xxh3-128 hashes of the key salted with the reason, in the
newest generation; a generation that has taken its share of the history (limit /
GENERATIONS departures) makes the oldest one the newest, cleared. At 24-48 bits per
key, a key that never left reads as departed about once in 10^5 lookups (5 reasons
x 8 generations). The default history, the last 1,048,576 departures, takes 4 MiB
whatever the cache holds, and a note costs ~2 us; a departure is known to within its
generation's time span (seconds_ago is given as a range).
"""
from __future__ import annotations

from typing import Callable

import xxhash

EVICTED, REMOVED, LOST, ABANDONED, CORRUPT = 1, 2, 3, 4, 5
REASONS = {EVICTED: "evicted", REMOVED: "removed", LOST: "lost", ABANDONED: "abandoned",
           CORRUPT: "corrupt"}
DETAILS = {
    EVICTED: "evicted to make room (eviction policy, capacity pressure)",
    REMOVED: "removed by a client (remove, remove_many, remove_by_regex or remove_all)",
    LOST: "lost: every replica was on nodes that died (no copy left in any tier)",
    ABANDONED: "its put never finished (the writer stopped between put_start and put_end)",
    CORRUPT: "dropped after every replica failed its checksum on a read",
}
DEFAULT_LIMIT = 1 << 20
GENERATIONS = 8
BITS_PER_KEY = 24       # at least; a generation's bits are rounded up to a power of two
PROBES = 10


class _Generation:
    __slots__ = ("bits", "count", "first", "last")

    def __init__(self, nbits: int) -> None:
        self.bits = bytearray(nbits // 8)
        self.count = 0
        self.first = self.last = 0.0


class Departures:
    def __init__(self, clock: Callable[[], float], limit: int = DEFAULT_LIMIT) -> None:
        self.clock = clock
        self.limit = max(GENERATIONS, limit)
        self._per_gen = self.limit // GENERATIONS
        self._log2 = max(6, (self._per_gen * BITS_PER_KEY - 1).bit_length())
        self._nbits = 1 << self._log2
        # Probe positions are log2-bit slices of 128-bit hashes: this many per hash.
        self._per_hash = 128 // self._log2
        self._gens = [_Generation(self._nbits)]   # newest last
        # Told of every departure too (under the index lock: keep it to a dict pop), so
        # what a master keeps per key beside the index leaves with the key.
        self.listener: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return sum(g.count for g in self._gens)

    def note(self, key: str, reason: int) -> None:
        """`key` just left the index (called under the index lock)."""
        if self.listener is not None:
            self.listener(key)
        g = self._gens[-1]
        if g.count >= self._per_gen:
            g = self._gens.pop(0) if len(self._gens) == GENERATIONS else None
            if g is None:
                g = _Generation(self._nbits)
            else:
                g.bits[:] = bytes(len(g.bits))
                g.count = 0
            self._gens.append(g)
        now = self.clock()
        if g.count == 0:
            g.first = now
        g.count += 1
        g.last = now
        bits = g.bits
        for p in self._probes(key, reason):
            bits[p >> 3] |= 1 << (p & 7)

    def explain(self, key: str) -> dict | None:
        """{"reason", "detail", "seconds_ago": [least, most]} for a key that left within
        the history (the newest generation that holds it; a key that left twice within
        one generation reads as either departure), else None."""
        probes = {r: self._probes(key, r) for r in REASONS}
        now = self.clock()
        for g in reversed(self._gens):
            bits = g.bits
            for r, ps in probes.items():
                if all(bits[p >> 3] >> (p & 7) & 1 for p in ps):
                    return {"reason": REASONS[r], "detail": DETAILS[r],
                            "seconds_ago": [round(max(0.0, now - g.last), 3),
                                            round(max(0.0, now - g.first), 3)]}
        return None

    def _probes(self, key: str, reason: int) -> list[int]:
        kb = key.encode("utf-8", "surrogatepass")
        bits, per, mask = self._log2, self._per_hash, self._nbits - 1
        out: list[int] = []
        seed = reason << 8
        while len(out) < PROBES:
            h = xxhash.xxh3_128_intdigest(kb, seed=seed)
            out += [h >> (bits * i) & mask for i in range(min(per, PROBES - len(out)))]
            seed += 1
        return out


def nearest_keys(key: str, keys: list[str], n: int = 3, scan: int = 200_000,
                 candidates: int = 20_000) -> list[str]:
    """Up to n stored keys sharing the longest leading or trailing part with `key` (at
    least half of it), among the first `scan` keys and the first `candidates` that share
    that half: a key built by another instance (with another hash root, or under another
    namespace) differs from the stored one in its tail or in its prefix."""
    half = max(1, len(key) // 2)
    head, tail = key[:half], key[-half:]
    scored = []
    for k in keys[:scan]:
        if k != key and (k.startswith(head) or k.endswith(tail)):
            scored.append((-max(_common_head(key, k), _common_tail(key, k)), k))
            if len(scored) >= candidates:
                break
    scored.sort()
    return [k for _, k in scored[:n]]


def _common_head(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:                  # binary search with C-speed slice compares
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_tail(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo
