"""`TransferEngine`: the Python face of the C transfer engine (csrc/engine.c).

The Mooncake-style methods return int codes (0 or a negative ErrorCode); the
Pythonic ones (`read`, `write`, `submit`, `wait`) raise typed exceptions. Every
byte moves in C with the GIL released; Python only builds request arrays.
"""
from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from .._engine import ffi, lib
from ..errors import ErrorCode, InvalidParams, StoreError, TransferFailed, error_for
from ._buffers import as_address

log = logging.getLogger("mooncake_store.transfer")

READ, WRITE = lib.MCS_OP_READ, lib.MCS_OP_WRITE
AUTH_FAILED = lib.MCS_E_AUTH  # engine-specific code (-810): handshake refused
STATES = {lib.MCS_ST_PENDING: "pending", lib.MCS_ST_COMPLETED: "completed",
          lib.MCS_ST_FAILED: "failed", lib.MCS_ST_TIMEOUT: "timeout"}
TRANSPORTS = {lib.MCS_TP_LOCAL: "local", lib.MCS_TP_SHM: "shm", lib.MCS_TP_TCP: "tcp",
              lib.MCS_TP_RDMA: "rdma"}

_rdma_lock = threading.Lock()
_rdma_logged = False


class AuthFailed(TransferFailed, PermissionError):
    """The peer refused our handshake, or could not prove it holds the secret."""


def _raise(code: int, what: str) -> None:
    msg = f"{what}: {ffi.string(lib.mcs_strerror(code)).decode()} ({code})"
    if code == AUTH_FAILED:
        raise AuthFailed(msg)
    raise error_for(code, msg)


def _flags(inline: bool) -> int:
    return 0 if inline else lib.MCS_SUBMIT_NO_INLINE


def _record_count(values: Sequence, remotes: Sequence, value_lens: Sequence,
                  keys: Sequence) -> int:
    n = len(values)
    if not (n == len(remotes) == len(value_lens) == len(keys)) or n == 0:
        raise InvalidParams("values, remotes, value_lens and keys must be non-empty and "
                            "of equal length")
    return n


def _fill_records(reqs: Any, values: Sequence[int], remotes: Sequence[int],
                  value_lens: Sequence[int], keys: Sequence[bytes]) -> list:
    """The fields record reads and writes share. Returns the key buffers the requests
    point into: the caller keeps them alive until the submit (which copies them)."""
    kc = [ffi.from_buffer(k) for k in keys]
    for i, k in enumerate(kc):
        r = reqs[i]
        r.value, r.remote, r.value_len = values[i], remotes[i], value_lens[i]
        r.key, r.key_len = k, len(k)
    return kc


def rdma_probe() -> tuple[int, str]:
    """(device count or negative errno, reason) from ibv_get_device_list."""
    msg = ffi.new("char[256]")
    n = lib.mcs_rdma_probe(msg, 256)
    return n, ffi.string(msg).decode(errors="replace")


def _log_once(msg: str, *args: Any) -> None:
    global _rdma_logged
    with _rdma_lock:
        if not _rdma_logged:
            _rdma_logged = True
            log.warning(msg, *args)


