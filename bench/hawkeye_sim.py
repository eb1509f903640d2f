"""Hawkeye-style learned dead-block prediction on top of prefix-prune / prefix-lfru.

Research script (not wired into the store). Jain & Lin, ISCA 2016, adapted:

* OPTgen, online, over a sampled history: 1 in `sample` keys (xxh3 of the key)
  is followed. Time is the request counter. An occupancy vector over the last
  `_BUF` requests counts, per request, how many sampled intervals Belady's OPT
  keeps live across it. When a sampled key is demanded again (it is in a hinted
  chain) at t after its previous demand at t0, OPT would have hit iff the
  occupancy over [t0, t) stays below capacity * sample rate (capacity = the most
  keys ever cached, which the policy sees); if so the interval is added.
  A sampled key not demanded again within `window` x lifetime requests counts
  as an OPT miss (Hawkeye's detraining on sampler eviction).
* The label trains the feature bucket the key had at its previous demand. The
  bucket is built from what the policy sees through the API (FEATURES below).
* Per bucket the predictor keeps decayed counts (OPT hits, total); a bucket
  with at least `min_n` samples and hit rate < `lo` is cache-averse, > `hi`
  (when `bonus` > 0) is promoted.
* Action: at insertion (and, with `on_access`, at a later use) an averse key
  goes to an extra class whose priority is last_use - `penalty` x lifetime
  (penalty >= 100: evicted before anything but the dead queue, leaf-first within
  a request); a promoted key gets + `bonus` x lifetime. Other keys behave as in
  the base policy (prefix-prune, or prefix-lfru's rules with `prune=0`).

OPTgen sees the demand stream: every key of each hinted request (the hits,
the misses, and cached blocks behind a miss), which is the same for every
policy; labels are computed when the next request starts (so the request's hit
length and new-block count are known), strictly from the past.

    python bench/hawkeye_sim.py --splits first --pcts 5,10 --policy hawk [--lru] [--verbose]
    python bench/hawkeye_sim.py --splits full,first,second --pcts 2,5,10,20,50 --policy "hawk:lo=0.2"

Results (2026-11-25, exact simulation; prefix-prune for reference):

| split | policy | 2% | 5% | 10% | 20% | 50% |
|---|---|---:|---:|---:|---:|---:|
| full | prefix-prune | 9.51 | 22.20 | 29.91 | 34.73 | 36.34 |
| full | hawk | 12.06 | 22.43 | 29.76 | 34.43 | 36.34 |
| full | hawk-fill | 13.53 | 22.48 | 29.47 | 33.73 | 35.59 |
| full | hawk-conf | 11.11 | 22.36 | 29.83 | 34.47 | 36.34 |
| full | hawk-faithful | 13.37 | 20.89 | 27.87 | 33.78 | 36.34 |

Verdict: large gains at 2-5% (OPT labels are capacity-aware), nothing at 10%
(the predictor rediscovers chain tails and "continuing request writing >= 8 new
blocks", which is 85% dead and not dead enough), losses at 20% unless it is
made so conservative that it is prefix-prune again.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import Iterator, Sequence

import heapq
import numpy as np
import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mooncake_store.master.policy import POLICIES  # noqa: E402
from mooncake_store.master.policy_prune import PrefixPruneReference as PrefixPrunePolicy  # noqa: E402
from mooncake_store.trace import (capacity_blocks, load_trace, simulate_lru,  # noqa: E402
                                  simulate_policy)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from policy_sim import DEFAULT_TRACE, split  # noqa: E402

_AVERSE, _FRIEND = 25, 26
_LVL0 = 29   # graded classes 27..31: credit (class - 29) * grade lifetimes
_BUF = 16384   # occupancy ring, in requests


def _blen(x: int, cap: int) -> int:
    return min(max(x, 0).bit_length(), cap)


# Feature sets: name -> function(ctx) where ctx is a tuple of the touch's facts.
# ctx = (kind, nbkt, depth, dist, uses, hitlen)
def _f_kind_new(c):      return (c[0], c[1])
def _f_kind_new_dist(c): return (c[0], c[1], min(c[3], 3))
def _f_all(c):           return (c[0], c[1], _blen(c[2], 7), _blen(c[3], 5), min(c[4], 4),
                                 _blen(c[5], 6))
def _f_kdd(c):           return (c[0], c[1], _blen(c[2], 7), _blen(c[3], 5))
def _f_kdu(c):           return (c[0], c[1], _blen(c[2], 7), min(c[4], 4))
def _f_kndu(c):          return (c[0], c[1], _blen(c[3], 5), min(c[4], 4))
def _f_kdh(c):           return (c[0], c[1], _blen(c[2], 7), _blen(c[3], 5), _blen(c[5], 6))


def _f_kndd(c):          return (c[0], c[1], min(c[3], 3), min(_blen(c[2], 7) // 2, 3))


FEATURES = {7: _f_kndd, 0: _f_all, 1: _f_kind_new, 2: _f_kind_new_dist, 3: _f_kdd, 4: _f_kdu,
            5: _f_kndu, 6: _f_kdh}


class HawkeyePolicy(PrefixPrunePolicy):
    name = "hawk"

    def __init__(self, credit_scale: float | None = None, sample: float = 2, window: float = 3,
                 lo: float = 0.15, hi: float = 2.0, bonus: float = 0.0, penalty: float = 100,
                 min_n: float = 16, decay: float = 512, feat: float = 2, prune: float = 1,
                 on_access: float = 0, once_only: float = 1, suffix: float = 0,
                 neg_expire: float = 1, grade: float = 0, gstep: float = 0.5,
                 hmode: float = 0, conf: float = 0) -> None:
        super().__init__(credit_scale)
        self.s_mask = int(sample) - 1          # power of two
        self.rate = 1.0 / int(sample)
        self.window, self.lo, self.hi = window, lo, hi
        self.bonus, self.penalty = bonus, penalty
        self.min_n, self.decay = int(min_n), int(decay)
        self.feat = FEATURES[int(feat)]
        self.prune, self.on_acc = bool(prune), bool(on_access)
        self.once_only, self.suffix = bool(once_only), bool(suffix)
        self.neg_expire = bool(neg_expire)
        self.grade, self.gstep = grade, gstep
        # hmode 1: the horizon is `window` cache-fills of inserts (peak / inserts per
        # request), which does not depend on the eviction order the predictor changes
        self.hmode = int(hmode)
        self.conf = conf   # demote only when p + conf * stderr < lo (a confident call)
        self._ins = 0
        self._ins_rate = 1.0
        self._glob = [1.0, 4.0]   # decayed OPT hits / total of miss touches (the reference rate)
        self._queues.extend(OrderedDict() for _ in range(len(self._queues), 32))
        # OPTgen
        self._occ = np.zeros(_BUF, dtype=np.int32)
        self._sampler: OrderedDict[str, tuple[int, tuple]] = OrderedDict()
        self._table: dict[tuple, list] = {}    # bucket -> [opt hits, total] (decayed)
        # request context
        self._hit = 0
        self._kind = 0
        self._req_keys: list[str] = []
        self._req_tick = 0
        self._req_ctx: tuple | None = None
        self._dead_from = None    # suffix mode: depth from which this request's new keys are averse
        self.stats = {"averse": 0, "friend": 0, "trained": 0, "pos": 0}

    # ---- request context ----------------------------------------------------------------------
    def hint_prefix(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        start = self._chain.get(keys[0])
        if start is not None and self._chain_keys[start:start + len(keys)] == list(keys):
            if start == 0:   # the batch get of the leading hits: the hit length
                self._set_hit(len(keys))
            return
        self._finish_request()
        super().hint_prefix(keys)
        self._hit, self._kind = 0, 0
        self._dead_from = None
        self._req_keys, self._req_tick = self._chain_keys, self._tick

    def _set_hit(self, h: int) -> None:
        self._hit = h
        kind = 0
        if h > 1:
            kind = 1
            st = self._state.get(self._chain_keys[h - 1])
            if st is not None:
                entry = self._reqs.get(st >> 77)
                if entry is not None and len(entry[1]) > h + 1:
                    kind = 2   # the request that used the last hit went on elsewhere: a branch
        self._kind = kind

    def _ctx(self, depth: int, uses: int) -> tuple:
        L = len(self._chain_keys)
        n = L - self._hit
        nb = 0 if n < 8 else (1 if n < 64 else 2)
        return (self._kind, nb, depth, L - 1 - depth, uses, self._hit)

    # ---- OPTgen --------------------------------------------------------------------------------
    def _finish_request(self) -> None:
        """Train on the request that just ended (its features are now complete)."""
        keys, t = self._req_keys, self._req_tick
        if not keys:
            return
        occ, sampler = self._occ, self._sampler
        cap = max(1.0, self._peak * self.rate)
        occ[t % _BUF] = 0
        # expire sampled keys not demanded within the window: OPT misses
        self._ins_rate = 0.999 * self._ins_rate + 0.001 * self._ins
        self._ins = 0
        if self.hmode:
            life = self._peak / max(self._ins_rate, 1e-3)
        else:
            life = self._lifetime()
        horizon = min(_BUF - 1, max(64, int(self.window * life)))
        while sampler:
            k0, (t0, f0) = next(iter(sampler.items()))
            if t - t0 <= horizon:
                break
            sampler.popitem(last=False)
            if self.neg_expire:
                self._train(f0, False)
        L = len(keys)
        hit = self._hit
        for d, k in enumerate(keys):
            if xxhash.xxh3_64_intdigest(k.encode()) & self.s_mask:
                continue
            st = self._state.get(k)
            uses = ((st >> 37) & 0xFFFFFFFFFF) if st is not None else 1
            f = self.feat(self._ctx(d, uses)) + ((d < hit),)
            prev = sampler.pop(k, None)
            if prev is not None:
                t0 = prev[0]
                if t0 < t:
                    a, b = t0 % _BUF, t % _BUF
                    seg = occ[a:b] if a < b else np.concatenate((occ[a:], occ[:b]))
                    ok = seg.size == 0 or int(seg.max()) < cap
                    if ok:
                        if a < b:
                            occ[a:b] += 1
                        else:
                            occ[a:] += 1
                            occ[:b] += 1
                    self._train(prev[1], ok)
            sampler[k] = (t, f)

    def _train(self, f: tuple, hit: bool) -> None:
        e = self._table.get(f)
        if e is None:
            e = self._table[f] = [0, 0]
        e[0] += hit
        e[1] += 1
        self.stats["trained"] += 1
        self.stats["pos"] += hit
        if not f[-1]:
            g = self._glob
            g[0] += hit
            g[1] += 1
            if g[1] >= 4 * self.decay:
                g[0] *= 0.5
                g[1] *= 0.5
        if e[1] >= self.decay:
            e[0] *= 0.5
            e[1] *= 0.5

    def _predict(self, depth: int, uses: int, hit: bool) -> int:
        """-1 averse, 1 promote, 0 neutral."""
        e = self._table.get(self.feat(self._ctx(depth, uses)) + (hit,))
        if e is None or e[1] < self.min_n:
            return 0
        p = e[0] / e[1]
        if p + self.conf * (max(p * (1 - p), 0.01) / e[1]) ** 0.5 < self.lo:
            return -1
        if self.bonus > 0 and p > self.hi:
            return 1
        if self.grade > 0 and not hit:
            import math
            ref = self._glob[0] / self._glob[1]
            lvl = round(math.log2(max(p, 1e-3) / max(ref, 1e-3)) / self.gstep)
            return 10 + max(-2, min(2, lvl))
        return 0

    # ---- protocol ----------------------------------------------------------------------------
    def _retag(self, key: str, hit: bool) -> None:
        st = self._state[key]
        tick, uses, depth, cls = self._unpack(st)
        if cls == self._DEAD:
            return
        if self.once_only and uses > 1:
            return
        if self.suffix and not hit and self._dead_from is not None and depth > self._dead_from:
            pr = -1
        else:
            pr = self._predict(depth, uses, hit)
        if pr == 0:
            return
        if pr >= 8:
            if pr == 10:
                return
            new = _LVL0 + pr - 10
            del self._queues[cls][key]
            self._state[key] = st - cls + new
            self._queues[new][key] = None
            return
        new = _AVERSE if pr < 0 else _FRIEND
        if pr < 0:
            self.stats["averse"] += 1
            if self.suffix and not hit and self._dead_from is None:
                self._dead_from = depth
        else:
            self.stats["friend"] += 1
        del self._queues[cls][key]
        self._state[key] = st - cls + new
        self._queues[new][key] = None

    def on_insert(self, key: str, size: int) -> None:
        present = key in self._state
        if not present:
            self._ins += 1
        super().on_insert(key, size)
        if key in self._state and (not present or self.on_acc):
            self._retag(key, False)

    def on_access(self, key: str) -> None:
        super().on_access(key)
        if self.on_acc and key in self._state:
            self._retag(key, True)

    def _prune_branch(self, key, last, uses, depth) -> None:
        if self.prune:
            super()._prune_branch(key, last, uses, depth)

    def victims(self) -> Iterator[str]:
        yield from self._queues[self._DEAD]
        lifetime = self._lifetime()
        runs = []
        for cls in range(self._ONCE, 32):
            if not self._queues[cls]:
                continue
            if cls == _AVERSE:
                credit = -self.penalty * lifetime if self.penalty < 100 else -1e18
            elif cls == _FRIEND:
                credit = self.bonus * lifetime
            elif cls > _FRIEND:
                credit = self.grade * lifetime * (cls - _LVL0)
            else:
                credit = self.credit_scale * lifetime * (cls - 1)
            runs.append(self._ordered(cls, credit))
        for _prio, _neg_depth, key in heapq.merge(*runs):
            yield key


def _preset(**preset):
    def make(**kw):
        return HawkeyePolicy(**{**preset, **kw})
    return make


# The variants of the report (docs in the module docstring; numbers below).
POLICIES["hawk"] = HawkeyePolicy                                    # H1
POLICIES["hawk-fill"] = _preset(hmode=1, window=1)                  # H2
POLICIES["hawk-faithful"] = _preset(lo=0.5, feat=0, sample=8, min_n=8)   # H3
POLICIES["hawk-lfru"] = _preset(prune=0)                            # H4
POLICIES["hawk-conf"] = _preset(conf=2)                             # H5


def _parse(spec: str):
    name, _, args = spec.partition(":")
    kw = {}
    for item in filter(None, args.split(",")):
        k, _, v = item.partition("=")
        kw[k.strip()] = float(v)
    return name, kw


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("--splits", default="first")
    ap.add_argument("--pcts", default="5,10")
    ap.add_argument("--policy", action="append")
    ap.add_argument("--lru", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    trace = load_trace(args.trace)
    for s in args.splits.split(","):
        t = split(trace, s)
        for pct in [float(x) for x in args.pcts.split(",")]:
            cap = capacity_blocks(t, pct)
            if args.lru:
                print(f"{s} {pct:g}% lru {simulate_lru(t, cap).hit_rate:.2%}", flush=True)
            for spec in args.policy or []:
                name, kw = _parse(spec)
                holder = []

                def fac():
                    p = POLICIES[name](**kw)
                    holder.append(p)
                    return p
                t0 = time.perf_counter()
                r = simulate_policy(t, cap, fac)
                p = holder[0]
                extra = ""
                if args.verbose and hasattr(p, "stats"):
                    extra = f" {p.stats} sampler={len(p._sampler)} buckets={len(p._table)}"
                print(f"{s} {pct:g}% {spec} {r.hit_rate:.2%} ({time.perf_counter() - t0:.0f}s)"
                      f"{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
