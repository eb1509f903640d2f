"""Every boundary that takes bytes from a peer or a user, as (generate, check) pairs.

`check(case)` feeds one input to the real parser and asserts its contract: it
either returns a well-formed result or raises the one clean error type that
boundary promises (never a traceback from deep inside, never a crash). The
hypothesis suites in this folder and the long run in bench/fuzz_all.py share
these checks; `gen(rng)` makes one case for the long run, half of them by
mutating a valid seed so the parsers get past their first checks.
"""
from __future__ import annotations

import json
import os
import random
import tempfile

import numpy as np

from mooncake_store import compress, config as cfgmod, keys, trace
from mooncake_store._engine import ffi, lib
from mooncake_store.client import tensors
from mooncake_store.codec import FIXED_SIZE, decode_header, encode_header
from mooncake_store.errors import ChecksumMismatch, InvalidParams, StoreError
import msgpack

from mooncake_store.rpc.protocol import BadMessage, pack_request, unpack_request
from support.wire import HDR, MAGIC


def msgpack_packb(v) -> bytes:
    return msgpack.packb(v, use_bin_type=True)

# Defects found by this fuzzing in files this suite does not own, reported to their
# owner (docs/RELIABILITY.md "Findings"). Each is tolerated here only in its exact
# form, counted, and pinned by a strict xfail test in test_findings.py, so the
# tolerance has to be removed the day the fix lands.
FINDINGS: dict[str, int] = {}


def _known(name: str) -> None:
    FINDINGS[name] = FINDINGS.get(name, 0) + 1


# ---------------------------------------------------------------- mutation ---

def mutate(rng: random.Random, seed: bytes, max_len: int = 4096) -> bytes:
    """A few random edits of `seed`: bit flips, byte sets, interesting ints, cuts, inserts."""
    b = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2 and len(b) >= 8:
            i = rng.randrange(len(b) - 7)
            v = rng.choice((0, 1, 2**63, 2**64 - 1, 2**32, 2**31 - 1, rng.getrandbits(64)))
            b[i:i + 8] = v.to_bytes(8, "little")
        elif op == 3 and b:
            del b[rng.randrange(len(b)):]
        elif op == 4:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5 and len(b) > 1:
            i, j = sorted(rng.sample(range(len(b)), 2))
            b[i:j] = b[i:j][::-1]
    return bytes(b[:max_len])


def bytes_case(rng: random.Random, seeds: list[bytes], max_len: int = 4096) -> bytes:
    if rng.random() < 0.5:
        return mutate(rng, rng.choice(seeds), max_len)
    return rng.randbytes(rng.randint(0, min(max_len, 256)))


# ------------------------------------------------------ object header (py) ---

def _record(key: bytes, value: bytes) -> bytes:
    crc = lib.mcs_crc32c(0, value, len(value))
    return encode_header(key, len(value), crc, epoch=7) + value


HEADER_SEEDS = [_record(b"k", b"v" * 10), _record(b"x" * 100, bytes(range(256))),
                _record("ключ".encode(), b"")]


def check_header_py(data: bytes) -> None:
    try:
        h = decode_header(data, limit=len(data))
    except ChecksumMismatch:
        return
    assert 0 < len(h.key) <= 4096 and h.header_len % 64 == 0
    assert h.header_len + h.value_len <= len(data)
    assert bytes(data[FIXED_SIZE:FIXED_SIZE + len(h.key)]) == h.key


# ------------------------------------------------------- object header (C) ---

