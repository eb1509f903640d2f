"""Fixtures: master and node processes (and etcd) on 127.0.0.1, killed by PID at the end.

The launchers live in tests/support/cluster.py; the names below are re-exported for the
callers that still load this file as a module (tests/chaos/harness.py, bench/soak.py,
bench/cluster_batch.py, `from conftest import ...` in older tests)."""
from __future__ import annotations

import os
import sys

# The bench scripts load this file outside pytest, where tests/ is not on sys.path yet.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from support.cluster import (  # noqa: E402,F401
    CLI, FAST, LEASE, START_TIMEOUT_S, Cluster, Etcd, Proc, store, wait_nodes,
)
from support.fixtures import cluster, etcd  # noqa: E402,F401
from support.net import free_port  # noqa: E402,F401
from support.procs import wait_until  # noqa: E402,F401
