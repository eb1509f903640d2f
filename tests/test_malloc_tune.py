"""Reads returned as bytes reuse mapped memory (client/malloc_tune.py): a batch_get of
64 x 256 KiB, repeated, faults in far fewer pages than the 4,096 it spans. Each case runs in
a fresh interpreter, since the setting is process-wide and made once."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")

PROBE = """
import resource
import numpy as np
from mooncake_store import Store
from mooncake_store.client import malloc_tune
with Store(capacity="128MB") as s:
    keys = [f"k{i}" for i in range(64)]
    v = np.random.default_rng(0).integers(0, 255, 256 << 10, dtype=np.uint8)
    assert s.batch_put_from(keys, [v] * 64) == [0] * 64
    out = None
    for _ in range(5):
        out = s.batch_get(keys)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        out = s.batch_get(keys)
        assert bytes(out[7]) == v.tobytes()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10, malloc_tune._done)
"""
PAGES_PER_BATCH = 64 * (256 << 10) // 4096


def _faults(env: dict) -> tuple[float, str]:
    import os

    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-2000:]
    faults, done = res.stdout.split()
    return float(faults), done


def test_batch_get_reuses_mapped_memory():
    tuned, done = _faults({})
    assert done == "True"
    assert tuned < PAGES_PER_BATCH / 4
    untuned, done = _faults({"MOONCAKE_TUNE_MALLOC": "0"})
    assert done == "None"                     # the switch leaves malloc alone
    assert untuned > 2 * tuned
