"""pytest fixtures used in several directories. A conftest (or test module) imports the ones
it wants by name, e.g. `from support.fixtures import cluster  # noqa: F401`; pytest finds a
fixture by the names in that module, so an import is enough to register it there."""
from __future__ import annotations

import pytest

from support.cluster import Cluster, Etcd


@pytest.fixture(autouse=True)
def no_ambient_secret(monkeypatch):
    """Tests choose their secrets; a MOONCAKE_AUTH_TOKEN set in the shell must not leak in."""
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)


@pytest.fixture
def cluster(tmp_path):
    """A Cluster launcher; whatever the test started is killed by PID at the end."""
    c = Cluster(str(tmp_path))
    yield c
    c.close()


@pytest.fixture
def etcd(tmp_path):
    """A running single-member etcd (skips when the binary is missing)."""
    e = Etcd(str(tmp_path))
    yield e
    e.close()
