"""`mstore` CLI: version, help, the quick bench's JSON output, bench store's fallbacks, bad input.

The bench runs here with tiny sizes and phases: these tests check structure and correctness
(every read verified, no failed op), never speed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mooncake_store import __version__
from mooncake_store.bench import mooncake_compare, report
from mooncake_store.bench.runner import Plan, quick_plan, store_plan
from mooncake_store.cli.main import app

runner = CliRunner()
TINY = ["--sizes", "4K,64K", "--seconds", "0.02"]


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"mstore {__version__}"


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "mooncake_store.cli.main", "--version"],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    assert __version__ in res.stdout
    res = subprocess.run([sys.executable, "-m", "mooncake_store.cli.main", "--help"],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    # Commands that register from their own modules are there too under `python -m`.
    assert "bench" in res.stdout and "trace" in res.stdout


def test_help_lists_bench():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "bench" in res.output
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0
    for word in ("store", "--json", "--sizes", "--seconds"):
        assert word in res.output


@pytest.fixture(scope="module")
def quick_json() -> list[dict]:
    res = runner.invoke(app, ["bench", "--json", *TINY])
    assert res.exit_code == 0, res.output
    return _lines(res.stdout)


def test_bench_json_structure(quick_json):
    tests = {r["test"] for r in quick_json}
    assert {"params", "ceiling_memcpy", "throughput", "small_ops", "batch", "goal"} <= tests
    assert all(r["impl"].startswith("mooncake_store-") for r in quick_json)
    params = next(r for r in quick_json if r["test"] == "params")
    assert params["sizes"] == [4096, 65536]
    assert params["master"] == "embedded"


def test_bench_json_throughput_rows(quick_json):
    tp = [r for r in quick_json if r["test"] == "throughput"]
    got = {(r["op"], r["api"], r["value_size"]) for r in tp}
    want = {(op, api, size) for op in ("put", "get") for api in ("bytes", "zc", "zc_batch")
            for size in (4096, 65536)}
    assert got == want
    for r in tp:
        assert r["ops"] > 0 and r["fails"] == 0, r
        assert r["GBps"] > 0 and r["ops_per_s"] > 0
        assert r["bytes"] == r["ops"] * r["value_size"]
        assert r["memcpy_GBps"] > 0 and r["x_memcpy"] == pytest.approx(
            r["GBps"] / r["memcpy_GBps"], rel=0.01, abs=0.002)
        if r["op"] == "get":
            assert r["verified"] is True
            assert r["populate_fails"] == 0
        assert r["p50_us"] <= r["p99_us"] <= r["max_us"]


def test_bench_json_small_ops_and_batch(quick_json):
    small = {r["op"]: r for r in quick_json if r["test"] == "small_ops"}
    assert set(small) == {"put", "put_from", "get", "get_into", "is_exist", "is_exist_miss"}
    for r in small.values():
        assert r["ops"] > 0 and r["fails"] == 0 and r["value_size"] == 4096
    assert small["get"]["verified"] is True and small["get_into"]["verified"] is True
    batch = {r["op"]: r for r in quick_json if r["test"] == "batch"}
    assert set(batch) == {"batch_put_from", "batch_get_into", "get_batch"}
    for r in batch.values():
        assert r["keys_per_batch"] == 64 and r["value_size"] == 256 * 1024
        assert r["batches"] > 0 and r["fails"] == 0
    assert batch["batch_get_into"]["verified"] is True


def test_bench_json_goals(quick_json):
    goals = {g["name"]: g for g in quick_json if g["test"] == "goal"}
    assert "4 KiB get ops/s, 1 thread" in goals   # 4 MiB goals only when 4M is among --sizes
    g = goals["4 KiB get ops/s, 1 thread"]
    assert g["met"] == (g["value"] >= g["target"])


def test_bench_table_output():
    res = runner.invoke(app, ["bench", *TINY])
    assert res.exit_code == 0, res.output
    for text in ("memcpy ceiling", "Throughput per value size", "Small objects",
                 "x memcpy", "0 failed ops"):
        assert text in res.output


@pytest.mark.parametrize("args, message", [
    (["bench", "--sizes", "4X"], "bad size"),
    (["bench", "--sizes", "0"], "size must be > 0"),
    (["bench", "--seconds", "-1"], "--seconds"),
    (["bench", "--bogus"], "No such option"),
    (["bench", "store", "--compare", "redis"], "only 'mooncake'"),
    (["bench", "store", "--transport", "rdma"], "transport must be shm or tcp"),
    (["bench", "store", "--sizes", "1G", "--seg-mib", "64"], "does not fit"),
    (["master", "--port", "99999"], "65535"),   # zmq would have bound 99999 % 65536
    (["node", "--master", "127.0.0.1:1", "--port", "-1"], "--port"),
    (["master", "--metrics-port", "70000"], "--metrics-port"),
])
def test_bad_options_are_clean_errors(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert message in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_bench_store_without_anchor_runs_ours_alone(tmp_path):
    res = runner.invoke(app, ["bench", "store", "--sizes", "4K", "--seconds", "0.02",
                              "--ws-mib", "8", "--seg-mib", "256", "--compare", "mooncake",
                              "--mooncake-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"no Mooncake anchor at {tmp_path}" in res.output
    assert "remote: needs a cluster (--master)" in res.output
    assert "TCP loopback ceiling" in res.output
    assert "0 failed ops" in res.output
    assert "Mooncake GB/s" not in res.output


# ---- pieces behind the commands -------------------------------------------------------------
def test_find_anchor_reports_what_is_missing(tmp_path):
    anchor, why = mooncake_compare.find(tmp_path)
    assert anchor is None and "bench.sh missing" in why
    (tmp_path / "bench.sh").write_text("#!/bin/sh\n")
    anchor, why = mooncake_compare.find(tmp_path)
    assert anchor is None and "setup.sh" in why
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (tmp_path / ".stub").mkdir()
    (tmp_path / ".stub" / "libcuda.so.1").write_text("")
    anchor, why = mooncake_compare.find(tmp_path, venv)
    assert anchor is not None and why == "" and anchor.python == venv / "bin" / "python"


def test_anchor_gets_the_same_workload(tmp_path):
    plan = store_plan(sizes=[4096, 1 << 20], seconds=0.5, ws_mib=256)
    args = mooncake_compare.anchor_args(plan, tmp_path / "o.jsonl")
    opts = dict(zip(args[::2], args[1::2]))
    assert opts["--sizes"] == "4096,1048576"
    assert opts["--seconds"] == "0.5" and opts["--small-seconds"] == "0.5"
    assert opts["--ws-mib"] == "256" and opts["--seg-mib"] == str(plan.seg_mib)


def test_match_prefers_the_same_path():
    ours = {"test": "throughput", "op": "get", "api": "zc", "value_size": 4096, "path": "local"}
    remote = {**ours, "path": "remote_tcp", "GBps": 1.0}
    local = {**ours, "path": "local", "GBps": 2.0}
    other = {**ours, "value_size": 8192, "path": "local"}
    assert report.match(ours, [remote, other]) is remote      # only another path exists
    assert report.match(ours, [remote, local, other]) is local
    assert report.match(ours, [other]) is None


def test_goals_from_records():
    rows = [{"test": "throughput", "op": op, "api": "zc", "value_size": 4 << 20, "path": "local",
             "x_memcpy": x} for op, x in (("put", 0.75), ("get", 0.5))]
    rows.append({"test": "small_ops", "op": "get", "path": "local", "ops_per_s": 60_000.0})
    goals = {g["name"]: g["met"] for g in report.goals(rows)}
    assert goals == {"put_from 4 MiB / memcpy": True, "get_into 4 MiB / memcpy": False,
                     "4 KiB get ops/s, 1 thread": True}
    # The goals are for the embedded store: a cluster run does not claim them.
    assert report.goals([{"test": "params", "master": "127.0.0.1:50051"}, *rows]) == []


def test_cluster_goals_from_records():
    def tp(op, api, size, path, gbps):
        return {"test": "throughput", "op": op, "api": api, "value_size": size, "path": path,
                "GBps": gbps}
    mb = 1 << 20
    ours = [tp("get", "zc", mb, "remote_tcp", 4.0), tp("put", "zc_batch", 16 * mb, "remote_tcp", 3.0),
            tp("get", "bytes", mb, "remote_tcp", 1.0),          # copy mode: not in the goal
            tp("get", "zc", 4 * mb, "remote_shm", 10.0),
            {"test": "small_ops", "op": "put", "path": "remote_tcp", "ops_per_s": 3000.0,
             "p99_us": 300.0},
            {"test": "small_ops", "op": "get", "path": "remote_tcp", "ops_per_s": 3000.0,
             "p99_us": 50.0},
            {"test": "batch", "op": "batch_get_into", "path": "remote_tcp", "GBps": 4.0}]
    theirs = [tp("get", "zc", mb, "remote_tcp", 2.0), tp("put", "zc_batch", 16 * mb, "remote_tcp", 2.0),
              tp("get", "bytes", mb, "remote_tcp", 2.0), tp("get", "zc", 4 * mb, "remote_tcp", 2.0),
              {"test": "small_ops", "op": "put", "path": "remote_tcp", "ops_per_s": 1000.0,
               "p99_us": 200.0},
              {"test": "small_ops", "op": "get", "path": "remote_tcp", "ops_per_s": 1000.0,
               "p99_us": 100.0},
              {"test": "batch", "op": "batch_get_into", "path": "remote_tcp", "GBps": 2.0}]
    got = {g["name"].split(" >=")[0]: g for g in report.cluster_goals(ours, theirs)}
    tcp = got["remote tcp 1-16 MiB put_from/get_into and batch"]
    assert (tcp["rows"], tcp["rows_met"], tcp["value"], tcp["met"]) == (2, 1, 1.5, False)
    shm = got["same-host shm reads of 4 MiB"]
    assert (shm["rows"], shm["value"], shm["met"]) == (1, 5.0, True)
    small = got["4 KiB ops, one thread,"]
    assert (small["rows"], small["rows_met"], small["met"]) == (2, 1, False)   # put's p99 higher
    assert got["batch get of 64 x 256 KiB"]["met"] is True
    assert report.cluster_goals(ours, None) == []


def test_plan_validation():
    with pytest.raises(ValueError):
        Plan(sizes=[1 << 30], seg_mib=64).validate()
    with pytest.raises(ValueError):
        quick_plan(ws_mib=500).validate()            # working set above 80% of 512 MiB
    with pytest.raises(ValueError):
        quick_plan(ws_mib=8, seg_mib=64).validate()  # the batch phases need 128 MiB
    assert quick_plan().buf_mib >= 16                # holds a 64 x 256 KiB batch


# ---- the remote column against a real master ---------------------------------------------------
@pytest.fixture
def master_addr():
    """A real `mstore master` on a free 127.0.0.1 port, stopped by PID afterwards."""
    import os
    import select
    import time

    proc = subprocess.Popen([sys.executable, "-m", "mooncake_store.cli.main", "master",
                             "--port", "0", "--lease-ttl-ms", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        addr = None
        while addr is None and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            line = proc.stdout.readline() if ready else ""
            if "listening on" in line:
                addr = line.rsplit(" ", 1)[-1].strip()
        if addr is None:
            pytest.fail(f"master did not start (rc={proc.poll()})")
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_bench_store_with_master_adds_the_remote_column(master_addr, transport):
    res = runner.invoke(app, ["bench", "store", "--master", master_addr, "--sizes", "64K",
                              "--seconds", "0.05", "--ws-mib", "8", "--seg-mib", "256",
                              "--transport", transport, "--json"])
    assert res.exit_code == 0, res.output
    recs = _lines(res.stdout)
    tp = [r for r in recs if r["test"] == "throughput"]
    assert {r["path"] for r in tp} == {"local", f"remote_{transport}"}
    for r in tp:
        assert r["ops"] > 0 and r["fails"] == 0, r
        if r["op"] == "get":
            assert r["verified"] is True
    remote = [r for r in tp if r["path"] != "local"]
    assert all(r["client"] == "reader" and "x_tcp_ceiling" in r for r in remote)
    assert not [r for r in recs if r["test"] == "goal"]      # goals are for the embedded store


def test_bench_store_unreachable_master_is_a_clean_error():
    res = runner.invoke(app, ["bench", "store", "--master", "127.0.0.1:1", "--sizes", "4K",
                              "--seconds", "0.05", "--ws-mib", "8", "--seg-mib", "256"])
    assert res.exit_code == 1
    assert "cannot open the store" in res.output and "Traceback" not in res.output
