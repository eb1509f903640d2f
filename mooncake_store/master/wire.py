"""How index values travel over the control plane (msgpack-friendly lists).

Replicas: one replica of one slice (nearly every object) travels flat as
[segment, offset, length]; anything else as a list of replicas, each a list of
[segment, offset, length]. A lookup is [size, flags, segment, offset, length]
in that common case, else [size, replicas, flags, tier]. The decoders accept
both forms, so clients call them whatever the master sent.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InvalidParams
from ..replica import Replica, ReplicateConfig, Slice
from .index import Lookup
from .objmeta import unpack_loc

_RC_FIELDS = {f.name for f in dataclasses.fields(ReplicateConfig)}


def rc_to_wire(rc: ReplicateConfig | None) -> dict | None:
    return None if rc is None else dataclasses.asdict(rc)


def rc_from_wire(d: Any) -> ReplicateConfig | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not set(d) <= _RC_FIELDS:
        raise InvalidParams(f"bad ReplicateConfig {d!r}")
    return ReplicateConfig(**d)


def replicas_to_wire(replicas: list[Replica] | tuple[Replica, ...] | None) -> list | None:
    if replicas is None:
        return None
    if len(replicas) == 1 and len(replicas[0]) == 1:
        s = replicas[0][0]
        return [s.segment, s.offset, s.length]
    return [[[s.segment, s.offset, s.length] for s in r] for r in replicas]


def replicas_from_wire(w: list | None) -> list[Replica] | None:
    if w is None:
        return None
    try:
        if w and type(w[0]) is str:
            return [(Slice(w[0], w[1], w[2]),)]
        return [tuple(Slice(s[0], s[1], s[2]) for s in r) for r in w]
    except (TypeError, IndexError, KeyError) as e:
        raise InvalidParams(f"bad replica list from the master: {e}") from None


def lookup_to_wire(look: Lookup | None) -> list | None:
    if look is None:
        return None
    reps = look.replicas
    if look.tier == "dram" and len(reps) == 1 and len(reps[0]) == 1:
        s = reps[0][0]
        return [look.size, look.flags, s.segment, s.offset, s.length]
    return [look.size, [[[s.segment, s.offset, s.length] for s in r] for r in reps],
            look.flags, look.tier]


def packed_to_wire(loc: int) -> list:
    """The wire lookup of an object whose metadata is one packed int (index.batch_get_packed)."""
    size, flags, seg, offset, length = unpack_loc(loc)
    if seg is None:
        return [size, [], flags, "dram"]
    return [size, flags, seg, offset, length]


def lookup_from_wire(w: list | None) -> Lookup | None:
    if w is None:
        return None
    if len(w) == 5:
        return Lookup(w[0], ((Slice(w[2], w[3], w[4]),),), w[1])
    return Lookup(w[0], tuple(replicas_from_wire(w[1])), w[2], w[3])