def split_target(target: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    if not isinstance(target, str) or ":" not in target:
        raise InvalidParams(f"peer must be 'host:port', got {target!r}")
    host, _, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        p = int(port)
    except ValueError:
        raise InvalidParams(f"peer port is not a number in {target!r}") from None
    if not host or not 0 < p < 65536:
        raise InvalidParams(f"peer must be 'host:port' with a port in 1..65535, got {target!r}")
    return host, p


def _split_local(name: str) -> tuple[str, int]:
    """'host', 'host:port' (port 0 = any) or '[v6]:port' -> (host, port)."""
    if not isinstance(name, str):
        raise InvalidParams(f"local_hostname must be a str, got {name!r}")
    host, port = name, "0"
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "0"
    elif name.count(":") == 1:
        host, port = name.split(":")
    if not port.isdigit() or int(port) > 65535:
        raise InvalidParams(f"bad port in local_hostname {name!r}")
    return host or "127.0.0.1", int(port)


@dataclass(frozen=True)
class RequestStatus:
    state: str        # pending | completed | failed | timeout
    code: int         # 0 or a negative ErrorCode (-810: auth)
    bytes: int        # bytes moved


class TransferEngine:
    """One engine per process (or per role). Pass `local_hostname` to start at once::

        with TransferEngine("127.0.0.1") as te:          # serves on an ephemeral port
            te.register_memory(arr.ctypes.data, arr.nbytes)
            te.transfer_sync_read("127.0.0.1:12345", dst, remote_addr, n)
    """

    def __init__(self, local_hostname: str | None = None, metadata_server: str = "P2PHANDSHAKE",
                 protocol: str = "tcp", device_name: str = "", *, auth_token: str | bytes | None = None,
                 streams: int = 4, window: int = 8, slice_bytes: int = 1 << 20,
                 timeout_ms: int = 30_000, sockbuf: int = 0, use_shm: bool = True) -> None:
        for name, v, lo in (("streams", streams, 1), ("window", window, 1),
                            ("slice_bytes", slice_bytes, 4096), ("timeout_ms", timeout_ms, 1)):
            if not isinstance(v, int) or v < lo:
                raise InvalidParams(f"{name} must be an int >= {lo}, got {v!r}")
        if auth_token is None:
            auth_token = os.environ.get("MOONCAKE_AUTH_TOKEN", "")
        secret = auth_token.encode() if isinstance(auth_token, str) else bytes(auth_token)
        if len(secret) > 256:
            raise InvalidParams("auth_token must be at most 256 bytes")
        opts = ffi.new("mcs_engine_opts *")
        lib.mcs_engine_opts_default(opts)
        opts.streams, opts.window, opts.slice_bytes = streams, window, slice_bytes
        opts.timeout_ms, opts.sockbuf = timeout_ms, sockbuf
        self._secret = ffi.new("uint8_t[]", secret) if secret else ffi.NULL
        opts.secret, opts.secret_len = self._secret, len(secret)
        self._e = lib.mcs_engine_create(opts)
        if self._e == ffi.NULL:
            raise InvalidParams("could not create the transfer engine (bad options)")
        self._lock = threading.Lock()
        self._peers: dict[str, int] = {}
        self._managed: dict[int, tuple[mmap.mmap, int, Any]] = {}
        self._batch_sizes: dict[int, int] = {}
        self._keep: dict[int, list] = {}
        self._use_shm = use_shm
        self._timeout_ms = timeout_ms
        self.hostname = ""
        self.port = 0
        self.protocol = "tcp"
        if local_hostname is not None:
            rc = self.initialize(local_hostname, metadata_server, protocol, device_name)
            if rc != 0:
                self.close()
                _raise(rc, f"cannot listen on {local_hostname}")

    # ------------------------------------------------------------ lifecycle
    def initialize(self, local_hostname: str, metadata_server: str = "P2PHANDSHAKE",
                   protocol: str = "tcp", device_name: str = "") -> int:
        """Start the server on local_hostname ('host' or 'host:port'; port 0/absent = any)."""
        self._check_open()
        if protocol not in ("tcp", "rdma", "shm"):
            return ErrorCode.INVALID_PARAMS
        self.protocol = self._enable_rdma(device_name) if protocol == "rdma" else protocol
        host, port = _split_local(local_hostname)
        bound = ffi.new("int *")
        rc = lib.mcs_listen(self._e, host.encode(), port, bound)
        if rc == 0:
            self.hostname, self.port = host, bound[0]
        return rc

    def _enable_rdma(self, device_name: str) -> str:
        """rdma when a device exists and opens; otherwise say so once per process, use tcp."""
        n, why = rdma_probe()
        if n <= 0:
            _log_once("no RDMA device; using tcp (%s)", why)
            return "tcp"
        dev = (device_name or "").split(",")[0].strip()
        rc = lib.mcs_rdma_enable(self._e, dev.encode())
        if rc != 0:
            _log_once("RDMA device present (%s) but %r could not be opened; using tcp", why, dev)
            return "tcp"
        return "rdma"

    def get_rpc_port(self) -> int:
        return self.port

    def get_local_hostname(self) -> str:
        return f"{self.hostname}:{self.port}"

    def close(self) -> None:
        """Stop the server and every peer (in-flight requests fail), unmap everything."""
        e, self._e = getattr(self, "_e", ffi.NULL), ffi.NULL
        if e == ffi.NULL:
            return
        lib.mcs_engine_destroy(e)
        for m, fd, cdata in self._managed.values():
            ffi.release(cdata)
            m.close()
            os.close(fd)
        self._managed.clear()
        self._peers.clear()

    def __enter__(self) -> "TransferEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def _check_open(self) -> None:
        if self._e == ffi.NULL:
            raise StoreError("transfer engine is closed", ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS)

    # --------------------------------------------------------- registration
    def register_memory(self, addr: Any, size: int | None = None, *, fd: int = -1,
                        fd_offset: int = 0) -> int:
        """Let peers read/write [addr, addr+size). `fd` (a memfd holding the
        memory at fd_offset) lets same-host peers map it and copy directly."""
        self._check_open()
        a, n, _ = as_address(addr, size)
        return lib.mcs_register_fd(self._e, a, size if size is not None else n, fd, fd_offset)

    def unregister_memory(self, addr: Any) -> int:
        self._check_open()
        a = addr if isinstance(addr, int) else as_address(addr)[0]
        return lib.mcs_unregister(self._e, a)

    def batch_register_memory(self, addrs: Sequence[int], sizes: Sequence[int]) -> int:
        if len(addrs) != len(sizes):
            return ErrorCode.INVALID_PARAMS
        for a, n in zip(addrs, sizes):
            rc = self.register_memory(a, n)
            if rc != 0:
                return rc
        return 0

    def batch_unregister_memory(self, addrs: Sequence[int]) -> int:
        rcs = [self.unregister_memory(a) for a in addrs]
        return next((rc for rc in rcs if rc != 0), 0)

    def allocate_managed_buffer(self, length: int) -> int:
        """A registered, memfd-backed buffer (same-host peers map it); returns its address."""
        self._check_open()
        if not isinstance(length, int) or length <= 0:
            raise InvalidParams(f"length must be > 0, got {length!r}")
        fd = os.memfd_create("mcs-managed", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, length)
            m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        cdata = ffi.from_buffer(m)
        addr = int(ffi.cast("uintptr_t", cdata))
        rc = lib.mcs_register_fd(self._e, addr, length, fd, 0)
        if rc != 0:
            ffi.release(cdata)
            m.close()
            os.close(fd)
            _raise(rc, "register managed buffer")
        self._managed[addr] = (m, fd, cdata)
        return addr

    def free_managed_buffer(self, addr: int, length: int = 0) -> int:
        self._check_open()
        item = self._managed.pop(addr, None)
        if item is None:
            return ErrorCode.INVALID_PARAMS
        rc = lib.mcs_unregister(self._e, addr)
        m, fd, cdata = item
        ffi.release(cdata)
        m.close()
        os.close(fd)
        return rc

    # ---------------------------------------------------------------- peers
    def _peer(self, target: str) -> int:
        self._check_open()
        with self._lock:
            pid = self._peers.get(target)
            if pid is not None:
                return pid
            host, port = split_target(target)
            if self.port and port == self.port and host in (self.hostname, "127.0.0.1", "localhost"):
                pid = lib.mcs_peer_open_local(self._e)
            else:
                flags = 0 if self._use_shm else lib.MCS_PEER_NO_SHM
                pid = lib.mcs_peer_open(self._e, host.encode(), port, flags)
            if pid < 0:
                _raise(pid, f"cannot open peer {target}")
            self._peers[target] = pid
            return pid

    def connect(self, target: str) -> str:
        """Open the peer now (handshake, shm discovery); returns the transport used."""
        return self.transport(target)

    def transport(self, target: str) -> str:
        return TRANSPORTS.get(lib.mcs_peer_transport(self._e, self._peer(target)), "?")

    def disconnect(self, target: str) -> None:
        with self._lock:
            pid = self._peers.pop(target, None)
        if pid is not None:
            lib.mcs_peer_close(self._e, pid)

    # -------------------------------------------------------------- batches
    def submit(self, target: str, op: int, buffers: Sequence[Any], peer_addresses: Sequence[int],
               lengths: Sequence[int], inline: bool = True) -> int:
        """Submit a batch; returns its id. Raises for malformed calls. inline=False: never
        run it in this thread (a small tcp batch otherwise does, and returns done): for
        batches to several peers submitted before any is waited on."""
        n = len(buffers)
        if not (n == len(peer_addresses) == len(lengths)) or n == 0:
            raise InvalidParams("buffers, peer_addresses and lengths must be non-empty and of equal length")
        if op not in (READ, WRITE):
            raise InvalidParams(f"op must be READ or WRITE, got {op!r}")
        pid = self._peer(target)
        reqs = ffi.new("mcs_request[]", n)
        keep = []
        for i, (buf, ra, ln) in enumerate(zip(buffers, peer_addresses, lengths)):
            if not isinstance(ln, int) or ln <= 0:
                raise InvalidParams(f"length {i} must be > 0, got {ln!r}")
            if not isinstance(ra, int) or ra <= 0:
                raise InvalidParams(f"peer address {i} must be an int > 0, got {ra!r}")
            a, _, k = as_address(buf, ln, writable=(op == READ))
            keep.append(k)
            r = reqs[i]
            r.opcode, r.local, r.remote, r.length = op, a, ra, ln
        return self._submitted(lib.mcs_batch_submit(self._e, pid, reqs, n, _flags(inline)),
                               target, n, keep)

    def submit_records(self, target: str, values: Sequence[int], remotes: Sequence[int],
                       value_lens: Sequence[int], keys: Sequence[bytes], keep: Any = None,
                       inline: bool = True) -> int:
        """Submit record reads (csrc/record.h layout): record i starts at remotes[i] in the
        peer's memory, its header names keys[i] and its value (value_lens[i] bytes) lands at
        address values[i]. The engine checks each record as its bytes arrive: wait() /
        wait_codes() then report CHECKSUM_MISMATCH (-801) for one that fails. `keep`: what
        must stay alive while the engine writes into the values."""
        n = _record_count(values, remotes, value_lens, keys)
        pid = self._peer(target)
        reqs = ffi.new("mcs_rec_request[]", n)
        kc = _fill_records(reqs, values, remotes, value_lens, keys)
        bid = lib.mcs_batch_submit_rec(self._e, pid, reqs, n, _flags(inline))
        del kc   # the engine copied the keys at submit
        return self._submitted(bid, target, n, keep)

    def submit_record_writes(self, target: str, values: Sequence[int], remotes: Sequence[int],
                             value_lens: Sequence[int], keys: Sequence[bytes], epoch: int = 0,
                             flags: int | Sequence[int] = 0, keep: Any = None,
                             inline: bool = True) -> int:
        """Submit record writes (csrc/record.h layout), the mirror of submit_records:
        record i goes to remotes[i] in the peer's memory, its value (value_lens[i] bytes at
        address values[i]) then its header (keys[i], `epoch`, flags[i]) with the value's
        CRC32C, which the engine computes while sending the value. The header lands only
        after the whole value did: a record whose value fails gets no header. wait() /
        wait_codes() report each record. `keep`: what must stay alive while the engine
        reads the values."""
        n = _record_count(values, remotes, value_lens, keys)
        fl = [flags] * n if isinstance(flags, int) else list(flags)
        if len(fl) != n or not all(type(f) is int and 0 <= f < 256 for f in fl):
            raise InvalidParams("flags must be an int 0..255, or one per record")
        if type(epoch) is not int or not 0 <= epoch < 1 << 64:
            raise InvalidParams(f"epoch must be an int in 0..2**64-1, got {epoch!r}")
        pid = self._peer(target)
        reqs = ffi.new("mcs_recw_request[]", n)
        try:
            kc = _fill_records(reqs, values, remotes, value_lens, keys)
            for i in range(n):
                reqs[i].epoch, reqs[i].flags = epoch, fl[i]
        except (TypeError, OverflowError) as e:
            raise InvalidParams(f"bad record write: {e}") from None
        bid = lib.mcs_batch_submit_recw(self._e, pid, reqs, n, _flags(inline))
        del kc   # the engine copied the keys at submit
        return self._submitted(bid, target, n, keep)

    def _submitted(self, bid: int, target: str, n: int, keep: Any) -> int:
        if bid < 0:
            _raise(bid, f"submit to {target}")
        self._batch_sizes[bid] = n
        self._keep[bid] = keep  # buffers stay alive until the batch is freed
        return bid

    def wait_codes(self, batch_id: int, timeout_ms: int | None = None) -> list[int]:
        """wait(), as one code per request: 0, or a negative ErrorCode (pending at the
        timeout: RPC_TIMEOUT)."""
        return [0 if s.state == "completed" else int(s.code) or int(ErrorCode.RPC_TIMEOUT)
                for s in self.wait(batch_id, timeout_ms)]

    def wait(self, batch_id: int, timeout_ms: int | None = None) -> list[RequestStatus]:
        """Wait for a batch, free it, and return per-request statuses. Requests
        still pending at the timeout are reported as 'timeout'."""
        self._check_open()
        n = self._batch_sizes.get(batch_id)
        if n is None:
            raise InvalidParams(f"unknown batch id {batch_id}")
        t = self._timeout_ms * 2 if timeout_ms is None else timeout_ms
        lib.mcs_batch_wait(self._e, batch_id, t)
        st = self.status(batch_id)
        pending = any(s.state == "pending" for s in st)
        if not pending:
            self._batch_sizes.pop(batch_id, None)
            self._keep.pop(batch_id, None)
            lib.mcs_batch_free(self._e, batch_id)
            return st
        # Leave the batch registered: its slices still point at the caller's memory.
        return [RequestStatus("timeout", ErrorCode.RPC_TIMEOUT, s.bytes) if s.state == "pending" else s
                for s in st]

    def status(self, batch_id: int) -> list[RequestStatus]:
        n = self._batch_sizes.get(batch_id)
        if n is None:
            raise InvalidParams(f"unknown batch id {batch_id}")
        out = ffi.new("mcs_req_status[]", n)
        if lib.mcs_batch_status(self._e, batch_id, out, n) < 0:
            raise InvalidParams(f"unknown batch id {batch_id}")
        return [RequestStatus(STATES[o.state], o.code, o.bytes) for o in out]

    def _sync(self, target, op, buffers, peer_addresses, lengths) -> int:
        try:
            bid = self.submit(target, op, buffers, peer_addresses, lengths)
            st = self.wait(bid)
        except StoreError as e:
            return int(e.code) if not isinstance(e, AuthFailed) else AUTH_FAILED
        return next((s.code or ErrorCode.TRANSFER_FAIL for s in st if s.state != "completed"), 0)

    # ----------------------------------------------- Mooncake-style (codes)
    def transfer_sync_write(self, target_hostname: str, buffer: Any, peer_buffer_address: int,
                            length: int) -> int:
        return self._sync(target_hostname, WRITE, [buffer], [peer_buffer_address], [length])

    def transfer_sync_read(self, target_hostname: str, buffer: Any, peer_buffer_address: int,
                           length: int) -> int:
        return self._sync(target_hostname, READ, [buffer], [peer_buffer_address], [length])

    def batch_transfer_sync_write(self, target_hostname, buffers, peer_buffer_addresses, lengths) -> int:
        return self._sync(target_hostname, WRITE, buffers, peer_buffer_addresses, lengths)

    def batch_transfer_sync_read(self, target_hostname, buffers, peer_buffer_addresses, lengths) -> int:
        return self._sync(target_hostname, READ, buffers, peer_buffer_addresses, lengths)

    def _async(self, target, op, buffers, peer_addresses, lengths) -> int:
        try:
            return self.submit(target, op, buffers, peer_addresses, lengths)
        except StoreError as e:
            return int(e.code) if not isinstance(e, AuthFailed) else AUTH_FAILED

    def batch_transfer_async_write(self, target_hostname, buffers, peer_buffer_addresses, lengths) -> int:
        """Returns a batch id (> 0) or a negative code."""
        return self._async(target_hostname, WRITE, buffers, peer_buffer_addresses, lengths)

    def batch_transfer_async_read(self, target_hostname, buffers, peer_buffer_addresses, lengths) -> int:
        return self._async(target_hostname, READ, buffers, peer_buffer_addresses, lengths)

    def get_batch_transfer_status(self, batch_ids: Sequence[int], timeout_ms: int | None = None) -> int:
        """Wait for the batches; 0 when every request completed, else the first error code."""
        rc = 0
        for bid in batch_ids:
            try:
                st = self.wait(bid, timeout_ms)
            except StoreError as e:
                st, rc = [], rc or int(e.code)
            bad = next((s.code or ErrorCode.TRANSFER_FAIL for s in st if s.state != "completed"), 0)
            rc = rc or bad
        return rc

    # ------------------------------------------------------ Pythonic (raise)
    def write(self, target: str, buffer: Any, peer_address: int, length: int | None = None) -> None:
        self._run(target, WRITE, buffer, peer_address, length)

    def read(self, target: str, buffer: Any, peer_address: int, length: int | None = None) -> None:
        self._run(target, READ, buffer, peer_address, length)

    def _run(self, target, op, buffer, peer_address, length) -> None:
        if length is None:
            length = as_address(buffer)[1]
        st = self.wait(self.submit(target, op, [buffer], [peer_address], [length]))
        if st[0].state != "completed":
            _raise(st[0].code or ErrorCode.TRANSFER_FAIL, f"{'read' if op == READ else 'write'} {target}")

    def stats(self) -> dict[str, int]:
        """Server and registration counters (bad_requests counts refused requests)."""
        self._check_open()
        s = ffi.new("mcs_stats *")
        lib.mcs_engine_stats(self._e, s)
        return {k: getattr(s, k) for k in ("conns_accepted", "conns_active", "bad_requests",
                                          "auth_failures", "requests_served", "bytes_served",
                                          "regions", "registered_bytes", "shm_mappings")}

    def check_wire_header(self, header: bytes) -> int:
        """What the server would answer to this 40-byte request header (0 = valid)."""
        self._check_open()
        return lib.mcs_wire_check(self._e, header, len(header))
