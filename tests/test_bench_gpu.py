"""The GPU section of `mstore bench` (bench/gpu.py): the no-CUDA path, the choice of path by
--device, and the phases themselves run with CPU tensors (same code, no pinning)."""
from __future__ import annotations

import types

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mooncake_store.bench import gpu, report
from mooncake_store.cli.main import app

runner = CliRunner()
HAS_CUDA = gpu.cuda_unavailable_reason() is None
KiB, MiB = 1 << 10, 1 << 20


def _fake_torch(cuda_version, available=True, count=1, boom=None):
    def is_available():
        if boom:
            raise boom
        return available

    return types.SimpleNamespace(__version__="9.9", version=types.SimpleNamespace(cuda=cuda_version),
                                 cuda=types.SimpleNamespace(is_available=is_available,
                                                            device_count=lambda: count))


@pytest.mark.parametrize("fake, words", [
    (_fake_torch(None), "CPU-only build"),
    (_fake_torch("12.4", available=False), "no CUDA device"),
    (_fake_torch("12.4", count=0), "device count 0"),
    (_fake_torch("12.4", boom=RuntimeError("driver too old")), "driver too old"),
])
def test_reason_names_why_cuda_is_unusable(fake, words):
    why = gpu.cuda_unavailable_reason(fake)
    assert why is not None and words in why and "\n" not in why


def test_reason_is_none_when_a_device_is_there():
    assert gpu.cuda_unavailable_reason(_fake_torch("12.4")) is None


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("args", [["bench", "--device", "cuda"],
                                  ["bench", "store", "--device", "cuda:0", "--sizes", "64K"]])
def test_no_cuda_is_one_line_and_status_1(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "CUDA is not available" in lines[0]
    assert "Traceback" not in res.output


def test_unknown_device_is_a_usage_error():
    res = runner.invoke(app, ["bench", "--device", "tpu"])
    assert res.exit_code == 2 and "unknown device 'tpu'" in res.output


class _Recorder:
    """Stands in for GpuRunner: records the plan the CLI built."""
    plans: list = []

    def __init__(self, plan, emit, on_phase=lambda n: None):
        self.plan, self.emit = plan, emit
        _Recorder.plans.append(plan)

    def run(self):
        self.emit({"impl": "x", "test": "params", "master": "embedded", "cpus": 2, "seconds": 0})


def test_device_cuda_selects_the_gpu_section(monkeypatch):
    monkeypatch.setattr(gpu, "check_device", lambda device: None)
    monkeypatch.setattr(gpu, "GpuRunner", _Recorder)
    _Recorder.plans = []
    res = runner.invoke(app, ["bench", "--device", "cuda:1", "--sizes", "64K,1M",
                              "--seconds", "0.05"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["bench", "store", "--device", "cuda", "--ws-mib", "64"])
    assert res.exit_code == 0, res.output
    quick, store = _Recorder.plans
    assert (quick.device, quick.sizes, quick.seconds) == ("cuda:1", [64 * KiB, MiB], 0.05)
    assert (store.device, store.seconds, store.ws_mib, store.tag) == ("cuda", 3.0, 64, "store-gpu")


def test_phases_with_cpu_tensors_measure_and_verify():
    recs: list[dict] = []
    plan = gpu.GpuPlan(device="cpu", sizes=[64 * KiB, MiB], seconds=0.02, ws_mib=4, seg_mib=16)
    gpu.GpuRunner(plan, recs.append).run()
    ceil = {(r["value_size"], r["direction"]): r["GBps"] for r in recs
            if r["test"] == "ceiling_device_copy"}
    assert set(ceil) == {(s, d) for s in plan.sizes for d in (gpu.TO_DEVICE, gpu.FROM_DEVICE)}
    rows = {(r["value_size"], r["op"]): r for r in recs if r["test"] == "gpu_throughput"}
    assert set(rows) == {(s, op) for s in plan.sizes for op in ("put", "get")}
    for (size, op), r in rows.items():
        assert r["fails"] == 0 and r["ops"] > 0 and r["bytes"] == r["ops"] * size
        direction = gpu.FROM_DEVICE if op == "put" else gpu.TO_DEVICE
        assert r["copy_GBps"] == ceil[(size, direction)]
        assert r["x_copy"] == pytest.approx(r["GBps"] / r["copy_GBps"], abs=1e-3)
        if op == "get":
            assert r["verified"] is True
    assert torch.get_num_threads() >= 1
    con = Console(record=True, width=160)
    report.print_report(recs, con)
    text = con.export_text()
    assert "x copy" in text and "4 timed phases, 0 failed ops, 2/2" in text


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="device"):
        gpu.GpuPlan(device="tpu").validate()
    with pytest.raises(ValueError, match="working set"):
        gpu.GpuPlan(device="cpu", sizes=[64 * MiB], ws_mib=64).validate()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_phases_on_cuda():
    recs: list[dict] = []
    plan = gpu.GpuPlan(device="cuda", sizes=[MiB], seconds=0.05, ws_mib=16, seg_mib=64)
    gpu.GpuRunner(plan, recs.append).run()
    rows = [r for r in recs if r["test"] == "gpu_throughput"]
    assert len(rows) == 2 and all(r["fails"] == 0 for r in rows)
    assert all(r["x_copy"] > 0 for r in rows) and rows[1]["verified"] is True


def test_a_failing_gpu_run_is_one_line_and_status_1(monkeypatch):
    class Boom(_Recorder):
        def run(self):
            raise RuntimeError("CUDA out of memory. Tried to allocate 16.00 MiB")

    monkeypatch.setattr(gpu, "check_device", lambda device: None)
    monkeypatch.setattr(gpu, "GpuRunner", Boom)
    res = runner.invoke(app, ["bench", "--device", "cuda", "--sizes", "1M"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "RuntimeError: CUDA out of memory" in res.output
