"""Fixtures: transfer targets running in their own processes."""
from __future__ import annotations

import pytest

from support.fixtures import no_ambient_secret  # noqa: F401 - autouse fixture, found by name
from targets import Target


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
