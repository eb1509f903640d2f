"""Defects the fuzzers found in parsers this suite does not own, kept as regression
tests now that they are fixed (non-UTF-8 config files, non-UTF-8 tensor dtype names)."""
from __future__ import annotations

import pytest
import torch

import boundaries as b

from mooncake_store.client import tensors
from mooncake_store.errors import InvalidParams, StoreError


def test_non_utf8_config_file_is_a_clean_error(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b'{"capacity": "\xb2"}')
    with pytest.raises(InvalidParams):
        b.cfgmod.Config.load(path=str(p), env={})


def test_tensor_with_non_utf8_dtype_name_is_a_clean_error():
    meta = bytearray(tensors.encode_meta(torch.zeros(2)))
    meta[8] = 0xCF  # first byte of the dtype name
    buf = torch.frombuffer(meta + bytearray(8), dtype=torch.uint8)
    with pytest.raises(StoreError):
        tensors.decode(buf)
