"""Find the records a DRAM segment holds by scanning for verified headers.

Records start at 64-byte boundaries (the allocator's alignment). Candidates are
found with one vectorized pass over the first word of every 64-byte line; each
candidate is then checked in C (header CRC, lengths) and its value CRC compared,
so torn or overwritten records are skipped. Used when a node rejoins a master
that has no index for it (master restart or leader change).

zap_records invalidates records the master freed (master/tombstones.py), so a
rebuilt index does not find removed or evicted objects again.
"""
from __future__ import annotations

import struct
from typing import Iterable, Iterator

import numpy as np

from .._engine import ffi, lib
from ..codec import ALIGN, FIXED_SIZE, MAGIC, decode_header

_MAGIC_U32 = struct.unpack("<I", MAGIC)[0]
_CHUNK = 64 << 20


def scan(ptr, size: int, ranges: Iterable[tuple[int, int]] | None = None) -> list[list]:
    """Entries [key, offset, length, value_size, flags] for every intact record in
    [ptr, ptr+size), looking only in `ranges` ([start, end) pairs in order; default the
    whole segment). When two records claim the same key, the newer epoch wins."""
    found: dict[str, tuple[int, list]] = {}
    buf = ffi.buffer(ptr, size)
    info = ffi.new("mcs_rec_info *")
    pos_after = 0   # end of the last accepted record: records never overlap
    for start, end in _chunks(size - size % ALIGN, ranges):
        words = np.frombuffer(buf, dtype="<u4", count=(end - start) // 4, offset=start)[::ALIGN // 4]
        for idx in np.flatnonzero(words == _MAGIC_U32):
            off = start + int(idx) * ALIGN
            if off < pos_after or size - off < FIXED_SIZE:
                continue
            if lib.mcs_rec_check_header(ptr + off, size - off, ffi.NULL, 0, info) != 0:
                continue
            hlen, vlen = info.header_len, info.value_len
            if lib.mcs_crc32c(0, ptr + off + hlen, vlen) != info.value_crc:
                continue
            key = decode_header(buf[off:off + hlen]).key.decode("utf-8", "surrogatepass")
            entry = [key, off, hlen + vlen, vlen, info.flags]
            prev = found.get(key)
            if prev is None or info.epoch >= prev[0]:
                found[key] = (info.epoch, entry)
            pos_after = off + hlen + vlen
    return [e for _, e in found.values()]


def _chunks(limit: int, ranges: Iterable[tuple[int, int]] | None) -> Iterator[tuple[int, int]]:
    """[start, end) pieces of at most _CHUNK bytes, 64-byte aligned, below `limit`."""
    for lo, hi in ranges if ranges is not None else ((0, limit),):
        lo, hi = lo - lo % ALIGN, min(limit, -(-hi // ALIGN) * ALIGN)
        for start in range(lo, hi, _CHUNK):
            yield start, min(start + _CHUNK, hi)


def zap_records(mounted: dict, zaps: list) -> tuple[list, int, int]:
    """Invalidate freed records ([id, segment, offset, length] each) if each is still the
    record the master freed (mcs_rec_zap: verify, then one compare-and-swap). The master
    holds each header line out of its allocator until we report, so nothing new lands
    there meanwhile. Returns (ids dealt with, zapped, left alone)."""
    ids, zapped, skipped = [], 0, 0
    for zap in zaps:
        if not isinstance(zap, (list, tuple)) or len(zap) != 4 or not isinstance(zap[0], int):
            continue
        zid, name, off, length = zap
        m = mounted.get(name) if isinstance(name, str) else None
        ok = m is not None and isinstance(off, int) and 0 <= off < m.segment.size \
            and off % 8 == 0 and isinstance(length, int) and length >= 0
        ids.append(zid)
        if ok and lib.mcs_rec_zap(m.segment.ptr + off, m.segment.size - off, length) == 1:
            zapped += 1
        else:
            skipped += 1
    return ids, zapped, skipped


def verify_part(ptr, length: int, key: str, part) -> bool:
    """A copied stripe (repair of a striped object): header and value CRC verify, the record
    fills `length`, and its header names part i of k of `key`, total bytes (part = [i, k, total])."""
    from ..master.cluster_index import parse_stripe_key

    if not isinstance(part, (list, tuple)) or len(part) != 3 or \
            not all(isinstance(x, int) for x in part):
        return False
    info = ffi.new("mcs_rec_info *")
    if lib.mcs_rec_check_header(ptr, length, ffi.NULL, 0, info) != 0 \
            or info.header_len + info.value_len != length \
            or lib.mcs_crc32c(0, ptr + info.header_len, info.value_len) != info.value_crc:
        return False
    skey = decode_header(ffi.buffer(ptr, info.header_len)).key.decode("utf-8", "surrogatepass")
    parsed = parse_stripe_key(skey)
    return parsed is not None and parsed[0] == key and list(parsed[2:]) == list(part)
