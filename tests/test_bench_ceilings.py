"""Ceilings of mstore bench: the TCP round-trip bound a lone remote put or get is compared to."""
from __future__ import annotations

from mooncake_store.bench import ceilings


def test_tcp_round_trips_moves_whole_values_and_is_bounded():
    r = ceilings.tcp_round_trips(64 << 10, seconds=5.0, max_ops=200)
    assert r["test"] == "ceiling_tcp_round_trip" and r["value_size"] == 64 << 10
    assert r["ops"] == 200                   # the count bound ends it well before 5 s
    assert r["GBps"] > 0 and r["p50_us"] > 0
    # 64-byte values move far fewer bytes per second than 64 KiB ones on the same sockets.
    small = ceilings.tcp_round_trips(64, seconds=5.0, max_ops=200)
    assert small["ops"] == 200 and small["GBps"] < r["GBps"]
