"""Find the records a DRAM segment holds by scanning for verified headers.

Records start at 64-byte boundaries (the allocator's alignment). The walk is in C
(csrc/record.c mcs_rec_scan): the magic at each 64-byte line, then header CRC,
lengths and value CRC, so torn or overwritten records are skipped, and the lines
of an accepted record are stepped over. Python only reads the keys out and keeps
the newer epoch of a key found twice. Used when a node registers with a master
that has no index for it (its first start, a master restart or a leader change).

zap_records invalidates records the master freed (master/tombstones.py), so a
rebuilt index does not find removed or evicted objects again.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .._engine import ffi, lib
from ..codec import ALIGN, FIXED_SIZE, decode_header
from ..errors import StoreError

_BATCH = 4096   # records per call into C
_FIELDS = ("offset", "value_len", "epoch", "header_len", "key_len", "flags")
_FOUND = np.dtype({"names": list(_FIELDS), "formats": ["<u8", "<u8", "<u8", "<u2", "<u2", "u1"],
                   "offsets": [ffi.offsetof("mcs_rec_found", f) for f in _FIELDS],
                   "itemsize": ffi.sizeof("mcs_rec_found")})


def scan(ptr, size: int, ranges: Iterable[tuple[int, int]] | None = None) -> list[list]:
    """Entries [key, offset, length, value_size, flags] for every intact record in
    [ptr, ptr+size), looking only in `ranges` ([start, end) pairs in order; default the
    whole segment). When two records claim the same key, the newer epoch wins."""
    entries: list[list] = []
    epochs: list[int] = []
    buf = ffi.buffer(ptr, size)
    out = ffi.new("mcs_rec_found[]", _BATCH)
    view = ffi.buffer(out)
    nxt = ffi.new("uint64_t *")
    pos = 0   # the first line not inside an accepted record: records never overlap
    limit = size - size % ALIGN
    for lo, hi in ranges if ranges is not None else ((0, limit),):
        lo, hi = max(pos, lo - lo % ALIGN), min(limit, -(-hi // ALIGN) * ALIGN)
        while lo < hi:
            n = lib.mcs_rec_scan(ptr, size, lo, hi, out, _BATCH, nxt)
            if n < 0:
                raise StoreError(f"inventory scan of [{lo}, {hi}) in {size} bytes refused", n)
            rows = np.frombuffer(view, dtype=_FOUND, count=n)   # columns, not cffi structs
            offs, vlens, eps, hlens, klens, flags = (rows[c].tolist() for c in _FIELDS)
            entries += [[buf[o + FIXED_SIZE:o + FIXED_SIZE + k].decode("utf-8", "surrogatepass"),
                         o, h + v, v, f] for o, v, h, k, f in zip(offs, vlens, hlens, klens, flags)]
            epochs += eps
            lo = pos = max(pos, nxt[0] + (-nxt[0]) % ALIGN)
            if n < _BATCH:
                break
    return _newest(entries, epochs)


def _newest(entries: list[list], epochs: list[int]) -> list[list]:
    """One entry per key: the newer epoch (the later record when equal)."""
    if len({e[0] for e in entries}) == len(entries):
        return entries
    best: dict[str, tuple[int, list]] = {}
    for e, epoch in zip(entries, epochs):
        prev = best.get(e[0])
        if prev is None or epoch >= prev[0]:
            best[e[0]] = (epoch, e)
    return [e for _, e in best.values()]


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
