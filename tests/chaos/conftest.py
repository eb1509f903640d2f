from __future__ import annotations

import pytest

from harness import cf


@pytest.fixture(autouse=True)
def _no_ambient_secret(monkeypatch):
    monkeypatch.delenv("MOONCAKE_AUTH_TOKEN", raising=False)


@pytest.fixture
def cluster(tmp_path):
    c = cf.Cluster(str(tmp_path))
    yield c
    c.close()


@pytest.fixture
def etcd(tmp_path):
    e = cf.Etcd(str(tmp_path))
    yield e
    e.close()
