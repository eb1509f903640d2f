"""Why a key misses (master/departures.py, ObjectIndex.why, Store.why): evicted, removed,
lost, abandoned, corrupt, writing, or unknown with the stored keys that look like it."""
from __future__ import annotations

from mooncake_store import Config, Store
from mooncake_store.master.departures import Departures, nearest_keys
from mooncake_store.master.index import ObjectIndex


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_departures_are_bounded_and_the_newest_reason_wins():
    clock = Clock()
    d = Departures(clock, limit=16)            # 8 generations of 2 departures
    d.note("a", 1)
    clock.t += 2.5
    d.note("b", 2)
    d.note("x", 1)
    d.note("a", 2)                             # left again, in a newer generation
    for i in range(14):                        # the oldest generation ("a" evicted, "b") goes
        clock.t += 1.0
        d.note(f"k{i}", 3)
    assert len(d) == 16 and d.explain("b") is None
    got = d.explain("a")
    assert got["reason"] == "removed" and got["seconds_ago"] == [14.0, 14.0]
    clock.t += 1.25
    last = d.explain("k13")
    assert last["reason"] == "lost" and last["seconds_ago"] == [1.25, 2.25]
    assert d.explain("never") is None
    d.note("\udcff-surrogate", 1)              # keys the store accepts hash without error
    assert d.explain("\udcff-surrogate")["reason"] == "evicted"


def test_departures_rarely_name_a_key_that_never_left():
    d = Departures(Clock(), limit=4096)
    for i in range(4096):
        d.note(f"gone/{i}", 1 + i % 5)
    assert all(d.explain(f"gone/{i}")["reason"] for i in range(0, 4096, 97))
    false = sum(d.explain(f"never/{i}") is not None for i in range(5000))
    assert false <= 5                          # ~1 in 10^5 expected


def test_nearest_keys_match_a_shared_head_or_tail():
    stored = ["root1/conv/0001", "root1/conv/0002", "other/x"]
    # Another hash root: the same tail.
    assert nearest_keys("root2/conv/0001", stored) == ["root1/conv/0001"]
    # The longest shared part ranks first: here a shared head beats a shared tail.
    assert nearest_keys("root2/conv/0001", stored + ["root2/conv/0002x"])[0] == "root2/conv/0002x"
    assert nearest_keys("ns9/root1/conv/0002", ["root1/conv/0002", "zz"]) == ["root1/conv/0002"]
    assert nearest_keys("qqqq", stored) == []
    assert nearest_keys("root1/conv/0001", stored, n=1) == ["root1/conv/0002"]


def test_index_why_names_every_way_a_key_leaves():
    clock = Clock()
    ix = ObjectIndex(Config(high_watermark=1.0, put_timeout_ms=1000), clock=clock)
    ix.add_segment("s", 64 * 1024)
    for i in range(6):                        # ~10 KiB records: the 7th evicts the first
        ix.put_start(f"k{i}", 10_000)
        ix.put_end(f"k{i}")
    ix.put_start("k6", 10_000)
    ix.put_end("k6")
    assert ix.why("k0")["reason"] == "evicted"
    assert ix.why("k6") == {"key": "k6", "present": True, "tier": "dram", "size": 10_000}
    ix.remove("k5")
    assert ix.why("k5")["reason"] == "removed"
    ix.put_start("half", 100)                 # the writer never comes back
    assert ix.why("half")["reason"] == "writing"
    clock.t += 2.0
    assert ix.reclaim_expired() == 1
    clock.t += 0.5
    lo, hi = ix.why("half")["seconds_ago"]
    assert ix.why("half")["reason"] == "abandoned" and lo == 0.5 and hi >= 0.5
    assert ix.drop_if_current("k4", ix.get_replicas("k4").replicas)
    assert ix.why("k4")["reason"] == "corrupt"
    miss = ix.why("k66")
    assert miss["reason"] == "unknown" and miss["similar"][0] == "k6"


def test_store_why_embedded():
    with Store(global_segment_size=4 << 20) as s:
        s.put("ns1/block/0001", b"v" * 1000)
        assert s.why("ns1/block/0001")["present"] is True
        assert s.why("ns2/block/0001")["similar"] == ["ns1/block/0001"]
        s.remove("ns1/block/0001")
        assert s.why(b"ns1/block/0001")["reason"] == "removed"