def check_header_c(data: bytes) -> None:
    """mcs_rec_check_header / mcs_rec_read agree with the Python decoder and never read past."""
    # An exact-size cffi copy: any read past len(data) is a real overrun (ASan-visible).
    region = ffi.new("uint8_t[]", max(len(data), 1))
    ffi.memmove(region, data, len(data))
    info = ffi.new("mcs_rec_info *")
    rc = lib.mcs_rec_check_header(region, len(data), ffi.NULL, 0, info)
    try:
        py = decode_header(data, limit=len(data))
    except ChecksumMismatch:
        py = None
    assert (rc == 0) == (py is not None), (rc, py)
    if rc != 0:
        assert rc < 0
        return
    assert info.header_len == py.header_len and info.value_len == py.value_len
    # Read with the right key, then with a wrong one, into an exact-size buffer.
    dst = ffi.new("uint8_t[]", max(info.value_len, 1))
    n = lib.mcs_rec_read(region, len(data), py.key, len(py.key), dst, info.value_len, ffi.NULL)
    if n >= 0:
        assert n == info.value_len
        assert ffi.buffer(dst, n)[:] == data[info.header_len:info.header_len + n]
    wrong = py.key + b"!"
    assert lib.mcs_rec_read(region, len(data), wrong, len(wrong), dst, info.value_len, ffi.NULL) < 0


# ------------------------------------------------- transfer wire header (C) ---

WIRE, WIRE_MAGIC = HDR, MAGIC      # the request header of tests/support/wire.py


def wire_seeds(base: int, size: int) -> list[bytes]:
    return [WIRE.pack(WIRE_MAGIC, 1, op, 0, 0, 9, base + off, n)
            for op, off, n in ((1, 0, 64), (2, 128, 4096), (2, size - 8, 8), (3, 0, 0))]


def check_wire(te, base: int, size: int, data: bytes) -> int:
    """The server's verdict on one request header: a code, and never 0 for bytes out of bounds."""
    rc = te.check_wire_header(data)
    assert rc <= 0
    if rc == 0 and len(data) >= 40:
        magic, version, op, status, reserved, _rid, addr, n = WIRE.unpack_from(data)
        if op in (1, 2):
            assert base <= addr and addr + n <= base + size, "accepted out-of-region access"
    return rc


# ----------------------------------------------------------- config loader ---

_FIELDS = cfgmod.Config.fields() + list(cfgmod.Config._ALIASES)
_VALUES = [0, -1, 1, 2**63, -2**63, 0.5, 1.5, float("nan"), float("inf"), True, False, None, "",
           "16MB", "4 GB", "1e9", "x" * 300, "tcp", "rdma", "on-hit", "auto", [], {}, [1], {"a": 1}]


def gen_config_dict(rng: random.Random) -> dict:
    out = {}
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(_FIELDS) if rng.random() < 0.9 else rng.randbytes(4).hex()
        val = rng.choice(_VALUES) if rng.random() < 0.7 else rng.choice(
            (rng.getrandbits(70) - 2**69, rng.random() * 10 - 2, rng.randbytes(6).decode("latin-1")))
        out[name] = val
    return out


def check_config_dict(values: dict) -> None:
    try:
        cfg = cfgmod.Config.load(values, env={})
    except InvalidParams:
        return
    assert isinstance(cfg.global_segment_size, int) and cfg.global_segment_size >= 0
    assert 0 < cfg.high_watermark <= 1 and cfg.protocol in ("tcp", "rdma", "shm")


def check_config_env(env: dict) -> None:
    try:
        cfgmod.Config.load(env={f"MOONCAKE_{k.upper()}": v for k, v in env.items()})
    except InvalidParams:
        return


