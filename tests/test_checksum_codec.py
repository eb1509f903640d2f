"""CRC32C and the record format: C and Python agree, and corruption is always caught."""
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from mooncake_store._engine import ffi, lib
from mooncake_store.codec import FIXED_SIZE, decode_header, encode_header, header_size
from mooncake_store.errors import ChecksumMismatch, InvalidParams


def crc32c_reference(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vector():
    assert lib.mcs_crc32c(0, b"123456789", 9) == 0xE3069283


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 255, 256, 511, 512, 513, 1000, 4095, 4096, 4097,
                               12289, 65537])
def test_crc32c_matches_reference_all_paths(n):
    data = os.urandom(n)
    assert lib.mcs_crc32c(0, data, n) == crc32c_reference(data)
    dst = bytearray(n)
    assert lib.mcs_copy_crc32c(ffi.from_buffer(dst), data, n, 0) == crc32c_reference(data)
    assert bytes(dst) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20000), st.integers(min_value=0, max_value=20000))
def test_crc32c_combine_and_continue(data, cut):
    cut = min(cut, len(data))
    a, b = data[:cut], data[cut:]
    whole = lib.mcs_crc32c(0, data, len(data))
    assert lib.mcs_crc32c(lib.mcs_crc32c(0, a, len(a)), b, len(b)) == whole
    assert lib.mcs_crc32c_combine(lib.mcs_crc32c(0, a, len(a)), lib.mcs_crc32c(0, b, len(b)),
                                  len(b)) == whole


def _c_record(key: bytes, value: bytes, epoch=3, codec=0, flags=0) -> bytearray:
    region = bytearray(header_size(len(key)) + len(value))
    n = lib.mcs_rec_write(ffi.from_buffer(region), len(region), key, len(key), value, len(value),
                          epoch, codec, flags, 0)
    assert n == len(region)
    return region


def test_c_writer_python_reader_agree():
    key, value = b"block/0001", os.urandom(5000)
    region = _c_record(key, value, epoch=42, codec=1, flags=1)
    h = decode_header(region, limit=len(region))
    assert (h.key, h.value_len, h.raw_len, h.epoch, h.codec, h.flags) == \
        (key, 5000, 5000, 42, 1, 1)
    assert h.value_crc == crc32c_reference(value)
    py = encode_header(key, len(value), h.value_crc, epoch=42, codec=1, flags=1)
    assert bytes(region[:len(py)]) == py


def test_c_reader_verifies_every_byte():
    key, value = b"k", os.urandom(3000)
    region = _c_record(key, value)
    out = bytearray(len(value))
    info = ffi.new("mcs_rec_info *")
    assert lib.mcs_rec_read(ffi.from_buffer(region), len(region), key, 1, ffi.from_buffer(out),
                            len(out), info) == len(value)
    assert bytes(out) == value
    for pos in (0, 5, 12, 20, FIXED_SIZE, header_size(1) + 17, len(region) - 1):
        bad = bytearray(region)
        bad[pos] ^= 0x40
        rc = lib.mcs_rec_read(ffi.from_buffer(bad), len(bad), key, 1, ffi.from_buffer(out),
                              len(out), ffi.NULL)
        assert rc == -801, pos


def test_c_reader_rejects_wrong_key_small_buffer_and_short_region():
    region = _c_record(b"abc", b"x" * 100)
    out = bytearray(100)
    p = ffi.from_buffer(region)
    assert lib.mcs_rec_read(p, len(region), b"abd", 3, ffi.from_buffer(out), 100, ffi.NULL) == -801
    assert lib.mcs_rec_read(p, len(region), b"abc", 3, ffi.from_buffer(out), 99, ffi.NULL) == -600
    assert lib.mcs_rec_read(p, len(region) - 1, b"abc", 3, ffi.from_buffer(out), 100,
                            ffi.NULL) == -801


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_header_parsers_never_crash_on_garbage(blob):
    with pytest.raises(ChecksumMismatch):
        decode_header(blob)
    assert lib.mcs_rec_check_header(blob, len(blob), ffi.NULL, 0, ffi.NULL) == -801


def test_header_limits():
    with pytest.raises(InvalidParams):
        encode_header(b"", 1, 0)
    with pytest.raises(InvalidParams):
        encode_header(b"x" * 4097, 1, 0)
    h = encode_header(b"x", 10, 0)
    with pytest.raises(ChecksumMismatch):
        decode_header(h, limit=len(h) + 9)  # region too small for the value it claims
    fake = bytearray(h)
    struct.pack_into("<Q", fake, 16, 1 << 63)
    with pytest.raises(ChecksumMismatch):
        decode_header(fake)


@pytest.mark.parametrize("n", [256 << 10, (256 << 10) + 5, (1 << 20) + 77, 5 << 20])
def test_large_buffers_agree_with_the_small_buffer_path(n):
    # Buffers from 512 bytes take the carry-less-multiply path where the CPU has it;
    # chunks below that the crc32 instruction. Both must agree.
    data = os.urandom(n)
    chained = 0
    for i in range(0, n, 500):
        chunk = data[i:i + 500]
        chained = lib.mcs_crc32c(chained, chunk, len(chunk))
    assert lib.mcs_crc32c(0, data, n) == chained
    dst = bytearray(n)
    assert lib.mcs_copy_crc32c(ffi.from_buffer(dst), data, n, 7) == \
        lib.mcs_crc32c(7, data, n)
    assert bytes(dst) == data


def test_large_buffer_matches_reference():
    data = os.urandom((256 << 10) + 3)
    assert lib.mcs_crc32c(0, data, len(data)) == crc32c_reference(data)
