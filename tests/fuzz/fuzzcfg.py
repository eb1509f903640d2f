"""Case counts for the fuzz suites: MCS_FUZZ_EXAMPLES (small in CI, large in bench/fuzz_all.py)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

N = int(os.environ.get("MCS_FUZZ_EXAMPLES", "300"))


def fuzz_settings(n: int = N):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