class ConfigFiles:
    """Writes each case to one reused temp file (JSON or YAML by suffix)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mcs-fuzz-cfg-")

    def check(self, text: bytes, yaml: bool) -> None:
        path = os.path.join(self.dir, "c.yaml" if yaml else "c.json")
        with open(path, "wb") as f:
            f.write(text)
        try:
            cfgmod.Config.load(path=path, env={})
        except InvalidParams:
            return

    def close(self) -> None:
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


CONFIG_TEXT_SEEDS = [json.dumps({"capacity": "16MB", "protocol": "tcp", "high_watermark": 0.9}).encode(),
                     b"capacity: 16MB\nprotocol: tcp\nlease_ttl_ms: 100\n",
                     b"- a\n- b\n", b"a: &x [*x]\n", b"{\"max_key_len\": 1e400}"]


# -------------------------------------------------------------------- keys ---

def gen_tokens(rng: random.Random):
    kind = rng.randrange(7)
    n = rng.randint(0, 600)
    if kind == 0:
        return [rng.randint(0, 2**32 - 1) for _ in range(n)]
    if kind == 1:
        return [rng.choice((-1, 2**32, 2**64, 0, 5)) for _ in range(rng.randint(0, 5))]
    if kind == 2:
        dt = rng.choice((np.int8, np.int32, np.int64, np.uint16, np.uint64, np.float32, np.bool_))
        return np.frombuffer(rng.randbytes(n * np.dtype(dt).itemsize), dtype=dt)
    if kind == 3:
        return rng.choice(("abc", b"abc", None, 3.5, {"a": 1}, [[1, 2]], [1.0, 2.0], [True]))
    if kind == 4:
        return np.zeros((2, 3), dtype=np.int32)
    if kind == 5:
        return tuple(rng.randint(0, 50000) for _ in range(n))
    return range(rng.randint(0, 2000))


def gen_key_args(rng: random.Random) -> tuple:
    bs = rng.choice((1, 16, 256, 0, -3, 2**40, 1.5, "16"))
    return (gen_tokens(rng), bs, rng.choice((keys.DEFAULT_HASH, "sha256", "md5", "nope")),
            rng.choice(("", "p/", 5)), rng.choice((False, True, 1)),
            rng.choice(("", rng.randbytes(8).hex() * 8, "zz" * 32, None)))


def check_keys(args: tuple) -> None:
    tokens, bs, hash_name, prefix, partial, parent_key = args
    try:
        spec = keys.KeySpec("m", bs, hash_name, prefix, partial)
        out = spec.keys(tokens)
    except InvalidParams:
        return
    assert all(isinstance(k, str) and k.startswith(spec.prefix) for k in out)
    for k in out[:2]:
        assert spec.digest_of(k)
    if parent_key is not None:
        try:
            spec.keys(tokens, parent_key=parent_key)
        except InvalidParams:
            pass


# ------------------------------------------------------------------- trace ---

TRACE_SEEDS = [b'{"timestamp": 0, "input_length": 512, "output_length": 10, "hash_ids": [1, 2, 3]}',
               b'{"timestamp": 1.5, "input_length": 0, "output_length": 0, "hash_ids": []}']


def check_trace_line(line: str) -> None:
    try:
        r = trace.parse_request(line, "fuzz:1")
    except trace.TraceError:
        return
    assert r.input_length >= 0 and r.output_length >= 0
    assert len(set(r.hash_ids)) == len(r.hash_ids)


def check_trace_lines(lines: list[str]) -> None:
    try:
        trace.parse_lines(lines, "fuzz")
    except trace.TraceError:
        return


# ----------------------------------------------------------- compress.decode ---

def compress_seeds() -> list[tuple[int, bytes, int]]:
    raw = np.arange(2048, dtype=np.uint16).tobytes()
    out = []
    for codec in ("lz4", "zstd"):
        for width in (1, 2, 4):
            cid, payload = compress.encode(raw, elem_size=width, codec=codec, min_saving=0)
            out.append((cid, payload, len(raw)))
    return out


def check_compress(codec_id: int, payload: bytes, out_len: int) -> None:
    try:
        out = compress.decode(codec_id, payload, out_len, limit=1 << 24)
    except StoreError:
        return
    assert len(out) == out_len


# ------------------------------------------------------------ tensor decode ---

def tensor_seeds() -> list[bytes]:
    import torch
    out = []
    for t in (torch.arange(12, dtype=torch.float16).reshape(3, 4), torch.zeros(0, dtype=torch.int64),
              torch.tensor(3.0), torch.ones(2, 2, 2, dtype=torch.bfloat16)):
        out.append(tensors.encode_meta(t) + tensors.host_bytes_view(t).numpy().tobytes())
    return out


def check_tensor(data: bytes) -> None:
    import torch
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    try:
        t = tensors.decode(buf)
    except StoreError:
        return
    assert isinstance(t, torch.Tensor)
    assert t.numel() * t.element_size() <= len(data)


# -------------------------------------------------------------- rpc frames ---

RPC_SEEDS = [pack_request(1, "get_replica_list", ["key"], ""),
             pack_request(2**40, "put_start", ["k", 100, {"replica_num": 2}], "secret"),
             pack_request(3, "x", [[1, 2], {"a": b"\0" * 40}], "")]

# msgpack headers that claim huge lengths with almost no bytes behind them.
HUGE_CLAIMS = [b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
               b"\xdf\xff\xff\xff\xff", b"\x95\x01\x01\xdb\x7f\xff\xff\xff",
               b"\xcf\x80\x00\x00\x00\x00\x00\x00\x00", b"\xc9\x7f\xff\xff\xff\x01"]


def check_rpc_frame(frame: bytes) -> None:
    try:
        version, rid, method, args, token = unpack_request(frame)
    except BadMessage:
        return
    assert isinstance(method, str) and isinstance(args, list) and isinstance(token, str)


# ---------------------------------------------------------- long-run driver ---

def runners(rng: random.Random):
    """name -> (one_case() -> None, close() -> None), for bench/fuzz_all.py."""
    from mooncake_store.transfer import TransferEngine

    te = TransferEngine("127.0.0.1", use_shm=False)
    region = np.zeros(1 << 16, dtype=np.uint8)
    te.register_memory(region.ctypes.data, region.nbytes)
    base, size = region.ctypes.data, region.nbytes
    wseeds = wire_seeds(base, size)
    files = ConfigFiles()
    cseeds = compress_seeds()
    tseeds = tensor_seeds()

    def wire():
        check_wire(te, base, size, bytes_case(rng, wseeds, 48) if rng.random() < 0.9
                   else WIRE.pack(WIRE_MAGIC, 1, rng.choice((1, 2)), 0, 0, 1,
                                  rng.choice((base, base + size, 0, 2**64 - 1)) + rng.randint(-64, 64)
                                  & (2**64 - 1), rng.choice((1, size, 2**63, 2**64 - 1))))

    def config():
        k = rng.randrange(3)
        if k == 0:
            check_config_dict(gen_config_dict(rng))
        elif k == 1:
            check_config_env({n: str(v) for n, v in gen_config_dict(rng).items()})
        else:
            files.check(bytes_case(rng, CONFIG_TEXT_SEEDS, 512), yaml=rng.random() < 0.5)

    def compress_case():
        cid, payload, n = rng.choice(cseeds)
        if rng.random() < 0.3:
            cid = rng.choice((cid, rng.randrange(-2, 40)))
        if rng.random() < 0.3:
            n = rng.choice((0, 1, n - 1, n + 1, 1 << 30, 2**63))
        check_compress(cid, mutate(rng, payload, 1 << 16) if rng.random() < 0.8 else payload, n)

    def trace_case():
        line = bytes_case(rng, TRACE_SEEDS, 512).decode("utf-8", "replace")
        check_trace_line(line)

    def rpc_case():
        check_rpc_frame(bytes_case(rng, RPC_SEEDS + HUGE_CLAIMS, 1024))

    out = {
        "object header (Python decode_header)": (lambda: check_header_py(bytes_case(rng, HEADER_SEEDS)), None),
        "object header (C mcs_rec_check_header/read)": (lambda: check_header_c(bytes_case(rng, HEADER_SEEDS)), None),
        "transfer tcp request header (C mcs_wire_check)": (wire, te.close),
        "config loader (dict/env/JSON/YAML)": (config, files.close),
        "keys (token inputs)": (lambda: check_keys(gen_key_args(rng)), None),
        "trace parser (lines)": (trace_case, None),
        "compress.decode": (compress_case, None),
        "tensor description decode": (lambda: check_tensor(bytes_case(rng, tseeds, 1024)), None),
        "master RPC request decoder (msgpack)": (rpc_case, None),
    }
    return out
