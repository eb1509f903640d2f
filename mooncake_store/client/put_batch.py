"""Cluster-mode puts beyond the plain single-key path.

- batch_put: many keys in three steps whatever the batch size (one batch_put_start RPC,
  the writes, one batch_put_end RPC, one batch_put_revoke for writes that failed).
  A batch with the default placement whose values are all small (any size while the
  cluster has one DRAM segment and this client holds it) takes one block of its exact
  size instead (batch_put_reserve, master/reserve.py), writes its records back to back
  into it (into this client's own segment directly, else as one transfer) and names them
  all with one batch_put_commit: no per-key allocation or pending entry on the master.
- put_reserved / reserved_put_size: a small put written into the slice the master reserved
  for this client at its previous put, named with one put_commit (master/reserve.py).
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Sequence

from .._engine import ffi, lib
from ..codec import encode_header, header_size
from ..errors import ErrorCode, InvalidParams, StoreError
from ..replica import ReplicateConfig, Slice
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
    plan = _block_plan(store, pairs, regions, todo, config)
    if plan is not None and _put_block(store, plan, pairs, regions, todo, out, upsert, flags):
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


# ---- block reservations: a batch of small puts as one block and one commit -----------------
# A batch goes through a block only when its records fit in one (master/reserve.py BLOCK_MAX).
BLOCK_MAX = 64 << 20
# After a refusal, batches take the normal path this long before asking for a block again.
BLOCK_RETRY_S = 1.0
_OWNER_LOCK = threading.Lock()


class _BlockPlan:
    """The records (header + value bytes, in batch order) one eligible batch lays out back
    to back in its block, each rounded up to the allocator's alignment."""

    def __init__(self, owner: str, records: list[int]) -> None:
        self.owner = owner
        self.records = records
        self._sizes: dict[int, int] = {}

    def size(self, align: int = 64) -> int:
        got = self._sizes.get(align)
        if got is None:
            mask = align - 1
            got = self._sizes[align] = sum((r + mask) & ~mask for r in self.records)
        return got


def _block_plan(store: Any, pairs: list, regions: list, todo: list[int],
                config: ReplicateConfig | None) -> _BlockPlan | None:
    """A plan when the batch may go through a block: default placement, all records in
    one block, and every value small unless this client holds a segment (the block then
    is in it: the cluster has no other; a remote block is assembled here first, where
    large values go better straight from the caller's memory)."""
    if not (config is None or config == _PLAIN):
        return None
    limit = BLOCK_MAX if store._segments else RESERVED_PUT_MAX
    records = []
    for i in todo:
        n = regions[i].size
        if n > limit:
            return None
        records.append(header_size(len(pairs[i][1])) + n)
    base = getattr(store, "_block_owner", None)
    if base is None:
        with _OWNER_LOCK:
            base = getattr(store, "_block_owner", None)
            if base is None:
                base = store._block_owner = uuid.uuid4().hex
    # One owner per thread: the master holds at most one block per owner, and a thread
    # has one batch in flight (single puts keep their own reservation apart).
    plan = _BlockPlan(f"{base}/batch/{threading.get_ident()}", records)
    return plan if plan.size() <= BLOCK_MAX else None


def _put_block(store: Any, plan: _BlockPlan, pairs: list, regions: list, todo: list[int],
               out: list[int], upsert: bool, flags: int) -> bool:
    """The batch written into a block of its exact size and named with one
    batch_put_commit. False: no block (no room even by evicting), or the master no longer
    holds it: the caller puts the normal way."""
    largest = max(regions[i].size for i in todo)
    # Pauses after a refusal: one for every batch (no room even by evicting), one for those
    # with large values only (refused while the cluster has several DRAM segments).
    pause = "_block_off_until" if largest <= RESERVED_PUT_MAX else "_block_big_off_until"
    now = time.monotonic()
    if now < getattr(store, "_block_off_until", 0.0) or now < getattr(store, pause, 0.0):
        return False
    m = store._index.m
    got = m.call("batch_put_reserve", plan.owner, plan.size(), 0, largest, plan.records)
    if not got:
        setattr(store, pause, time.monotonic() + BLOCK_RETRY_S)
        return False
    rid, w, _use_ms, align = got
    sl = Slice(w[0], w[1], w[2])
    names, sizes = [pairs[i][0] for i in todo], [regions[i].size for i in todo]
    if plan.size(align) > sl.length:   # another alignment than assumed: give it back
        m.call("batch_put_commit", plan.owner, rid, [], [], flags, upsert, True)
        return False
    try:
        _write_block(store, sl, plan, pairs, regions, todo, align, flags)
    except StoreError:
        # The node may have gone: give the block back (what may have landed is tombstoned)
        # and let the normal path find another.
        m.call("batch_put_commit", plan.owner, rid, names, sizes, flags, upsert, True)
        return False
    except BaseException:
        m.call("batch_put_commit", plan.owner, rid, names, sizes, flags, upsert, True)
        raise
    codes = m.call("batch_put_commit", plan.owner, rid, names, sizes, flags, upsert)
    if type(codes) is not list:
        return False   # GONE: the master freed the block (and tombstoned what we wrote)
    for i, code in zip(todo, codes):
        out[i] = code if code < 0 else 0   # EXISTED: the first value stays, as put_start's None
    return True


def _write_block(store: Any, sl: Slice, plan: _BlockPlan, pairs: list, regions: list,
                 todo: list[int], align: int, flags: int) -> None:
    """Every record of the batch, back to back from the block's start: straight into this
    client's own segment, else assembled here and sent in one transfer."""
    used = plan.size(align)
    seg = store._segments.get(sl.segment)
    if seg is not None:
        if sl.offset + used > seg.size:
            raise StoreError(f"block {sl} lies outside segment {sl.segment}")
        base, staging = seg.ptr + sl.offset, None
    else:
        staging = bytearray(used)
        base = ffi.from_buffer(staging)
    epoch, at, mask = store._epoch, 0, align - 1
    write = lib.mcs_rec_write
    for i, rec in zip(todo, plan.records):
        kb, src = pairs[i][1], regions[i]
        if write(base + at, rec, kb, len(kb), src.ptr, src.size, epoch, 0, flags, 0) < 0:
            raise StoreError("record write failed", ErrorCode.INVALID_WRITE)
        at += (rec + mask) & ~mask
    if staging is not None:
        store._remote._xfer(Slice(sl.segment, sl.offset, used), WRITE, [(_addr(base), 0, used)])


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


# Batch puts of values up to this size go through a block from a segment-less client, or
# while the cluster has several DRAM segments (master/reserve.py BLOCK_SPREAD_VALUE_MAX);
# larger ones go better straight from the caller's memory, put by put.
RESERVED_PUT_MAX = 64 << 10
# Single puts of values up to this size go through reservations (master/reserve.py keeps
# records up to RESERVE_MAX, which leaves room for the header of a long key).
RESERVED_SINGLE_MAX = 4 << 20
_PLAIN = ReplicateConfig()


def reserved_put_size(config: ReplicateConfig | None, n: int, kb: bytes) -> int:
    """The record size a put may place in a reservation, or 0: values up to 4 MiB with the
    default placement only (one replica, no pins, no preferred segment)."""
    if n > RESERVED_SINGLE_MAX or not (config is None or config == _PLAIN):
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
