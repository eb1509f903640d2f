"""Put reservations: a slice a client writes its next value into before naming it.

A put normally takes three round trips in a row (put_start, the write,
put_end). put_end may also ask for a reservation: a slice of one replica,
allocated now (never by evicting anything) and owned by that client. The
client's next put whose record fits writes the record there and sends one
put_commit, which names the slice (the object is visible to every client once
it answers) and hands out the next reservation: write + one round trip.

A reservation is held like a pending put: at most one per client, freed when
not committed within put_timeout_ms (a dead client leaks nothing), gone with
its segment. A late commit fails cleanly; the client then takes the normal
path and the bytes it wrote are never visible.

A batch of small puts takes a block instead (batch_put_reserve): one allocation
of exactly its records' size, owned by the client like a reservation but written
at once, like a put_start's slice. The client writes its records back to back
(each rounded to the allocator's alignment, so every line start of the block is
overwritten) and names them all with one batch_put_commit: per key the object is
published, or its record freed under a tombstone of its own length (the key
existed, or its size is refused). No per-key allocation or pending entry. A
block not committed in time, or revoked by the client, is freed with a
tombstone for every record the batch names.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from ..codec import header_size
from ..errors import InvalidParams, StoreError
from ..replica import ReplicateConfig, Slice
from .objmeta import _FLAGS_SHIFT, _LEN_SHIFT, _M48, _OFF_SHIFT, _SEG_SHIFT, PIN_NONE, Obj, seg_id

if TYPE_CHECKING:
    from .index import ObjectIndex, SegmentInfo
    from .tombstones import Tombstones

# Records up to this size may be reserved (a 4 MiB value, the default stripe size, and a
# long key). Larger values are striped or rare enough that a round trip more is noise; a
# 1 MiB put saves ~15% with one (docs/PERFORMANCE.md), and a client holds at most one.
RESERVE_MAX = (4 << 20) + 4096
# A batch put may take a block up to this large: its records are laid out one after another
# (each rounded to the allocator's alignment) and named with one batch_put_commit.
BLOCK_MAX = 64 << 20
# With several DRAM segments a batch takes a block only when none of its values is larger:
# the whole batch then lands on one segment (placed like one put, by free space) where
# the normal path would spread its keys. For small values the block is 1.4-2.2x faster
# (one allocation, no pending entries); and a batch is typically one request's new blocks
# of a prefix chain, whose later blocks are useless without the earlier ones, so a chain
# on one node loses nothing more to that node's failure than to any other's, where a chain
# spread over n nodes breaks when any of them fails. Over many batches the load still
# spreads in proportion to free space.
BLOCK_SPREAD_VALUE_MAX = 64 << 10
# A reservation is granted only in a segment with at least this many times its size free:
# a client holds one until its next put or put_timeout_ms, so idle ones (up to 4 MiB each)
# never take the last of a node's room, where puts would then evict for them.
RESERVE_ROOM = 16
# A client starts writing into a reservation at most this long after asking for it.
RESERVE_USE_MS = 100
# ... and commits it by the end of that window plus this grace and the time the record takes
# at COMMIT_MIN_RATE; a later commit answers GONE (the put takes the normal path). The space
# itself stays held until put_timeout_ms, since a slow write may still be landing in it, but
# once no commit can name it, zaps of old records under it may go out (Tombstones.take).
COMMIT_GRACE_S = 1.0
COMMIT_MIN_RATE = 50e6
# put_commit answers: the object is visible / the key existed (no-op, reservation kept) /
# the reservation is gone (expired, its segment left): put the normal way.
COMMITTED, EXISTED, GONE = 0, 1, 2
_PLAIN = ReplicateConfig()
# _UNWRITTEN: the tail of a reservation past the records written into it goes back to the
# allocator with no tombstone of its own: nothing was written there, so there is no new
# header to invalidate. Old headers there (records freed before the grant, whose zaps are
# still queued) keep their zaps: a zap is deferred, not skipped, while its line lies in a
# held reservation (Tombstones.take, ObjectIndex.unwritten_locked), and goes out once the
# tail is free. A tombstone for the tail only cost work, once per reserved put: a zap sent
# to the node and the tail's first line held out of the allocator until the node's next
# heartbeat (splitting the hole). Lent lines (Tombstones.no_room) in a freed tail are held
# again like those of any freed slice (_free_unwritten).


class _Held(NamedTuple):
    owner: str
    seg: "SegmentInfo"      # the segment as mounted at grant time (a remount is another one)
    slice: Slice
    deadline: float         # freed then (put_timeout_ms): no write can still be landing
    commit_by: float        # a commit after this answers GONE
    layout: tuple = ()      # a block's record lengths in order, as its client planned them


class Reservations:
    """Held reservations of one index; every method runs under the index lock."""

    def __init__(self, ix: "ObjectIndex") -> None:
        self.ix = ix
        self._held: dict[int, _Held] = {}
        self._owner: dict[str, int] = {}
        self._ids = itertools.count(1)
        # Set by the cluster master: the freed records whose tombstones are still queued
        # (master/tombstones.py), which hold lent lines again when a tail is freed here.
        self.zaps: "Tombstones | None" = None

    def __len__(self) -> int:
        return len(self._held)

    def grant_locked(self, owner: str, record: int, give_back: int, now: float,
                     limit: int = RESERVE_MAX, written_now: bool = False,
                     layout: tuple = ()) -> tuple[int, Slice] | None:
        """A new reservation of `record` bytes for `owner`, or None (the owner still holds
        one, the size is over `limit`, or no segment has RESERVE_ROOM times that free).
        written_now: the owner writes every byte of it at once, like a put_start's slice
        (a block for the batch in hand, of its exact size), so room is made for it as for
        a put_start (eviction included). Either kind may lie over freed records whose zaps
        are queued: they wait while it is held (Tombstones.take). layout: a block's record
        lengths, so that one its client never commits is freed under a tombstone per record
        (_release_locked)."""
        if type(owner) is not str or not owner or type(record) is not int \
                or not 0 < record <= limit:
            return None
        held = self._held.get(self._owner.get(owner, 0))
        if held is not None and type(give_back) is int and give_back == self._owner[owner]:
            self._release_locked(give_back)
        elif held is not None and held.deadline <= now:
            self._release_locked(self._owner[owner])
        elif held is not None:
            return None   # the client may still be writing into it: never free it under it
        ix = self.ix
        if written_now:
            try:
                got = ix._allocate(record, _PLAIN)
            except StoreError:
                return None
        else:
            segs = [s for s in ix._candidate_segments(_PLAIN)
                    if s.allocator.free_bytes >= RESERVE_ROOM * record]
            got = ix._try_allocate(record, segs, 1) if segs else None
        if not got:
            return None
        seg = ix.segments[got[0][0].segment]
        # The block is rounded up to the allocator's alignment: all of it is usable.
        sl = got[0][0]._replace(length=seg.allocator.round(record))
        rid = next(self._ids)
        deadline = now + ix.config.put_timeout_ms / 1000.0
        commit_by = now + RESERVE_USE_MS / 1000.0 + COMMIT_GRACE_S + sl.length / COMMIT_MIN_RATE
        self._held[rid] = _Held(owner, seg, sl, deadline, min(commit_by, deadline),
                                _fitting(layout, seg.allocator, sl.length))
        self._owner[owner] = rid
        return rid, sl

    def extents(self, segment: str) -> list[tuple[int, int, float]]:
        """(start, end, commit_by) of every held reservation and block in `segment`: slices
        a client may still be about to write, or never write."""
        return [(h.slice.offset, h.slice.offset + h.slice.length, h.commit_by)
                for h in self._held.values() if h.slice.segment == segment]

    def _free_unwritten(self, seg: "SegmentInfo", offset: int, length: int) -> None:
        """Back to the allocator with no tombstone (_UNWRITTEN)."""
        seg.allocator.free(offset, length)
        if self.zaps is not None:
            self.zaps.rehold_within(Slice(seg.name, offset, length))

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
        if held.commit_by <= now or ix.segments.get(held.slice.segment) is not held.seg:
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
        if had > used:
            self._free_unwritten(held.seg, sl.offset + used, had - used)
        obj = Obj(key, size, [(Slice(sl.segment, sl.offset, record),)], PIN_NONE, 0.0, 0.0)
        ix._publish_locked(obj, flags)
        ix.counters["reserved_puts"] += 1
        return COMMITTED

    def commit_many_locked(self, owner: str, rid: int, keys: list, sizes: list, flags: int,
                           upsert: bool, now: float, revoke: bool = False) -> list[int] | int:
        """Name the records a batch wrote one after another into its block: per key
        COMMITTED, EXISTED (its record is freed, the first value stays) or an error code, or
        GONE for all when the reservation no longer holds or the client revokes it (every
        record it names is then freed under its own tombstone)."""
        if type(flags) is not int or not 0 <= flags <= 0xFF:
            raise InvalidParams(f"flags must be an int in [0, 255] (a header byte), got {flags!r}")
        if type(keys) is not list or type(sizes) is not list or len(keys) != len(sizes) \
                or not (keys or revoke) or any(type(k) is not str for k in keys) \
                or any(type(n) is not int or n <= 0 for n in sizes):
            raise InvalidParams("batch commit needs equal, non-empty lists of str keys and "
                                "positive int sizes")
        held = self._held.get(rid) if type(rid) is int else None
        if held is None or held.owner != owner:
            return GONE
        ix, sl = self.ix, held.slice
        alloc = held.seg.allocator
        # The layout the client wrote: records back to back, each rounded to the alignment.
        records, at = _layout([header_size(len(k) if k.isascii() else
                                           len(k.encode("utf-8", "surrogatepass"))) + n
                               for k, n in zip(keys, sizes)], alloc)
        if revoke or held.commit_by <= now or ix.segments.get(sl.segment) is not held.seg:
            self._release_many_locked(rid, records if at <= sl.length else [])
            return GONE
        if at > sl.length:
            raise InvalidParams(f"records of {at} bytes do not fit the "
                                f"{sl.length}-byte reservation")
        del self._held[rid]
        del self._owner[owner]
        codes: list[int] = []
        dropped: list[Slice] = []
        max_value = ix.config.max_value_size
        pending, objects, publish = ix._pending, ix._objects, ix._publish_locked
        on_insert = ix.policy.on_insert
        seg, base = sl.segment, sl.offset
        sid = seg_id(seg)
        fresh = 0
        # Every record's slice bits fit the packed layout when the block's end does.
        packs = sid is not None and base + sl.length <= _M48
        loc = 0 if sid is None else flags << _FLAGS_SHIFT | (sid + 1) << _SEG_SHIFT
        new_obj = _new_obj
        for key, size, (off, rec) in zip(keys, sizes, records):
            if size > max_value:
                codes.append(int(InvalidParams.code))
                dropped.append(Slice(seg, base + off, rec))
            elif key in pending or (not upsert and key in objects):
                codes.append(EXISTED)   # immutable: the first value stays
                dropped.append(Slice(seg, base + off, rec))
            elif key in objects:   # an upsert: the old value goes (its lease kept)
                publish(_complete(key, size, flags, sid, seg, base + off, rec), flags)
                codes.append(COMMITTED)
            elif packs and size <= _M48:
                # _publish_locked for a key with no object, inline (the common case), and
                # its object built complete and packed as _complete does.
                obj = new_obj(Obj)
                obj.key, obj.lease_until, obj.pol, obj._x = key, 0.0, None, None
                obj._loc = size | loc | (base + off) << _OFF_SHIFT | rec << _LEN_SHIFT
                objects[key] = obj
                on_insert(key, size)
                fresh += 1
                codes.append(COMMITTED)
            else:
                objects[key] = _complete(key, size, flags, sid, seg, base + off, rec)
                on_insert(key, size)
                fresh += 1
                codes.append(COMMITTED)
        ix.counters["puts"] += fresh
        ix.counters["reserved_puts"] += codes.count(COMMITTED)
        # Written records no key names go back under a tombstone of their own length; the
        # unused tail with none (_UNWRITTEN).
        for part in dropped:
            alloc.free(part.offset, part.length)
            if ix.on_free is not None:
                ix.on_free(part)
        used = alloc.round(at)
        if sl.length > used:
            self._free_unwritten(held.seg, sl.offset + used, sl.length - used)
        return codes

    def _release_many_locked(self, rid: int, records: list[tuple[int, int]]) -> None:
        """A block freed as the records (offset in it, length) the client wrote there."""
        held = self._held[rid]
        if not records:
            self._release_locked(rid)
            return
        self._release_locked(rid, records[0][1])   # the first record and the rest of the block
        if self.ix.on_free is not None and self.ix.segments.get(held.slice.segment) is held.seg:
            sl = held.slice
            for off, rec in records[1:]:
                self.ix.on_free(Slice(sl.segment, sl.offset + off, rec))

    def release_locked(self, owner: str, rid: int) -> bool:
        """The owner gives `rid` back unwritten (a closing client): freed now, not after
        put_timeout_ms. False when it is not the owner's (gone, or someone else's)."""
        held = self._held.get(rid) if type(rid) is int else None
        if held is None or held.owner != owner:
            return False
        self._release_locked(rid)
        return True

    def reclaim_locked(self, now: float) -> int:
        stale = [rid for rid, h in self._held.items() if h.deadline <= now]
        for rid in stale:
            self._release_locked(rid)
        return len(stale)

    def _release_locked(self, rid: int, written: int = 0) -> None:
        held = self._held[rid]
        if not written and held.layout:
            # A block its client never committed (it died, or gave it back): a tombstone
            # for each record it planned, whether or not it got to write them.
            self._release_many_locked(rid, _layout(held.layout, held.seg.allocator)[0])
            return
        del self._held[rid]
        if self._owner.get(held.owner) == rid:
            del self._owner[held.owner]
        # Only into the allocator it came from: a segment remounted under the same name
        # has a new one, whose blocks this slice says nothing about.
        if self.ix.segments.get(held.slice.segment) is not held.seg:
            return
        sl = held.slice
        # Freed as the record the client wrote there, so its tombstone names that length;
        # the rest was never written (_UNWRITTEN). Not told (a dead client's reservation,
        # one given back after a failed commit): a record of any length may start there,
        # never the reservation's rounded one, so the tombstone names length 0, which the
        # node reads as whatever record starts at that line (mcs_rec_zap). Nothing live can:
        # the line is held, or lent, while the zap is out (master/tombstones.py).
        self._free_unwritten(held.seg, sl.offset, sl.length)
        if self.ix.on_free is not None:
            self.ix.on_free(sl._replace(length=written))


def _fitting(layout: tuple, alloc: Any, length: int) -> tuple:
    """The layout if it is positive ints that fit the block laid out back to back, else
    none (the client's word: a wrong one only costs tombstones that flip nothing)."""
    if not layout or len(layout) > 1 << 16 or \
            not all(type(n) is int and n > 0 for n in layout):
        return ()
    return layout if _layout(layout, alloc)[1] <= length else ()


def _layout(records: Sequence[int], alloc: Any) -> tuple[list[tuple[int, int]], int]:
    """Records of these lengths back to back from a block's start, each rounded to the
    allocator's alignment: (offset in the block, length) of each, and where the last ends."""
    out, at = [], 0
    for n in records:
        out.append((at, n))
        at += alloc.round(n)
    return out, at


_new_obj = object.__new__


def _complete(key: str, size: int, flags: int, sid: int | None, seg: str, offset: int,
              length: int) -> Obj:
    """A complete object of one packed slice, as Obj(...) then finish(flags) leaves it, built
    without the incomplete state in between (a batch commit makes thousands of them)."""
    if sid is None or not 0 < size <= _M48 or offset > _M48 or length > _M48:
        return Obj(key, size, [(Slice(seg, offset, length),)], PIN_NONE, 0.0, 0.0)
    obj = _new_obj(Obj)
    obj.key = key
    obj.lease_until = 0.0
    obj.pol = None
    obj._x = None
    obj._loc = (size | flags << _FLAGS_SHIFT | (sid + 1) << _SEG_SHIFT | offset << _OFF_SHIFT
                | length << _LEN_SHIFT)
    return obj
