"""Freed records waiting to be invalidated on their node, so a rebuilt index never finds them.

A new leader (or a restarted master) rebuilds its index from the records the nodes
find in their segments. A record that was removed or evicted keeps its bytes until
the space is written again, so without this it would come back after a failover.

Every slice the index frees is queued here (not the never-written tail of a
reservation: master/reserve.py _UNWRITTEN). When its node heartbeats, the master
takes the first 64-byte line of each queued extent (the line that holds the record's
header) out of the allocator, if that line is still free, and sends (offset, length)
to the node (length 0: whatever record starts there, for a reservation freed without
the master learning what was written into it). Nothing can be allocated over the
line while the node works on it, so whatever header the node finds there belongs to
no live object; the node still checks it verifies with the expected length and flips
it with one compare-and-swap (csrc/record.c mcs_rec_zap), then reports, and the
master gives the line back. A line that was allocated again before the heartbeat is
skipped: the new record's write overwrites the old header or value, which then fails
its checksum anyway. Unless that write may never happen: a line inside a slice
handed to a write not yet confirmed (a pending put_start, a held reservation or
batch block, the destination of a copy the master asked a node to make:
`ObjectIndex.unwritten_locked`) keeps its zap queued until the slice is written
(then it is skipped) or freed (then it is sent), so a writer that dies before
writing leaves no old header behind. A reservation no commit can name any more (past
its commit window, master/reserve.py) need not be waited for: whatever is written
there never goes live, so the zap goes out at once with its line lent to the
reservation (below) and held again when it is freed. An idle client's reservation
therefore delays a zap by about one commit window (~1.1 s), not put_timeout_ms.

A held line splits its hole, so a record of the freed size no longer fits there
until the node reports. When an allocation finds no room, `no_room` gives back the
held lines whose left neighbour is free before anything is evicted: such a line is
then inside a free block, and since the allocator only hands out blocks from their
start, no new record can begin on it. A late zap there finds the new record's
value bytes (or the old header, not yet overwritten), never a header of the freed
length, so it flips nothing live. That guarantee holds only while the line stays
inside an allocation or a free block: lines still free after the retry are held
again, and a line whose covering record is freed while its zap is still out is held
again at that free. A line at the start of its hole (its left neighbour allocated)
stays held: a same-size record there could carry the very header the zap expects.
"""
from __future__ import annotations

import bisect
import itertools
from array import array
from typing import Any, Callable

from ..replica import Slice

MIN_QUEUED = 65_536        # per segment at least; past the cap the oldest go (and are counted)
# And one entry per 128 bytes of segment, the smallest record (a header line and a value
# line): a whole segment's records removed at once all keep their zaps. At 16 bytes an entry
# that is an eighth of the segment's size at worst, where the index spent ~300 bytes on
# each of those objects a moment before.
QUEUE_CAP_PER = 128
PER_HEARTBEAT = 4096       # zaps handed to one node per heartbeat
HOLD_S = 10.0              # a line not reported back by then is given back anyway


