"""Small puts through reservations (master/reserve.py): the write plus one put_commit,
with real master, node and client processes on 127.0.0.1."""
from __future__ import annotations

import hashlib
import time

import numpy as np

from mooncake_store import ReplicateConfig
from mooncake_store.master.reserve import RESERVE_MAX

from support.cluster import client_that_dies, read_elsewhere, store, wait_nodes
from support.procs import wait_until

# Puts two small values, so it holds a reservation, prints its length and dies.
DIES_HOLDING = """
import os, sys
from mooncake_store import Store
s = Store(master=sys.argv[1], global_segment_size=0, rpc_timeout_ms=5000)
s.put("dead/1", b"x" * 3000)
s.put("dead/2", b"y" * 3000)
print(s._index._rsv[1][0][0].length, flush=True)
os._exit(0)
"""


def _value(i: int, n: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def _round(n: int) -> int:
    return (n + 63) // 64 * 64


def test_small_puts_commit_into_reservations_andread_elsewhere(cluster):
    m = cluster.master()
    cluster.node(m.addr)
    cluster.node(m.addr)
    wait_nodes(m.addr, 2)
    # Sizes and key lengths vary: smaller records fit the held reservation, larger ones
    # take the normal path and ask for a reservation of their size.
    values = {f"r/{i}" + "k" * (i % 5): _value(i, n)
              for i, n in enumerate([4096] * 20 + [100, 5000, 4096, 1, 65536, 4000])}
    with store(m.addr) as a:
        for k, v in values.items():
            a.put(k, v)
        st = a.stats()
        assert st["reserved_puts"] >= 10 and st["reserved"] <= 1 and st["pending"] == 0
        a.put("r/0", b"second put of an existing key is a no-op")
        assert a.get("r/0") == values["r/0"]
        a.upsert("r/1", b"new value")
        values["r/1k"] = a.get("r/1k")
        assert a.get("r/1") == b"new value"
        a.remove("r/2kk")
        del values["r/2kk"]
        assert not a.exists("r/2kk")
        a.put("r/2kk", b"back again")
        values["r/2kk"] = b"back again"
        # Placement options keep the normal path.
        before = a.stats()["reserved_puts"]
        a.put("r/pinned", b"p" * 4096, ReplicateConfig(with_hard_pin=True))
        a.put("r/two", b"t" * 4096, ReplicateConfig(replica_num=2))
        assert a.stats()["reserved_puts"] == before
        values["r/pinned"], values["r/two"] = b"p" * 4096, b"t" * 4096
    got = read_elsewhere(m.addr, [*values, "r/1"])
    want = {k: hashlib.sha256(v).hexdigest() for k, v in values.items()}
    want["r/1"] = hashlib.sha256(b"new value").hexdigest()
    assert got == want


def test_puts_up_to_4_mib_use_reservations_even_right_after_a_mass_removal(cluster):
    m = cluster.master()
    # Heartbeats 2 s apart: the freed records' zaps stay queued while the puts run.
    cluster.node(m.addr, "--heartbeat-ms", "2000", dram="256MB")
    wait_nodes(m.addr, 1)
    mib = 1 << 20
    with store(m.addr) as a:
        # Fill, then free everything: every freed record's zap is queued at once, under
        # the space the next puts take (first fit).
        for i in range(24):
            a.put_from(f"old/{i}", bytearray(_value(i, mib)))
        assert a.remove_by_regex("^old/", force=True) == 24
        before = a.stats()["reserved_puts"]
        values = {f"big/{i}": _value(100 + i, n)
                  for i, n in enumerate([mib] * 12 + [4 * mib, 4 * mib + 1, mib])}
        for k, v in values.items():
            a.put_from(k, bytearray(v))
        st = a.stats()
        # 1 MiB puts commit into the reservations their predecessors asked for (13 of the
        # 15: the first 4 MiB put asks anew, the one over 4 MiB takes the normal path; a
        # host stall past a reservation's 100 ms window sends one more the normal way).
        assert st["reserved_puts"] - before >= 11 and st["pending"] == 0
    got = read_elsewhere(m.addr, list(values))
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in values.items()}


def test_puts_into_a_full_node_keep_using_reservations(cluster):
    """The steady state of a KV cache: every put evicts, and the evicted records' zaps
    wait for the node's next heartbeat (2 s here) under the space the next puts take.
    Reservations go on regardless (before 2026-11-25 nearly all of these puts fell back
    to put_start / put_end), and the newest values read back exactly."""
    m = cluster.master()
    cluster.node(m.addr, "--heartbeat-ms", "2000", dram="16MB")
    wait_nodes(m.addr, 1)
    # 40 MB through a 16 MB node; an eviction frees 5% (800 KB), more than the 16 records'
    # room a reservation needs free (RESERVE_ROOM).
    n, size = 2500, 16 << 10
    with store(m.addr) as a:
        values = [_value(i % 7, size) for i in range(n)]
        for i, v in enumerate(values):
            a.put(f"churn/{i}", v)
        st = a.stats()
        assert st["evictions"] > n // 2 and st["zaps_queued"] == st["evictions"]
        assert st["reserved_puts"] >= 0.9 * n, st["reserved_puts"]
        assert all(a.get(f"churn/{i}") == values[i] for i in range(n - 20, n))


