"""Fixtures: transfer targets running in their own processes."""
from __future__ import annotations

import pytest

from targets import Target


@pytest.fixture(autouse=True)
def _no_ambient_secret(monkeypatch):
    """Tests choose their secrets; one set in the environment must not leak in."""
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)


@pytest.fixture
def make_target():
    made: list[Target] = []

    def make(**kw) -> Target:
        t = Target(**kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.stop()


@pytest.fixture(scope="module")
def shared_target():
    t = Target()
    yield t
    t.stop()
