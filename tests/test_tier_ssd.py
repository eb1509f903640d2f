"""SSD tier: round trips, corruption, torn records, crash and warm restart."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mooncake_store.codec import encode_header
from mooncake_store.errors import ChecksumMismatch, InvalidParams, NoSpace, ObjectNotFound, \
    Unavailable
from mooncake_store.node.ssd import BLOCK, DATA_NAME, SSDTier
from mooncake_store._engine import lib

KiB, MiB = 1 << 10, 1 << 20
SIZES = [1, 63, 64, 100, 4000, 4032, 4096, 4097, 12345, 256 * KiB, MiB + 7, 3 * MiB, 17 * MiB]


def _val(i, n):
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture(params=["direct", "buffered"])
def mode(request):
    return dict(direct=None, sync="never") if request.param == "direct" else \
        dict(direct=False, sync="always")


def test_round_trip_many_sizes_and_reopen(tmp_path, mode):
    vals = {f"key/{i}": _val(i, n) for i, n in enumerate(SIZES)}
    # a small chunk forces the multi-chunk write and read paths
    with SSDTier(tmp_path, "32MB", chunk=64 * KiB, **mode) as t:
        for k, v in vals.items():
            loc = t.put(k, v)
            assert loc.offset % BLOCK == 0
        for k, v in vals.items():
            assert t.read(k) == v
            out = bytearray(len(v) + 10)
            assert t.get_into(k, out) == len(v) and bytes(out[:len(v)]) == v
            assert t.header(k).value_len == len(v)
        assert t.stats()["objects"] == len(vals)
    with SSDTier(tmp_path, "32MB", **mode) as t:  # default chunk on reopen
        assert t.stats()["recovered"] == len(vals)
        assert sorted(k for k, _, _ in t.scan()) == sorted(k.encode() for k in vals)
        for k, v in vals.items():
            assert t.read(k) == v


def test_parts_header_passthrough_and_replace(tmp_path):
    with SSDTier(tmp_path, "8MB") as t:
        t.put("p", [b"abc", bytearray(b"def"), np.arange(4, dtype=np.uint8)])
        assert t.read("p") == b"abcdef\x00\x01\x02\x03"
        v = _val(1, 5000)
        hdr = encode_header(b"h", len(v), lib.mcs_crc32c(0, v, len(v)), epoch=7, codec=2,
                            raw_len=9000)
        t.put("h", v, header=hdr)
        h, got = t.read_record("h")
        assert got == v and (h.codec, h.raw_len, h.epoch) == (2, 9000, 7)
        t.put_record(hdr + v + b"trailing bytes are not part of the record")
        assert t.read("h") == v
        with pytest.raises(ChecksumMismatch):
            t.put_record(hdr + v[:-1] + b"!")
        # a value that no longer matches the header it came with is refused, not stored
        with pytest.raises(ChecksumMismatch):
            t.put("h2", v[:-1] + b"x", header=encode_header(b"h2", len(v), h.value_crc))
        assert not t.contains("h2")
        used = t.used
        t.put("p", b"replaced")
        assert t.read("p") == b"replaced" and t.used == used
        with pytest.raises(InvalidParams):
            t.get_into("h", bytearray(10))
        with pytest.raises(InvalidParams):
            t.put("e", b"")
        with pytest.raises(InvalidParams):
            t.put("x", b"v", header=hdr)  # header names another key
        with pytest.raises(ObjectNotFound):
            t.read("missing")
        assert t.remove("p") and not t.remove("p")


def test_flipped_byte_is_detected_and_dropped(tmp_path):
    with SSDTier(tmp_path, "8MB") as t:
        loc = t.put("a", _val(1, 100 * KiB))
        t.put("b", _val(2, 10 * KiB))
        hdr_loc = t.put("c", _val(3, 10 * KiB))
        with open(tmp_path / DATA_NAME, "r+b") as f:
            f.seek(loc.offset + loc.length - 5000)  # inside the value
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x10]))
            f.seek(hdr_loc.offset + 20)  # inside the header
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x01]))
        for k in ("a", "c"):
            with pytest.raises(ChecksumMismatch):
                t.get_into(k, bytearray(100 * KiB))
            assert not t.contains(k)  # the bad record is dropped, never served later
        assert t.read("b") == _val(2, 10 * KiB)
        st = t.stats()
        assert st["checksum_errors"] == 2 and st["dropped_corrupt"] == 2
    with SSDTier(tmp_path, "8MB") as t:
        assert t.keys() == [b"b"]


def test_torn_record_skipped_at_reopen(tmp_path):
    vals = {f"k{i}": _val(i, 50 * KiB) for i in range(6)}
    with SSDTier(tmp_path, "8MB") as t:
        locs = {k: t.put(k, v) for k, v in vals.items()}
    last = max(locs, key=lambda k: locs[k].offset)
    os.truncate(tmp_path / DATA_NAME, locs[last].offset + locs[last].length // 2)
    with SSDTier(tmp_path, "8MB") as t:
        assert not t.contains(last)
        assert t.stats()["skipped_at_open"] == 1
        for k, v in vals.items():
            if k != last:
                assert t.read(k) == v
    # the file was grown back to its capacity: the torn head must stay dead
    assert os.path.getsize(tmp_path / DATA_NAME) == 8 * MiB
    with SSDTier(tmp_path, "8MB") as t:
        assert not t.contains(last) and len(t) == 5
        t.put("new", b"fits in the freed space")
        assert t.read("new") == b"fits in the freed space"


def test_removed_objects_stay_removed(tmp_path):
    with SSDTier(tmp_path, "4MB") as t:
        for i in range(20):
            t.put(f"k{i}", _val(i, 30 * KiB))
        for i in range(0, 20, 2):
            assert t.remove(f"k{i}")
    with SSDTier(tmp_path, "4MB") as t:
        assert sorted(t.keys()) == sorted(f"k{i}".encode() for i in range(1, 20, 2))
        # the allocator was rebuilt from the survivors: freed space is usable again
        for i in range(0, 20, 2):
            t.put(f"n{i}", _val(100 + i, 30 * KiB))
        for i in range(1, 20, 2):
            assert t.read(f"k{i}") == _val(i, 30 * KiB)


def test_full_tier_and_exclusive_open(tmp_path):
    with SSDTier(tmp_path, "1MB") as t:
        t.put("a", bytes(600 * KiB))
        with pytest.raises(NoSpace):
            t.put("b", bytes(600 * KiB))
        with pytest.raises(Unavailable):
            SSDTier(tmp_path, "1MB")
    with pytest.raises(InvalidParams):
        SSDTier(tmp_path, "512KB")  # shrinking would cut records off
    with pytest.raises(InvalidParams):
        SSDTier(tmp_path, "1MB", sync="sometimes")
    with SSDTier.from_spec(f"{tmp_path}:2MB") as t:  # growing is fine
        assert t.capacity == 2 * MiB and t.read("a") == bytes(600 * KiB)


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from mooncake_store.node.ssd import SSDTier
    t = SSDTier(sys.argv[1], "64MB", chunk=128 * 1024)
    for i in range(100000):
        n = int(np.random.default_rng(i).integers(1, 600 * 1024))
        t.put(f"k{i}", np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes())
        if i % 7 == 3:
            t.remove(f"k{i - 2}")
        print(i, flush=True)
""")


