"""Pure rules of cluster tiering: when losing a node's segments leaves an object without a
complete DRAM replica (master/cluster_tiers.py), and which gather tasks a node accepts
(node/cold.py: the numbers come from the network)."""
from __future__ import annotations

from mooncake_store.master.cluster_tiers import _dram_lost
from mooncake_store.node.cold import _parts_ok
from mooncake_store.replica import Slice


def _r(*segs: str) -> tuple:
    return tuple(Slice(s, 0, 100) for s in segs)


def test_dram_lost_single_slice_replicas():
    assert _dram_lost([_r("a")], {"a"})
    assert not _dram_lost([_r("a"), _r("b")], {"a"})
    assert _dram_lost([_r("a"), _r("b")], {"a", "b"})
    assert not _dram_lost([], {"a"}) and not _dram_lost([_r("a")], set())


def test_dram_lost_striped_replicas_follow_the_regrouping():
    # Part i of replica r on segment (i + r) mod 3: every replica touches "b", yet each
    # part keeps a copy elsewhere, so the unmount regroups a complete replica.
    reps = [_r("a", "b", "c"), _r("b", "c", "a")]
    assert not _dram_lost(reps, {"b"})
    # Part 0 has both copies on the lost segments: no complete replica can be made.
    assert _dram_lost([_r("a", "b"), _r("a", "c")], {"a"})


def test_gather_tasks_with_bad_numbers_are_refused():
    good = [["s0", "h:1", 4096, 1100], ["s1", "h:2", 8192, 1100]]
    assert _parts_ok("k", 2000, good)
    assert not _parts_ok("k", 2000, good[:1])                     # one part is no stripe
    assert not _parts_ok("k", 0, good)                            # no size
    assert not _parts_ok("k", 2200, good)                         # parts smaller than the value
    assert not _parts_ok("k", 2000, [good[0], ["s1", "h:2", -5, 1100]])
    assert not _parts_ok("k", 2000, [good[0], ["s1", "h:2", 8192, 1 << 40]])
    assert not _parts_ok("k", 2000, [good[0], ["s1", 2, 8192, 1100]])
    assert not _parts_ok("k", 2000, "parts")
    assert not _parts_ok(b"k", 2000, good)


def test_returning_records_attach_only_to_the_object_they_belonged_to():
    from mooncake_store.master.cold_repair import ColdRepair

    r = ColdRepair(None)
    old, new = object(), object()
    assert not r.stale("k", new)                 # no node died with k: size check decides
    r.remember_lost("k", old, False)             # a node died; `old` lives on elsewhere
    assert not r.stale("k", old) and r.stale("k", new) and r.stale("k", None)
    r.remember_lost("k", old, True)              # then its last copy died too
    assert not r.stale("k", None)                # unknown now: the record is its last value
    r.revived("k", new)                          # ...and became the object again
    assert not r.stale("k", new) and r.stale("k", None)
    # Two eras (written again, and another node died meanwhile): nothing is trusted.
    r2 = ColdRepair(None)
    r2.remember_lost("j", old, False)
    r2.remember_lost("j", new, True)
    assert r2.stale("j", None) and r2.stale("j", new) and r2.stale("j", old)
