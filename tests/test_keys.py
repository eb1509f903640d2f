"""Token-prefix keys: committed vectors, spec conformance, prefix property, isolation, bad input.

Regenerate tests/data/key_vectors.json only when KEY_SPEC_VERSION changes:
    python tests/test_keys.py --regen
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from mooncake_store.errors import InvalidParams
from mooncake_store.keys import (
    KEY_SPEC_VERSION,
    KeySpec,
    Keyer,
    Namespace,
    block_keys,
    cbor_encode,
    sglang_style_keys,
    token_array,
    vllm_style_keys,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "data" / "key_vectors.json"
DOC = ROOT / "docs" / "keys.md"

FULL_NS = dict(model="meta-llama/Llama-3.1-8B-Instruct", revision="0e9e39f", dtype="bfloat16",
               layout="NHD", tp_rank=1, tp_size=4, lora="sql-adapter", tenant="acme")


# ------------------------------------------------ independent reference ---
# Written from docs/keys.md with a per-token loop and struct, sharing no code
# with mooncake_store.keys, so a drift between the spec and the code shows.

def ref_namespace_bytes(ns: dict) -> bytes:
    out = b"MCSKEYNS" + struct.pack("<I", 1)
    for name in ("model", "revision", "dtype", "layout", "tp_rank", "tp_size", "lora", "tenant"):
        v = ns.get(name, {"tp_rank": 0, "tp_size": 1}.get(name, ""))
        if isinstance(v, int):
            out += struct.pack("<I", v)
        else:
            raw = v.encode("utf-8")
            out += struct.pack("<I", len(raw)) + raw
    return out


def ref_H(name: str, data: bytes) -> bytes:
    if name == "xxh3_128":
        return xxhash.xxh3_128_intdigest(data).to_bytes(16, "big")
    return hashlib.sha256(data).digest()


def ref_keys(ns: dict, tokens: list[int], block_size: int, hash_name: str,
             include_partial: bool, prefix: str) -> list[str]:
    seed = ref_H(hash_name, ref_namespace_bytes(ns))
    prev = bytes(len(seed))
    keys = []
    for start in range(0, len(tokens), block_size):
        block = tokens[start:start + block_size]
        if len(block) < block_size and not include_partial:
            break
        prev = ref_H(hash_name, seed + prev + b"".join(struct.pack("<I", t) for t in block))
        keys.append(prefix + prev.hex())
    return keys


def lcg_tokens(n: int, seed: int = 12345) -> list[int]:
    """Deterministic pseudo-random token ids spanning the whole uint32 range."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(x >> 32)
    return out


# ------------------------------------------------------------- vectors ---

def vector_cases() -> list[dict]:
    ten = list(range(1, 11))
    edge = [0, 1, 23, 24, 255, 256, 65535, 65536, 128000, 2**31, 2**32 - 1] + lcg_tokens(29, 7)
    cases = [
        ("worked-example", {"model": "demo/llama-tiny"}, ten, 4, "xxh3_128", False, ""),
        ("worked-example-partial", {"model": "demo/llama-tiny"}, ten, 4, "xxh3_128", True, ""),
        ("worked-example-sha256", {"model": "demo/llama-tiny"}, ten, 4, "sha256", False, ""),
        ("full-namespace", FULL_NS, edge, 16, "xxh3_128", False, ""),
        ("full-namespace-partial", FULL_NS, edge, 16, "xxh3_128", True, ""),
        ("full-namespace-sha256-partial", FULL_NS, edge, 16, "sha256", True, ""),
        ("unicode-model", {"model": "模型/ü-7B", "tenant": "t€nant"}, edge, 8, "xxh3_128", False, ""),
        ("default-block-prefixed", {"model": "m", "dtype": "float16", "tp_size": 2},
         lcg_tokens(600), 256, "xxh3_128", False, "kv1:"),
        ("default-block-sha256-partial", {"model": "m", "dtype": "float16", "tp_size": 2},
         lcg_tokens(600), 256, "sha256", True, ""),
        ("block-size-1", {"model": "m", "lora": "a"}, [5, 6, 7], 1, "sha256", False, ""),
        ("short-only-partial", {"model": "m"}, [42, 43], 4, "xxh3_128", True, ""),
        ("short-excluded", {"model": "m"}, [42, 43], 4, "xxh3_128", False, ""),
        ("empty", {"model": "m"}, [], 4, "xxh3_128", True, ""),
    ]
    out = []
    for name, ns, tokens, bs, h, partial, prefix in cases:
        nso = Namespace(**ns)
        spec = KeySpec(nso, bs, h, prefix, partial)
        out.append(dict(name=name, namespace=ns, namespace_encoding=nso.encode().hex(),
                        hash=h, seed=spec.seed.hex(), block_size=bs, include_partial=partial,
                        prefix=prefix, tokens=tokens, keys=spec.keys(tokens)))
    return out


