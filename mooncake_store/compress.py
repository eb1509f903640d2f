"""Cold-tier value codec: byte-plane shuffle, then lz4 or zstd, kept only when it pays.

fp16/bf16 KV values barely compress as they are (plain lz4 saves ~0%): the
high byte of each element (sign, exponent) is predictable, the low byte
(mantissa) is noise, and interleaving them hides the pattern. Grouping byte k
of every element together ("byte-plane shuffle") puts the predictable bytes in
one run that lz4/zstd can squeeze.

Codec ids go into the object header's codec byte (mooncake_store.codec), so
they are stable and < 256:

    id  elem  backend    id  elem  backend
     0  -     raw         5  1     lz4  (no shuffle)
     1  2     lz4         6  1     zstd (no shuffle)
     2  2     zstd        7  8     lz4
     3  4     lz4         8  8     zstd
     4  4     zstd

Payloads (what encode returns, stored after the header):
  - raw: the value bytes.
  - lz4: an lz4 block (no size prefix) of the shuffled stream, then 8 bytes:
    the xxh3-64 of the shuffled stream, big-endian.
  - zstd: one zstd frame of the shuffled stream, content size and content
    checksum included (the encoder ends a block at each plane boundary; any
    zstd decoder reads it).
The shuffled stream of a value of L bytes with element width w is plane 0
(byte 0 of each of the n = L // w elements), plane 1, ..., plane w-1, then
the L % w trailing bytes as they are.

decode never trusts the payload: unknown ids, truncation, garbage and length
mismatches raise CorruptPayload (a ChecksumMismatch, so a reader drops the bad
copy and tries another replica); out_len is capped by `limit` and by what the
payload could possibly expand to, so garbage cannot trigger a huge allocation.
"""
from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np
import xxhash

from .errors import ChecksumMismatch, InvalidParams

RAW = 0
SHUF2_LZ4, SHUF2_ZSTD = 1, 2
SHUF4_LZ4, SHUF4_ZSTD = 3, 4
LZ4, ZSTD = 5, 6
SHUF8_LZ4, SHUF8_ZSTD = 7, 8

# id -> (element width, backend)
CODECS: dict[int, tuple[int, str]] = {
    SHUF2_LZ4: (2, "lz4"), SHUF2_ZSTD: (2, "zstd"),
    SHUF4_LZ4: (4, "lz4"), SHUF4_ZSTD: (4, "zstd"),
    LZ4: (1, "lz4"), ZSTD: (1, "zstd"),
    SHUF8_LZ4: (8, "lz4"), SHUF8_ZSTD: (8, "zstd"),
}
_ID_FOR = {v: k for k, v in CODECS.items()}
CODEC_NAMES = ("lz4", "zstd", "auto", "none", "raw")

MIN_SAVING = 0.10            # keep a compressed payload only if it saves >= 10%
MIN_INPUT = 64               # below this nothing is worth a codec byte
ZSTD_LEVEL = 1               # measured: level 1 matches level 3's ratio on KV noise, 2x faster
AUTO_LZ4_SLACK = 1.05        # auto prefers lz4 (faster decode) unless zstd is >5% smaller
AUTO_SAMPLE = 256 << 10      # auto judges values over 2x this on their first 256 KiB
MAX_DECODED_BYTES = 1 << 36  # 64 GiB: the largest value decode will ever allocate
_LZ4_MAX_RATIO = 256         # an lz4 block cannot expand by more than ~255x
_ZSTD_MAX_RATIO = 32768      # an RLE block: 4 bytes -> 128 KiB
_PLANE_BLOCK_MIN = 4096      # planes shorter than this share zstd blocks (headers cost more)
_CHECK = struct.Struct(">Q")
_PLANE_DTYPE = {2: "<u2", 4: "<u4", 8: "<u8"}


class CorruptPayload(ChecksumMismatch):
    """A compressed payload that cannot be decoded to the declared length."""


class UnknownCodec(CorruptPayload):
    """A codec id this build does not know (corrupt header or a newer writer)."""


# ------------------------------------------------------------- backends ---

def _lz4():
    try:
        import lz4.block
    except ImportError:
        raise InvalidParams("codec lz4 needs the 'lz4' package (pip install lz4)") from None
    return lz4.block


