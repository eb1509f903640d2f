"""One object's metadata in the master index, packed for millions of objects.

Nearly every object is complete, unpinned, in DRAM, with one replica of one
slice. Such an object is an Obj of five slots whose `_loc` is one integer
holding size, flags and the slice (segment as a small interned id, offset,
length) and whose `_x` is None. Everything rarer (a write in progress, pins,
several or striped replicas, cold-tier copies, copies in flight) lives in an
_Ext record that exists only while some field differs from its default. The
public attributes (size, flags, replicas, pin, tier, cold, ...) are properties,
so callers read and assign them as plain fields; `replicas` reads back as a
tuple (assign a new sequence to change it).
"""
from __future__ import annotations

import threading
from typing import NamedTuple, Sequence

from ..replica import Replica, Slice

PIN_NONE, PIN_SOFT, PIN_HARD = 0, 1, 2

# Bit layout of _loc: size | flags | segment id + 1 (0: no inline slice) | offset | length.
_M48 = (1 << 48) - 1
_FLAGS_SHIFT, _SEG_SHIFT, _OFF_SHIFT, _LEN_SHIFT = 48, 56, 72, 120
_MAX_SEGS = (1 << 16) - 1
_SIZE_FLAGS = (1 << _SEG_SHIFT) - 1

# Segment names interned as small ints, process-wide: a few per node, so the table stays
# tiny, and ids never change, so a packed slice decodes the same in every index.
_seg_names: list[str] = []
_seg_ids: dict[str, int] = {}
_seg_lock = threading.Lock()
_new_tuple = tuple.__new__


def seg_id(name: str) -> int | None:
    """The interned id of a segment name (None once the table is full)."""
    sid = _seg_ids.get(name)
    if sid is not None:
        return sid
    with _seg_lock:
        sid = _seg_ids.get(name)
        if sid is None and len(_seg_names) < _MAX_SEGS:
            sid = len(_seg_names)
            _seg_names.append(name)
            _seg_ids[name] = sid
        return sid


def seg_name(sid: int) -> str:
    return _seg_names[sid]


def pack_slice(sl: Slice) -> int | None:
    """The slice bits of _loc, or None when the slice does not fit them."""
    if not (0 <= sl.offset <= _M48 and 0 <= sl.length <= _M48):
        return None
    sid = seg_id(sl.segment)
    if sid is None:
        return None
    return (sid + 1) << _SEG_SHIFT | sl.offset << _OFF_SHIFT | sl.length << _LEN_SHIFT


def on_segment(objects: dict, name: str) -> list:
    """(key, obj) of the objects with a replica or part on segment `name`, read from the
    packed layout: a node loss looks at every object, and decoding each one's replicas
    took most of the master's stall (300,000 objects: 1.6 s with every client waiting)."""
    sid = _seg_ids.get(name)
    want = -1 if sid is None else sid + 1
    out = []
    for key, obj in objects.items():
        x = obj._x
        if x is not None and x.replicas is not None:
            if any(s.segment == name for r in x.replicas for s in r):
                out.append((key, obj))
        elif (obj._loc >> _SEG_SHIFT) & 0xFFFF == want:
            out.append((key, obj))
    return out


def with_rare_fields(objects: dict) -> list:
    """(key, obj) of the objects with any rare field set (a cold copy, a pin, several
    replicas, ...): the only ones a scan for such a field needs to look at."""
    return [(key, obj) for key, obj in objects.items() if obj._x is not None]


def unpack_loc(loc: int) -> tuple:
    """(size, flags, segment, offset, length) of a packed _loc; segment is None when it
    holds no slice."""
    sid1 = (loc >> _SEG_SHIFT) & 0xFFFF
    return (loc & _M48, (loc >> _FLAGS_SHIFT) & 0xFF, _seg_names[sid1 - 1] if sid1 else None,
            (loc >> _OFF_SHIFT) & _M48, loc >> _LEN_SHIFT)


class Lookup(NamedTuple):
    """What a reader needs: the value size and where replicas live. (A NamedTuple: one is
    made per key of every batch read, and a tuple builds several times faster than a
    frozen dataclass.)"""

    size: int
    replicas: tuple[Replica, ...]
    flags: int
    tier: str = "dram"