def peer_style_cases() -> dict:
    toks = [0, 1, 23, 24, 255, 256, 65535, 65536] + lcg_tokens(56, 99)
    return {
        "sglang_style": [dict(page_size=ps, tokens=toks, keys=sglang_style_keys(toks, ps))
                         for ps in (16, 32)],
        "vllm_style": [
            dict(block_size=16, root="00" * 32, extra_keys=None, tokens=toks,
                 keys=vllm_style_keys(toks, 16)),
            dict(block_size=16, root="ab" * 32, extra_keys=["lora-a", 7, "salt"], tokens=toks,
                 keys=vllm_style_keys(toks, 16, bytes.fromhex("ab" * 32), ["lora-a", 7, "salt"])),
        ],
    }


def generate_vectors() -> dict:
    return {"spec_version": KEY_SPEC_VERSION, "cases": vector_cases(), **peer_style_cases()}


def dump_vectors(vec: dict) -> str:
    """JSON with one case per line: readable diffs, no 600-line token lists."""
    def items(xs):
        return ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in xs)
    parts = [f'"spec_version": {vec["spec_version"]}']
    parts += [f'"{k}": [\n  {items(vec[k])}\n ]' for k in ("cases", "sglang_style", "vllm_style")]
    return "{\n " + ",\n ".join(parts) + "\n}\n"


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_vectors_are_for_this_spec_version(vectors):
    assert vectors["spec_version"] == KEY_SPEC_VERSION
    names = {c["name"] for c in vectors["cases"]}
    assert {"worked-example", "full-namespace-sha256-partial", "empty"} <= names
    assert {c["hash"] for c in vectors["cases"]} == {"xxh3_128", "sha256"}


def test_code_reproduces_committed_vectors(vectors):
    for c in vectors["cases"]:
        ns = Namespace(**c["namespace"])
        assert ns.encode().hex() == c["namespace_encoding"], c["name"]
        spec = KeySpec(ns, c["block_size"], c["hash"], c["prefix"], c["include_partial"])
        assert spec.seed.hex() == c["seed"], c["name"]
        assert spec.keys(c["tokens"]) == c["keys"], c["name"]
        assert block_keys(np.array(c["tokens"], dtype=np.uint32), ns, c["block_size"], c["hash"],
                          prefix=c["prefix"], include_partial=c["include_partial"]) == c["keys"]


def test_reference_from_spec_reproduces_vectors(vectors):
    for c in vectors["cases"]:
        assert ref_namespace_bytes(c["namespace"]).hex() == c["namespace_encoding"], c["name"]
        assert ref_keys(c["namespace"], c["tokens"], c["block_size"], c["hash"],
                        c["include_partial"], c["prefix"]) == c["keys"], c["name"]


def test_peer_style_vectors(vectors):
    for c in vectors["sglang_style"]:
        assert sglang_style_keys(c["tokens"], c["page_size"]) == c["keys"]
    for c in vectors["vllm_style"]:
        assert vllm_style_keys(c["tokens"], c["block_size"], bytes.fromhex(c["root"]),
                               c["extra_keys"]) == c["keys"]


