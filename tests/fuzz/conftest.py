from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ambient_secret(monkeypatch):
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)
