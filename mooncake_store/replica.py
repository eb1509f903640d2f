"""Replication settings and the descriptors that say where an object's bytes live."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class ReplicateConfig:
    """Mooncake-compatible placement options for a put."""

    replica_num: int = 1
    with_soft_pin: bool = False
    soft_pin_ttl_ms: int = 0          # 0: the store's default
    with_hard_pin: bool = False       # never evicted
    preferred_segment: str = ""
    preferred_segments: list[str] = field(default_factory=list)
    prefer_alloc_in_same_node: bool = False
    persist: bool = False             # write through to the persistent tier when there is one

    def __post_init__(self) -> None:
        from .errors import InvalidParams

        if not isinstance(self.replica_num, int) or isinstance(self.replica_num, bool) \
                or self.replica_num < 1:
            raise InvalidParams(f"replica_num must be an int >= 1, got {self.replica_num!r}")


class Slice(NamedTuple):
    segment: str      # segment id ("host:port" of its node, plus a tier suffix when not DRAM)
    offset: int       # byte offset of the slice inside the segment
    length: int       # bytes


# A replica is the ordered list of slices holding header + value (one slice unless striped).
Replica = tuple[Slice, ...]
