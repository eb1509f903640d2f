"""Find the records a DRAM segment holds by scanning for verified headers.

Records start at 64-byte boundaries (the allocator's alignment). Candidates are
found with one vectorized pass over the first word of every 64-byte line; each
candidate is then checked in C (header CRC, lengths) and its value CRC compared,
so torn or overwritten records are skipped. Used when a node rejoins a master
that has no index for it (master restart or leader change).
"""
from __future__ import annotations

import struct

import numpy as np

from .._engine import ffi, lib
from ..codec import ALIGN, FIXED_SIZE, MAGIC, decode_header

_MAGIC_U32 = struct.unpack("<I", MAGIC)[0]
_CHUNK = 64 << 20


def scan(ptr, size: int) -> list[list]:
    """Entries [key, offset, length, value_size, flags] for every intact record in
    [ptr, ptr+size). When two records claim the same key, the newer epoch wins."""
    found: dict[str, tuple[int, list]] = {}
    buf = ffi.buffer(ptr, size)
    info = ffi.new("mcs_rec_info *")
    pos_after = 0   # end of the last accepted record: records never overlap
    for start in range(0, size - size % ALIGN, _CHUNK):
        end = min(start + _CHUNK, size - size % ALIGN)
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