class Tombstones:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.ix: Any = None
        self._queued: dict[str, ZapQueue] = {}
        self._held: dict[int, tuple[str, Any, int, float]] = {}   # id -> (segment, info, offset, until)
        # Lines given back by no_room while their zap is out: id -> (segment, info, offset,
        # until), and segment -> {offset: id} to find them when their cover is freed.
        self._lent: dict[int, tuple[str, Any, int, float]] = {}
        self._lent_at: dict[str, dict[int, int]] = {}
        self._ids = itertools.count(1)
        self.counters = {"zaps_queued": 0, "zaps_sent": 0, "zaps_done": 0, "zaps_skipped": 0,
                         "zaps_dropped": 0, "zap_lines_lent": 0, "zaps_deferred": 0}

    def attach(self, index: Any) -> None:
        """Follow a (new) index; what was queued for the old one is forgotten with it."""
        self.ix = index
        self._queued = {}
        self._held = {}
        self._lent = {}
        self._lent_at = {}
        index.on_free = self._freed
        index.on_no_room = self.no_room
        # Reservations free their never-written tails without a tombstone, but a lent line
        # there must be held again all the same (master/reserve.py _UNWRITTEN).
        index.reservations.zaps = self

    def _freed(self, sl: Slice) -> None:
        # Called under the index lock from every free: keep it to an append.
        q = self._queued.get(sl.segment)
        if q is None:
            info = self.ix.segments.get(sl.segment)
            size = info.capacity if info is not None else 0
            q = self._queued[sl.segment] = ZapQueue(max(MIN_QUEUED, size // QUEUE_CAP_PER))
        if not q.append(sl.offset, sl.length):
            self.counters["zaps_dropped"] += 1
        self.counters["zaps_queued"] += 1
        if self._lent:
            self.rehold_within(sl)

    def take(self, segments: list[str]) -> list[list]:
        """Zaps for a heartbeating node: [id, segment, offset, length] each, header lines held."""
        out: list[list] = []
        ix = self.ix
        now = self.clock()
        with ix.lock:
            for name in segments:
                q = self._queued.get(name)
                if not q:
                    continue
                info = ix.segments.get(name)
                if info is None:
                    del self._queued[name]
                    continue
                self._take_segment(name, info, q, out, now)
        self.counters["zaps_sent"] += len(out)
        return out

    def _take_segment(self, name: str, info: Any, q: ZapQueue, out: list[list], now: float) -> None:
        """Pop `name`'s queue into `out` (up to PER_HEARTBEAT in all): each zap is sent with
        its line held, sent with its line lent, skipped, or put back to wait."""
        until = now + HOLD_S
        starts = sorted(info.allocator._by_start)
        unwritten: tuple[list[int], list[tuple[int, int, float]]] | None = None
        out_lines: set[int] = set()
        later = []
        while q and len(out) < PER_HEARTBEAT:
            off, length = q.popleft()
            if _hold_line(info.allocator, starts, off):
                zid = next(self._ids)
                self._held[zid] = (name, info, off, until)
            else:
                if unwritten is None:   # built at the first line found taken again
                    spans = self.ix.unwritten_locked(name)
                    unwritten = ([a for a, _b, _u in spans], spans)
                    out_lines |= {h[2] for h in self._held.values() if h[0] == name}
                    out_lines |= self._lent_at.get(name, {}).keys()
                span = _covering(unwritten, off)
                if off in out_lines or (span is not None and span[2] > now):
                    # The write over it may still happen, or not: wait. (Or another zap for
                    # the same line is out; each names its own length.)
                    later.append((off, length))
                    continue
                if span is None:   # written again: the new record overwrote the old header
                    self.counters["zaps_skipped"] += 1
                    continue
                # A reservation no commit can name any more: nothing written there goes
                # live, so the zap goes out now, its line lent to the slice.
                zid = next(self._ids)
                self._lend(zid, (name, info, off, until))
            out_lines.add(off)
            out.append([zid, name, off, length])
        for off, length in later:   # no longer than it was: nothing is dropped here
            q.append(off, length)
        self.counters["zaps_deferred"] += len(later)

    def done(self, ids: list) -> int:
        """The node has dealt with these zaps: give their header lines back."""
        n = 0
        with self.ix.lock:
            for zid in ids:
                if not isinstance(zid, int):
                    continue
                held = self._held.pop(zid, None)
                if held is not None:
                    self._release(held)
                    n += 1
                elif self._forget_lent(zid):
                    n += 1
        self.counters["zaps_done"] += n
        return n

    def expire(self, now: float) -> None:
        if not self._held:
            return
        with self.ix.lock:
            for zid in [z for z, h in self._held.items() if h[3] <= now]:
                self._release(self._held.pop(zid))
            for zid in [z for z, h in self._lent.items() if h[3] <= now]:
                self._forget_lent(zid)

    def pending(self) -> int:
        return sum(len(q) for q in self._queued.values()) + len(self._held) + len(self._lent)

    def no_room(self, retry: Callable[[], Any]) -> Any:
        """Called under the index lock when an allocation failed: lend out the held lines
        that sit inside a free block once given back, run `retry` (the allocation again),
        then hold again whatever it did not cover. Returns what `retry` returned."""
        if not self._held:
            return None
        lent = []
        for zid, held in list(self._held.items()):
            name, info, off, _ = held
            alloc = info.allocator
            if self.ix.segments.get(name) is info and off in alloc._by_end:
                del self._held[zid]
                alloc.free(off, alloc.align)
                lent.append((zid, held))
        if not lent:
            return None
        got = retry()
        for zid, held in lent:
            name, info, off, _ = held
            if _hold_at(info.allocator, off):
                self._held[zid] = held
            else:               # inside the new allocation: watched until the node reports
                self._lend(zid, held)
        return got

    def _lend(self, zid: int, held: tuple) -> None:
        """The zap is out while its line belongs to an allocation: held again if that is
        freed before the node reports (rehold_within)."""
        self._lent[zid] = held
        self._lent_at.setdefault(held[0], {})[held[2]] = zid
        self.counters["zap_lines_lent"] += 1

    def rehold_within(self, sl: Slice) -> None:
        """A freed slice covers lent lines whose zaps are still out: hold them again before
        anything can be allocated there (so no record of the freed length starts on them)."""
        at = self._lent_at.get(sl.segment)
        if not at:
            return
        info = self.ix.segments.get(sl.segment)
        if info is None:
            return
        lo, hi, line = sl.offset, sl.offset + sl.length, info.allocator.align
        if len(at) < sl.length // line:
            offs = [off for off in at if lo <= off < hi]
        else:
            offs = [off for off in range(lo - lo % line, hi, line) if off in at]
        for off in offs:
            zid = at[off]
            held = self._lent[zid]
            self._forget_lent(zid)
            if held[1] is info and _hold_at(info.allocator, off):
                self._held[zid] = held

    def _forget_lent(self, zid: int) -> bool:
        held = self._lent.pop(zid, None)
        if held is None:
            return False
        at = self._lent_at.get(held[0])
        if at is not None:
            at.pop(held[2], None)
            if not at:
                del self._lent_at[held[0]]
        return True

    def _release(self, held: tuple) -> None:
        name, info, off, _ = held
        # Only into the allocator the line was taken from: a node that re-registered under
        # the same segment name has a fresh one where this line was never held.
        if self.ix.segments.get(name) is info:
            info.allocator.free(off, info.allocator.align)


class ZapQueue:
    """(offset, length) of freed records in the order they were freed, 16 bytes each (a
    deque of tuples took ~96, so its cap had to stay at 65,536 and a mass removal lost
    most of its zaps: those records could come back in a later rebuild). Past `cap` the
    oldest entry is dropped."""

    __slots__ = ("offs", "lens", "head", "cap")

    def __init__(self, cap: int) -> None:
        self.offs, self.lens = array("Q"), array("Q")
        self.head = 0
        self.cap = cap

    def __len__(self) -> int:
        return len(self.offs) - self.head

    def append(self, off: int, length: int) -> bool:
        """Queue one; False when the oldest entry had to go to make room."""
        self.offs.append(off)
        self.lens.append(length)
        if len(self) <= self.cap:
            return True
        self.head += 1
        self._compact()
        return False

    def popleft(self) -> tuple[int, int]:
        i = self.head
        if i >= len(self.offs):
            raise IndexError("pop from an empty ZapQueue")
        self.head = i + 1
        item = (self.offs[i], self.lens[i])
        self._compact()
        return item

    def _compact(self) -> None:
        # Amortized O(1): the consumed front goes once it is half of what is stored.
        if self.head >= 4096 and 2 * self.head >= len(self.offs):
            del self.offs[:self.head]
            del self.lens[:self.head]
            self.head = 0


def _covering(spans: tuple[list[int], list[tuple[int, int, float]]], off: int
              ) -> tuple[int, int, float] | None:
    """The (start, end, until) of the sorted, non-overlapping spans that holds off."""
    starts, full = spans
    i = bisect.bisect_right(starts, off) - 1
    return full[i] if i >= 0 and off < full[i][1] else None


def _hold_at(alloc: Any, off: int) -> bool:
    """_hold_line for one line (a sort of the free-block starts: only on the rare paths)."""
    return _hold_line(alloc, sorted(alloc._by_start), off)


def _hold_line(alloc: Any, starts: list[int], off: int) -> bool:
    """Take [off, off+align) out of the free lists if all of it is free. `starts` is the
    sorted list of free-block starts, kept in step here (one sort per heartbeat instead of
    the linear search Allocator.reserve does per call)."""
    line = alloc.align
    i = bisect.bisect_right(starts, off) - 1
    if i < 0:
        return False
    start = starts[i]
    size = alloc._by_start.get(start)
    if size is None or off + line > start + size:
        return False
    alloc._remove(start)
    if off > start:
        alloc._add(start, off - start)
    else:
        del starts[i]
    if start + size > off + line:
        alloc._add(off + line, start + size - off - line)
        bisect.insort(starts, off + line)
    alloc.used += line
    return True
