"""The self-describing object header that starts every stored replica.

Layout (little-endian), padded with zeros to a multiple of 64 bytes:

    off size field
      0    4 magic        b"MCS1"
      4    1 version      1
      5    1 codec        0 = raw; other ids from mooncake_store.compress
      6    1 flags        bit 0: value is a serialized tensor
      7    1 reserved     0
      8    2 key_len      bytes of the UTF-8 key that follows the fixed part
     10    2 header_len   total header length (fixed part + key + padding)
     12    4 value_crc    CRC32C of the stored value bytes
     16    8 value_len    stored value length (after the codec)
     24    8 raw_len      value length before the codec (== value_len when raw)
     32    8 epoch        writer epoch (master term / store instance)
     40    4 header_crc   CRC32C of bytes [0, header_len) with this field zeroed
     44    -  key bytes, then zero padding to header_len

Readers check magic, version, header_crc, key and lengths before trusting a
single byte of value, and compare value_crc against the CRC computed while
copying the value out (csrc/checksum.c), so a torn, stale or corrupted region
is reported as CHECKSUM_MISMATCH and never returned as data. Nodes rebuild
their inventory by scanning these headers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ._engine import ffi, lib
from .errors import ChecksumMismatch, InvalidParams

MAGIC = b"MCS1"
VERSION = 1
FIXED = struct.Struct("<4sBBBBHHIQQQI")
FIXED_SIZE = FIXED.size  # 44
ALIGN = 64
MAX_KEY_LEN = 4096
FLAG_TENSOR = 1
_CRC_OFFSET = 40


def header_size(key_len: int) -> int:
    return (FIXED_SIZE + key_len + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Header:
    key: bytes
    codec: int
    flags: int
    header_len: int
    value_crc: int
    value_len: int
    raw_len: int
    epoch: int


def encode_header(key: bytes, value_len: int, value_crc: int, epoch: int = 0, codec: int = 0,
                  raw_len: int | None = None, flags: int = 0) -> bytes:
    if not 0 < len(key) <= MAX_KEY_LEN:
        raise InvalidParams(f"key length must be 1..{MAX_KEY_LEN} bytes, got {len(key)}")
    hlen = header_size(len(key))
    raw_len = value_len if raw_len is None else raw_len
    buf = bytearray(hlen)
    FIXED.pack_into(buf, 0, MAGIC, VERSION, codec, flags, 0, len(key), hlen, value_crc,
                    value_len, raw_len, epoch, 0)
    buf[FIXED_SIZE:FIXED_SIZE + len(key)] = key
    hcrc = lib.mcs_crc32c(0, ffi.from_buffer(buf), hlen)
    struct.pack_into("<I", buf, _CRC_OFFSET, hcrc)
    return bytes(buf)


def decode_header(buf, limit: int | None = None) -> Header:
    """Parse and verify a header at the start of `buf` (any buffer of >= FIXED_SIZE bytes).

    `limit` bounds header_len + value_len (the size of the region it was read from).
    Raises ChecksumMismatch for anything torn, stale or corrupt.
    """
    mv = memoryview(buf).cast("B")
    if len(mv) < FIXED_SIZE:
        raise ChecksumMismatch("region too small for an object header")
    (magic, version, codec, flags, _res, key_len, hlen, vcrc, vlen, rlen, epoch,
     hcrc) = FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise ChecksumMismatch("bad header magic")
    if version != VERSION:
        raise ChecksumMismatch(f"unsupported header version {version}")
    if not 0 < key_len <= MAX_KEY_LEN or hlen != header_size(key_len) or hlen > len(mv):
        raise ChecksumMismatch("inconsistent header lengths")
    if limit is not None and hlen + vlen > limit:
        raise ChecksumMismatch("header claims more bytes than its region holds")
    scratch = bytearray(mv[:hlen])
    struct.pack_into("<I", scratch, _CRC_OFFSET, 0)
    if lib.mcs_crc32c(0, ffi.from_buffer(scratch), hlen) != hcrc:
        raise ChecksumMismatch("header checksum mismatch")
    key = bytes(mv[FIXED_SIZE:FIXED_SIZE + key_len])
    return Header(key, codec, flags, hlen, vcrc, vlen, rlen, epoch)
