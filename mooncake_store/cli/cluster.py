"""`mstore master`, `mstore node` and the admin commands against a running cluster."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Optional

import typer

from ..config import Config, parse_size
from ..errors import ObjectNotFound, StoreError
from .main import app

DEFAULT_MASTER = "127.0.0.1:50051"
MASTER_OPT = typer.Option(DEFAULT_MASTER, "--master", "-m", envvar="MOONCAKE_MASTER",
                          help="Master address(es) host:port[,host:port], or 'etcd' with --etcd.")
ETCD_OPT = typer.Option("", "--etcd", help="etcd endpoint(s) etcd://host:port[,host:port].")
TIMEOUT_OPT = typer.Option(5000, "--timeout-ms", help="Control-plane call timeout.")


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _cfg(master: str, etcd: str, timeout_ms: int, **kw) -> Config:
    if etcd and master == DEFAULT_MASTER:
        master = "etcd"   # the leader comes from etcd
    try:
        return Config.load(master_server_addr=master or "etcd",
                           metadata_server=etcd or "P2PHANDSHAKE", rpc_timeout_ms=timeout_ms, **kw)
    except StoreError as e:
        _fail(str(e))


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _warn_exposure(what: str, host: str, auth_token: str) -> None:
    """Binding beyond loopback without a shared secret lets anyone on the network in."""
    if host not in ("127.0.0.1", "localhost", "::1") and not auth_token:
        typer.echo(f"warning: {what} binds {host} without an auth token; anyone who can reach "
                   "it can read and write the cache. Set MOONCAKE_AUTH_TOKEN or --auth-token.",
                   err=True)


@app.command("master")
def master_cmd(host: str = typer.Option("127.0.0.1", help="Address to bind."),
               port: int = typer.Option(50051, min=0, max=65535,
                                        help="RPC port (0: any free port)."),
               etcd: str = ETCD_OPT,
               cluster_id: str = typer.Option("default", "--cluster-id"),
               lease_ttl_ms: int = typer.Option(5000, "--default-kv-lease-ttl", "--lease-ttl-ms",
                                                help="Read lease (ms)."),
               put_timeout_ms: int = typer.Option(30_000, "--put-timeout-ms",
                                                  help="Reclaim a put never completed after this."),
               heartbeat_ms: int = typer.Option(1000, "--heartbeat-ms"),
               node_ttl_ms: int = typer.Option(5000, "--node-ttl-ms",
                                               help="A node silent this long is dead."),
               auth_token: str = typer.Option("", "--auth-token", envvar="MOONCAKE_AUTH_TOKEN"),
               metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535,
                                                help="Serve /metrics and /health here (0: off)."),
               stripe_size: str = typer.Option("4MB", "--stripe-size",
                                               help="Split larger values over several nodes."),
               hot_reads_per_s: float = typer.Option(0.0, "--hot-reads-per-s",
                                                     help="Add replicas to objects read faster "
                                                          "than this (0: off)."),
               hot_max_replicas: int = typer.Option(3, "--hot-max-replicas"),
               promotion: str = typer.Option("on-hit", "--promotion",
                                             help="Cold-tier hits copied back to DRAM: off, "
                                                  "on-hit or on-second-hit."),
               demote_watermark: float = typer.Option(0.85, "--demote-watermark",
                                                      help="Node DRAM fill above which objects "
                                                           "move to the node's cold tier."),
               verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a master (the object index and placement). With --etcd, masters elect a leader."""
    from ..master.service import MasterService
    from ..node.server import run_until_signal

    _logging(verbose)
    _warn_exposure("the master", host, auth_token)
    try:
        cfg = Config.load(lease_ttl_ms=lease_ttl_ms, put_timeout_ms=put_timeout_ms,
                          heartbeat_ms=heartbeat_ms, node_ttl_ms=node_ttl_ms, auth_token=auth_token,
                          cluster_id=cluster_id, metadata_server=etcd or "P2PHANDSHAKE",
                          global_segment_size=0, stripe_size=stripe_size, promotion=promotion,
                          demote_watermark=demote_watermark)
        svc = MasterService(cfg, host, port, hot_reads_per_s=hot_reads_per_s,
                            hot_max_replicas=hot_max_replicas)
        if etcd:
            from ..meta.election import Elector

            svc.elector = Elector(svc, etcd, cluster_id, node_ttl_ms)
        svc.start()
        if svc.elector is not None:
            svc.elector.start()
        if metrics_port:
            from ..master.metrics import MetricsServer, master_values

            svc.metrics = MetricsServer("mstore_master", lambda: master_values(svc),
                                        lambda: svc.role in ("leader", "standby"), metrics_port, host,
                                        token=cfg.auth_token)
    except StoreError as e:
        _fail(str(e))
    run_until_signal(svc, f"master listening on {svc.address}")