_local = threading.local()  # zstd (de)compressors are not safe to share between threads


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise InvalidParams("codec zstd needs the 'zstandard' package (pip install zstandard)") from None
    return zstandard


def _zstd_compressor(level: int):
    cache = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = _zstd().ZstdCompressor(level=level, write_checksum=True,
                                                  write_content_size=True)
    return c


def _zstd_decompressor():
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = _zstd().ZstdDecompressor()
    return d


def _compress(backend: str, stream: np.ndarray, width: int, level: int | None) -> bytes:
    if backend == "lz4":
        block = _lz4().compress(stream, store_size=False)
        return block + _CHECK.pack(xxhash.xxh3_64_intdigest(stream))
    zc = _zstd_compressor(ZSTD_LEVEL if level is None else level)
    n = len(stream) // width
    if width == 1 or n < _PLANE_BLOCK_MIN:
        return zc.compress(stream)
    # End a zstd block at every plane boundary: a block that mixes the noisy
    # mantissa plane with the predictable exponent plane shares one Huffman
    # table and loses half the gain (measured: 8% instead of 15% on 128 KiB fp16).
    obj = zc.compressobj(size=len(stream))
    flush_block = _zstd().COMPRESSOBJ_FLUSH_BLOCK
    parts = []
    for k in range(width):
        parts += [obj.compress(stream[k * n:(k + 1) * n]), obj.flush(flush_block)]
    parts += [obj.compress(stream[width * n:]), obj.flush()]
    return b"".join(parts)


def _decompress(backend: str, payload: Any, stream_len: int) -> bytes:
    plen = len(payload)
    if backend == "lz4":
        body = memoryview(payload)[: plen - _CHECK.size]
        try:
            out = _lz4().decompress(body, uncompressed_size=stream_len)
        except Exception as e:  # LZ4BlockError: corrupt input
            raise CorruptPayload(f"lz4 payload is corrupt: {e}") from None
        (want,) = _CHECK.unpack_from(payload, plen - _CHECK.size)
        if len(out) != stream_len or xxhash.xxh3_64_intdigest(out) != want:
            raise CorruptPayload("lz4 payload does not match its checksum or length")
        return out
    zstd = _zstd()
    try:
        out = _zstd_decompressor().decompress(payload, allow_extra_data=False)
    except zstd.ZstdError as e:
        raise CorruptPayload(f"zstd payload is corrupt: {e}") from None
    if len(out) != stream_len:
        raise CorruptPayload(f"zstd payload decoded to {len(out)} bytes, expected {stream_len}")
    return out


def _check_bounds(backend: str, payload: Any, out_len: int) -> None:
    """Refuse, before allocating anything, lengths the payload cannot possibly produce."""
    plen = len(payload)
    if backend == "lz4":
        if plen < _CHECK.size or out_len > _LZ4_MAX_RATIO * plen:
            raise CorruptPayload(f"lz4 payload of {plen} bytes cannot hold {out_len} bytes")
        return
    if out_len > _ZSTD_MAX_RATIO * plen:
        raise CorruptPayload(f"zstd payload of {plen} bytes cannot hold {out_len} bytes")
    zstd = _zstd()
    try:
        size = zstd.frame_content_size(payload)
    except zstd.ZstdError as e:
        raise CorruptPayload(f"zstd payload is corrupt: {e}") from None
    if size != out_len:  # the frame's own size drives zstd's allocation: it must agree
        raise CorruptPayload(f"zstd frame declares {size} bytes, expected {out_len}")


# -------------------------------------------------------------- shuffle ---

def shuffle(data: np.ndarray, width: int) -> np.ndarray:
    """Byte planes of a uint8 array: byte k of every element together, tail kept."""
    if width == 1:
        return data
    n = len(data) // width
    out = np.empty(len(data), dtype=np.uint8)
    planes = out[: n * width].reshape(width, n)
    # Integer shifts run several GB/s; a reshape(n, w).T copy is ~3x slower.
    elems = data[: n * width].view(_PLANE_DTYPE[width])
    for k in range(width):
        planes[k] = elems >> (8 * k) if k else elems  # assignment truncates to the low byte
    out[n * width:] = data[n * width:]
    return out


