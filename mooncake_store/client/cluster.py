"""The client side of cluster mode.

- MasterClient: RPC to the master, following the leader across several
  addresses (or the one etcd names) when the current one fails or says it is
  not the leader.
- RemoteIndex: the ObjectIndex methods Store calls, as RPCs; same return values
  and the same typed exceptions.
- RemoteData: moves records between the caller's memory and node segments with
  the transfer engine (shm mapping on the same host, tcp otherwise). Records are
  assembled and verified in C (mcs_rec_write / mcs_rec_read), never proxied
  through the master.
- ClusterSession: what a Store in cluster mode owns (engine, master client and,
  when the client contributes memory, its segment and NodeAgent).
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from .._engine import ffi, lib
from ..config import Config
from ..errors import (ErrorCode, InvalidParams, RpcFailed, RpcTimeout, StoreError,
                      TransferFailed, Unavailable)
from ..master.index import Lookup
from ..master.wire import lookup_from_wire, rc_to_wire, replicas_from_wire
from ..replica import Replica, ReplicateConfig, Slice
from ..codec import FIXED_SIZE, header_size
from ..master.cluster_index import parse_stripe_key, stripe_key
from ..rpc.client import RpcClient, RpcClients
from ..transfer import READ, WRITE
from .put_batch import batch_put

log = logging.getLogger("mooncake_store.client")

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize   # as Store.get: bytes filled in place
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

FAILOVER_WINDOW_MS = 10_000
BATCH_JOBS = 128        # records per transfer batch in batch reads
DIRECT_MIN = 64 << 10   # values this large move straight between caller memory and the node
OVERLAP_MIN = 1 << 20   # records this large to several nodes are written at once
REMOVE_PART = 4096      # keys per call of remove_all / remove_by_regex


class MasterClient:
    """Calls the leader master. `addresses`: 'h:p' or 'h1:p1,h2:p2'; `resolve` (optional)
    returns the current leader's address (etcd)."""

    def __init__(self, addresses: str | Sequence[str], timeout_ms: int = 5000, token: str = "",
                 resolve: Callable[[], str | None] | None = None) -> None:
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        addresses = list(addresses)
        if not addresses and resolve is None:
            raise InvalidParams("cluster mode needs a master address (host:port) or an etcd server")
        self.timeout_ms = timeout_ms
        self.token = token
        self.resolve = resolve
        self._clients = RpcClients(timeout_ms, token)
        self._addrs = addresses
        self._current = addresses[0] if addresses else ""
        self._ok = False      # the current master answered the last call: no need to ask etcd
        self._lock = threading.Lock()
        # One fixed master: calls go straight to its client (no leader to look for).
        self._single = self._client(addresses[0]) if len(addresses) == 1 and resolve is None \
            else None

    @property
    def current(self) -> str:
        return self._current

    def _client(self, addr: str) -> RpcClient:
        return self._clients.get(addr)

    def _candidates(self, ask: bool = True) -> tuple[list[str], bool]:
        """Masters to try, in order, and whether etcd failed to answer. While the current
        master keeps answering, etcd is not asked at all (ask=False), so an etcd outage
        does not slow calls down."""
        out: list[str] = []
        etcd_failed = False
        if not ask and self._current:
            return [self._current], False
        if self.resolve is not None:
            try:
                leader = self.resolve()
            except StoreError:
                leader, etcd_failed = None, True
            if leader:
                out.append(leader)
        if self._current and self._current not in out:
            out.append(self._current)
        out += [a for a in self._addrs if a not in out]
        return out, etcd_failed

    def call(self, method: str, *args: Any, timeout_ms: int | None = None) -> Any:
        if self._single is not None:
            return self._single.call(method, *args, timeout_ms=timeout_ms)
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        single = len(self._addrs) <= 1 and self.resolve is None
        window = timeout if single else max(timeout, FAILOVER_WINDOW_MS)
        start = time.monotonic()
        deadline = start + window / 1000.0
        last: StoreError | None = None
        known = self._ok
        for attempt in range(1000):  # bounded; the deadline ends it long before
            addrs, etcd_failed = self._candidates(ask=attempt > 0 or not known)
            if etcd_failed:
                # Nobody can name a new leader now: waiting out the failover window would
                # only stall the caller, so the call gets its own timeout and no more.
                deadline = min(deadline, start + timeout / 1000.0)
            for addr in addrs:
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    raise _as_rpc_error(method, last, window)
                try:
                    result = self._client(addr).call(method, *args, timeout_ms=min(timeout, left))
                    self._current, self._ok = addr, True
                    return result
                except (RpcFailed, RpcTimeout) as e:
                    last = e
                except Unavailable as e:
                    if not str(e).startswith("not ready"):
                        raise
                    last = e
                self._ok = False
                if single:
                    raise last
            time.sleep(0.05)
        raise _as_rpc_error(method, last, window)

    def call_current(self, method: str, *args: Any, timeout_ms: int) -> Any:
        """One attempt at the master last known to lead, no failover wait: for calls that
        may simply be dropped (a closing client's courtesy)."""
        if not self._current:
            raise RpcFailed(f"{method}: no master known")
        return self._client(self._current).call(method, *args, timeout_ms=timeout_ms)

    def close(self) -> None:
        self._clients.close()


