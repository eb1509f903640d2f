"""S3/OSS tier against a real SeaweedFS: round trips, multipart, ranged reads, corruption,
outages with bounded failures, and write-behind uploads that survive an outage."""
import os
import threading
import time

import boto3
import numpy as np
import pytest
from botocore.config import Config as BotoConfig

from mooncake_store._engine import lib
from mooncake_store.codec import encode_header
from mooncake_store.errors import ChecksumMismatch, ErrorCode, InvalidParams, ObjectNotFound, \
    TransferFailed, Unavailable
from mooncake_store.node.s3 import S3Tier

MiB = 1 << 20
FAST_FAIL = dict(connect_timeout=0.5, read_timeout=1.0, max_attempts=3, retry_deadline_s=3.0,
                 backoff_base_s=0.05, backoff_cap_s=0.5)


def _val(i, n):
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def _tier(weed, bucket, **kw):
    opts = dict(multipart_threshold="8MB", part_size="5MB", first_range=8192, **FAST_FAIL)
    opts.update(kw)
    return S3Tier(bucket, "mcs/", **weed.s3_kwargs(), **opts)


def _raw_client(weed):
    return boto3.client("s3", endpoint_url=weed.endpoint, region_name=weed.region,
                        aws_access_key_id=weed.access_key, aws_secret_access_key=weed.secret_key,
                        config=BotoConfig(s3={"addressing_style": "path"}))


def test_round_trip_ranged_and_multipart(seaweedfs, s3_bucket):
    sizes = [1, 100, 8000, 300_000, 6 * MiB + 5, 9 * MiB + 5, 13 * MiB + 1]  # > 8 MB: multipart
    vals = {f"kv/{i}/blk": _val(i, n) for i, n in enumerate(sizes)}
    long_key = "x" * 2000  # encodes past S3's name limit: stored under its hash
    vals[long_key] = _val(99, 5000)
    with _tier(seaweedfs, s3_bucket) as t:
        for k, v in vals.items():
            t.put(k, v)
        assert t.object_name(long_key).startswith("mcs/_h/")
        for k, v in vals.items():
            assert t.read(k) == v
            out = bytearray(len(v) + 3)
            assert t.get_into(k, out) == len(v) and bytes(out[:len(v)]) == v
        st = t.stats()
        assert st["multipart_uploads"] == 2 and st["puts"] == len(vals)
        got = {k: h.value_len for k, h, _ in t.scan()}
        assert got == {k.encode(): len(v) for k, v in vals.items()}
        assert t.contains("kv/0/blk") and not t.contains("nope")
        with pytest.raises(ObjectNotFound):
            t.read("nope")
        with pytest.raises(InvalidParams):
            t.get_into("kv/3/blk", bytearray(10))
        assert t.remove("kv/0/blk") and not t.remove("kv/0/blk")
        assert not t.contains("kv/0/blk")


def test_header_passthrough_and_parts(seaweedfs, s3_bucket):
    with _tier(seaweedfs, s3_bucket) as t:
        v = _val(3, 9 * MiB)  # multipart with a caller's header
        hdr = encode_header(b"h", len(v), lib.mcs_crc32c(0, v, len(v)), epoch=3, codec=1,
                            raw_len=len(v) * 2)
        t.put("h", [v[:MiB], v[MiB:]], header=hdr)
        h, got = t.read_record("h")
        assert got == v and (h.codec, h.epoch, h.raw_len) == (1, 3, len(v) * 2)
        assert t.header("h") == h
        bad = encode_header(b"h2", 100, 12345)
        with pytest.raises(ChecksumMismatch):
            t.put("h2", bytes(100), header=bad)
        with pytest.raises(ChecksumMismatch):
            t.put("h3", [bytes(5 * MiB), bytes(4 * MiB)],
                  header=encode_header(b"h3", 9 * MiB, 1))
        assert not t.contains("h2") and not t.contains("h3")


def test_corrupt_object_raises_checksum_mismatch(seaweedfs, s3_bucket):
    with _tier(seaweedfs, s3_bucket) as t:
        t.put("a", _val(1, 100_000))
        t.put("b", _val(2, 100_000))
        raw = _raw_client(seaweedfs)
        body = bytearray(raw.get_object(Bucket=s3_bucket, Key=t.object_name("a"))["Body"].read())
        body[50_000] ^= 0x40
        raw.put_object(Bucket=s3_bucket, Key=t.object_name("a"), Body=bytes(body))
        raw.put_object(Bucket=s3_bucket, Key=t.object_name("b"), Body=bytes(body[:5000]))
        raw.put_object(Bucket=s3_bucket, Key="mcs/stray", Body=b"not a record")
        for k in ("a", "b"):
            with pytest.raises(ChecksumMismatch):
                t.read(k)
        assert t.stats()["checksum_errors"] == 2
        assert [k for k, _, _ in t.scan()] == [b"a"]  # truncated and foreign objects skipped