def test_kill9_writer_then_every_complete_object_is_readable(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True, env=env)
    done = -1
    deadline = time.monotonic() + 60
    try:
        while done < 60 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            done = int(line)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    assert done >= 60, "writer did not get going"
    removed = {i - 2 for i in range(done + 1) if i % 7 == 3}
    with SSDTier(tmp_path, "64MB") as t:
        for i in range(done + 1):
            n = int(np.random.default_rng(i).integers(1, 600 * 1024))
            if i in removed:
                assert not t.contains(f"k{i}")
            else:
                assert t.read(f"k{i}") == _val(i, n)
        for k in t.keys():  # anything beyond `done` that survived is whole, never wrong
            i = int(k[1:])
            n = int(np.random.default_rng(i).integers(1, 600 * 1024))
            assert t.read(k) == _val(i, n)


def test_verify_on_open_drops_bad_values(tmp_path):
    with SSDTier(tmp_path, "4MB") as t:
        loc = t.put("bad", _val(1, 9000))
        t.put("good", _val(2, 9000))
    with open(tmp_path / DATA_NAME, "r+b") as f:
        f.seek(loc.offset + loc.length - 1)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with SSDTier(tmp_path, "4MB", verify_on_open=True) as t:
        assert t.keys() == [b"good"]
    with SSDTier(tmp_path, "4MB") as t:
        assert t.keys() == [b"good"]


def test_concurrent_put_get_remove_never_returns_wrong_bytes(tmp_path):
    import threading

    errors = []
    with SSDTier(tmp_path, "16MB", sync="periodic", sync_interval_s=0.01) as t:
        def worker(w):
            rng = np.random.default_rng(w)
            try:
                for n in range(150):
                    i = int(rng.integers(0, 24))
                    size = 1000 + 37 * i * i * 10
                    op = rng.integers(0, 3)
                    if op == 0:
                        t.put(f"k{i}", _val(i, size))
                    elif op == 1:
                        try:
                            got = t.read(f"k{i}")
                        except ObjectNotFound:
                            continue
                        if got != _val(i, size):
                            errors.append(f"wrong bytes for k{i}")
                    else:
                        t.remove(f"k{i}")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors[:5]
        st = t.stats()
        assert st["syncs"] > 0 and st["checksum_errors"] == 0
        live = set(t.keys())
        used = t.used
    with SSDTier(tmp_path, "16MB") as t:
        assert set(t.keys()) == live and t.used == used
        for k in live:
            i = int(k[1:])
            assert t.read(k) == _val(i, 1000 + 37 * i * i * 10)