class RemoteIndex:
    """ObjectIndex's client-facing methods over RPC."""

    def __init__(self, master: MasterClient) -> None:
        self.m = master
        self.local_segment = ""      # set when this client contributes a segment
        self.local_host = "127.0.0.1"
        self._same_names: list[str] = []
        self._same_at = -1e9
        # The reservation for the next small put (master/reserve.py): (id, replicas, use
        # until), whether a put is writing into it now, and one to give back when asking anew.
        self._owner = uuid.uuid4().hex
        self._rsv_lock = threading.Lock()
        self._rsv: tuple[int, list[Replica], float] | None = None
        self._rsv_busy = False
        self._rsv_back = 0

    def _same_node(self, rc: ReplicateConfig | None) -> ReplicateConfig | None:
        """prefer_alloc_in_same_node: our own segment first, then other segments on our host."""
        if rc is None or not rc.prefer_alloc_in_same_node or rc.preferred_segment \
                or rc.preferred_segments:
            return rc
        now = time.monotonic()
        if now - self._same_at > 1.0:   # the segment list changes rarely: refresh once a second
            self._same_names = [n for n, d in self.m.call("segments").items()
                                if d["endpoint"].rpartition(":")[0] == self.local_host]
            self._same_at = now
        names = list(self._same_names)
        names.sort(key=lambda n: n != self.local_segment)
        return dataclasses.replace(rc, preferred_segments=names) if names else rc

    def put_start(self, key: str, size: int, rc: ReplicateConfig | None = None,
                  upsert: bool = False) -> list[Replica] | None:
        rc = self._same_node(rc)
        return replicas_from_wire(self.m.call("put_start", key, size, rc_to_wire(rc), upsert))

    def put_end(self, key: str, flags: int = 0, record: int = 0) -> None:
        """record > 0: also ask for a reservation of that many bytes for the next put."""
        ask = self._reserve_ask(record) if record else None
        if ask is None:
            self.m.call("put_end", key, flags)
            return
        t0 = time.monotonic()
        self._keep(self.m.call("put_end", key, flags, ask), t0)

    # ---- reservations: a small put is its write plus one put_commit ----------------------------
    def take_reservation(self, record: int) -> tuple[int, list[Replica], float] | None:
        """The held reservation if a record of this size fits it (the caller then writes
        into it and must call put_commit), else None."""
        with self._rsv_lock:
            r = self._rsv
            if r is None or self._rsv_busy or r[1][0][0].length < record:
                return None
            self._rsv = None
            if time.monotonic() >= r[2]:   # too close to the master's deadline to use now
                self._rsv_back = r[0]
                return None
            self._rsv_busy = True
            return r

    def drop_reservation(self, held: tuple[int, list[Replica], float]) -> None:
        """The write into it failed: give it back with the next ask."""
        with self._rsv_lock:
            self._rsv_busy, self._rsv_back = False, held[0]

    def put_commit(self, held: tuple[int, list[Replica], float], key: str, size: int,
                   flags: int, upsert: bool, record: int) -> int:
        """Name the reserved slice `key`: reserve.COMMITTED / EXISTED / GONE; asks for the
        next reservation of `record` bytes."""
        rid = held[0]
        t0 = time.monotonic()
        try:
            code, nxt = self.m.call("put_commit", self._owner, rid, key, size, flags, upsert,
                                    record)
        except BaseException:
            with self._rsv_lock:
                self._rsv_busy, self._rsv_back = False, rid
            raise
        with self._rsv_lock:
            self._rsv_busy = False
            if code == 1:   # the key existed: the master keeps the slice ours
                self._rsv = held
        self._keep(nxt, t0)
        return code

    def _reserve_ask(self, record: int) -> list | None:
        """put_end's reserve argument: ask unless a usable reservation is held or in use."""
        with self._rsv_lock:
            r = self._rsv
            if self._rsv_busy or (r is not None and r[1][0][0].length >= record
                                  and time.monotonic() < r[2]):
                return None
            back, self._rsv, self._rsv_back = (r[0] if r else self._rsv_back), None, 0
            return [self._owner, record, back]

    def release_reservation(self) -> None:
        """Give the held reservation back (the client is closing), so its room is free now
        rather than after put_timeout_ms. Best effort: the master reclaims it anyway."""
        with self._rsv_lock:
            r, self._rsv = (None if self._rsv_busy else self._rsv), None
        if r is None:
            return
        try:
            self.m.call_current("reserve_release", self._owner, r[0], timeout_ms=1000)
        except StoreError:
            pass

    def _keep(self, got: Any, t0: float) -> None:
        if not got:
            return
        rid, w, use_ms = got
        # Usable for use_ms counted from before the ask (the master's put_timeout_ms leaves
        # the rest for the write and the commit, so it never frees the slice under a writer).
        with self._rsv_lock:
            self._rsv = (rid, replicas_from_wire(w), t0 + use_ms / 1000.0)

    def put_revoke(self, key: str) -> None:
        self.m.call("put_revoke", key)

    def batch_put_start(self, keys: list[str], sizes: list[int], rc: ReplicateConfig | None = None,
                        upsert: bool = False) -> list[tuple[int, Any]]:
        out = self.m.call("batch_put_start", keys, sizes, rc_to_wire(self._same_node(rc)), upsert)
        return [(code, replicas_from_wire(r) if code == 0 else r) for code, r in out]

    def batch_put_end(self, keys: list[str], flags: int = 0) -> list[int]:
        return self.m.call("batch_put_end", keys, flags)

    def get_replicas(self, key: str) -> Lookup:
        return lookup_from_wire(self.m.call("get_replicas", key))

    def batch_get_replicas(self, keys: Sequence[str]) -> list[Lookup | None]:
        return [lookup_from_wire(w) for w in self.m.call("batch_get_replicas", list(keys))]

    def exists(self, key: str) -> bool:
        return self.m.call("exists", key)

    def batch_exists(self, keys: Sequence[str]) -> list[bool]:
        return self.m.call("batch_exists", list(keys))

    def longest_prefix(self, keys: Sequence[str]) -> int:
        return self.m.call("longest_prefix", list(keys))

    def size(self, key: str) -> int:
        return self.m.call("size", key)

    def lease_remaining_ms(self, key: str) -> float:
        return self.m.call("lease_remaining_ms", key)

    def keys(self, pattern: str | None = None) -> list[str]:
        return self.m.call("keys", pattern)

    def remove(self, key: str, force: bool = False) -> None:
        self.m.call("remove", key, force)

    def remove_many(self, keys: Sequence[str], force: bool = False) -> int:
        return self.m.call("remove_many", list(keys), force)

    def remove_each(self, keys: Sequence[str], force: bool = False) -> list[int]:
        return self.m.call("remove_each", list(keys), force)

    def remove_by_regex(self, pattern: str, force: bool = False) -> int:
        return self._remove_in_parts(self.keys(pattern), force)

    def remove_all(self, force: bool = False) -> int:
        return self._remove_in_parts(self.keys(), force)

    def _remove_in_parts(self, keys: list[str], force: bool) -> int:
        # One call per part: the master serves calls one at a time, and one call removing
        # 300,000 keys kept every other client waiting 2.4 s (past many call timeouts).
        return sum(self.remove_many(keys[lo:lo + REMOVE_PART], force)
                   for lo in range(0, len(keys), REMOVE_PART))

    def reclaim_expired(self) -> int:
        return 0   # the master reclaims on its own clock

    def stats(self) -> dict:
        return self.m.call("stats")

    def stat(self, key: str) -> dict:
        return self.m.call("stat", key)

    def why(self, key: str) -> dict:
        return self.m.call("why", key)

    @property
    def segments(self) -> dict[str, SimpleNamespace]:
        return {name: SimpleNamespace(capacity=d["capacity"], used=d["used"], tier=d["tier"],
                                      endpoint=d["endpoint"])
                for name, d in self.m.call("segments").items()}

    def __len__(self) -> int:
        return self.stats()["objects"]