def test_expired_reservation_falls_back_to_the_normal_path(cluster):
    m = cluster.master(put_timeout_ms=600)
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    with store(m.addr) as a:
        a.put("e/1", b"a" * 4096)
        first = a._index._rsv
        assert first is not None
        # The master frees it after put_timeout_ms ...
        wait_until(lambda: a.stats()["reserved"] == 0, what="reservation reclaimed")
        used = a.stats()["used"]
        # ... and a client that still tried to use it (clock skew, a stall) gets a clean
        # refusal: the bytes it wrote stay invisible and the put goes the normal way.
        a._index._rsv = (first[0], first[1], float("inf"))
        a.put("e/2", b"b" * 4096)
        st = a.stats()
        assert st["reserved_puts"] == 0 and st["reclaimed_reservations"] == 1
        assert a.get("e/2") == b"b" * 4096 and a.get("e/1") == b"a" * 4096
        assert st["used"] > used and st["reserved"] == 1 and st["objects"] == 2
        # A reservation past half its time is not used by the client at all.
        held = a._index._rsv
        a._index._rsv = (held[0], held[1], 0.0)
        a.put("e/3", b"c" * 4096)
        assert a.get("e/3") == b"c" * 4096 and a.stats()["reserved_puts"] == 0
        # Reservations come back (once the node has taken the tombstones of what was freed).
        for i in range(4, 40):
            a.put(f"e/{i}", b"d" * 4096)
            if a.stats()["reserved_puts"]:
                break
            time.sleep(0.05)
        assert a.stats()["reserved_puts"] == 1 and a.get(f"e/{i}") == b"d" * 4096


def test_reservation_of_a_killed_client_is_reclaimed(cluster):
    m, out = client_that_dies(cluster, DIES_HOLDING, put_timeout_ms=800)
    length = int(out.split()[-1])
    assert 3000 < length <= RESERVE_MAX
    with store(m.addr) as s:
        def settled():   # no tombstone line held while `used` is compared
            st = s.stats()
            return st["zaps_done"] + st["zaps_skipped"] + st["zaps_dropped"] == st["zaps_queued"]
        wait_until(settled, what="tombstones settled")
        st = s.stats()
        # (The second put went through the reservation unless the host stalled > 100 ms.)
        assert st["reserved"] == 1 and st["objects"] == 2 and st["reserved_puts"] <= 1
        wait_until(lambda: s.stats()["reserved"] == 0, what="dead client's reservation reclaimed")
        wait_until(settled, what="tombstones settled")
        after = s.stats()
        assert after["used"] == st["used"] - _round(length)
        assert after["reclaimed_reservations"] == 1
        assert s.get("dead/1") == b"x" * 3000 and s.get("dead/2") == b"y" * 3000


def test_reservations_leave_room_in_a_nearly_full_segment():
    """A reservation needs RESERVE_ROOM times its size free in its segment: a client holds
    it until its next put (or put_timeout_ms), so idle ones never take a node's last room."""
    from mooncake_store import Config
    from mooncake_store.master.index import ObjectIndex
    from mooncake_store.master.reserve import RESERVE_ROOM

    ix = ObjectIndex(Config(high_watermark=1.0))
    ix.add_segment("s", 1 << 20)
    record = 4096
    with ix.lock:
        rid, _ = ix.reservations.grant_locked("a", record, 0, ix.clock())
        ix.reservations._release_locked(rid)
    # Fill until less than RESERVE_ROOM records' worth is free: no more reservations.
    i = 0
    while ix.segments["s"].allocator.free_bytes >= RESERVE_ROOM * record:
        ix.put_start(f"fill/{i}", 16 << 10)
        ix.put_end(f"fill/{i}")
        i += 1
    assert ix.segments["s"].allocator.free_bytes >= record     # room for it, yet refused
    with ix.lock:
        assert ix.reservations.grant_locked("a", record, 0, ix.clock()) is None
    ix.remove_by_regex("^fill/")
    with ix.lock:
        assert ix.reservations.grant_locked("a", record, 0, ix.clock()) is not None


def test_a_closing_client_gives_its_reservation_back(cluster):
    m = cluster.master()                      # put_timeout_ms: 30 s unless released
    cluster.node(m.addr)
    wait_nodes(m.addr, 1)
    with store(m.addr) as a:
        a.put("c/1", b"x" * 100_000)          # the put asks for a reservation of its size
        assert a.stats()["reserved"] == 1
    with store(m.addr) as b:
        st = b.stats()
        assert st["reserved"] == 0 and st["reclaimed_reservations"] == 0
        assert b.get("c/1") == b"x" * 100_000
