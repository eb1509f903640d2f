"""Cold-tier codec: round trips for every dtype and length, raw fallback, hostile payloads."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mooncake_store import compress as c
from mooncake_store.errors import ChecksumMismatch, ErrorCode, InvalidParams, StoreError

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8,
          torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
          torch.float8_e4m3fn, torch.float8_e5m2]
CODEC_CHOICES = ["lz4", "zstd", "auto"]


def sample(dtype: torch.dtype, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(n, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, (n,), generator=g,
                         dtype=torch.int64).to(dtype)


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def width_of(t: torch.Tensor) -> int:
    return min(t.element_size(), 8)


# ----------------------------------------------------------- round trip ---

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("codec", CODEC_CHOICES)
@pytest.mark.parametrize("n", [0, 1, 3, 1001, 65_537])
def test_round_trip_every_dtype(dtype, codec, n):
    t = sample(dtype, n)
    cid, payload = c.encode(t, width_of(t), codec)
    assert 0 <= cid < 256
    assert c.decode(cid, payload, len(raw_bytes(t))) == raw_bytes(t)
    back = torch.empty_like(t)
    assert c.decode_into(cid, payload, back) == len(raw_bytes(t))
    assert torch.equal(back.view(torch.uint8) if n else back, t.view(torch.uint8) if n else t)


@pytest.mark.parametrize("shape", [(), (3, 5, 7), (2, 1, 33)])
def test_round_trip_shapes(shape):
    t = torch.randn(shape).to(torch.bfloat16)
    cid, payload = c.encode(t, 2, "auto", min_saving=0.0)
    back = torch.empty_like(t)
    c.decode_into(cid, payload, back)
    assert torch.equal(back, t)


@pytest.mark.parametrize("elem_size", [1, 2, 4, 8])
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_every_odd_length_round_trips_compressed(elem_size, codec):
    pattern = np.tile(np.arange(7, dtype=np.uint8), 40)  # compressible, so the codec path runs
    for n in range(c.MIN_INPUT, c.MIN_INPUT + 3 * elem_size + 2):
        data = pattern[:n].tobytes()
        cid, payload = c.encode(data, elem_size, codec)
        assert cid == c._ID_FOR[(elem_size, codec)], n
        assert c.decode(cid, payload, n) == data


def test_small_values_stay_raw():
    for n in range(c.MIN_INPUT):
        data = bytes(n)
        assert c.encode(data, 2, "zstd") == (c.RAW, data)
        assert c.decode(c.RAW, data, n) == data


def test_compressed_paths_are_taken_on_kv_like_data():
    bf16 = sample(torch.bfloat16, 1 << 16)
    fp16 = sample(torch.float16, 1 << 16)
    fp32 = sample(torch.float32, 1 << 15)
    assert c.encode(bf16, 2, "lz4")[0] == c.SHUF2_LZ4
    assert c.encode(bf16, 2, "zstd")[0] == c.SHUF2_ZSTD
    assert c.encode(fp16, 2, "zstd")[0] == c.SHUF2_ZSTD
    assert c.encode(fp32, 4, "zstd")[0] == c.SHUF4_ZSTD
    # plain lz4 on fp16 noise saves nothing, so it is stored raw (the point of the threshold)
    assert c.encode(fp16, 2, "lz4")[0] == c.RAW
    assert c.encode(fp16, 1, "zstd")[1] != c.encode(fp16, 2, "zstd")[1]


def test_shuffle_groups_byte_k_of_every_element():
    data = np.arange(14, dtype=np.uint8)
    assert c.shuffle(data, 4).tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, 12, 13]
    assert c.shuffle(data, 2).tolist() == [0, 2, 4, 6, 8, 10, 12, 1, 3, 5, 7, 9, 11, 13]
    out = np.empty_like(data)
    c.unshuffle_into(c.shuffle(data, 4), 4, out)
    assert out.tolist() == data.tolist()


# --------------------------------------------------------------- choice ---

@pytest.mark.parametrize("codec", CODEC_CHOICES)
def test_random_bytes_are_stored_raw(codec):
    data = os.urandom(1 << 18)
    assert c.encode(data, 2, codec) == (c.RAW, data)


@pytest.mark.parametrize("kind", ["bf16", "zeros", "text"])
def test_auto_prefers_lz4_unless_zstd_is_clearly_smaller(kind):
    data = {"bf16": lambda: raw_bytes(sample(torch.bfloat16, 1 << 16)),
            "zeros": lambda: bytes(1 << 17),
            "text": lambda: b"".join(b"token %d, " % i for i in range(20_000))}[kind]()
    lz4 = c.encode(data, 2, "lz4")[1]
    zstd = c.encode(data, 2, "zstd")[1]
    want = (c.SHUF2_ZSTD, zstd) if len(zstd) * c.AUTO_LZ4_SLACK < len(lz4) else (c.SHUF2_LZ4, lz4)
    assert c.encode(data, 2, "auto") == want
    assert c.decode(*want, len(data)) == data


def test_auto_judges_large_values_on_a_sample():
    # A compressible head picks the backend; the whole value then gets only that one.
    head = raw_bytes(sample(torch.bfloat16, c.AUTO_SAMPLE))  # 2 * AUTO_SAMPLE bytes of bf16
    data = head + bytes(c.AUTO_SAMPLE)
    assert len(data) > 2 * c.AUTO_SAMPLE
    cid, payload = c.encode(data, 2, "auto")
    assert cid == c.SHUF2_ZSTD  # bf16 noise: zstd is far smaller than lz4
    assert c.decode(cid, payload, len(data)) == data


def test_auto_uses_only_installed_backends(monkeypatch):
    bf16 = sample(torch.bfloat16, 1 << 15)
    assert c.available_backends() == ("lz4", "zstd")

    def missing():
        raise InvalidParams("codec zstd needs the 'zstandard' package")

    monkeypatch.setattr(c, "_zstd", missing)
    assert c.available_backends() == ("lz4",)
    assert c.encode(bf16, 2, "auto")[0] == c.SHUF2_LZ4
    with pytest.raises(InvalidParams, match="zstandard"):
        c.encode(bf16, 2, "zstd")
    monkeypatch.setattr(c, "_lz4", missing)
    assert c.encode(bf16, 2, "auto") == (c.RAW, raw_bytes(bf16))


def test_min_saving_threshold():
    bf16 = sample(torch.bfloat16, 1 << 16)
    cid, payload = c.encode(bf16, 2, "lz4")
    saving = 1 - len(payload) / (2 << 16)
    assert cid == c.SHUF2_LZ4 and saving >= 0.10
    assert c.encode(bf16, 2, "lz4", min_saving=min(0.99, saving + 0.01))[0] == c.RAW
    assert c.encode(bf16, 2, "none") == (c.RAW, raw_bytes(bf16))


def test_codec_ids_are_stable():
    assert (c.RAW, c.SHUF2_LZ4, c.SHUF2_ZSTD, c.SHUF4_LZ4, c.SHUF4_ZSTD, c.LZ4, c.ZSTD,
            c.SHUF8_LZ4, c.SHUF8_ZSTD) == tuple(range(9))
    assert c.codec_name(1) == "shuffle2+lz4" and c.codec_name(6) == "zstd"
    assert c.codec_name(0) == "raw" and c.codec_name(200) == "unknown(200)"


# ------------------------------------------------------------- buffers ---

def test_input_and_output_buffer_kinds():
    t = sample(torch.bfloat16, 4096)
    data = raw_bytes(t)
    arr = np.frombuffer(data, dtype=np.uint16)
    for src in (data, bytearray(data), memoryview(data), arr, t):
        cid, payload = c.encode(src, 2, "zstd")
        assert cid == c.SHUF2_ZSTD
        assert c.decode(cid, memoryview(payload), len(data)) == data
    cid, payload = c.encode(t, 2, "lz4")
    for out in (bytearray(len(data) + 10), np.zeros(len(data) // 2, np.uint16),
                torch.empty(len(data) // 2, dtype=torch.bfloat16)):
        assert c.decode_into(cid, bytearray(payload), out, len(data)) == len(data)
        assert bytes(memoryview(_flat(out))[: len(data)]) == data


def _flat(out):
    if isinstance(out, torch.Tensor):
        return out.view(torch.uint8).numpy()
    return np.frombuffer(out, dtype=np.uint8) if isinstance(out, bytearray) else out.view(np.uint8)


@pytest.mark.parametrize("out, match", [
    (bytearray(10), "out holds 10 bytes"),
    (b"\0" * 100_000, "writable"),
    (np.zeros((100_000, 2), np.uint8)[:, 0], "C-contiguous"),
    (torch.zeros(400, 400, dtype=torch.uint8).t(), "contiguous"),
    (object(), "out must be a bytes-like"),
])
def test_bad_output_buffers(out, match):
    cid, payload = c.encode(bytes(1000), 2, "lz4")
    with pytest.raises(InvalidParams, match=match):
        c.decode_into(cid, payload, out, 1000)


# ----------------------------------------------------------- bad input ---

@pytest.mark.parametrize("kwargs, match", [
    (dict(elem_size=3), "elem_size must be 1, 2, 4 or 8"),
    (dict(elem_size=True), "elem_size"),
    (dict(codec="gzip"), "codec must be one of"),
    (dict(min_saving=1.5), "min_saving"),
    (dict(codec="zstd", level=99), "level must be a zstd level"),
    (dict(codec="zstd", level="fast"), "level must be a zstd level"),
])
def test_bad_encode_args(kwargs, match):
    with pytest.raises(InvalidParams, match=match):
        c.encode(bytes(1000), **kwargs)


@pytest.mark.parametrize("data", [None, 12, "text", [1, 2]])
def test_bad_encode_data(data):
    with pytest.raises(InvalidParams, match="data must be"):
        c.encode(data)


def _payloads() -> list[tuple[int, bytes, int]]:
    t = sample(torch.bfloat16, 20_000, seed=3)
    out = []
    for codec in ("lz4", "zstd"):
        for w in (1, 2, 4):
            cid, p = c.encode(t, w, codec, min_saving=0.0) if w != 1 else c.encode(
                bytes(40_000), 1, codec)
            assert cid != c.RAW
            out.append((cid, p, 40_000))
    return out


def test_truncated_extended_and_flipped_payloads_raise_corrupt():
    for cid, payload, n in _payloads():
        for cut in (0, 1, 7, len(payload) // 2, len(payload) - 1):
            with pytest.raises(c.CorruptPayload):
                c.decode(cid, payload[:cut], n)
        with pytest.raises(c.CorruptPayload):
            c.decode(cid, payload + b"\0junk", n)
        for pos in (0, 5, len(payload) // 3, len(payload) // 2, len(payload) - 9, len(payload) - 1):
            bad = bytearray(payload)
            bad[pos] ^= 0x5A
            with pytest.raises(c.CorruptPayload):
                c.decode(cid, bytes(bad), n)


def test_wrong_out_len_raises_corrupt():
    for cid, payload, n in _payloads():
        for wrong in (n - 1, n + 1, n * 2, 0):
            with pytest.raises(c.CorruptPayload):
                c.decode(cid, payload, wrong)
    with pytest.raises(c.CorruptPayload, match="raw payload is 3 bytes"):
        c.decode(c.RAW, b"abc", 4)


def test_huge_out_len_is_refused_before_any_allocation():
    # Each of these would ask for GiBs if the length were trusted.
    with pytest.raises(c.CorruptPayload, match="exceeds the decode limit"):
        c.decode(c.SHUF2_LZ4, b"x" * 100, 1 << 40)
    with pytest.raises(c.CorruptPayload, match="cannot hold"):
        c.decode(c.SHUF2_LZ4, b"x" * 100, 1 << 30)
    with pytest.raises(c.CorruptPayload, match="cannot hold"):
        c.decode(c.SHUF2_ZSTD, b"x" * 100, 1 << 30)
    cid, payload = c.encode(bytes(1 << 20), 2, "zstd")
    with pytest.raises(c.CorruptPayload, match="exceeds the decode limit"):
        c.decode(cid, payload, 1 << 20, limit=1 << 19)
    bf16 = sample(torch.bfloat16, 1 << 16)
    cid, payload = c.encode(bf16, 2, "zstd")
    with pytest.raises(c.CorruptPayload, match="frame declares 131072 bytes, expected 131074"):
        c.decode(cid, payload, (1 << 17) + 2)


def test_unknown_codec_ids_and_bad_args():
    for cid in (9, 100, 255, -1):
        with pytest.raises(c.UnknownCodec, match=f"unknown codec id {cid}"):
            c.decode(cid, b"payload", 7)
    with pytest.raises(InvalidParams, match="codec_id must be an int"):
        c.decode("lz4", b"payload", 7)
    with pytest.raises(InvalidParams, match="out_len must be a non-negative int"):
        c.decode(c.SHUF2_LZ4, b"payload", -1)
    with pytest.raises(InvalidParams, match="payload must be"):
        c.decode(c.SHUF2_LZ4, None, 7)


def test_corruption_errors_are_checksum_mismatches():
    err = c.UnknownCodec("x")
    assert isinstance(err, c.CorruptPayload) and isinstance(err, ChecksumMismatch)
    assert isinstance(err, StoreError) and err.code == ErrorCode.CHECKSUM_MISMATCH


@settings(max_examples=300, deadline=None)
@given(cid=st.integers(0, 12), payload=st.binary(max_size=300), out_len=st.integers(0, 1 << 16))
def test_garbage_payloads_never_crash(cid, payload, out_len):
    try:
        out = c.decode(cid, payload, out_len)
    except StoreError as e:  # CorruptPayload / UnknownCodec
        assert e.code == ErrorCode.CHECKSUM_MISMATCH
    else:  # only possible if the garbage happens to be a valid payload of that length
        assert len(out) == out_len


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), w=st.sampled_from([1, 2, 4, 8]),
       codec=st.sampled_from(CODEC_CHOICES))
def test_any_bytes_round_trip(data, w, codec):
    cid, payload = c.encode(data, w, codec, min_saving=0.0)
    assert c.decode(cid, payload, len(data)) == data


def test_concurrent_encode_decode_from_threads():
    tensors = [sample(torch.bfloat16, 30_000, seed=i) for i in range(8)]
    errors: list[BaseException] = []

    def work(t):
        try:
            for codec in ("zstd", "lz4", "auto"):
                cid, p = c.encode(t, 2, codec)
                assert c.decode(cid, p, t.numel() * 2) == raw_bytes(t)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in tensors]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and not any(th.is_alive() for th in threads)