def unshuffle_into(stream: np.ndarray, width: int, out: np.ndarray) -> None:
    """Inverse of shuffle, written into `out` (uint8, same length)."""
    if width == 1:
        out[:] = stream
        return
    n = len(stream) // width
    planes = stream[: n * width].reshape(width, n)
    # A writable uint8 view of `out` may be unaligned; .view() needs only C-contiguity.
    elems = out[: n * width].view(_PLANE_DTYPE[width])
    elems[...] = planes[width - 1]
    for k in range(width - 2, -1, -1):
        elems <<= 8
        elems |= planes[k]
    out[n * width:] = stream[n * width:]


# ---------------------------------------------------------------- input ---

def _as_bytes_array(data: Any, what: str = "data", writable: bool = False) -> np.ndarray:
    """A flat uint8 view of a bytes-like object, numpy array or CPU torch tensor.

    Inputs are made contiguous if needed (a copy); outputs must already be
    contiguous and writable, since a copy would swallow the decoded bytes.
    """
    if type(data).__module__.split(".")[0] == "torch":
        if data.device.type != "cpu":
            raise InvalidParams(f"{what} must be in host memory; got a {data.device.type} tensor")
        if writable and not data.is_contiguous():
            raise InvalidParams(f"{what} tensor must be contiguous")
        import torch
        data = data.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    if isinstance(data, np.ndarray):
        if writable and not (data.flags.c_contiguous and data.flags.writeable):
            raise InvalidParams(f"{what} array must be C-contiguous and writable")
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        mv = memoryview(data)
    except TypeError:
        raise InvalidParams(f"{what} must be a bytes-like object, numpy array or CPU tensor; "
                            f"got {type(data).__name__}") from None
    if not mv.c_contiguous:
        raise InvalidParams(f"{what} must be C-contiguous")
    if writable and mv.readonly:
        raise InvalidParams(f"{what} must be a writable buffer")
    return np.frombuffer(mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv, dtype=np.uint8)


def _check_elem_size(elem_size: Any) -> int:
    if isinstance(elem_size, bool) or elem_size not in (1, 2, 4, 8):
        raise InvalidParams(f"elem_size must be 1, 2, 4 or 8; got {elem_size!r}")
    return int(elem_size)


# ---------------------------------------------------------------- encode ---

def encode(data: Any, elem_size: int = 2, codec: str = "lz4", *, level: int | None = None,
           min_saving: float = MIN_SAVING) -> tuple[int, bytes]:
    """Compress `data` for a cold tier: (codec_id, payload).

    codec: "lz4" (default), "zstd", "auto", or "none"/"raw". "auto" tries both
    backends (on a leading sample for large values) and keeps lz4 unless zstd
    is more than 5% smaller; it uses only installed backends (none: raw),
    while naming a missing one raises InvalidParams. The result is (RAW, the bytes) unless the payload
    saves at least `min_saving` of the input. `level` is zstd's (default 1);
    lz4 ignores it.
    """
    width = _check_elem_size(elem_size)
    if codec not in CODEC_NAMES:
        raise InvalidParams(f"codec must be one of {', '.join(CODEC_NAMES)}; got {codec!r}")
    if not 0.0 <= min_saving < 1.0:
        raise InvalidParams(f"min_saving must be in [0, 1); got {min_saving!r}")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                              or not -7 <= level <= 22):
        raise InvalidParams(f"level must be a zstd level in -7..22; got {level!r}")
    arr = _as_bytes_array(data)
    if codec in ("none", "raw") or len(arr) < MIN_INPUT:
        return RAW, arr.tobytes()
    if codec == "auto":
        codec = _auto_backend(arr, width, level)
        if codec is None:
            return RAW, arr.tobytes()
    payload = _compress(codec, shuffle(arr, width), width, level)
    if len(payload) > (1.0 - min_saving) * len(arr):
        return RAW, arr.tobytes()
    return _ID_FOR[(width, codec)], payload


