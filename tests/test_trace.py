"""Trace parsing, the unbounded bound, the exact simulation, and a replay through the real store."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from mooncake_store import InvalidParams
from mooncake_store.master.policy import LRUPolicy, PrefixLFRUPolicy, make_policy
from mooncake_store.trace import (Payloads, TraceError, capacity_blocks, load_trace, parse_lines,
                                  replay, simulate_lru, simulate_policy, store_footprint,
                                  unbounded_hit_rate)

REAL_TRACE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "traces",
                          "conversation_trace.jsonl")
needs_real_trace = pytest.mark.skipif(not os.path.exists(REAL_TRACE),
                                      reason="shared conversation trace not present")
# The first 300 requests of that trace (Mooncake, Apache-2.0), so CI replays real traffic.
HEAD300 = os.path.join(os.path.dirname(__file__), "data", "conversation_trace_head300.jsonl")


def line(ids, ts=0, inp=None, out=1):
    return json.dumps({"timestamp": ts, "input_length": 512 * len(ids) if inp is None else inp,
                       "output_length": out, "hash_ids": ids})


def trace_of(*requests):
    return parse_lines([line(ids, ts=i) for i, ids in enumerate(requests)], "tiny")


# ---- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, msg", [
    ("{not json", "t.jsonl:2: not valid JSON"),
    ("[1, 2]", "t.jsonl:2: expected a JSON object"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1}', "missing field 'hash_ids'"),
    ('{"input_length": 5, "output_length": 1, "hash_ids": [1]}', "missing field 'timestamp'"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [1, -2]}',
     r"hash_ids\[1\] must be an integer >= 0"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": ["a"]}',
     r"hash_ids\[0\]"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": 3}',
     "'hash_ids' must be a list"),
    ('{"timestamp": 1, "input_length": "5", "output_length": 1, "hash_ids": [1]}',
     "'input_length' must be int"),
    ('{"timestamp": true, "input_length": 5, "output_length": 1, "hash_ids": [1]}',
     "'timestamp' must be int"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [4, 4]}',
     "repeats a block id"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}',
     "goes back in time"),
])
def test_bad_lines_name_file_and_line(bad, msg):
    with pytest.raises(TraceError, match=msg):
        parse_lines([line([0, 1], ts=5), bad], "t.jsonl")


def test_blank_lines_are_skipped_and_empty_trace_rejected(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(line([0, 1]) + "\n\n" + line([0, 2], ts=3) + "\n")
    t = load_trace(str(p))
    assert [r.hash_ids for r in t.requests] == [(0, 1), (0, 2)]
    assert t.blocks == 4 and t.distinct_blocks == 3
    assert len(load_trace(str(p), limit=1).requests) == 1
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TraceError, match="no requests"):
        load_trace(str(tmp_path / "e.jsonl"))
    with pytest.raises(TraceError, match="No such file"):
        load_trace(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InvalidParams, match="limit"):
        load_trace(str(p), limit=0)


# ---- bound and simulation on hand-checked traces ----------------------------------------------

def test_unbounded_bound_counts_only_prefix_hits():
    t = trace_of([0, 1, 2], [0, 1, 3], [5, 1], [0, 1, 2, 4])
    # r1: 0 hits; r2: 0,1 -> 2; r3: 5 is new, so 1 does not count -> 0; r4: 0,1,2 -> 3
    assert unbounded_hit_rate(t) == pytest.approx(5 / 12)


def test_lru_simulation_hand_checked():
    t = trace_of([0, 1, 2], [0, 1, 3], [0, 4], [0, 1, 2])
    # capacity 3:
    #  r1 [0,1,2]: 0 hits; cache 0,1,2
    #  r2 [0,1,3]: hits 0,1 (2); insert 3 evicts 2 -> 0,1,3
    #  r3 [0,4]:   hit 0 (1); insert 4 evicts 1 (LRU: 1,3,0 -> 1 is oldest) -> 3,0,4
    #  r4 [0,1,2]: hit 0 (1); 1 missing -> insert 1 evicts 3, insert 2 evicts 4
    res = simulate_lru(t, 3)
    assert (res.hits, res.blocks, res.evictions, res.inserts) == (4, 11, 4, 7)
    assert simulate_policy(t, 3, LRUPolicy).hits == 4


def test_prefix_policy_simulation_hand_checked():
    t = trace_of([0, 1, 2], [0, 1, 3], [0, 4], [0, 1, 2])
    # prefix-lfru, capacity 3:
    #  r1: cache 0,1,2 (2 is the chain tail)
    #  r2: hits 0,1 (now used twice); 3 evicts the tail 2 -> 0,1,3 (3 a tail)
    #  r3: hit 0; 4 evicts tail 3 -> 0,1,4
    #  r4: hits 0,1 (2); 2 evicts tail 4 -> 0,1,2
    res = simulate_policy(t, 3, PrefixLFRUPolicy)
    assert (res.hits, res.evictions) == (5, 3)


def test_capacity_blocks_is_a_share_of_distinct_blocks():
    t = trace_of(list(range(200)))
    assert capacity_blocks(t, 10) == 20 and capacity_blocks(t, 0.1) == 1
    with pytest.raises(InvalidParams):
        capacity_blocks(t, 0)


def test_payloads_are_deterministic_and_distinct():
    p = Payloads(4096)
    a = p.make(7)
    assert p.check(7, a) and not p.check(8, a)
    assert np.array_equal(a, Payloads(4096).make(7))
    a[100] ^= 1
    assert not p.check(7, a)
    with pytest.raises(InvalidParams, match="block_bytes"):
        Payloads(100)
    assert store_footprint(4096) == 4096 + 64


# ---- the real trace --------------------------------------------------------------------------

@needs_real_trace
def test_real_trace_lru_reproduces_the_issue_figures():
    t = load_trace(REAL_TRACE)
    assert (len(t.requests), t.blocks, t.distinct_blocks) == (12031, 288500, 182790)
    assert round(unbounded_hit_rate(t), 3) == 0.366
    got = [round(simulate_lru(t, capacity_blocks(t, pct)).hit_rate, 3) for pct in (5, 10)]
    assert got == [0.195, 0.278]


@pytest.mark.parametrize("policy", ["lru", "prefix-lfru", "prefix-prune"])
def test_replay_through_store_equals_simulation(policy):
    t = load_trace(HEAD300)
    if os.path.exists(REAL_TRACE):
        assert t.requests == load_trace(REAL_TRACE, limit=300).requests
    cap = capacity_blocks(t, 25)
    sim = simulate_policy(t, cap, lambda: make_policy(policy))
    res = replay(t, cap, policy, block_bytes=1024)
    assert res.blocks == sim.blocks and res.requests == 300
    assert res.hits == sim.hits and res.evictions == sim.evictions > 0
    assert 0 < res.hit_rate
    assert res.failed_gets == 0 and res.verified_gets == sim.hits
    assert res.bytes_read == sim.hits * 1024 and res.bytes_written == sim.inserts * 1024


def test_replay_rejects_bad_arguments():
    t = trace_of([0, 1])
    with pytest.raises(InvalidParams, match="capacity"):
        replay(t, 0, "lru", block_bytes=64)
    with pytest.raises(InvalidParams, match="speed"):
        replay(t, 1, "lru", block_bytes=64, speed=-1)
    with pytest.raises(InvalidParams, match="unknown policy"):
        replay(t, 1, "nope", block_bytes=64)


# ---- the CLI ---------------------------------------------------------------------------------

def _cli(args):
    from mooncake_store.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_sweep_json_and_plot(tmp_path):
    p = tmp_path / "t.jsonl"
    reqs = [[0, 1, 2, 3], [0, 1, 2, 4], [0, 5], [0, 1, 2, 3, 6], [0, 5, 7]] * 4
    p.write_text("\n".join(line(ids, ts=10 * i) for i, ids in enumerate(reqs)) + "\n")
    png = tmp_path / "curve.png"
    r = _cli(["trace", "replay", str(p), "--sweep", "20,50", "--block-bytes", "1KiB",
              "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert {(x["policy"], x["capacity_pct"]) for x in rows} == {
        ("lru", 20.0), ("lru", 50.0), ("prefix-prune", 20.0), ("prefix-prune", 50.0)}
    for x in rows:
        assert x["hit_rate"] == x["sim_hit_rate"] and 0 <= x["hit_rate"] <= x["bound"]
        assert x["failed_gets"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table_and_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(line([0, 1]) + "\n" + line([0, 1], ts=1) + "\n")
    r = _cli(["trace", "replay", str(p), "--capacity", "64KiB", "--block-bytes", "1KiB",
              "--policy", "lru"])
    assert r.exit_code == 0, r.output
    assert "50.00%" in r.output  # 2 of 4 blocks hit
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line([0]) + "\n{oops\n")
    r = _cli(["trace", "replay", str(bad)])
    assert r.exit_code == 2 and "bad.jsonl:2: not valid JSON" in r.output
    r = _cli(["trace", "replay", str(p), "--policy", "mru"])
    assert r.exit_code == 2 and "unknown policy" in r.output
    r = _cli(["trace", "replay", str(p), "--sweep", "5,x"])
    assert r.exit_code == 2 and "--sweep" in r.output
    r = _cli(["trace", "replay", str(p), "--capacity-pct", "0"])   # was taken as the default 10
    assert r.exit_code == 2 and "--capacity-pct: must be in (0, 100]" in r.output
    r = _cli(["trace", "replay", str(p), "--speed", "-1"])
    assert r.exit_code == 2 and "--speed" in r.output
    assert "requests" not in r.output   # refused before the trace is loaded