def test_vector_shapes(vectors):
    by = {c["name"]: c for c in vectors["cases"]}
    assert len(by["worked-example"]["keys"]) == 2 and len(by["worked-example-partial"]["keys"]) == 3
    assert by["worked-example-partial"]["keys"][:2] == by["worked-example"]["keys"]
    assert by["short-excluded"]["keys"] == [] and len(by["short-only-partial"]["keys"]) == 1
    assert all(len(k) == 64 for k in by["worked-example-sha256"]["keys"])
    assert all(k.startswith("kv1:") and len(k) == 36 for k in by["default-block-prefixed"]["keys"])


def test_docs_worked_example_matches_vectors(vectors):
    doc = DOC.read_text()
    by = {c["name"]: c for c in vectors["cases"]}
    for name in ("worked-example", "worked-example-partial", "worked-example-sha256"):
        for key in by[name]["keys"]:
            assert key in doc, f"docs/keys.md is missing {name} key {key}"
    assert by["worked-example"]["namespace_encoding"] in doc.replace(" ", "").replace("\n", "")
    assert by["worked-example"]["seed"] in doc


# ------------------------------------------------------------ properties ---

@settings(max_examples=150, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), max_size=120), block=st.integers(1, 17),
       cut=st.integers(0, 120), h=st.sampled_from(["xxh3_128", "sha256"]))
def test_keys_of_a_prefix_are_a_prefix_of_the_keys(tokens, block, cut, h):
    spec = KeySpec(Namespace("m"), block, h)
    full = spec.keys(tokens)
    assert len(full) == len(tokens) // block
    assert spec.keys(tokens[:cut]) == full[: min(cut, len(tokens)) // block]


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=60), block=st.integers(2, 9))
def test_partial_block_only_adds_a_last_key(tokens, block):
    spec = KeySpec(Namespace("m"), block)
    partial = KeySpec(Namespace("m"), block, include_partial=True)
    full, withp = spec.keys(tokens), partial.keys(tokens)
    assert withp[: len(full)] == full
    assert len(withp) == len(full) + (1 if len(tokens) % block else 0)


def test_differing_token_changes_its_block_and_all_later_keys():
    tokens = lcg_tokens(64)
    spec = KeySpec("m", 8)
    base = spec.keys(tokens)
    changed = list(tokens)
    changed[20] ^= 1  # block 2
    other = spec.keys(changed)
    assert other[:2] == base[:2]
    assert all(a != b for a, b in zip(other[2:], base[2:]))


def test_parent_key_continues_the_chain():
    tokens = lcg_tokens(100)
    spec = KeySpec(Namespace("m"), 16, prefix="p:")
    full = spec.keys(tokens)
    assert spec.keys(tokens[48:], parent_key=full[2]) == full[3:]
    with pytest.raises(InvalidParams, match="not a key of this spec"):
        spec.keys(tokens, parent_key=full[2][2:])
    with pytest.raises(InvalidParams, match="non-hex"):
        spec.keys(tokens, parent_key="p:" + "z" * 32)


def test_every_input_type_gives_the_same_keys():
    tokens = lcg_tokens(70, 3)
    small = [t % 30000 for t in tokens]
    spec = KeySpec(Namespace("m"), 16)
    want, want_small = spec.keys(tokens), spec.keys(small)
    assert spec.keys(tuple(tokens)) == want
    assert spec.keys(np.array(tokens, dtype=np.uint32)) == want
    assert spec.keys(np.array(tokens, dtype=np.int64)) == want
    assert spec.keys(np.array(tokens, dtype=">u4")) == want  # big-endian input, same ids
    assert spec.keys(np.array(tokens, dtype=np.uint64)[::-1][::-1]) == want
    assert spec.keys(torch.tensor(tokens, dtype=torch.int64)) == want
    assert spec.keys(torch.tensor(small, dtype=torch.int32)) == want_small
    assert spec.keys(np.array(small, dtype=np.int16)) == want_small
    assert spec.keys(range(5)) == []
    assert KeySpec("m", 1).keys(range(3)) == KeySpec("m", 1).keys([0, 1, 2])
    assert token_array([]).dtype == np.dtype("<u4")


