"""Token-prefix block keys: deterministic, versioned names for KV-cache blocks.

Token ids are cut into fixed blocks; block i gets the chained hash

    d[-1] = D zero bytes
    d[i]  = H(seed || d[i-1] || LE32(tokens of block i))
    key_i = prefix + lowercase_hex(d[i])

with seed = H(Namespace.encode()) and H = xxh3-128 (default) or sha256. The
byte layout is specified in docs/keys.md (KEY_SPEC_VERSION 1) so other
languages can reproduce the keys; tests/data/key_vectors.json pins them.

Nothing here depends on PYTHONHASHSEED, the process, or the platform's byte
order: every integer is written little-endian explicitly.

Also here: `sglang_style_keys` and `vllm_style_keys`, small helpers that build
keys with the structure the peers use (see docs/keys.md for exactly what each
one computes and what it does not claim).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import numpy as np
import xxhash

from .errors import InvalidParams

KEY_SPEC_VERSION = 1
DEFAULT_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 1 << 24
DEFAULT_HASH = "xxh3_128"
HASHES = ("xxh3_128", "sha256")
MAX_TOKEN_ID = (1 << 32) - 1
MAX_FIELD_BYTES = 65535
MAX_PREFIX_LEN = 64
NAMESPACE_MAGIC = b"MCSKEYNS"

_U32 = struct.Struct("<I")


# ---------------------------------------------------------------- hashing ---

def _digest_size(hash_name: str) -> int:
    return 16 if hash_name == "xxh3_128" else 32


def _new_hasher(hash_name: str):
    # xxh3-128 digests are the canonical big-endian form (XXH128_canonicalFromHash).
    return xxhash.xxh3_128() if hash_name == "xxh3_128" else hashlib.sha256()


def _hash_bytes(hash_name: str, data: bytes) -> bytes:
    h = _new_hasher(hash_name)
    h.update(data)
    return h.digest()


def _check_hash(hash_name: Any) -> str:
    if hash_name not in HASHES:
        raise InvalidParams(f"hash must be one of {', '.join(HASHES)}; got {hash_name!r}")
    return hash_name


def _check_block_size(block_size: Any, name: str = "block_size") -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise InvalidParams(f"{name} must be an int; got {type(block_size).__name__}")
    if not 0 < int(block_size) <= MAX_BLOCK_SIZE:
        raise InvalidParams(f"{name} must be in 1..{MAX_BLOCK_SIZE}; got {int(block_size)}")
    return int(block_size)


# -------------------------------------------------------------- namespace ---

def _dtype_name(dtype: Any) -> Any:
    """'bfloat16' for torch.bfloat16 / numpy dtypes; strings pass through."""
    if isinstance(dtype, str):
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        return text[len("torch."):]
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return np.dtype(dtype).name
    return dtype  # rejected by validation below


@dataclass(frozen=True)
class Namespace:
    """Everything that makes two KV blocks of the same tokens incompatible.

    Field order is part of the spec (docs/keys.md): model, revision, dtype,
    layout, tp_rank, tp_size, lora, tenant. Empty strings mean "not set".
    """

    model: str
    revision: str = ""
    dtype: str = ""
    layout: str = ""
    tp_rank: int = 0
    tp_size: int = 1
    lora: str = ""
    tenant: str = ""
    spec_version: int = KEY_SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                if not isinstance(value, str):
                    raise InvalidParams(f"Namespace.{f.name} must be a str; got {type(value).__name__}")
                if len(value.encode("utf-8")) > MAX_FIELD_BYTES:
                    raise InvalidParams(f"Namespace.{f.name} is over {MAX_FIELD_BYTES} UTF-8 bytes")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise InvalidParams(f"Namespace.{f.name} must be an int; got {type(value).__name__}")
        if not self.model:
            raise InvalidParams("Namespace.model must be a non-empty string")
        if self.spec_version != KEY_SPEC_VERSION:
            raise InvalidParams(f"unsupported key spec version {self.spec_version}; "
                                f"this build implements {KEY_SPEC_VERSION}")
        if not 1 <= self.tp_size <= MAX_TOKEN_ID:
            raise InvalidParams(f"Namespace.tp_size must be in 1..{MAX_TOKEN_ID}; got {self.tp_size}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise InvalidParams(f"Namespace.tp_rank must be in 0..tp_size-1 ({self.tp_size - 1}); "
                                f"got {self.tp_rank}")

    def encode(self) -> bytes:
        """The canonical bytes (docs/keys.md "Namespace encoding")."""
        out = [NAMESPACE_MAGIC, _U32.pack(self.spec_version)]
        for f in fields(self):
            if f.name == "spec_version":
                continue
            value = getattr(self, f.name)
            if isinstance(value, str):
                raw = value.encode("utf-8")
                out += [_U32.pack(len(raw)), raw]
            else:
                out.append(_U32.pack(value))
        return b"".join(out)

    def seed(self, hash: str = DEFAULT_HASH) -> bytes:  # noqa: A002 - spec name
        return _hash_bytes(_check_hash(hash), self.encode())


def _as_namespace(namespace: Any) -> Namespace:
    if isinstance(namespace, Namespace):
        return namespace
    if isinstance(namespace, str):
        return Namespace(model=namespace)
    raise InvalidParams("namespace must be a Namespace or a model name (str); "
                        f"got {type(namespace).__name__}")


# ----------------------------------------------------------------- tokens ---

def token_array(tokens: Any) -> np.ndarray:
    """Validate token ids and return them as a contiguous little-endian uint32 array.

    Accepts a 1-D list/tuple/range of ints, a numpy integer array, or a torch
    integer tensor (any device). Raises InvalidParams naming the first bad id.
    """
    if type(tokens).__module__.split(".")[0] == "torch":
        tokens = _torch_to_numpy(tokens)
    if isinstance(tokens, np.ndarray):
        arr = tokens
    elif isinstance(tokens, (list, tuple, range)):
        if len(tokens) == 0:
            return np.zeros(0, dtype="<u4")
        try:
            arr = np.asarray(tokens)
        except (OverflowError, ValueError, TypeError) as e:
            raise InvalidParams(f"token ids must be ints in [0, 2^32): {e}") from None
    else:
        raise InvalidParams("token ids must be a 1-D list, tuple, numpy array or torch tensor "
                            f"of ints; got {type(tokens).__name__}")
    if arr.ndim != 1:
        raise InvalidParams(f"token ids must be 1-D; got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "O":
        arr = _object_tokens(arr)
    elif arr.dtype.kind not in "iu":
        raise InvalidParams(f"token ids must be integers; got dtype {arr.dtype}")
    bad = None
    if arr.dtype.kind == "i":
        bad = (arr < 0) | (arr > MAX_TOKEN_ID) if arr.dtype.itemsize > 4 else arr < 0
    elif arr.dtype.itemsize > 4:
        bad = arr > MAX_TOKEN_ID
    if bad is not None and bad.any():
        i = int(np.argmax(bad))
        raise InvalidParams(f"token id {int(arr[i])} at index {i} is outside [0, 2^32)")
    return np.ascontiguousarray(arr, dtype="<u4")


def _torch_to_numpy(t: Any) -> np.ndarray:
    dt = t.dtype
    if dt.is_floating_point or dt.is_complex or str(dt) == "torch.bool":
        raise InvalidParams(f"token ids must be integers; got dtype {dt}")
    try:
        return t.detach().cpu().numpy()
    except (TypeError, RuntimeError) as e:
        raise InvalidParams(f"cannot read token ids from tensor of dtype {dt}: {e}") from None


def _object_tokens(arr: np.ndarray) -> np.ndarray:
    # Only reached for lists mixing huge ints or non-ints: check each element.
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidParams(f"token id at index {i} must be an int; got {type(v).__name__}")
        if not 0 <= v <= MAX_TOKEN_ID:
            raise InvalidParams(f"token id {v} at index {i} is outside [0, 2^32)")
    return arr.astype(np.int64)


# ------------------------------------------------------------------- keys ---

def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise InvalidParams(f"prefix must be a str; got {type(prefix).__name__}")
    if len(prefix) > MAX_PREFIX_LEN or not all(33 <= ord(c) <= 126 for c in prefix):
        raise InvalidParams(f"prefix must be at most {MAX_PREFIX_LEN} printable ASCII characters "
                            f"without spaces; got {prefix!r}")
    return prefix


@dataclass(frozen=True)
class KeySpec:
    """Namespace + block size + hash: turns token ids into block keys.

    >>> spec = KeySpec(Namespace(model="meta-llama/Llama-3.1-8B", dtype="bfloat16"))
    >>> keys = spec.keys(token_ids)          # one key per full 256-token block
    """

    namespace: Namespace
    block_size: int = DEFAULT_BLOCK_SIZE
    hash: str = DEFAULT_HASH
    prefix: str = ""
    include_partial: bool = False
    _seed: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespace", _as_namespace(self.namespace))
        object.__setattr__(self, "block_size", _check_block_size(self.block_size))
        _check_hash(self.hash)
        _check_prefix(self.prefix)
        if not isinstance(self.include_partial, bool):
            raise InvalidParams("include_partial must be a bool")
        object.__setattr__(self, "_seed", self.namespace.seed(self.hash))

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def digest_size(self) -> int:
        return _digest_size(self.hash)

    def num_blocks(self, num_tokens: int) -> int:
        full, rest = divmod(num_tokens, self.block_size)
        return full + (1 if rest and self.include_partial else 0)

    def digests(self, tokens: Any, parent: bytes | None = None) -> list[bytes]:
        """Raw block digests; `parent` continues a chain from a previous block's digest."""
        data = memoryview(token_array(tokens)).cast("B")
        prev = self._check_parent(parent)
        step = 4 * self.block_size
        end = self.num_blocks(len(data) // 4) * step
        seed, name, out = self._seed, self.hash, []
        for start in range(0, end, step):
            h = _new_hasher(name)
            h.update(seed)
            h.update(prev)
            h.update(data[start:min(start + step, len(data))])
            prev = h.digest()
            out.append(prev)
        return out

    def keys(self, tokens: Any, parent_key: str | None = None) -> list[str]:
        """Block keys of `tokens`; `parent_key` (a key of this spec) continues its chain."""
        parent = None if parent_key is None else self.digest_of(parent_key)
        p = self.prefix
        return [p + d.hex() for d in self.digests(tokens, parent)]

    def digest_of(self, key: str) -> bytes:
        """The digest inside a key of this spec (prefix stripped, hex decoded)."""
        hex_len = 2 * self.digest_size
        if (not isinstance(key, str) or not key.startswith(self.prefix)
                or len(key) != len(self.prefix) + hex_len):
            raise InvalidParams(f"not a key of this spec (prefix {self.prefix!r}, "
                                f"{hex_len} hex digits): {key!r}")
        try:
            return bytes.fromhex(key[len(self.prefix):])
        except ValueError:
            raise InvalidParams(f"key has non-hex digits: {key!r}") from None

    def _check_parent(self, parent: bytes | None) -> bytes:
        if parent is None:
            return bytes(self.digest_size)
        if not isinstance(parent, (bytes, bytearray)) or len(parent) != self.digest_size:
            raise InvalidParams(f"parent must be {self.digest_size} digest bytes")
        return bytes(parent)


Keyer = KeySpec  # the name some callers reach for


def block_keys(tokens: Any, namespace: Namespace | str, block_size: int = DEFAULT_BLOCK_SIZE,
               hash: str = DEFAULT_HASH, *, prefix: str = "",  # noqa: A002 - spec name
               include_partial: bool = False) -> list[str]:
    """Keys of the blocks of `tokens` (one-shot form of `KeySpec(...).keys(tokens)`)."""
    return KeySpec(namespace, block_size, hash, prefix, include_partial).keys(tokens)


# ----------------------------------------------------------- peer styles ---

def sglang_style_keys(tokens: Any, page_size: int = 64) -> list[str]:
    """SGLang HiCache-style page keys: hex SHA-256 chain over full pages.

    page 0: sha256(LE32 tokens of page 0); page i: sha256(raw digest of page
    i-1 || LE32 tokens of page i). Lowercase hex. No tp-rank suffix is added:
    backends append their own, so callers append the one they need.
    """
    page_size = _check_block_size(page_size, "page_size")
    data = memoryview(token_array(tokens)).cast("B")
    step = 4 * page_size
    out: list[str] = []
    prev = b""
    for start in range(0, len(data) // step * step, step):
        h = hashlib.sha256(prev)
        h.update(data[start:start + step])
        prev = h.digest()
        out.append(prev.hex())
    return out


def vllm_style_keys(tokens: Any, block_size: int = 16, root: bytes = bytes(32),
                    extra_keys: Iterable[Any] | None = None) -> list[str]:
    """vLLM-style chained block keys with a cross-language encoding.

    Block i digest = sha256(CBOR([parent, [token ids of block i], extra]))
    with parent = `root` for block 0 and the previous 32-byte digest after;
    extra = null or the array of `extra_keys` (ints, str, bytes, lists). CBOR
    is RFC 8949 deterministic encoding. Full blocks only. Same structure as
    vLLM's prefix-cache hash, NOT its bytes (vLLM's root value and encoding
    depend on its version and settings); see docs/keys.md.
    """
    block_size = _check_block_size(block_size)
    if not isinstance(root, (bytes, bytearray)):
        raise InvalidParams("root must be bytes")
    extra = None if extra_keys is None else list(extra_keys)
    extra_cbor = cbor_encode(extra)
    arr = token_array(tokens)
    nblocks = len(arr) // block_size
    enc, starts = _cbor_uints(arr[: nblocks * block_size])
    array_head = _cbor_head(4, block_size)
    out: list[str] = []
    parent = bytes(root)
    for b in range(nblocks):
        lo = starts[b * block_size]
        hi = starts[(b + 1) * block_size] if b + 1 < nblocks else len(enc)
        h = hashlib.sha256(b"\x83" + _cbor_head(2, len(parent)) + parent + array_head)
        h.update(enc[lo:hi])
        h.update(extra_cbor)
        parent = h.digest()
        out.append(parent.hex())
    return out


def _cbor_head(major: int, n: int) -> bytes:
    """RFC 8949 initial byte + shortest argument (deterministic encoding)."""
    m = major << 5
    if n < 24:
        return bytes([m | n])
    if n < 1 << 8:
        return bytes([m | 24, n])
    if n < 1 << 16:
        return bytes([m | 25]) + n.to_bytes(2, "big")
    if n < 1 << 32:
        return bytes([m | 26]) + n.to_bytes(4, "big")
    if n < 1 << 64:
        return bytes([m | 27]) + n.to_bytes(8, "big")
    raise InvalidParams(f"integer {n} too large for CBOR")


def cbor_encode(value: Any) -> bytes:
    """Deterministic CBOR for None, bool, int, bytes, str and lists/tuples of them."""
    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, (int, np.integer)):
        v = int(value)
        return _cbor_head(0, v) if v >= 0 else _cbor_head(1, -1 - v)
    if isinstance(value, (bytes, bytearray)):
        return _cbor_head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _cbor_head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return _cbor_head(4, len(value)) + b"".join(cbor_encode(v) for v in value)
    raise InvalidParams(f"cannot CBOR-encode {type(value).__name__} in extra_keys")


def _cbor_uints(arr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """CBOR encodings of uint32 values, concatenated, and each value's start offset.

    Vectorized: every value is laid out in a 5-byte row (head + up to 4
    big-endian bytes) and the unused tail bytes are masked away.
    """
    v = arr.astype(np.uint64)
    n = np.where(v < 24, 1, np.where(v < 1 << 8, 2, np.where(v < 1 << 16, 3, 5)))
    rows = np.zeros((len(v), 5), dtype=np.uint8)
    rows[:, 0] = np.where(n == 1, v, np.where(n == 2, 24, np.where(n == 3, 25, 26)))
    one, two, four = n == 2, n == 3, n == 5
    rows[one, 1] = v[one]
    rows[two, 1], rows[two, 2] = v[two] >> 8, v[two] & 0xFF
    for k in range(4):
        rows[four, 1 + k] = (v[four] >> (8 * (3 - k))) & 0xFF
    enc = rows[np.arange(5) < n[:, None]].tobytes()
    starts = np.concatenate(([0], np.cumsum(n)[:-1])) if len(n) else np.zeros(0, np.int64)
    return enc, starts.astype(np.int64)