class RemoteData:
    """Reads and writes whole records in node segments through the transfer engine."""

    def __init__(self, master: MasterClient, engine: Any) -> None:
        self.m = master
        self.engine = engine
        self._table: dict[str, tuple[str, int, int]] = {}   # name -> (endpoint, base, size)
        self._tls = threading.local()
        self._lock = threading.Lock()

    def _where(self, name: str, refresh: bool = False) -> tuple[str, int, int]:
        d = None if refresh else self._table.get(name)
        if d is None:
            table = {n: (v["endpoint"], v["base"], v["size"])
                     for n, v in self.m.call("segments").items()}
            with self._lock:
                self._table = table
            d = table.get(name)
            if d is None:
                raise TransferFailed(f"segment {name!r} is not in the cluster")
        return d

    def _staging(self, n: int) -> Any:
        buf = getattr(self._tls, "buf", None)
        if buf is None or len(buf) < n:
            buf = bytearray(max(n, 1 << 16))
            self._tls.buf = buf
        return buf

    def _xfer(self, sl: Slice, op: int, parts: list[tuple[int, int, int]]) -> None:
        """One batch of (local address, offset in the slice, length) for one slice. A stale
        segment table (the node restarted under the same name) gets one refresh and retry."""
        for attempt in (0, 1):
            endpoint, base, size = self._where(sl.segment, refresh=attempt == 1)
            if sl.offset + sl.length > size:
                continue
            try:
                st = self.engine.wait(self.engine.submit(
                    endpoint, op, [p[0] for p in parts],
                    [base + sl.offset + p[1] for p in parts], [p[2] for p in parts]))
                bad = next((x for x in st if x.state != "completed"), None)
                if bad is None:
                    return
                err = f"{bad.state} ({bad.code})"
            except StoreError as e:
                err = str(e)
            # The peer may be a new process behind the same name: reopen it for the retry.
            self.engine.disconnect(endpoint)
            if attempt == 1:
                raise TransferFailed(f"transfer with segment {sl.segment}: {err}")
        raise TransferFailed(f"slice {sl} lies outside segment {sl.segment}")

    def write(self, sl: Slice, kb: bytes, src: Any, n: int, epoch: int, flags: int) -> None:
        if n >= DIRECT_MIN:
            # One record write: the engine sends the value straight from the caller's
            # memory, checksumming it as it goes, then the header behind it.
            self._write_records([(sl, kb, _addr(src), n)], epoch, flags)
            return
        buf = self._staging(sl.length)
        cbuf = ffi.from_buffer(buf)
        rc = lib.mcs_rec_write(cbuf, sl.length, kb, len(kb), src, n, epoch, 0, flags, 0)
        if rc < 0:
            raise StoreError(f"record write failed ({rc})", ErrorCode.INVALID_WRITE)
        self._xfer(sl, WRITE, [(_addr(cbuf), 0, sl.length)])

    def write_replicas(self, kb: bytes, slices: Sequence[Slice], src: Any, n: int, epoch: int,
                       flags: int) -> None:
        """The same record into several single-slice replicas (on several nodes) at once:
        every write is submitted before any is waited on."""
        self._write_records([(sl, kb, _addr(src), n) for sl in slices], epoch, flags)

    def _write_records(self, jobs: list[tuple[Slice, bytes, int, int]], epoch: int,
                       flags: int) -> None:
        """Record writes (sl, key bytes, value address, value length), each into its own
        slice. From 1 MiB on, all but the last skip the inline lane (csrc:
        MCS_SUBMIT_NO_INLINE): the stream threads move them while this thread runs the
        last one itself, so writes to different nodes overlap (2 replicas of 4 MiB: 1.28x
        the serial writes on 2 cores; of 256 KiB 0.86x, so smaller ones stay one after
        another, each on the inline lane). A failed one gets one retry
        after a segment table refresh (the node may have restarted under the same name)."""
        for sl, kb, _, n in jobs:
            if header_size(len(kb)) + n > sl.length:
                raise StoreError(f"slice {sl} cannot hold a {n}-byte record of its key",
                                 ErrorCode.INVALID_WRITE)
        for attempt in (0, 1):
            pending, failed = [], []
            try:
                for k, job in enumerate(jobs):
                    sl, kb, src, n = job
                    endpoint, base, size = self._where(sl.segment, refresh=attempt == 1)
                    if sl.offset + sl.length > size:
                        failed.append((job, endpoint, f"slice {sl} lies outside segment "
                                                      f"{sl.segment}"))
                        continue
                    try:
                        pending.append((job, endpoint, self.engine.submit_record_writes(
                            endpoint, (src,), (base + sl.offset,), (n,), (kb,), epoch, flags,
                            inline=k == len(jobs) - 1 or n < OVERLAP_MIN)))
                    except StoreError as e:
                        failed.append((job, endpoint, str(e)))
            finally:
                codes = [(job, endpoint, self._codes(bid)) for job, endpoint, bid in pending]
            failed += [(job, endpoint, f"code {c}") for job, endpoint, c in codes if c != 0]
            if not failed:
                return
            for _, endpoint, _ in failed:
                if endpoint:
                    self.engine.disconnect(endpoint)
            if attempt == 1:
                raise TransferFailed(f"record write to segment {failed[0][0][0].segment}: "
                                     f"{failed[0][2]}")
            jobs = [f[0] for f in failed]

    def _codes(self, bid: int) -> int:
        try:
            return self.engine.wait_codes(bid)[0]
        except StoreError as e:
            return int(e.code)

    def read(self, sl: Slice, kb: bytes, dst: Any, dst_len: int) -> int:
        """Value length, or a negative code (CHECKSUM_MISMATCH, INVALID_PARAMS, TRANSFER_FAIL).
        Header and value travel as one request, the value straight into dst; the engine
        checks header and value CRC as the bytes arrive (csrc: mcs_batch_submit_rec)."""
        vlen = sl.length - header_size(len(kb))
        if vlen <= 0:
            return int(ErrorCode.CHECKSUM_MISMATCH)   # no record of this key fits the slice
        if dst_len < vlen:
            return int(ErrorCode.INVALID_PARAMS)
        # A stale segment table (the node restarted under the same name) gets one refresh
        # and retry.
        for attempt in (0, 1):
            try:
                endpoint, base, size = self._where(sl.segment, refresh=attempt == 1)
            except StoreError:
                return int(ErrorCode.TRANSFER_FAIL)
            if sl.offset + sl.length > size:
                continue
            try:
                code = self.engine.wait_codes(self.engine.submit_records(
                    endpoint, (_addr(dst),), (base + sl.offset,), (vlen,), (kb,), dst))[0]
            except StoreError:
                code = int(ErrorCode.TRANSFER_FAIL)
            if code == 0:
                return vlen
            if code == ErrorCode.CHECKSUM_MISMATCH:
                return code
            # The peer may be a new process behind the same name: reopen it for the retry.
            self.engine.disconnect(endpoint)
        return int(ErrorCode.TRANSFER_FAIL)

    # ---- striped replicas: one record per slice, moved in parallel across nodes ----------------
    def write_striped(self, kb: bytes, replicas: list[Replica], src: Any, n: int, epoch: int,
                      flags: int) -> None:
        """One record per stripe (its own key), all of every replica's stripes submitted
        before any is waited on; each stripe's CRC is taken by the engine as it sends."""
        key = kb.decode("utf-8", "surrogatepass")
        jobs = []
        base = _addr(src)
        for r, replica in enumerate(replicas):
            at = 0
            for i, sl in enumerate(replica):
                skb = stripe_key(key, r, i, len(replica), n).encode("utf-8", "surrogatepass")
                part = sl.length - header_size(len(skb))
                jobs.append((sl, skb, base + at, part))
                at += part
            if at != n:
                raise StoreError(f"stripes hold {at} bytes, value has {n}", ErrorCode.INVALID_WRITE)
        self._write_records(jobs, epoch, flags)

    def read_striped(self, key: str, look: Lookup, dst: Any, dst_len: int) -> int:
        """Value length, or a negative code; tries each replica until one verifies."""
        if dst_len < look.size:
            return int(ErrorCode.INVALID_PARAMS)
        code = int(ErrorCode.CHECKSUM_MISMATCH)
        for replica in look.replicas:
            hdrs, jobs, at = [], [], 0
            for i, sl in enumerate(replica):
                hlen = header_size(len(stripe_key(key, 0, i, len(replica), look.size).encode(
                    "utf-8", "surrogatepass")))
                hb = ffi.from_buffer(bytearray(hlen))
                part = sl.length - hlen
                hdrs.append((hb, hlen, part, at, i))
                jobs.append((sl, [(_addr(hb), 0, hlen), (_addr(dst) + at, hlen, part)]))
                at += part
            try:
                self._parallel(READ, jobs)
            except StoreError:
                code = int(ErrorCode.TRANSFER_FAIL)
                continue
            if at == look.size and all(self._stripe_ok(key, look, len(replica), dst, *h)
                                       for h in hdrs):
                return look.size
        return code

    @staticmethod
    def _stripe_ok(key: str, look: Lookup, k: int, dst: Any, hb: Any, hlen: int, part: int,
                   at: int, i: int) -> bool:
        info = ffi.new("mcs_rec_info *")
        # check_split reads exactly hlen header bytes, whatever a corrupt header claims.
        if lib.mcs_rec_check_split(hb, hlen, part, ffi.NULL, 0, info) != 0:
            return False
        parsed = parse_stripe_key(bytes(ffi.buffer(hb, hlen)[FIXED_SIZE:]).rstrip(b"\0")
                                  .decode("utf-8", "surrogatepass"))
        if parsed is None or parsed[0] != key or parsed[2:] != (i, k, look.size):
            return False
        return lib.mcs_crc32c(0, dst + at, part) == info.value_crc

    def _parallel(self, op: int, jobs: list[tuple[Slice, list]]) -> None:
        """Submit every slice's batch first (to different nodes), then wait for all."""
        pending = []
        try:
            for sl, parts in jobs:
                endpoint, base, size = self._where(sl.segment)
                if sl.offset + sl.length > size:
                    raise TransferFailed(f"slice {sl} lies outside segment {sl.segment}")
                pending.append(self.engine.submit(
                    endpoint, op, [p[0] for p in parts], [base + sl.offset + p[1] for p in parts],
                    [p[2] for p in parts]))
        finally:
            statuses = [self.engine.wait(bid) for bid in pending]
        if len(pending) < len(jobs) or any(x.state != "completed" for st in statuses for x in st):
            raise TransferFailed("a stripe transfer failed")


    # ---- batches: one transfer batch per node for all keys, then verification -------------------
    def batch_get(self, store: Any, pairs: list, looks: list) -> list:
        out: list[Any] = [None] * len(pairs)
        items = []
        for i, ((key, kb), look) in enumerate(zip(pairs, looks)):
            if look is not None:
                out[i] = _new_bytes(None, look.size)
                items.append((i, key, kb, look, ffi.from_buffer(out[i]), look.size))
        for i, n in self._read_many(store, items).items():
            if n < 0:
                out[i] = None
        return out

    def batch_get_into(self, store: Any, pairs: list, looks: list, bufs: Sequence[Any],
                       sizes: Sequence[int] | None) -> list[int]:
        out = [0] * len(pairs)
        items = []
        for i, ((key, kb), look) in enumerate(zip(pairs, looks)):
            if look is None:
                out[i] = int(ErrorCode.OBJECT_NOT_FOUND)
                continue
            buf, size = bufs[i], sizes[i] if sizes is not None else None
            try:
                if type(buf) is int and type(size) is int and buf > 0 and size >= 0:
                    store._check_registered(buf, size)   # a raw address: no Region needed
                    ptr = buf
                else:
                    dst = store._zc_region(buf, size, True)
                    ptr, size = dst.ptr, dst.size
            except StoreError as e:
                out[i] = int(e.code)
                continue
            if size < look.size:
                out[i] = int(ErrorCode.INVALID_PARAMS)
                continue
            items.append((i, key, kb, look, ptr, size))
        out_map = self._read_many(store, items)
        for i, n in out_map.items():
            out[i] = n
        return out

    def _read_many(self, store: Any, items: list) -> dict[int, int]:
        """Read many single-slice records: one batch of record reads per node (the engine
        checks each record as it arrives), all submitted before any is waited on; anything
        that fails goes through Store's per-key path (which tries the other replicas and
        decides between TransferFailed and a corrupt object)."""
        result: dict[int, int] = {}
        by_peer: dict[str, list] = {}
        slow = []
        local = store._segments
        table = self._table
        for it in items:
            i, key, kb, look, dst, dst_len = it
            reps = look.replicas
            if look.tier != "dram" or not reps or len(reps[0]) != 1 \
                    or reps[0][0].segment in local:
                slow.append(it)
                continue
            sl = reps[0][0]
            d = table.get(sl.segment)
            if d is None:
                try:
                    d = self._where(sl.segment)
                except StoreError:
                    slow.append(it)
                    continue
                table = self._table
            endpoint, base, size = d
            vlen = sl.length - (FIXED_SIZE + len(kb) + 63) // 64 * 64   # codec.header_size
            if vlen <= 0 or vlen > dst_len or sl.offset + sl.length > size:
                slow.append(it)
                continue
            by_peer.setdefault(endpoint, []).append(
                (it, dst if type(dst) is int else _addr(dst), base + sl.offset, vlen))
        batches = []
        for endpoint, jobs in by_peer.items():
            for k in range(0, len(jobs), BATCH_JOBS):
                chunk = jobs[k:k + BATCH_JOBS]
                try:
                    bid = self.engine.submit_records(
                        endpoint, [j[1] for j in chunk], [j[2] for j in chunk],
                        [j[3] for j in chunk], [j[0][2] for j in chunk],
                        [j[0][4] for j in chunk])
                    batches.append((bid, chunk))
                except StoreError:
                    slow.extend(job[0] for job in chunk)
        for bid, chunk in batches:
            try:
                codes = self.engine.wait_codes(bid)
            except StoreError:
                slow.extend(job[0] for job in chunk)
                continue
            for job, code in zip(chunk, codes):
                if code == 0:
                    result[job[0][0]] = job[3]
                else:
                    slow.append(job[0])
        for i, key, kb, look, dst, dst_len in slow:
            if type(dst) is int:
                dst = ffi.cast("char *", dst)
            try:
                result[i] = store._read_replicas(key, kb, look, dst, dst_len)
            except StoreError as e:
                result[i] = int(e.code)
        return result


