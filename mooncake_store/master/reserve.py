"""Put reservations: a slice a client writes its next small value into before naming it.

A small put normally takes three round trips in a row (put_start, the write,
put_end). put_end may also ask for a reservation: a slice of one replica,
allocated now (never by evicting anything) and owned by that client. The
client's next put whose record fits writes the record there and sends one
put_commit, which names the slice (the object is visible to every client once
it answers) and hands out the next reservation: write + one round trip.

A reservation is held like a pending put: at most one per client, freed when
not committed within put_timeout_ms (a dead client leaks nothing), gone with
its segment. A late commit fails cleanly; the client then takes the normal
path and the bytes it wrote are never visible.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable, NamedTuple

from ..codec import header_size
from ..errors import InvalidParams
from ..replica import ReplicateConfig, Slice
from .objmeta import PIN_NONE, Obj

if TYPE_CHECKING:
    from .index import ObjectIndex, SegmentInfo

# Records up to this size may be reserved (a 64 KiB value and a long key).
RESERVE_MAX = (64 << 10) + 4096
# A client starts writing into a reservation at most this long after asking for it.
RESERVE_USE_MS = 100
# put_commit answers: the object is visible / the key existed (no-op, reservation kept) /
# the reservation is gone (expired, its segment left): put the normal way.
COMMITTED, EXISTED, GONE = 0, 1, 2
_PLAIN = ReplicateConfig()


class _Held(NamedTuple):
    owner: str
    seg: "SegmentInfo"      # the segment as mounted at grant time (a remount is another one)
    slice: Slice
    deadline: float


class Reservations:
    """Held reservations of one index; every method runs under the index lock."""

    def __init__(self, ix: "ObjectIndex") -> None:
        self.ix = ix
        self._held: dict[int, _Held] = {}
        self._owner: dict[str, int] = {}
        self._ids = itertools.count(1)
        # Set by the cluster master: whether a freed record whose tombstone is still queued
        # (master/tombstones.py) starts inside [offset, end) of a segment. A zap is skipped
        # once its line is allocated again, trusting the new owner to overwrite the old
        # header at once; a reservation may stay unwritten for put_timeout_ms (and its
        # unused tail never is written), so it never covers such a line.
        self.zap_due: Callable[[str, int, int], bool] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def grant_locked(self, owner: str, record: int, give_back: int, now: float
                     ) -> tuple[int, Slice] | None:
        """A new reservation of `record` bytes for `owner`, or None (the owner still holds
        one, the size is not small, or no segment has room without evicting)."""
        if type(owner) is not str or not owner or type(record) is not int \
                or not 0 < record <= RESERVE_MAX:
            return None
        held = self._held.get(self._owner.get(owner, 0))
        if held is not None and type(give_back) is int and give_back == self._owner[owner]:
            self._release_locked(give_back)
        elif held is not None and held.deadline <= now:
            self._release_locked(self._owner[owner])
        elif held is not None:
            return None   # the client may still be writing into it: never free it under it
        ix = self.ix
        segs = ix._candidate_segments(_PLAIN)
        got = ix._try_allocate(record, segs, 1) if segs else None
        if not got:
            return None
        seg = ix.segments[got[0][0].segment]
        # The block is rounded up to the allocator's alignment: all of it is usable.
        sl = got[0][0]._replace(length=seg.allocator.round(record))
        if self.zap_due is not None and self.zap_due(sl.segment, sl.offset, sl.offset + sl.length):
            seg.allocator.free(sl.offset, sl.length)   # as it was: nothing was written
            return None
        rid = next(self._ids)
        self._held[rid] = _Held(owner, seg, sl,
                                now + ix.config.put_timeout_ms / 1000.0)
        self._owner[owner] = rid
        return rid, sl

    def commit_locked(self, owner: str, rid: int, key: str, size: int, flags: int,
                      upsert: bool, now: float) -> int:
        """Name the reserved slice `key` (COMMITTED), keep it when the key exists (EXISTED),
        or GONE when the reservation no longer holds."""
        if type(flags) is not int or not 0 <= flags <= 0xFF:
            raise InvalidParams(f"flags must be an int in [0, 255] (a header byte), got {flags!r}")
        if type(size) is not int:
            raise InvalidParams(f"value size must be an int, got {type(size).__name__}")
        ix = self.ix
        ix._check_size(size)
        held = self._held.get(rid) if type(rid) is int else None
        if held is None or held.owner != owner:
            return GONE
        record = header_size(len(key.encode("utf-8", "surrogatepass"))) + size
        if held.deadline <= now or ix.segments.get(held.slice.segment) is not held.seg:
            # The client wrote its record there: the tombstone names that record's length,
            # so the node invalidates it and no rebuilt index ever finds it.
            self._release_locked(rid, min(record, held.slice.length))
            return GONE
        if record > held.slice.length:
            raise InvalidParams(f"record of {record} bytes does not fit the "
                                f"{held.slice.length}-byte reservation")
        if key in ix._pending or (not upsert and key in ix._objects):
            return EXISTED   # immutable: the first value stays; the client keeps the slice
        del self._held[rid]
        del self._owner[owner]
        sl = held.slice
        alloc = held.seg.allocator
        used, had = alloc.round(record), alloc.round(sl.length)
        if had > used:   # the unused tail goes back (freed like any slice: tombstones see it)
            ix._free_replicas([(Slice(sl.segment, sl.offset + used, had - used),)])
        obj = Obj(key, size, [(Slice(sl.segment, sl.offset, record),)], PIN_NONE, 0.0, 0.0)
        ix._publish_locked(obj, flags)
        ix.counters["reserved_puts"] += 1
        return COMMITTED

    def reclaim_locked(self, now: float) -> int:
        stale = [rid for rid, h in self._held.items() if h.deadline <= now]
        for rid in stale:
            self._release_locked(rid)
        return len(stale)

    def _release_locked(self, rid: int, written: int = 0) -> None:
        held = self._held.pop(rid)
        if self._owner.get(held.owner) == rid:
            del self._owner[held.owner]
        # Only into the allocator it came from: a segment remounted under the same name
        # has a new one, whose blocks this slice says nothing about.
        if self.ix.segments.get(held.slice.segment) is not held.seg:
            return
        sl = held.slice
        if not written:
            self.ix._free_replicas([(sl,)])
            return
        # Freed as the record the client wrote there, so its tombstone names that length.
        held.seg.allocator.free(sl.offset, sl.length)
        if self.ix.on_free is not None:
            self.ix.on_free(sl._replace(length=written))
            used = held.seg.allocator.round(written)
            if sl.length > used:
                self.ix.on_free(Slice(sl.segment, sl.offset + used, sl.length - used))