def test_keyer_alias_and_block_keys_agree():
    tokens = lcg_tokens(40)
    assert Keyer(Namespace("m"), 8).keys(tokens) == block_keys(tokens, "m", 8)
    assert block_keys(tokens, "m", 8) == block_keys(tokens, Namespace(model="m"), 8)


# ----------------------------------------------------------- isolation ---

@pytest.mark.parametrize("change", [
    {"model": "other-model"}, {"revision": "r2"}, {"dtype": "float16"}, {"layout": "HND"},
    {"tp_rank": 2}, {"tp_size": 8}, {"lora": "other-adapter"}, {"lora": ""}, {"tenant": "b"},
])
def test_namespaces_that_differ_in_one_field_share_no_key(change):
    tokens = lcg_tokens(256)
    base = set(block_keys(tokens, Namespace(**FULL_NS), 16))
    other = set(block_keys(tokens, Namespace(**{**FULL_NS, **change}), 16))
    assert len(base) == len(other) == 16
    assert base.isdisjoint(other)


def test_field_boundaries_are_unambiguous():
    # Length-prefixed strings: moving bytes between adjacent fields changes the seed.
    a = Namespace(model="ab", revision="c")
    b = Namespace(model="a", revision="bc")
    assert a.encode() != b.encode() and a.seed() != b.seed()


def test_hashes_and_block_sizes_do_not_collide():
    tokens = lcg_tokens(64)
    x = set(block_keys(tokens, "m", 8)) | set(block_keys(tokens, "m", 16))
    s = set(block_keys(tokens, "m", 8, "sha256"))
    assert len(x) == 8 + 4 and x.isdisjoint(s)


def test_dtype_objects_are_normalized():
    assert Namespace("m", dtype=torch.bfloat16).dtype == "bfloat16"
    assert Namespace("m", dtype=np.float16).dtype == "float16"
    assert Namespace("m", dtype=np.dtype("float32")).seed() == Namespace("m", dtype="float32").seed()


# --------------------------------------------------------- determinism ---

