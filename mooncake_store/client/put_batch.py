"""Cluster-mode puts beyond the plain single-key path.

- batch_put: many keys in three steps whatever the batch size (one batch_put_start RPC,
  the writes, one batch_put_end RPC, one batch_put_revoke for writes that failed).
- put_reserved / reserved_put_size: a small put written into the slice the master reserved
  for this client at its previous put, named with one put_commit (master/reserve.py).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .._engine import ffi, lib
from ..codec import encode_header, header_size
from ..errors import InvalidParams, StoreError
from ..replica import ReplicateConfig
from ..transfer import WRITE


# A node's records go to the engine in batches of about this many bytes, each submitted as
# soon as it is built, so the first is on the wire while the next are checksummed.
CHUNK_BYTES = 4 << 20


def batch_put(store: Any, keys: Sequence[Any], make_region: Callable[[int], Any],
              config: ReplicateConfig | None, upsert: bool, flags: int = 0) -> list[int]:
    """Per key 0 or a negative code. Three control calls whatever the batch size: one
    batch_put_start, the writes (client/put_batch._Writes), one batch_put_end, and one
    batch_put_revoke for the keys whose write failed (they get the failure's code; the
    others are stored)."""
    pairs = store._keys(keys)
    out = [0] * len(pairs)
    regions: list[Any] = [None] * len(pairs)
    todo = []
    for i in range(len(pairs)):
        try:
            r = make_region(i)
            if r.size == 0:
                raise InvalidParams("value must not be empty")
            regions[i] = r
            todo.append(i)
        except StoreError as e:
            out[i] = int(e.code)
    if not todo:
        return out
    ix = store._index
    starts = ix.batch_put_start([pairs[i][0] for i in todo], [regions[i].size for i in todo],
                                config, upsert)
    writes = _Writes(store, flags)
    for i, (code, replicas) in zip(todo, starts):
        if code != 0:
            out[i] = code
        elif replicas is not None:   # None: the key exists, a put is a no-op
            writes.add(i, pairs[i][1], replicas, regions[i])
    written, failed = writes.run(out)
    if failed:
        ix.m.call("batch_put_revoke", [pairs[i][0] for i in failed])
    if written:
        for i, code in zip(written, ix.batch_put_end([pairs[i][0] for i in written], flags)):
            out[i] = code
    return out


class _Writes:
    """The writes of one batch put, every node's at once: each node's records go to the
    engine's stream threads in batches of CHUNK_BYTES, submitted as they are built (a
    record is checksummed right before, while its bytes are in cache), all waited for at
    the end. A record whose transfer failed is written again through
    Store._write_replicas (which refreshes the segment table and reconnects); only if that
    fails too does its key fail. Striped values and replicas in this client's own segments
    take that path directly."""

    def __init__(self, store: Any, flags: int) -> None:
        from .cluster import DIRECT_MIN   # cluster.py imports this module at its top

        self.direct_min = DIRECT_MIN
        self.store = store
        self.engine = store._remote.engine
        self.flags = flags
        self.records: list[tuple[int, bytes, list, Any]] = []
        self.order: list[tuple[str, int, int]] = []   # (endpoint, record, remote address)
        self.parts: dict[int, list] = {}     # record -> [(local buffer, offset, length)]
        self.bad: set[int] = set()           # records for the per-key path

    def add(self, i: int, kb: bytes, replicas: list, src: Any) -> None:
        self.records.append((i, kb, replicas, src))
        if len(replicas[0]) > 1 or any(r[0].segment in self.store._segments for r in replicas):
            self.bad.add(i)
            return
        try:
            places = [self._place(r[0]) for r in replicas]
        except StoreError:
            self.bad.add(i)
            return
        self.order.extend((endpoint, i, remote) for endpoint, remote in places)

    def _place(self, sl: Any) -> tuple[str, int]:
        endpoint, base, size = self.store._remote._where(sl.segment)
        if sl.offset + sl.length > size:
            raise StoreError(f"slice {sl} lies outside segment {sl.segment}")
        return endpoint, base + sl.offset

    def _parts(self, i: int, kb: bytes, length: int, src: Any) -> list | None:
        """The record's requests as (local buffer or address, offset in the record,
        length): the header built here and the value straight from the caller's memory,
        or (small values) both assembled in one staging record. None: it cannot be built."""
        got = self.parts.get(i)
        if got is not None:
            return got
        n, ptr = src.size, src.ptr
        # Header and staging go to the engine as objects (it keeps them alive until their
        # batch is done, even past a wait that timed out); the value as the caller's address.
        if n >= self.direct_min:
            hdr = encode_header(kb, n, lib.mcs_crc32c(0, ptr, n), self.store._epoch,
                                flags=self.flags)
            got = [(hdr, 0, len(hdr)), (_addr(ptr), len(hdr), n)]
        else:
            buf = bytearray(length)
            if lib.mcs_rec_write(ffi.from_buffer(buf), length, kb, len(kb), ptr, n,
                                 self.store._epoch, 0, self.flags, 0) < 0:
                return None   # the per-key path raises the error
            got = [(buf, 0, length)]
        self.parts[i] = got
        return got

    def _requests(self, jobs: list, by_index: dict) -> tuple[list, list]:
        """Engine requests for some records of one node, and [(record, count)]."""
        reqs, recs = [], []
        for i, remote in jobs:
            kb, replicas, src = by_index[i]
            try:
                parts = self._parts(i, kb, replicas[0][0].length, src)
            except StoreError:
                parts = None
            if parts is None:
                self.bad.add(i)
                continue
            reqs.extend((p[0], remote + p[1], p[2]) for p in parts)
            recs.append((i, len(parts)))
        return reqs, recs

    def _submit(self, endpoint: str, reqs: list, recs: list, sent: list) -> None:
        if not reqs:
            return
        try:
            bid = self.engine.submit(endpoint, WRITE, [r[0] for r in reqs],
                                     [r[1] for r in reqs], [r[2] for r in reqs])
        except StoreError:
            self.bad.update(i for i, _ in recs)
            return
        sent.append((bid, recs))

    def _collect(self, sent: list) -> None:
        for bid, recs in sent:
            try:
                st = self.engine.wait(bid)
            except StoreError:
                self.bad.update(i for i, _ in recs)
                continue
            at = 0
            for i, count in recs:
                if any(x.state != "completed" for x in st[at:at + count]):
                    self.bad.add(i)
                at += count

    def run(self, out: list[int]) -> tuple[list[int], list[int]]:
        """Write everything: (records written, records failed, their codes set in out)."""
        by_index = {i: (kb, replicas, src) for i, kb, replicas, src in self.records}
        sent: list = []
        filling: dict[str, list] = {}   # endpoint -> [jobs, bytes]
        try:
            for endpoint, i, remote in self.order:
                f = filling.setdefault(endpoint, [[], 0])
                f[0].append((i, remote))
                f[1] += by_index[i][2].size
                if f[1] >= CHUNK_BYTES:
                    del filling[endpoint]
                    self._submit(endpoint, *self._requests(f[0], by_index), sent)
            # The rest, largest first: a batch small enough for the inline lane runs in
            # this thread during submit, so it goes after those the streams carry.
            for endpoint, (jobs, _) in sorted(filling.items(), key=lambda kv: -kv[1][1]):
                self._submit(endpoint, *self._requests(jobs, by_index), sent)
        finally:
            # Waited for even on the way out of an exception: the engine reads the caller's
            # memory.
            self._collect(sent)
        written, failed = [], []
        for i, kb, replicas, src in self.records:
            if i in self.bad:
                try:
                    self.store._write_replicas(kb, replicas, src.ptr, src.size, self.flags)
                except StoreError as e:
                    out[i] = int(e.code)
                    failed.append(i)
                    continue
            written.append(i)
        return written, failed


# Values up to this size put through reservations (master/reserve.py keeps records up to
# RESERVE_MAX, which leaves room for the header of a long key).
RESERVED_PUT_MAX = 64 << 10
_PLAIN = ReplicateConfig()


def reserved_put_size(config: ReplicateConfig | None, n: int, kb: bytes) -> int:
    """The record size a put may place in a reservation, or 0: small values with the
    default placement only (one replica, no pins, no preferred segment)."""
    if n > RESERVED_PUT_MAX or not (config is None or config == _PLAIN):
        return 0
    return header_size(len(kb)) + n


def put_reserved(store: Any, key: str, kb: bytes, src: Any, record: int, upsert: bool,
                 flags: int) -> bool:
    """A put written into the held reservation and named by one put_commit. False: no
    reservation fits, or it was gone: the caller puts the normal way."""
    ix = store._index
    held = ix.take_reservation(record)
    if held is None:
        return False
    try:
        # The record only: the rest of the reserved block goes back at commit.
        sl = held[1][0][0]
        store._write_replicas(kb, [(sl._replace(length=record),)], src.ptr, src.size, flags)
    except StoreError:
        ix.drop_reservation(held)
        return False   # the node may have gone: the normal path finds another
    except BaseException:
        ix.drop_reservation(held)
        raise
    return ix.put_commit(held, key, src.size, flags, upsert, record) != 2


def _addr(p: Any) -> int:
    return int(ffi.cast("uintptr_t", p))
