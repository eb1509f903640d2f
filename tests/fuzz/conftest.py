"""Fuzz suites: MCS_FUZZ_EXAMPLES sets the hypothesis case count (small in CI)."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

N = int(os.environ.get("MCS_FUZZ_EXAMPLES", "300"))


def fuzz_settings(n: int = N):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _no_ambient_secret(monkeypatch):
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)