def _as_rpc_error(method: str, last: StoreError | None, window: int) -> StoreError:
    """The error a call that found no leader in time raises: RpcTimeout/RpcFailed as they
    came, and "not ready" (masters up, none leading) as RpcFailed (-900)."""
    if last is None:
        return RpcTimeout(f"{method}: no master answered within {window} ms")
    if isinstance(last, (RpcFailed, RpcTimeout)):
        return last
    return RpcFailed(f"{method}: no leader master: {last}")


def _addr(p: Any) -> int:
    return int(ffi.cast("uintptr_t", p))


def master_addresses(cfg: Config) -> list[str]:
    """Explicit master address(es); "etcd" (or none with an etcd metadata server) means: ask etcd."""
    addr = cfg.master_server_addr
    if addr in ("", "etcd"):
        return []
    return [a.strip() for a in addr.split(",") if a.strip()]


def leader_resolve_for(cfg: Config) -> Callable[[], str | None] | None:
    """With metadata_server="etcd://h:p[,h:p]", a function naming the current leader."""
    if not cfg.metadata_server.startswith("etcd://"):
        return None
    from ..meta.etcd import leader_resolver

    # etcd asked with at most a quarter of the call's timeout, so a hung etcd cannot eat it.
    return leader_resolver(cfg.metadata_server, cfg.cluster_id,
                           timeout_s=min(1.0, max(0.1, cfg.rpc_timeout_ms / 4000.0)))


