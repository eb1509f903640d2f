"""How index values travel over the control plane (msgpack-friendly lists)."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InvalidParams
from ..replica import Replica, ReplicateConfig, Slice
from .index import Lookup

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
    return [[[s.segment, s.offset, s.length] for s in r] for r in replicas]


def replicas_from_wire(w: list | None) -> list[Replica] | None:
    if w is None:
        return None
    return [tuple(Slice(s[0], s[1], s[2]) for s in r) for r in w]


def lookup_to_wire(look: Lookup | None) -> list | None:
    if look is None:
        return None
    return [look.size, replicas_to_wire(look.replicas), look.flags, look.tier]


def lookup_from_wire(w: list | None) -> Lookup | None:
    if w is None:
        return None
    return Lookup(w[0], tuple(replicas_from_wire(w[1])), w[2], w[3])
