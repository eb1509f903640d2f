"""The interface every storage tier beyond DRAM implements (SSD, S3/OSS).

A tier stores *records*: the self-describing header of mooncake_store.codec
followed by the stored value bytes (already encoded by the codec named in the
header; a tier never compresses or decompresses). Every read verifies the
header and the value CRC and raises ChecksumMismatch instead of returning bytes
it cannot vouch for.

Putting a record, two ways:
  * ``put(key, value)`` - the tier computes the CRC while copying and writes a
    fresh header (codec/raw_len/flags/epoch as keyword arguments);
  * ``put(key, value, header=hdr)`` - demotion from a faster tier: the caller's
    header bytes are kept verbatim, and the tier checks that the value it copies
    still matches the header's CRC (a record that changed under us is refused
    with ChecksumMismatch rather than persisted).
``value`` is any buffer (bytes, memoryview, numpy, CPU tensor), a (ptr, size)
tuple, or a list of such parts that are stored concatenated.

Keys are ``bytes`` or ``str`` (UTF-8); the tier keeps them as bytes.
A put of a key the tier already holds replaces it (the old record is removed
first, so a crash never leaves two records for one key).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .._engine import lib
from ..client.buffers import Region, region
from ..codec import Header, decode_header, encode_header
from ..errors import ChecksumMismatch, InvalidParams


def key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise InvalidParams(f"key must be non-empty bytes or str, got {key!r:.80}")
    return bytes(key)


def value_regions(value: Any) -> list[Region]:
    """The parts of a value as Regions (a list/tuple of buffers is a multi-part value)."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        parts = [region(value[0], value[1])]
    elif isinstance(value, (list, tuple)):
        parts = [region(v) for v in value]
    else:
        parts = [region(value)]
    if sum(p.size for p in parts) <= 0:
        raise InvalidParams("empty values cannot be stored")
    return parts


def parts_crc(parts: Sequence[Region]) -> int:
    crc = 0
    for p in parts:
        crc = lib.mcs_crc32c(crc, p.ptr, p.size)
    return crc


@dataclass
class RecordSpec:
    """What a put writes: the header bytes plus where the value comes from."""

    key: bytes
    header: bytes          # encoded header (header_len bytes)
    parsed: Header
    parts: list[Region]    # value parts, total == parsed.value_len
    verify_crc: bool       # True when the header came from the caller: recheck while copying


def make_record(key: bytes | str, value: Any, header: bytes | None = None, *, codec: int = 0,
                raw_len: int | None = None, flags: int = 0, epoch: int = 0,
                crc: int | None = None) -> RecordSpec:
    """Validate a put's arguments and build its header.

    Without `header` and `crc`, the CRC is left to the writer (it computes it in
    the copy pass) and the header is encoded with crc 0, then re-encoded.
    """
    kb = key_bytes(key)
    parts = value_regions(value)
    n = sum(p.size for p in parts)
    if header is not None:
        hdr = decode_header(header)
        if hdr.key != kb:
            raise InvalidParams(f"header is for key {hdr.key!r:.60}, not {kb!r:.60}")
        if hdr.value_len != n:
            raise InvalidParams(f"header says {hdr.value_len} value bytes, got {n}")
        return RecordSpec(kb, bytes(memoryview(header)[:hdr.header_len]), hdr, parts, True)
    hb = encode_header(kb, n, crc or 0, epoch=epoch, codec=codec, raw_len=raw_len, flags=flags)
    return RecordSpec(kb, hb, decode_header(hb), parts, crc is not None)


def finish_header(spec: RecordSpec, crc: int) -> bytes:
    """The header to store once the value CRC is known from the copy pass."""
    if spec.verify_crc:
        if crc != spec.parsed.value_crc:
            raise ChecksumMismatch(f"value of {spec.key!r:.60} does not match its header CRC "
                                   "(source changed or corrupt); not stored")
        return spec.header
    h = spec.parsed
    return encode_header(h.key, h.value_len, crc, epoch=h.epoch, codec=h.codec,
                         raw_len=h.raw_len, flags=h.flags)


class PartCursor:
    """Walks the value parts so a writer can copy them out in chunks of any size."""

    def __init__(self, parts: Sequence[Region]) -> None:
        self._parts = list(parts)
        self._i = 0
        self._off = 0

    def copy_into(self, dst: Any, n: int, crc: int) -> int:
        """Copy the next n value bytes to cdata `dst`, returning the running CRC."""
        done = 0
        while done < n:
            p = self._parts[self._i]
            take = min(n - done, p.size - self._off)
            crc = lib.mcs_copy_crc32c(dst + done, p.ptr + self._off, take, crc)
            done += take
            self._off += take
            if self._off == p.size:
                self._i += 1
                self._off = 0
        return crc


def dst_region(dst: Any, size: int | None = None) -> Region:
    return region(dst, size, writable=True)


class TierBackend(abc.ABC):
    """One storage tier. Thread-safe: a node's transfer server and its demotion
    worker call it concurrently."""

    name: str = "tier"

    @abc.abstractmethod
    def put(self, key: bytes | str, value: Any, *, header: bytes | None = None, codec: int = 0,
            raw_len: int | None = None, flags: int = 0, epoch: int = 0) -> Any:
        """Store a record durably (per the tier's sync policy); returns its location."""

    @abc.abstractmethod
    def get_into(self, key: bytes | str, dst: Any, size: int | None = None) -> int:
        """Copy the verified stored value into dst; returns its length.
        ObjectNotFound; InvalidParams when dst is too small; ChecksumMismatch."""

    @abc.abstractmethod
    def read(self, key: bytes | str) -> bytes:
        """The verified stored value."""

    @abc.abstractmethod
    def read_record(self, key: bytes | str) -> tuple[Header, bytes]:
        """(header, value), both verified."""

    @abc.abstractmethod
    def header(self, key: bytes | str) -> Header:
        """The record's header (codec, raw_len, flags, epoch...). ObjectNotFound."""

    @abc.abstractmethod
    def remove(self, key: bytes | str) -> bool:
        """Delete; False when absent. A removed record never comes back after a restart."""

    @abc.abstractmethod
    def contains(self, key: bytes | str) -> bool:
        ...

    @abc.abstractmethod
    def scan(self) -> Iterator[tuple[bytes, Header, Any]]:
        """(key, header, location) of every record the tier holds (warm restart)."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int | None:
        """Bytes the tier may hold (None = unbounded)."""

    @property
    @abc.abstractmethod
    def used(self) -> int:
        ...

    @abc.abstractmethod
    def stats(self) -> dict:
        ...

    @abc.abstractmethod
    def close(self) -> None:
        ...

    def put_record(self, record: Any) -> Any:
        """Store a contiguous `header + value` buffer (e.g. a DRAM replica) verbatim;
        the value is checked against the header's CRC on the way."""
        mv = memoryview(record).cast("B")
        hdr = decode_header(mv, limit=len(mv))
        end = hdr.header_len + hdr.value_len
        return self.put(hdr.key, mv[hdr.header_len:end], header=mv[:hdr.header_len])

    def __len__(self) -> int:
        return sum(1 for _ in self.scan())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