def test_frozen_s3_fails_in_bounded_time(seaweedfs, s3_bucket):
    # Each attempt at a frozen server takes ~2 s (botocore's own 2 tries x read timeout):
    # a 6 s retry deadline leaves room for a retry even on a loaded host.
    with _tier(seaweedfs, s3_bucket, retry_deadline_s=6.0) as t:
        t.put("k", b"value")
        seaweedfs.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(TransferFailed) as ei:
                t.read("k")
            elapsed = time.monotonic() - t0
        finally:
            seaweedfs.resume()
        assert ei.value.code == ErrorCode.TRANSFER_FAIL
        # attempts x (connect + read timeout) + backoff, capped by the retry deadline
        assert elapsed < 3 * (0.5 + 1.0) * 2 + 1
        st = t.stats()
        assert st["failures"] >= 1 and st["retries"] >= 1 and not st["available"]
        assert t.read("k") == b"value"
        assert t.stats()["available"]


def test_write_behind_survives_an_outage(seaweedfs, s3_bucket):
    vals = {f"wb{i}": _val(i, 50_000 + i) for i in range(12)}
    done: dict[bytes, object] = {}
    lock = threading.Lock()

    def on_done(key, err):
        with lock:
            done[key] = err

    with _tier(seaweedfs, s3_bucket) as t:
        t.put("before", b"x")  # bucket exists before the outage
        seaweedfs.stop()
        try:
            for k, v in vals.items():
                t.put_async(k, v, on_done=on_done)  # returns at once though S3 is down
            assert t.pending() == len(vals)
            with pytest.raises(TransferFailed):
                t.put("sync", b"write-through fails, bounded")
            assert not t.flush(timeout=0.5)
        finally:
            seaweedfs.start()
        assert t.flush(timeout=60), t.stats()
        assert done == {k.encode(): None for k in vals}
        for k, v in vals.items():
            assert t.read(k) == v
        st = t.stats()
        assert st["async_done"] == len(vals) and st["async_retries"] >= 1
        assert st["queue_items"] == 0 and st["inflight"] == 0


def test_write_behind_queue_bound_copy_and_contract(seaweedfs, s3_bucket):
    results = {}
    on_done = results.__setitem__
    with _tier(seaweedfs, s3_bucket, queue_items=3, writers=1) as t:
        t.put("before", b"x")
        seaweedfs.pause()
        try:
            t.put_async("blocker", b"b", on_done=on_done)  # the one writer hangs on this
            snap = bytearray(b"snapshot")
            t.put_async("copied", snap, copy=True, on_done=on_done)
            snap[:] = b"changed!"  # copy=True: the upload keeps the value as it was
            changing = bytearray(b"original")
            t.put_async("mutated", changing, on_done=on_done)
            changing[0] ^= 1  # breaks the contract: caught by the CRC, never uploaded
            accepted = 0
            with pytest.raises(Unavailable):
                for i in range(10):
                    t.put_async(f"over{i}", b"x", on_done=on_done)
                    accepted += 1
            assert accepted <= 1  # queue_items=3 (+ the one in flight)
        finally:
            seaweedfs.resume()
        assert t.flush(timeout=60)
        assert t.read("copied") == b"snapshot" and t.read("blocker") == b"b"
        assert isinstance(results[b"mutated"], ChecksumMismatch)
        assert not t.contains("mutated")
        assert results[b"blocker"] is None and results[b"copied"] is None
        assert t.stats()["async_failed"] == 1


def test_from_config_env(seaweedfs, s3_bucket, monkeypatch):
    monkeypatch.setenv("MOONCAKE_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("MOONCAKE_S3_ENDPOINT_URL", seaweedfs.endpoint)
    monkeypatch.setenv("MOONCAKE_S3_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("MOONCAKE_S3_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    with S3Tier.from_config({"s3_prefix": "env/"}) as t:
        assert t.cfg.prefix == "env/" and t.cfg.bucket == s3_bucket
        t.put("k", b"v")
        assert t.read("k") == b"v"
    with pytest.raises(InvalidParams):
        S3Tier("b", part_size="1MB")
    monkeypatch.delenv("MOONCAKE_S3_BUCKET")
    with pytest.raises(InvalidParams):
        S3Tier.from_config({})


def test_wrong_credentials_fail_fast_without_retries(seaweedfs, s3_bucket):
    kw = dict(seaweedfs.s3_kwargs(), secret_key="wrong")
    with S3Tier(s3_bucket, "mcs/", **kw, **FAST_FAIL) as t:
        with pytest.raises(TransferFailed) as ei:
            t.put("k", b"v")
        assert not getattr(ei.value, "transient", True)
        assert t.stats()["retries"] == 0
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != "wrong"


def test_missing_bucket_reads_as_empty_and_first_put_creates_it(seaweedfs, s3_bucket):
    with _tier(seaweedfs, s3_bucket) as t:
        assert list(t.scan()) == [] and not t.contains("k")
        with pytest.raises(ObjectNotFound):
            t.read("k")
        t.put("k", b"v")
        assert t.read("k") == b"v" and [k for k, _, _ in t.scan()] == [b"k"]