class _Ext:
    """The rare fields; `replicas` is None while the replica is packed into _loc."""

    __slots__ = ("replicas", "pin", "pin_until", "deadline", "tier", "cold", "busy",
                 "cold_hits", "complete")

    def __init__(self) -> None:
        self.replicas: tuple[Replica, ...] | None = None
        self.pin = PIN_NONE
        self.pin_until = 0.0
        self.deadline = 0.0
        self.tier = "dram"
        self.cold: tuple[str, ...] = ()
        self.busy: object = False
        self.cold_hits = 0
        self.complete = True

    def plain(self) -> bool:
        return (self.replicas is None and self.pin == PIN_NONE and self.tier == "dram"
                and not self.cold and not self.busy and not self.cold_hits and self.complete)


def _rare(name: str, default: object) -> property:
    """A field kept in _Ext: reads give the default when there is none; writes create it
    and drop it again once everything in it is back to defaults."""

    def get(self: "Obj") -> object:
        x = self._x
        return default if x is None else getattr(x, name)

    def put(self: "Obj", value: object) -> None:
        x = self._x
        if x is None:
            if value == default and type(value) is type(default):
                return
            x = self._x = _Ext()
        setattr(x, name, value)
        if x.plain():
            self._x = None

    return property(get, put)


class Obj:
    """One object's metadata (see the module doc for the packed layout)."""

    # pol: the eviction policy's packed per-key state when the policy keeps it here
    # (PrefixLFRUPolicy.bind), so the master needs no second dict of keys; None otherwise.
    __slots__ = ("key", "lease_until", "_loc", "_x", "pol")

    def __init__(self, key: str, size: int, replicas: Sequence[Replica], pin: int,
                 pin_until: float, deadline: float) -> None:
        if not 0 <= size <= _M48:
            raise ValueError(f"object size {size} out of range")
        self.key = key
        self.lease_until = 0.0
        self.pol: int | None = None
        self._loc = size
        x = self._x = _Ext()      # new objects are incomplete until put_end (or adoption)
        x.complete, x.pin, x.pin_until, x.deadline = False, pin, pin_until, deadline
        self.replicas = replicas

    # ---- packed fields ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._loc & _M48

    @property
    def flags(self) -> int:
        return (self._loc >> _FLAGS_SHIFT) & 0xFF

    @flags.setter
    def flags(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"object flags {value} out of range (one byte)")
        self._loc = (self._loc & ~(0xFF << _FLAGS_SHIFT)) | value << _FLAGS_SHIFT

    @property
    def replicas(self) -> tuple[Replica, ...]:
        x = self._x
        if x is not None and x.replicas is not None:
            return x.replicas
        loc = self._loc
        sid1 = (loc >> _SEG_SHIFT) & 0xFFFF
        if not sid1:
            return ()
        # Inline, with tuple.__new__ skipping Slice's Python-level __new__: every
        # read of a packed object comes through here.
        return ((_new_tuple(Slice, (_seg_names[sid1 - 1], (loc >> _OFF_SHIFT) & _M48,
                                    loc >> _LEN_SHIFT)),),)

    @replicas.setter
    def replicas(self, replicas: Sequence[Replica]) -> None:
        if len(replicas) == 1 and len(replicas[0]) == 1:   # the common case: no copying
            reps: tuple = ()
            bits = pack_slice(replicas[0][0])
            if bits is None:
                reps = (tuple(replicas[0]),)
        else:
            reps, bits = tuple(tuple(r) for r in replicas), None
        if bits is not None or not reps:
            self._loc = (self._loc & _SIZE_FLAGS) | (bits or 0)
            if self._x is not None:
                self._x.replicas = None
                if self._x.plain():
                    self._x = None
            return
        self._loc &= _SIZE_FLAGS
        x = self._x
        if x is None:
            x = self._x = _Ext()
        x.replicas = reps

    def lookup(self) -> Lookup:
        """The reader's view of a DRAM object (index.Lookup), built without per-field calls."""
        loc = self._loc
        return _new_tuple(Lookup, (loc & _M48, self.replicas, (loc >> _FLAGS_SHIFT) & 0xFF, "dram"))

    # ---- rare fields ------------------------------------------------------------------------
    complete = _rare("complete", True)
    pin = _rare("pin", PIN_NONE)
    pin_until = _rare("pin_until", 0.0)
    deadline = _rare("deadline", 0.0)
    tier = _rare("tier", "dram")
    cold = _rare("cold", ())
    busy = _rare("busy", False)
    cold_hits = _rare("cold_hits", 0)

    def finish(self, flags: int) -> None:
        """put_end: record the flags and complete the object; it packs again when nothing
        rare is left (flags already checked by the caller: one byte)."""
        self._loc = (self._loc & ~(0xFF << _FLAGS_SHIFT)) | flags << _FLAGS_SHIFT
        x = self._x
        if x is not None:
            x.complete, x.deadline = True, 0.0
            if x.plain():
                self._x = None