def test_keys_are_identical_across_processes_and_hash_seeds():
    code = ("import json, sys; from mooncake_store.keys import *; "
            "ns, t = json.loads(sys.argv[1]), json.loads(sys.argv[2]); "
            "print(json.dumps([block_keys(t, Namespace(**ns), 16), "
            "block_keys(t, 'm', 64, 'sha256', include_partial=True), "
            "sglang_style_keys(t, 64), vllm_style_keys(t)]))")
    argv = [json.dumps(FULL_NS), json.dumps(lcg_tokens(300))]
    want = [block_keys(lcg_tokens(300), Namespace(**FULL_NS), 16),
            block_keys(lcg_tokens(300), "m", 64, "sha256", include_partial=True),
            sglang_style_keys(lcg_tokens(300), 64), vllm_style_keys(lcg_tokens(300))]
    for hash_seed in ("0", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == want


# ------------------------------------------------------------ bad input ---

@pytest.mark.parametrize("tokens, match", [
    ([-1, 2], "token id -1 at index 0"),
    ([1, 2**32], "token id 4294967296 at index 1"),
    ([1, 2**70], "outside"),
    ([1.0, 2.0], "must be integers"),
    ([True, False], "must be integers"),
    (["1"], "must be integers"),
    (np.array([[1, 2]]), "must be 1-D"),
    (np.array([1.5]), "must be integers"),
    (np.array([-5], dtype=np.int8), "token id -5"),
    (np.array([2**40], dtype=np.uint64), "token id 1099511627776"),
    (torch.tensor([1.0]), "must be integers"),
    (torch.tensor([True]), "must be integers"),
    (torch.tensor([-3]), "token id -3"),
    ("abc", "1-D list"),
    (b"abc", "1-D list"),
    (5, "1-D list"),
    (iter([1, 2]), "1-D list"),
    (None, "1-D list"),
])
def test_bad_tokens_raise_clear_errors(tokens, match):
    with pytest.raises(InvalidParams, match=match):
        block_keys(tokens, "m", 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_size=0), "block_size must be in"),
    (dict(block_size=-4), "block_size must be in"),
    (dict(block_size=2.0), "block_size must be an int"),
    (dict(block_size=True), "block_size must be an int"),
    (dict(hash="md5"), "hash must be one of"),
    (dict(prefix="has space"), "prefix must be"),
    (dict(prefix=3), "prefix must be a str"),
    (dict(include_partial="yes"), "include_partial"),
    (dict(namespace=3), "namespace must be"),
])
def test_bad_spec_raises_clear_errors(kwargs, match):
    args = dict(namespace="m", block_size=4)
    args.update(kwargs)
    with pytest.raises(InvalidParams, match=match):
        block_keys([1, 2, 3, 4], **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model=""), "model must be a non-empty"),
    (dict(model=None), "model must be a str"),
    (dict(model="m", tp_rank=4, tp_size=4), "tp_rank must be in"),
    (dict(model="m", tp_rank=-1), "tp_rank must be in"),
    (dict(model="m", tp_size=0), "tp_size must be in"),
    (dict(model="m", tp_size=2.0), "tp_size must be an int"),
    (dict(model="m", lora=None), "lora must be a str"),
    (dict(model="m", dtype=object()), "dtype must be a str"),
    (dict(model="m" * 70000), "over 65535"),
    (dict(model="m", spec_version=2), "unsupported key spec version 2"),
])
def test_bad_namespace_raises_clear_errors(kwargs, match):
    with pytest.raises(InvalidParams, match=match):
        Namespace(**kwargs)


def test_invalid_params_is_a_value_error():
    with pytest.raises(ValueError):
        block_keys([-1], "m", 1)


# ------------------------------------------------------- peer helpers ---

def test_sglang_style_matches_its_definition():
    tokens = lcg_tokens(130, 5)
    want, prev = [], None
    for start in range(0, 128, 64):
        h = hashlib.sha256()
        if prev is not None:
            h.update(bytes.fromhex(prev))
        for t in tokens[start:start + 64]:
            h.update(t.to_bytes(4, "little"))
        prev = h.hexdigest()
        want.append(prev)
    assert sglang_style_keys(tokens) == want
    assert sglang_style_keys(tokens[:63]) == []


def test_vllm_style_matches_its_definition():
    tokens = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 7, 8, 9] + lcg_tokens(20)
    root = bytes(range(32))
    want, parent = [], root
    for start in range(0, 32, 16):
        parent = hashlib.sha256(cbor_encode([parent, tokens[start:start + 16], ["x", 1]])).digest()
        want.append(parent.hex())
    assert vllm_style_keys(tokens, 16, root, ["x", 1]) == want
    assert vllm_style_keys(tokens, 16, root, None) != want


@pytest.mark.parametrize("value, hexed", [  # RFC 8949 Appendix A
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (False, "f4"), (True, "f5"), (None, "f6"), (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\u00fc", "62c3bc"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
])
def test_cbor_encoder_matches_rfc_examples(value, hexed):
    assert cbor_encode(value).hex() == hexed


def test_cbor_rejects_unsupported_types():
    with pytest.raises(InvalidParams, match="cannot CBOR-encode float"):
        vllm_style_keys(list(range(16)), 16, extra_keys=[1.5])


if __name__ == "__main__":
    if sys.argv[1:] == ["--regen"]:
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(dump_vectors(generate_vectors()))
        print(f"wrote {VECTORS}")
    else:
        print(__doc__)
