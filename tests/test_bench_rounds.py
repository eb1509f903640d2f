"""`mstore bench store --rounds N`: runs folded into median rows (bench/rounds.py), and the
alternation with the Mooncake anchor, driven here by a stand-in bench.sh (the real anchor
needs its own 120 MB setup; docs/PERFORMANCE.md has runs against it)."""
from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from mooncake_store.bench.rounds import merge, ratio_range
from mooncake_store.cli.main import app

runner = CliRunner()


def _row(gbps: float, **kw) -> dict:
    return {"test": "throughput", "op": "get", "api": "zc", "path": "local",
            "value_size": 4096, "GBps": gbps, "p50_us": 100.0 / gbps, "fails": 0,
            "verified": True, **kw}


def test_merge_takes_the_median_round_per_row():
    runs = [[{"test": "params", "seconds": 0.5}, _row(3.0), _row(1.0, op="put")],
            [{"test": "params", "seconds": 0.5}, _row(1.0), _row(2.0, op="put")],
            [{"test": "params", "seconds": 0.5}, _row(2.0, fails=2), _row(9.0, op="put")]]
    out = merge(runs)
    assert [r["test"] for r in out] == ["params", "throughput", "throughput"]
    get, put = out[1], out[2]
    # The whole median round, not a mix of rounds: its p50 goes with its GB/s.
    assert get["GBps"] == 2.0 and get["p50_us"] == 50.0
    assert get["GBps_rounds"] == [3.0, 1.0, 2.0] and get["rounds"] == 3
    assert get["fails"] == 2        # summed over the rounds: a failure is never hidden
    assert put["GBps"] == 2.0 and put["GBps_rounds"] == [1.0, 2.0, 9.0]
    assert "rounds" not in out[0]


def test_merge_even_rounds_claims_the_lower_middle():
    out = merge([[_row(1.0)], [_row(4.0)]])
    assert out[0]["GBps"] == 1.0


def test_merge_verified_only_when_every_round_was():
    out = merge([[_row(1.0)], [_row(2.0, verified=False)], [_row(3.0)]])
    assert out[0]["verified"] is False
    small = [{"test": "small_ops", "op": "put", "path": "local", "ops_per_s": x,
              "verified": None} for x in (5.0, 7.0, 6.0)]
    out = merge([[r] for r in small])
    assert out[0]["ops_per_s"] == 6.0 and out[0]["verified"] is None


def test_merge_of_one_run_is_that_run():
    run = [_row(1.0)]
    assert merge([run]) == run and merge([]) == []


def test_ratio_range_pairs_rounds_in_order():
    ours = merge([[_row(2.0)], [_row(3.0)], [_row(4.0)]])[0]
    theirs = merge([[_row(1.0)], [_row(3.0)], [_row(1.0)]])[0]
    assert ratio_range(ours, theirs) == (1.0, 4.0)
    assert ratio_range(ours, None) is None
    assert ratio_range(_row(1.0), _row(2.0)) is None   # single rounds: no range


# ---- the CLI, alternating with a stand-in anchor -------------------------------------------------
FAKE_BENCH = """#!/bin/bash
# Stand-in for the anchor's bench.sh: one get row per run, its GB/s from a run counter.
out=""
while [ $# -gt 0 ]; do [ "$1" = --out ] && out="$2"; shift; done
n=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 )); echo $n > "$COUNTER"
printf . >&2
echo '{"impl": "mooncake", "test": "throughput", "op": "get", "api": "zc", "path": "local",'\
' "value_size": 4096, "GBps": '"0.0$n"', "ops_per_s": 1.0, "fails": 0}' > "$out"
"""


def _fake_anchor(tmp_path: Path) -> Path:
    d = tmp_path / "anchor"
    (d / ".venv" / "bin").mkdir(parents=True)
    (d / ".venv" / "bin" / "python").write_text("")
    (d / ".stub").mkdir()
    (d / ".stub" / "libcuda.so.1").write_text("")
    sh = d / "bench.sh"
    sh.write_text(FAKE_BENCH)
    sh.chmod(sh.stat().st_mode | stat.S_IXUSR)
    return d


def test_rounds_alternate_with_the_anchor_and_report_medians(tmp_path, monkeypatch):
    d = _fake_anchor(tmp_path)
    monkeypatch.setenv("COUNTER", str(tmp_path / "n"))
    args = ["bench", "store", "--sizes", "4K", "--seconds", "0.02", "--small-seconds", "0.02",
            "--ws-mib", "8", "--seg-mib", "256", "--compare", "mooncake", "--mooncake-dir",
            str(d), "--rounds", "3"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert (tmp_path / "n").read_text().strip() == "3"          # the anchor ran once a round
    theirs = [r for r in recs if r["impl"] == "mooncake"]
    assert len(theirs) == 1 and theirs[0]["GBps_rounds"] == [0.01, 0.02, 0.03]
    assert theirs[0]["GBps"] == 0.02 and theirs[0]["rounds"] == 3
    ours = [r for r in recs if r["impl"] != "mooncake" and r["test"] == "throughput"]
    assert ours and all(r["rounds"] == 3 and len(r["GBps_rounds"]) == 3 for r in ours)
    assert all(r["fails"] == 0 for r in ours)
    # One folded row per row of a run: no round's rows leak out unfolded.
    keys = [(r["op"], r["api"], r["path"]) for r in ours]
    assert len(keys) == len(set(keys))

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "3 rounds, alternating with Mooncake" in res.output
    assert "per round" in res.output


def test_a_failing_anchor_round_drops_the_comparison(tmp_path, monkeypatch):
    d = _fake_anchor(tmp_path)
    (d / "bench.sh").write_text("#!/bin/bash\nexit 3\n")
    res = runner.invoke(app, ["bench", "store", "--sizes", "4K", "--seconds", "0.02",
                              "--ws-mib", "8", "--seg-mib", "256", "--compare", "mooncake",
                              "--mooncake-dir", str(d), "--rounds", "2"])
    assert res.exit_code == 0, res.output
    assert "Mooncake run failed" in res.output
    assert "Mooncake GB/s" not in res.output and "2 rounds" in res.output


def test_rounds_is_bounded():
    res = runner.invoke(app, ["bench", "store", "--rounds", "0"])
    assert res.exit_code != 0 and "Traceback" not in res.output
