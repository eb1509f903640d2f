"""`mstore bench transfer` runs end to end (tiny durations; numbers are not checked)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from mooncake_store.cli.main import app


def test_bench_transfer_local_json():
    res = CliRunner().invoke(app, ["bench", "transfer", "--duration", "0.2", "--block-size",
                                   "64K:4,1M:2", "--protocol", "both", "--op", "both", "--json",
                                   "--buffer-size", "16M", "--alternations", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    pts = [r for r in rows if r["test"] == "transfer"]
    assert all(r["ceiling_GBps"] > 0 for r in pts)
    assert {(r["protocol"], r["op"], r["block_size"]) for r in pts} == {
        (p, o, b) for p in ("tcp", "shm") for o in ("read", "write") for b in (65536, 1 << 20)}
    assert all(r["GBps"] > 0 and r["x_ceiling"] > 0 for r in pts)


def test_bench_transfer_rejects_bad_options():
    for args in (["--mode", "nope"], ["--op", "sideways"], ["--protocol", "ipx"],
                 ["--block-size", "12Q"], ["--mode", "initiator"]):
        res = CliRunner().invoke(app, ["bench", "transfer", *args])
        assert res.exit_code != 0
        assert "Traceback" not in res.output
