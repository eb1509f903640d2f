"""Cluster-mode puts beyond the plain single-key path.

- batch_put: many keys in three steps whatever the batch size (one batch_put_start RPC,
  the writes, one batch_put_end RPC, one batch_put_revoke for writes that failed).
- put_reserved / reserved_put_size: a small put written into the slice the master reserved
  for this client at its previous put, named with one put_commit (master/reserve.py).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..codec import header_size
from ..errors import InvalidParams, StoreError
from ..replica import ReplicateConfig


def batch_put(store: Any, keys: Sequence[Any], make_region: Callable[[int], Any],
              config: ReplicateConfig | None, upsert: bool, flags: int = 0) -> list[int]:
    """A batch put in three steps whatever the batch size: one batch_put_start RPC, the
    writes, one batch_put_end RPC (and one batch_put_revoke for writes that failed)."""
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
    starts = store._index.batch_put_start([pairs[i][0] for i in todo],
                                          [regions[i].size for i in todo], config, upsert)
    written, failed = [], []
    for i, (code, replicas) in zip(todo, starts):
        if code != 0:
            out[i] = code
            continue
        if replicas is None:
            continue   # the key exists: a put is a no-op
        try:
            store._write_replicas(pairs[i][1], replicas, regions[i].ptr, regions[i].size, flags)
            written.append(i)
        except StoreError as e:
            out[i] = int(e.code)
            failed.append(pairs[i][0])
    if failed:
        store._index.m.call("batch_put_revoke", failed)
    if written:
        for i, code in zip(written, store._index.batch_put_end([pairs[i][0] for i in written],
                                                               flags)):
            out[i] = code
    return out


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
