"""Hypothesis over every byte-taking parser: each returns a sane result or raises
its one clean error type (the checks live in boundaries.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import boundaries as b
from fuzzcfg import fuzz_settings

from mooncake_store.transfer import TransferEngine


def seeded(seeds, max_size=4096):
    """Random bytes, or a seed with a random slice overwritten/cut (gets past magic checks)."""
    edit = st.tuples(st.sampled_from(seeds), st.integers(0, 4096), st.binary(max_size=16),
                     st.booleans()).map(
        lambda t: (t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])[:max_size] if t[3]
        else t[0][:t[1]])
    return st.one_of(st.binary(max_size=max_size), edit)


@fuzz_settings()
@given(seeded(b.HEADER_SEEDS))
def test_object_header_python(data):
    b.check_header_py(data)


@fuzz_settings()
@given(seeded(b.HEADER_SEEDS))
def test_object_header_c_agrees_and_stays_in_bounds(data):
    b.check_header_c(data)


def test_object_header_rejects_lengths_past_region():
    rec = bytearray(b.HEADER_SEEDS[1])
    for cut in (0, 10, 43, 44, 63, 64, 127, len(rec) - 1):
        b.check_header_c(bytes(rec[:cut]))
        info = b.ffi.new("mcs_rec_info *")
        assert b.lib.mcs_rec_check_header(bytes(rec[:cut]) or b"\0", cut, b.ffi.NULL, 0, info) < 0


@pytest.fixture(scope="module")
def engine():
    te = TransferEngine("127.0.0.1", use_shm=False)
    region = np.zeros(1 << 16, dtype=np.uint8)
    te.register_memory(region.ctypes.data, region.nbytes)
    yield te, region.ctypes.data, region.nbytes
    te.close()


def test_wire_header(engine):
    te, base, size = engine

    @fuzz_settings()
    @given(st.one_of(seeded(b.wire_seeds(base, size), 48),
                     st.builds(lambda op, a, n: b.WIRE.pack(b.WIRE_MAGIC, 1, op, 0, 0, 1, a, n),
                               st.sampled_from([1, 2]),
                               st.integers(base - 128, base + size + 128) | st.integers(0, 2**64 - 1),
                               st.integers(0, 2**64 - 1))))
    def check(data):
        b.check_wire(te, base, size, data)

    check()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


@fuzz_settings()
@given(st.dictionaries(st.sampled_from(b._FIELDS) | st.text(max_size=12), json_values, max_size=6))
def test_config_dict(values):
    b.check_config_dict(values)


@fuzz_settings()
@given(st.dictionaries(st.sampled_from(b._FIELDS), st.text(max_size=20), max_size=6))
def test_config_env(env):
    b.check_config_env(env)


def test_config_files():
    files = b.ConfigFiles()

    @fuzz_settings()
    @given(seeded(b.CONFIG_TEXT_SEEDS, 512), st.booleans())
    def check(text, yaml):
        files.check(text, yaml)

    try:
        check()
    finally:
        files.close()


@fuzz_settings()
@given(st.one_of(st.lists(st.integers(-2**40, 2**40), max_size=600),
                 st.lists(st.integers(0, 2**32 - 1), max_size=600),
                 st.binary(max_size=2000).map(lambda x: np.frombuffer(x[: len(x) // 4 * 4], np.int32)),
                 st.text(max_size=5), st.floats(), st.none()),
       st.sampled_from([1, 16, 256, 0, -1, 2**40]), st.sampled_from(["", "p/", 7]),
       st.booleans(), st.one_of(st.none(), st.text(max_size=70)))
def test_keys(tokens, bs, prefix, partial, parent_key):
    from mooncake_store import keys
    b.check_keys((tokens, bs, keys.DEFAULT_HASH, prefix, partial, parent_key))


trace_obj = st.fixed_dictionaries(
    {}, optional={"timestamp": st.integers(-5, 2**70) | st.floats(),
                  "input_length": st.integers(-5, 2**70) | st.booleans(),
                  "output_length": st.integers(-5, 10) | st.text(max_size=3),
                  "hash_ids": st.lists(st.integers(-2, 2**64) | st.booleans() | st.none(), max_size=8)})


@fuzz_settings()
@given(st.one_of(st.text(max_size=200), trace_obj.map(lambda d: json.dumps(d)),
                 seeded(b.TRACE_SEEDS, 200).map(lambda x: x.decode("utf-8", "replace"))))
def test_trace_line(line):
    b.check_trace_line(line)


@fuzz_settings()
@given(st.lists(st.text(max_size=80) | trace_obj.map(json.dumps), max_size=6))
def test_trace_lines(lines):
    b.check_trace_lines(lines)


@fuzz_settings()
@given(st.sampled_from(b.compress_seeds()), st.integers(0, 9), st.binary(max_size=16),
       st.one_of(st.none(), st.integers(-3, 40)), st.one_of(st.none(), st.integers(0, 2**63)))
def test_compress_decode(seed, pos, patch, cid, n):
    codec, payload, out_len = seed
    p = pos * len(payload) // 10
    payload = payload[:p] + patch + payload[p + len(patch):]
    b.check_compress(codec if cid is None else cid, payload, out_len if n is None else n)


def test_compress_refuses_huge_claims_before_allocating():
    for cid, payload, _ in b.compress_seeds():
        for n in (2**40, 2**63):
            with pytest.raises(b.StoreError):
                b.compress.decode(cid, payload, n)


@fuzz_settings()
@given(seeded(b.tensor_seeds(), 1024))
def test_tensor_description(data):
    b.check_tensor(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@fuzz_settings()
@given(st.one_of(seeded(b.RPC_SEEDS + b.HUGE_CLAIMS, 1024),
                 msgpack_values.map(b.msgpack_packb),
                 st.lists(msgpack_values, min_size=5, max_size=5).map(b.msgpack_packb)))
def test_rpc_request_decoder(frame):
    b.check_rpc_frame(frame)


@pytest.mark.parametrize("claim", b.HUGE_CLAIMS)
def test_rpc_decoder_refuses_huge_length_claims(claim):
    """A msgpack header claiming 4 GiB (or a 2^63 int) with no bytes behind it is refused
    by the length check, not by trying to allocate."""
    with pytest.raises(b.BadMessage):
        b.unpack_request(claim)