@app.command("node")
def node_cmd(master: str = MASTER_OPT, etcd: str = ETCD_OPT,
             dram: str = typer.Option("1GB", help="DRAM segment size (e.g. 4GB)."),
             host: str = typer.Option("127.0.0.1", help="Transfer server address."),
             port: int = typer.Option(0, min=0, max=65535,
                                      help="Transfer server port (0: any free port)."),
             heartbeat_ms: int = typer.Option(1000, "--heartbeat-ms"),
             node_ttl_ms: int = typer.Option(5000, "--node-ttl-ms",
                                             help="etcd membership lease (ms, at least 2 s)."),
             cluster_id: str = typer.Option("default", "--cluster-id"),
             timeout_ms: int = TIMEOUT_OPT,
             auth_token: str = typer.Option("", "--auth-token", envvar="MOONCAKE_AUTH_TOKEN"),
             metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535,
                                              help="Serve /metrics and /health here (0: off)."),
             ssd: str = typer.Option("", "--ssd", help="SSD tier PATH:SIZE (e.g. /nvme/mcs:256GB): "
                                     "objects demoted from DRAM; kept across restarts."),
             s3_bucket: str = typer.Option("", "--s3-bucket", envvar="MOONCAKE_S3_BUCKET",
                                           help="S3/OSS tier bucket (below the SSD tier)."),
             s3_prefix: str = typer.Option("mooncake_store/", "--s3-prefix",
                                           help="Object name prefix: one per node."),
             s3_endpoint_url: str = typer.Option("", "--s3-endpoint-url",
                                                 envvar="MOONCAKE_S3_ENDPOINT_URL"),
             s3_region: str = typer.Option("", "--s3-region", envvar="MOONCAKE_S3_REGION"),
             cold_codec: str = typer.Option("auto", "--cold-codec",
                                            help="none, lz4, zstd or auto for cold records."),
             stage_size: str = typer.Option("64MB", "--stage-size",
                                            help="Staging buffer for cold reads."),
             verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a storage node contributing a DRAM segment (and optional SSD/S3 tiers) to the cluster."""
    from ..node.server import StorageNode, run_until_signal

    _logging(verbose)
    _warn_exposure("the node's transfer server", host, auth_token)
    try:
        size = parse_size(dram, "--dram")
        cfg = _cfg(master, etcd, timeout_ms, heartbeat_ms=heartbeat_ms, auth_token=auth_token,
                   cluster_id=cluster_id, global_segment_size=size, node_ttl_ms=node_ttl_ms,
                   s3_bucket=s3_bucket, s3_prefix=s3_prefix, s3_endpoint_url=s3_endpoint_url,
                   s3_region=s3_region, cold_codec=cold_codec)
        node = StorageNode(cfg, size, host, port, ssd=ssd,
                           stage_bytes=parse_size(stage_size, "--stage-size")).start()
        if metrics_port:
            from ..master.metrics import MetricsServer, node_values

            node.metrics = MetricsServer("mstore_node", lambda: node_values(node),
                                         lambda: node.agent.registered, metrics_port, host,
                                         token=cfg.auth_token)
    except StoreError as e:
        _fail(str(e))
    run_until_signal(node, f"node {node.agent.node_id} serving {node.endpoint}")


def _store(master: str, etcd: str, timeout_ms: int):
    from ..client.store import Store

    try:
        return Store(_cfg(master, etcd, timeout_ms, global_segment_size=0))
    except StoreError as e:
        _fail(f"cannot reach the cluster: {e}")


def _with_store(master: str, etcd: str, timeout_ms: int, fn):
    """fn(store) on a fresh segment-less client, closed after; a StoreError ends the
    command with its one line."""
    store = _store(master, etcd, timeout_ms)
    try:
        return fn(store)
    except StoreError as e:
        _fail(str(e))
    finally:
        store.close()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _status_table(st: dict):
    from rich.table import Table

    t = Table(title=f"master {st.get('address', '?')} ({st.get('role', '?')}): "
                    f"{st['objects']} objects, {_human(st['used'])} / {_human(st['capacity'])}")
    for col in ("segment", "node", "tier", "used", "capacity", "fill"):
        t.add_column(col)
    for name, seg in sorted(st.get("segments", {}).items()):
        fill = seg["used"] / seg["capacity"] if seg["capacity"] else 0.0
        t.add_row(name, seg["node"], seg["tier"], _human(seg["used"]), _human(seg["capacity"]),
                  f"{fill:.0%}")
    cold = st.get("cold") or {}
    for node_id, node in sorted(cold.get("nodes", {}).items()):   # nodes' SSD/S3 tiers
        for tier, u in node.get("tiers", {}).items():
            cap = u.get("capacity") or 0
            t.add_row(f"{tier}@{node['rpc']}", node_id, tier, _human(u.get("used", 0)),
                      _human(cap) if cap else "-",
                      f"{u.get('used', 0) / cap:.0%}" if cap else f"{u.get('objects', 0)} obj")
    hits, misses = st.get("hits", 0), st.get("misses", 0)
    t.caption = (f"nodes {len(st.get('nodes', {}))}  hits {hits}  misses {misses}  "
                 f"evictions {st.get('evictions', 0)}  pending puts {st.get('pending', 0)}  "
                 f"repairs pending {st.get('repairs_pending', 0)}"
                 + (f"  nodes still sending their records {st['nodes_adopting']}"
                    if st.get("nodes_adopting") else "")
                 + (f"  demotions {cold.get('demotions', 0)}  promotions "
                    f"{cold.get('promotions', 0)}" if cold.get("nodes") else ""))
    return t


@app.command("status")
def status_cmd(master: str = MASTER_OPT, etcd: str = ETCD_OPT, timeout_ms: int = TIMEOUT_OPT,
               as_json: bool = typer.Option(False, "--json"),
               watch: float = typer.Option(0.0, "--watch", help="Refresh every N seconds."),
               count: int = typer.Option(0, "--count", help="With --watch: stop after N refreshes.")) -> None:
    """Leader, nodes, segments, fill, object count, hit/miss, evictions."""
    from rich.console import Console

    store = _store(master, etcd, timeout_ms)
    console = Console()
    try:
        n = 0
        while True:
            st = store._index.stats()
            if as_json:
                typer.echo(json.dumps(st, sort_keys=True))
            else:
                console.print(_status_table(st))
            n += 1
            if watch <= 0 or (count and n >= count):
                break
            time.sleep(watch)
    except StoreError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


@app.command("ls")
def ls_cmd(prefix: str = typer.Argument("", help="Key prefix."), master: str = MASTER_OPT,
           etcd: str = ETCD_OPT, timeout_ms: int = TIMEOUT_OPT,
           limit: int = typer.Option(1000, help="Print at most this many keys.")) -> None:
    """List keys (optionally by prefix)."""
    import re

    keys = sorted(_with_store(master, etcd, timeout_ms,
                              lambda store: store.keys("^" + re.escape(prefix) if prefix else None)))
    for k in keys[:limit]:
        typer.echo(k)
    if len(keys) > limit:
        typer.echo(f"... {len(keys) - limit} more", err=True)


@app.command("get")
def get_cmd(key: str, master: str = MASTER_OPT, etcd: str = ETCD_OPT, timeout_ms: int = TIMEOUT_OPT,
            out: Optional[str] = typer.Option(None, "-o", "--output", help="Write to FILE.")) -> None:
    """Read a value (to stdout, or -o FILE)."""
    value = _with_store(master, etcd, timeout_ms, lambda store: store.get(key))
    if out:
        try:
            with open(out, "wb") as f:
                f.write(value)
        except OSError as e:
            _fail(f"{out}: {e.strerror}")
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()


@app.command("put")
def put_cmd(key: str, file: str, master: str = MASTER_OPT, etcd: str = ETCD_OPT,
            timeout_ms: int = TIMEOUT_OPT,
            replicas: int = typer.Option(1, "--replicas", "-r", help="replica_num.")) -> None:
    """Store FILE's bytes under KEY."""
    from ..replica import ReplicateConfig

    try:
        with open(file, "rb") as f:
            value = f.read()
    except OSError as e:
        _fail(f"{file}: {e.strerror}")
    _with_store(master, etcd, timeout_ms,
                lambda store: store.put(key, value, ReplicateConfig(replica_num=replicas)))
    typer.echo(f"put {key}: {len(value)} bytes")


