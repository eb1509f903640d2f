"""Prometheus `/metrics` and `/health` for masters and nodes (prometheus_client text format).

Each process exposes what its own stats() says, read at scrape time through a
custom collector, so no counter is kept twice. Binds 127.0.0.1 unless told otherwise.

With a shared secret (auth_token / MOONCAKE_AUTH_TOKEN), /metrics answers only a
request carrying `Authorization: Bearer <secret>` (compared in constant time);
anything else gets 401 and no data. /health stays open, so liveness probes need no
secret: it answers "ok" or "unhealthy" and nothing else.
"""
from __future__ import annotations

import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..errors import ErrorCode, StoreError


class _Collector:
    def __init__(self, prefix: str, collect: Callable[[], dict[str, float]]) -> None:
        self.prefix = prefix
        self.collect_fn = collect

    def collect(self):
        try:
            values = self.collect_fn()
        except Exception:  # noqa: BLE001 - a failed scrape shows as missing series, not a crash
            return
        for name, value in sorted(values.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            g = GaugeMetricFamily(f"{self.prefix}_{name}", f"{self.prefix} {name.replace('_', ' ')}")
            g.add_metric([], float(value))
            yield g


class MetricsServer:
    """Serves /metrics (Prometheus text) and /health (200 when healthy() is true, else 503)."""

    def __init__(self, prefix: str, collect: Callable[[], dict[str, float]],
                 healthy: Callable[[], bool], port: int, host: str = "127.0.0.1",
                 token: str = "") -> None:
        registry = CollectorRegistry()
        registry.register(_Collector(prefix, collect))
        secret = token.encode("utf-8") if token else b""
        self.refused = 0

        def authorized(header: str | None) -> bool:
            if not secret:
                return True
            scheme, _, given = (header or "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), secret)
            if not ok:
                self.refused += 1
            return ok

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                extra = {}
                if self.path.split("?")[0] == "/metrics":
                    if authorized(self.headers.get("Authorization")):
                        body, code, ctype = generate_latest(registry), 200, "text/plain; version=0.0.4"
                    else:
                        body, code, ctype = b"unauthorized\n", 401, "text/plain"
                        extra["WWW-Authenticate"] = 'Bearer realm="mstore"'
                elif self.path.split("?")[0] == "/health":
                    ok = False
                    try:
                        ok = bool(healthy())
                    except Exception:  # noqa: BLE001
                        pass
                    body, code, ctype = (b"ok\n" if ok else b"unhealthy\n"), (200 if ok else 503), \
                        "text/plain"
                else:
                    body, code, ctype = b"not found: try /metrics or /health\n", 404, "text/plain"
                self.send_response(code)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise StoreError(f"cannot serve metrics on {host}:{port}: {e.strerror}",
                             ErrorCode.INVALID_PARAMS) from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mcs-metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def master_values(svc) -> dict[str, float]:
    st = svc.rpc_stats() if svc.role == "leader" else {}
    out = {k: v for k, v in st.items() if isinstance(v, (int, float))}
    out["nodes"] = len(st.get("nodes", {}))
    # Cold tiers (master/cluster_tiers.py): demotions, cold repairs, copies and objects lost.
    out.update({f"tiers_{k}": v for k, v in (st.get("cold") or {}).items()
                if isinstance(v, (int, float))})
    out["is_leader"] = 1 if svc.role == "leader" else 0
    out["rpc_calls"] = svc.rpc.calls
    out["rpc_bad_requests"] = svc.rpc.bad_requests
    return out


def node_values(node) -> dict[str, float]:
    out = dict(node.agent.counters)
    out["registered"] = 1 if node.agent.registered else 0
    out["segment_bytes"] = node.segment.size
    out.update({f"transfer_{k}": v for k, v in node.engine.stats().items()})
    return out
