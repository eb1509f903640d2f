"""Fixtures of the fault-injection suite: the shared ones from tests/support."""
from __future__ import annotations

from support.fixtures import cluster, etcd, no_ambient_secret  # noqa: F401 - fixtures, found by name