class ClusterSession:
    """Everything a cluster-mode Store holds besides its local segments."""

    def __init__(self, cfg: Config) -> None:
        from ..transfer import TransferEngine

        self.master = MasterClient(master_addresses(cfg), cfg.rpc_timeout_ms, cfg.auth_token,
                                   leader_resolve_for(cfg))
        host = cfg.local_hostname.split(":")[0] or "127.0.0.1"
        # MOONCAKE_SHM=0 forces tcp even on the same host (benchmarks of the cross-host path).
        self.engine = TransferEngine(host if cfg.global_segment_size > 0 else None,
                                     auth_token=cfg.auth_token or None,
                                     timeout_ms=max(1000, cfg.rpc_timeout_ms),
                                     use_shm=os.environ.get("MOONCAKE_SHM", "1") != "0")
        self.index = RemoteIndex(self.master)
        self.index.local_host = host
        self.data = RemoteData(self.master, self.engine)
        self.agent = None
        self.membership = None
        self.hostname = self.engine.get_local_hostname() if cfg.global_segment_size > 0 else \
            f"{host}:0"

    def contribute(self, segments: dict, cfg: Config) -> None:
        """Offer this client's segment(s) to the cluster, like a node."""
        from ..node.agent import Mounted, NodeAgent

        mounted = [Mounted(name, seg) for name, seg in segments.items()]
        from ..node.server import join_etcd

        self.index.local_segment = self.hostname
        self.agent = NodeAgent(self.master, self.engine, mounted, cfg.heartbeat_ms)
        self.membership = join_etcd(cfg, self.agent)
        self.agent.register()   # fail now, loudly, if the master is not there
        self.agent.start()

    @staticmethod
    def batch_put(store: Any, keys: Sequence[Any], make_region: Callable[[int], Any],
                  config: ReplicateConfig | None, upsert: bool, flags: int = 0) -> list[int]:
        return batch_put(store, keys, make_region, config, upsert, flags)

    def close(self) -> None:
        self.index.release_reservation()
        if self.membership is not None:
            self.membership.close()
        if self.agent is not None:
            self.agent.close()
        self.master.close()
        self.engine.close()