def available_backends() -> tuple[str, ...]:
    """The compressors importable here ("auto" uses only these)."""
    out = []
    for name, load in (("lz4", _lz4), ("zstd", _zstd)):
        try:
            load()
            out.append(name)
        except InvalidParams:
            pass
    return tuple(out)


def _auto_backend(arr: np.ndarray, width: int, level: int | None) -> str | None:
    """lz4 unless zstd is clearly smaller, judged on the first AUTO_SAMPLE bytes.

    KV blocks are homogeneous (one tensor's values), so a leading sample
    predicts the whole; it keeps "auto" at ~1.1x the cost of one backend.
    With one backend installed it is that one; with none, None (store raw).
    """
    have = available_backends()
    if len(have) < 2:
        return have[0] if have else None
    sample = arr[: AUTO_SAMPLE // width * width] if len(arr) > 2 * AUTO_SAMPLE else arr
    stream = shuffle(sample, width)
    lz4_len = len(_compress("lz4", stream, width, level))
    zstd_len = len(_compress("zstd", stream, width, level))
    return "zstd" if zstd_len * AUTO_LZ4_SLACK < lz4_len else "lz4"


# ---------------------------------------------------------------- decode ---

def _as_payload(payload: Any) -> Any:
    return payload if isinstance(payload, bytes) else _as_bytes_array(payload, "payload")


def _check_decode_args(codec_id: Any, payload: Any, out_len: Any, limit: int) -> tuple[int, str]:
    if isinstance(out_len, bool) or not isinstance(out_len, (int, np.integer)) or out_len < 0:
        raise InvalidParams(f"out_len must be a non-negative int; got {out_len!r}")
    if out_len > limit:
        raise CorruptPayload(f"declared length {out_len} exceeds the decode limit of {limit} bytes")
    if not isinstance(codec_id, (int, np.integer)) or isinstance(codec_id, bool):
        raise InvalidParams(f"codec_id must be an int; got {type(codec_id).__name__}")
    if codec_id == RAW:
        if len(payload) != out_len:
            raise CorruptPayload(f"raw payload is {len(payload)} bytes, expected {out_len}")
        return 1, "raw"
    if codec_id not in CODECS:
        raise UnknownCodec(f"unknown codec id {codec_id}; known: 0, "
                           f"{', '.join(map(str, sorted(CODECS)))}")
    width, backend = CODECS[int(codec_id)]
    _check_bounds(backend, payload, out_len)
    return width, backend


def decode(codec_id: int, payload: Any, out_len: int, *, limit: int = MAX_DECODED_BYTES) -> bytes:
    """The original bytes of an encoded value of `out_len` bytes."""
    payload = _as_payload(payload)
    width, backend = _check_decode_args(codec_id, payload, out_len, limit)
    if backend == "raw":
        return bytes(payload)
    stream = _decompress(backend, payload, out_len)
    if width == 1:
        return stream
    out = np.empty(out_len, dtype=np.uint8)
    unshuffle_into(np.frombuffer(stream, dtype=np.uint8), width, out)
    return out.tobytes()


def decode_into(codec_id: int, payload: Any, out: Any, out_len: int | None = None, *,
                limit: int = MAX_DECODED_BYTES) -> int:
    """Decode into a writable buffer (bytes-like, numpy array, CPU tensor); returns out_len."""
    dst = _as_bytes_array(out, "out", writable=True)
    out_len = len(dst) if out_len is None else out_len
    payload = _as_payload(payload)
    width, backend = _check_decode_args(codec_id, payload, out_len, limit)
    if out_len > len(dst):
        raise InvalidParams(f"out holds {len(dst)} bytes, the value has {out_len}")
    target = dst[:out_len]
    if backend == "raw":
        target[:] = np.frombuffer(payload, dtype=np.uint8)
        return out_len
    stream = _decompress(backend, payload, out_len)
    unshuffle_into(np.frombuffer(stream, dtype=np.uint8), width, target)
    return out_len


def codec_name(codec_id: int) -> str:
    """Human-readable name of a codec id, e.g. 'shuffle2+zstd'."""
    if codec_id == RAW:
        return "raw"
    if codec_id not in CODECS:
        return f"unknown({codec_id})"
    width, backend = CODECS[codec_id]
    return backend if width == 1 else f"shuffle{width}+{backend}"