@app.command("rm")
def rm_cmd(key: str, master: str = MASTER_OPT, etcd: str = ETCD_OPT, timeout_ms: int = TIMEOUT_OPT,
           force: bool = typer.Option(False, "--force", help="Remove even under a read lease.")) -> None:
    """Remove a key."""
    _with_store(master, etcd, timeout_ms, lambda store: store.remove(key, force=force))
    typer.echo(f"removed {key}")


@app.command("stat")
def stat_cmd(key: str, master: str = MASTER_OPT, etcd: str = ETCD_OPT,
             timeout_ms: int = TIMEOUT_OPT) -> None:
    """Size, replicas and remaining lease of one key, as JSON.

    Replicas name their segments and nodes. For a missing key: why it is missing, as
    `mstore why` says it."""
    def stat(store):
        try:
            return store._index.stat(key)
        except ObjectNotFound as e:
            _fail(f"{e}: {_why_line(store, key)}")
    typer.echo(json.dumps(_with_store(master, etcd, timeout_ms, stat), indent=2, sort_keys=True))


@app.command("why")
def why_cmd(key: str, master: str = MASTER_OPT, etcd: str = ETCD_OPT,
            timeout_ms: int = TIMEOUT_OPT,
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Why a key misses: evicted, removed, lost, abandoned, corrupt, or never seen.

    Evicted, removed, lost with its nodes, abandoned mid-put or dropped as corrupt come
    with about how long ago; a key not seen recently comes with the stored keys that look
    like it (for a key built another way). Exit status 0 when the key is stored, 1 when
    not."""
    w = _with_store(master, etcd, timeout_ms, lambda store: store.why(key))
    if as_json:
        typer.echo(json.dumps(w, sort_keys=True))
    elif w["present"]:
        typer.echo(f"{key}: stored ({w['size']} bytes, tier {w['tier']})")
    else:
        typer.echo(f"{key}: {_describe(w)}")
    raise typer.Exit(0 if w["present"] else 1)


def _describe(w: dict) -> str:
    """One line for a missing key's why() answer."""
    if "seconds_ago" in w:
        lo, hi = w["seconds_ago"]
        when = f"{lo:.1f} s ago" if hi - lo < 0.05 else f"{lo:.1f}-{hi:.1f} s ago"
        return f"{w['detail']}, {when}"
    line = w["detail"]
    if w.get("similar"):
        line += "; stored keys like it: " + ", ".join(w["similar"])
    return line


def _why_line(store, key: str) -> str:
    try:
        return _describe(store.why(key))
    except StoreError:
        return "no explanation (the master did not answer)"
