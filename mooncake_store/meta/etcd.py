"""A small etcd v3 client over etcd's JSON gateway (HTTP POST /v3/..., base64 keys and values).

Why not python3-etcd3 / PyPI `etcd3`: its last release (0.12, 2020) ships protobuf
modules generated for protobuf 3 and needs grpcio; with the protobuf 5+ that the
rest of the environment uses it fails at import unless forced into the slow pure
Python protobuf mode. The handful of calls we need (kv put/range/delete, a
create-if-absent transaction, lease grant/keepalive/revoke) are plain JSON over
HTTP in etcd 3.4+, so this module uses the standard library only.

Endpoints: "etcd://h1:p1,h2:p2" (also "http://..."); a failing endpoint is
skipped for the next one. Every call has a timeout; failures raise
StoreError(ETCD_OPERATION_ERROR).
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from ..errors import ErrorCode, InvalidParams, StoreError

PREFIX = "/mooncake_store"


def cluster_prefix(cluster_id: str) -> str:
    return f"{PREFIX}/{cluster_id}/"


def parse_endpoints(spec: str) -> list[str]:
    if not isinstance(spec, str) or not spec:
        raise InvalidParams(f"etcd endpoint must be 'etcd://host:port[,host:port]', got {spec!r}")
    body = spec
    for scheme in ("etcd://", "http://"):
        if body.startswith(scheme):
            body = body[len(scheme):]
    out = []
    for part in body.split(","):
        part = part.strip().removeprefix("http://").removeprefix("etcd://").rstrip("/")
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidParams(f"bad etcd endpoint {part!r} in {spec!r} (want host:port)")
        out.append(f"http://{host}:{port}")
    return out


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return _b64(bytes(b))


class EtcdClient:
    def __init__(self, endpoints: str, timeout_s: float = 2.0) -> None:
        self.urls = parse_endpoints(endpoints)
        self.timeout_s = timeout_s
        self._good = 0

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        last = ""
        for i in range(len(self.urls)):
            url = self.urls[(self._good + i) % len(self.urls)]
            req = urllib.request.Request(url + path, data=data,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    self._good = (self._good + i) % len(self.urls)
                    return json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                raise StoreError(f"etcd {path}: HTTP {e.code}: {detail}",
                                 ErrorCode.ETCD_OPERATION_ERROR) from None
            except (OSError, ValueError) as e:
                last = f"{url}: {e}"
        raise StoreError(f"etcd {path}: no endpoint answered ({last})", ErrorCode.ETCD_OPERATION_ERROR)

    def healthy(self) -> bool:
        for url in self.urls:
            try:
                with urllib.request.urlopen(url + "/health", timeout=self.timeout_s) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return True
            except (OSError, ValueError):
                continue
        return False

    # ---- kv ----------------------------------------------------------------------------
    def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._post("/v3/kv/put", body)

    def get(self, key: str) -> str | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        r = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in r.get("kvs", [])}

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Put key only if it does not exist (one transaction). True when we created it."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        r = self._post("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE",
                         "create_revision": "0"}],
            "success": [{"request_put": put}]})
        return bool(r.get("succeeded"))

    def delete_if(self, key: str, value: str) -> bool:
        """Delete key only if it still holds value (one transaction). True when deleted."""
        r = self._post("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "VALUE",
                         "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}]})
        return bool(r.get("succeeded"))

    # ---- leases ------------------------------------------------------------------------------
    def lease_grant(self, ttl_s: int) -> int:
        return int(self._post("/v3/lease/grant", {"TTL": str(int(ttl_s))})["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Remaining TTL in seconds after the refresh; 0 when the lease is gone."""
        r = self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(r.get("result", {}).get("TTL", 0) or 0)

    def lease_revoke(self, lease: int) -> None:
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError:
            pass   # gone already


class LeaseKeeper:
    """Holds one lease alive from a thread; calls on_lost once if it cannot."""

    def __init__(self, etcd: EtcdClient, ttl_s: int, on_lost: Callable[[], None] | None = None) -> None:
        self.etcd = etcd
        self.ttl_s = max(2, int(ttl_s))
        self.granted_at = time.monotonic()
        self.lease = etcd.lease_grant(self.ttl_s)
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mcs-etcd-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = self.ttl_s / 3.0
        # When the last refresh was *sent*: etcd counts the TTL from its arrival, so the lease
        # is surely alive until last_ok + ttl, and on_lost fires no later than that.
        last_ok = self.granted_at
        while not self._stop.wait(period):
            sent = time.monotonic()
            try:
                if self.etcd.lease_keepalive(self.lease) > 0:
                    last_ok = sent
                    continue
            except StoreError:
                if time.monotonic() - last_ok < self.ttl_s:
                    continue   # etcd blipped; the lease may still be alive
            if self.on_lost is not None:
                self.on_lost()
            return

    def close(self, revoke: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if revoke:
            self.etcd.lease_revoke(self.lease)


def leader_key(cluster_id: str) -> str:
    return cluster_prefix(cluster_id) + "master/leader"


def node_key(cluster_id: str, node_id: str) -> str:
    return cluster_prefix(cluster_id) + "nodes/" + node_id


def segment_key(cluster_id: str, name: str) -> str:
    return cluster_prefix(cluster_id) + "segments/" + name


def leader_resolver(endpoints: str, cluster_id: str,
                    timeout_s: float = 1.0) -> Callable[[], str | None]:
    """A function returning the current leader's address (cached for 100 ms). A failure is
    remembered for 0.5 s and raised again at once, so callers asking during an etcd outage
    do not each wait out the timeout."""
    etcd = EtcdClient(endpoints, timeout_s=timeout_s)
    key = leader_key(cluster_id)
    cache: list[Any] = [0.0, None, None]    # when, leader, error

    def resolve() -> str | None:
        now = time.monotonic()
        if cache[2] is not None and now - cache[0] < 0.5:
            raise cache[2]
        if now - cache[0] > 0.1 or cache[2] is not None:
            try:
                cache[1], cache[2] = etcd.get(key), None
            except StoreError as e:
                cache[2] = e
                raise
            finally:
                cache[0] = time.monotonic()
        return cache[1]
    return resolve
