"""The S3/OSS tier: one object per key, each a self-describing record (header + value).

Works with AWS S3, Aliyun OSS, MinIO and SeaweedFS (anything speaking the S3 API
through boto3). Object name = prefix + percent-encoding of the key bytes (keys
whose encoding would exceed S3's name limit are named by their SHA-256 under
`prefix + "_h/"`; the real key is in the header either way).

Reads fetch the first `first_range` bytes (the whole object when small), verify
the header, then fetch the rest in ranged GETs, copying every chunk into the
destination while computing the CRC, and compare with the header at the end:
a corrupt object raises ChecksumMismatch and is never returned.

Writes: `put()` is write-through (returns when S3 has the object; multipart
above `multipart_threshold`). `put_async()` is write-behind, see its docstring
for the ownership contract.

Failures: every call is bounded: per-attempt connect/read timeouts, at most
`max_attempts` attempts with exponential backoff and full jitter, and no retry
that would end past `retry_deadline_s`. Then TransferFailed (TRANSFER_FAIL),
with the counters in stats().
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import quote

from .._engine import ffi, lib
from ..codec import MAX_KEY_LEN, Header, decode_header, header_size
from ..config import parse_size
from ..errors import ChecksumMismatch, InvalidParams, ObjectNotFound, StoreClosed, TransferFailed, \
    Unavailable
from .tier import PartCursor, RecordSpec, TierBackend, dst_region, finish_header, key_bytes, \
    make_record, parts_crc, value_regions

log = logging.getLogger(__name__)

MAX_HEAD = header_size(MAX_KEY_LEN)
_MAX_NAME = 900  # S3 allows 1024 bytes; leave room for the prefix
_MISSING = ("NoSuchKey", "404", "NotFound")
_TRANSIENT = ("SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "Throttling",
              "ThrottlingException", "InternalError", "ServiceUnavailable", "503", "500")

OnDone = Callable[[bytes, "BaseException | None"], None]


class _Transient(Exception):
    """An attempt failed in a way worth retrying (connection, timeout, 5xx, throttling)."""


@dataclass
class _Job:
    spec: RecordSpec
    on_done: OnDone | None
    size: int
    enqueued: float
    cancelled: bool = False
    attempts: int = 0


@dataclass
class S3Settings:
    bucket: str
    prefix: str = "mooncake_store/"
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    multipart_threshold: int = 64 << 20
    part_size: int = 16 << 20
    first_range: int = 8 << 20
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_attempts: int = 5
    retry_deadline_s: float = 30.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    create_bucket: bool = True
    writers: int = 2
    queue_items: int = 4096
    queue_bytes: int = 1 << 30
    give_up_after_s: float = 3600.0
    get_concurrency: int = 4


class S3Tier(TierBackend):
    name = "s3"

    def __init__(self, bucket: str, prefix: str = "mooncake_store/", **kw: Any) -> None:
        if not bucket:
            raise InvalidParams("s3 bucket: required")
        for k in ("multipart_threshold", "part_size", "first_range", "queue_bytes"):
            if k in kw:
                kw[k] = parse_size(kw[k], k)
        try:
            self.cfg = S3Settings(bucket, prefix, **kw)
        except TypeError as e:
            raise InvalidParams(f"S3Tier: {e}") from None
        c = self.cfg
        if c.part_size < 5 << 20:
            raise InvalidParams(f"part_size must be >= 5 MiB (S3's minimum), got {c.part_size}")
        if c.multipart_threshold < c.part_size:
            raise InvalidParams("multipart_threshold must be >= part_size")
        if c.first_range < MAX_HEAD or c.max_attempts < 1 or c.writers < 1 \
                or c.get_concurrency < 1:
            raise InvalidParams("first_range, max_attempts, writers or get_concurrency too small")
        self._client = self._make_client()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[_Job] = collections.deque()
        self._pending: dict[bytes, _Job] = {}
        self._queued_bytes = 0
        self._inflight = 0
        self._resume_at = 0.0
        self._backoff = 0.0
        self._closed = False
        self._bucket_ready = False
        self._get_pool: ThreadPoolExecutor | None = None
        self._used = 0
        self._stats = dict(puts=0, gets=0, removes=0, bytes_up=0, bytes_down=0, retries=0,
                           failures=0, checksum_errors=0, multipart_uploads=0, async_queued=0,
                           async_done=0, async_failed=0, async_retries=0, last_error="",
                           available=True)
        self._workers = [threading.Thread(target=self._worker, name=f"s3-writer-{i}", daemon=True)
                         for i in range(c.writers)]
        for t in self._workers:
            t.start()

    @classmethod
    def from_config(cls, cfg: Any = None, **overrides: Any) -> "S3Tier":
        """Build from a Config (s3_bucket, s3_prefix, s3_endpoint_url, s3_region), a dict with
        the same names, and MOONCAKE_S3_* env (BUCKET, PREFIX, ENDPOINT_URL, REGION,
        ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN); credentials default to boto3's chain
        (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance roles)."""
        def pick(name: str) -> Any:
            v = cfg.get(f"s3_{name}") if isinstance(cfg, dict) else getattr(cfg, f"s3_{name}", None)
            return v or os.environ.get(f"MOONCAKE_S3_{name.upper()}") or None

        kw = dict(endpoint_url=pick("endpoint_url"), region=pick("region"),
                  access_key=pick("access_key_id"), secret_key=pick("secret_access_key"),
                  session_token=pick("session_token"))
        kw.update(overrides)
        bucket = kw.pop("bucket", None) or pick("bucket")
        prefix = kw.pop("prefix", None) or pick("prefix") or "mooncake_store/"
        return cls(bucket or "", prefix, **kw)

    def _make_client(self):
        import boto3
        from botocore.config import Config as BotoConfig

        c = self.cfg
        bc = BotoConfig(connect_timeout=c.connect_timeout, read_timeout=c.read_timeout,
                        retries={"mode": "standard", "total_max_attempts": 2},
                        max_pool_connections=c.writers + 16,
                        s3={"addressing_style": "path"} if c.endpoint_url else {},
                        # S3-compatibles (OSS, older MinIO) reject the newer default checksums
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        return boto3.session.Session().client(
            "s3", endpoint_url=c.endpoint_url, region_name=c.region or "us-east-1",
            aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key,
            aws_session_token=c.session_token, config=bc)

    # ---- names ----------------------------------------------------------------------------
    def object_name(self, key: bytes | str) -> str:
        kb = key_bytes(key)
        enc = quote(kb, safe="")
        if len(enc) <= _MAX_NAME:
            return self.cfg.prefix + enc
        return f"{self.cfg.prefix}_h/{hashlib.sha256(kb).hexdigest()}"

    # ---- bounded retries --------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], Any], create_bucket: bool = False) -> Any:
        """fn() with bounded retries. create_bucket: a write may create a missing bucket;
        for anything else a missing bucket is a missing object."""
        from botocore import exceptions as bex

        transient = (bex.ConnectionError, bex.HTTPClientError, bex.ResponseStreamingError,
                     bex.IncompleteReadError, OSError)
        c = self.cfg
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                out = fn()
                with self._lock:
                    self._stats["available"] = True
                return out
            except bex.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in _MISSING or (code == "NoSuchBucket" and not create_bucket):
                    raise ObjectNotFound(f"{what}: not in the S3 tier") from None
                if code == "NoSuchBucket" and c.create_bucket and not self._bucket_ready:
                    self._ensure_bucket()
                    continue
                if not (status >= 500 or code in _TRANSIENT):
                    self._failed(f"{what}: {code} {e}")
                    err = TransferFailed(f"S3 {what} failed: {code}: {e}")
                    err.transient = False
                    raise err from None
                last = f"{code} (HTTP {status})"
            except transient as e:  # connection refused/reset, timeouts, cut-off bodies
                last = f"{type(e).__name__}: {e}"
            except bex.BotoCoreError as e:  # no credentials, bad parameters: retrying won't help
                self._failed(f"{what}: {e}")
                err = TransferFailed(f"S3 {what} failed: {type(e).__name__}: {e}")
                err.transient = False
                raise err from None
            elapsed = time.monotonic() - start
            delay = random.uniform(0, min(c.backoff_cap_s, c.backoff_base_s * 2 ** attempt))
            if attempt >= c.max_attempts or elapsed + delay > c.retry_deadline_s:
                self._failed(f"{what}: {last}")
                err = TransferFailed(f"S3 {what} failed after {attempt} attempt(s) in "
                                     f"{elapsed:.1f}s: {last}")
                err.transient = True
                raise err
            with self._lock:
                self._stats["retries"] += 1
            time.sleep(delay)

    def _failed(self, msg: str) -> None:
        with self._lock:
            self._stats["failures"] += 1
            self._stats["last_error"] = msg[:300]
            self._stats["available"] = False

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        kw: dict = {"Bucket": self.cfg.bucket}
        if self.cfg.region and self.cfg.region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.region}
        try:
            self._client.create_bucket(**kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._failed(f"create bucket {self.cfg.bucket}: {code}")
                err = TransferFailed(f"S3 bucket {self.cfg.bucket} is missing and could not "
                                     f"be created: {code}: {e}")
                err.transient = False
                raise err from None
        except BotoCoreError as e:
            self._failed(f"create bucket {self.cfg.bucket}: {e}")
            err = TransferFailed(f"S3 bucket {self.cfg.bucket} could not be created: {e}")
            err.transient = True
            raise err from None
        self._bucket_ready = True

    # ---- write-through ------------------------------------------------------------------------
    def put(self, key: bytes | str, value: Any, *, header: bytes | None = None, codec: int = 0,
            raw_len: int | None = None, flags: int = 0, epoch: int = 0) -> str:
        self._check_open()
        spec = make_record(key, value, header, codec=codec, raw_len=raw_len, flags=flags,
                           epoch=epoch)
        self._cancel(spec.key)  # a newer value supersedes a queued upload of the old one
        return self._put_spec(spec)

    def _put_spec(self, spec: RecordSpec) -> str:
        h = spec.parsed
        total = h.header_len + h.value_len
        name = self.object_name(spec.key)
        if total < self.cfg.multipart_threshold:
            body = bytearray(total)
            dst = ffi.from_buffer("char[]", body, require_writable=True)
            crc = PartCursor(spec.parts).copy_into(dst + h.header_len, h.value_len, 0)
            body[:h.header_len] = finish_header(spec, crc)
            del dst
            self._call(f"put {name}", lambda: self._client.put_object(
                Bucket=self.cfg.bucket, Key=name, Body=body), create_bucket=True)
        else:
            self._put_multipart(spec, name)
        with self._lock:
            self._stats["puts"] += 1
            self._stats["bytes_up"] += total
            self._used += total
        return name

    def _put_multipart(self, spec: RecordSpec, name: str) -> None:
        h = spec.parsed
        if not spec.verify_crc:  # the header goes out in part 1: know the CRC first
            hb = finish_header(spec, parts_crc(spec.parts))
            spec = RecordSpec(spec.key, hb, decode_header(hb), spec.parts, True)
        c, b = self.cfg, self.cfg.bucket
        up = self._call(f"create-multipart {name}",
                        lambda: self._client.create_multipart_upload(Bucket=b, Key=name),
                        create_bucket=True)
        uid = up["UploadId"]
        try:
            cursor = PartCursor(spec.parts)
            total = h.header_len + h.value_len
            pos, crc, etags = 0, 0, []
            while pos < total:
                n = min(c.part_size, total - pos)
                part = bytearray(n)
                dst = ffi.from_buffer("char[]", part, require_writable=True)
                head = 0
                if pos == 0:
                    part[:h.header_len] = spec.header
                    head = h.header_len
                crc = cursor.copy_into(dst + head, n - head, crc)
                del dst
                num = len(etags) + 1
                body = part
                r = self._call(f"upload-part {num} of {name}", lambda: self._client.upload_part(
                    Bucket=b, Key=name, UploadId=uid, PartNumber=num, Body=body))
                etags.append({"PartNumber": num, "ETag": r["ETag"]})
                pos += n
            finish_header(spec, crc)  # the source changed while uploading -> ChecksumMismatch
            self._call(f"complete-multipart {name}", lambda: self._client.complete_multipart_upload(
                Bucket=b, Key=name, UploadId=uid, MultipartUpload={"Parts": etags}))
            with self._lock:
                self._stats["multipart_uploads"] += 1
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=b, Key=name, UploadId=uid)
            except Exception:  # noqa: BLE001 - best effort; lifecycle rules reap the rest
                pass
            raise

    # ---- write-behind ---------------------------------------------------------------------------
    def put_async(self, key: bytes | str, value: Any, *, header: bytes | None = None,
                  on_done: OnDone | None = None, copy: bool = False, block_s: float = 0.0,
                  codec: int = 0, raw_len: int | None = None, flags: int = 0,
                  epoch: int = 0) -> None:
        """Queue an upload and return at once.

        Contract: with copy=False (default) the caller keeps `value` alive and unchanged
        (the object stays in its faster tier) until `on_done(key, None)` reports that S3 holds
        it, or `on_done(key, exc)` reports a final failure. A source that changes meanwhile is
        caught by the CRC check and reported as ChecksumMismatch, never uploaded. copy=True
        snapshots the value now so the caller may drop it at once.
        Transient failures (S3 down or slow) are retried with backoff for up to
        `give_up_after_s`; permanent ones (access denied, bad bucket) end the job.
        When the queue is full (queue_items / queue_bytes), waits up to block_s, then raises
        Unavailable: keep the object in the faster tier and try again later.
        on_done runs on a writer thread and must not block.
        """
        self._check_open()
        spec = make_record(key, value, header, codec=codec, raw_len=raw_len, flags=flags,
                           epoch=epoch)
        if copy:
            snap = bytearray(spec.parsed.value_len)
            crc = PartCursor(spec.parts).copy_into(
                ffi.from_buffer("char[]", snap, require_writable=True), len(snap), 0)
            hb = finish_header(spec, crc)
            spec = RecordSpec(spec.key, hb, decode_header(hb), value_regions(snap), True)
        elif not spec.verify_crc:  # checksum the source now so a later change is caught
            hb = finish_header(spec, parts_crc(spec.parts))
            spec = RecordSpec(spec.key, hb, decode_header(hb), spec.parts, True)
        size = spec.parsed.header_len + spec.parsed.value_len
        job = _Job(spec, on_done, size, time.monotonic())
        deadline = time.monotonic() + block_s
        with self._cond:
            while (len(self._queue) >= self.cfg.queue_items
                   or (self._queue and self._queued_bytes + size > self.cfg.queue_bytes)):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise Unavailable(f"S3 write-behind queue full ({len(self._queue)} uploads, "
                                      f"{self._queued_bytes} bytes)")
                self._cond.wait(min(left, 0.5))
            old = self._pending.get(spec.key)
            if old is not None:
                old.cancelled = True
            self._pending[spec.key] = job
            self._queue.append(job)
            self._queued_bytes += size
            self._stats["async_queued"] += 1
            self._cond.notify_all()

    def pending(self, key: bytes | str | None = None) -> int | bool:
        """Uploads queued or in flight (for one key: whether it has one)."""
        with self._lock:
            if key is None:
                return len(self._queue) + self._inflight
            return key_bytes(key) in self._pending

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued upload finished (succeeded or failed for good)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    wait = self._resume_at - time.monotonic()
                    if self._queue and wait <= 0:
                        break
                    self._cond.wait(min(max(wait, 0.05), 0.5) if self._queue else 0.5)
                if self._closed:
                    return
                job = self._queue.popleft()
                self._queued_bytes -= job.size
                if job.cancelled:
                    self._cond.notify_all()
                    continue
                self._inflight += 1
            self._run_job(job)

    def _run_job(self, job: _Job) -> None:
        kb = job.spec.key
        err: BaseException | None = None
        retry = False
        try:
            job.attempts += 1
            self._put_spec(job.spec)
            if job.cancelled:  # removed or superseded while uploading
                self._delete_quiet(kb)
        except TransferFailed as e:
            err = e
            retry = getattr(e, "transient", False) and \
                time.monotonic() - job.enqueued < self.cfg.give_up_after_s
        except BaseException as e:  # noqa: BLE001 - reported through on_done
            err = e
        with self._cond:
            self._inflight -= 1
            if retry and not self._closed and not job.cancelled:
                # S3 looks down: pause every writer, keep the order, try again later
                self._backoff = min(self.cfg.backoff_cap_s, max(self.cfg.backoff_base_s,
                                                                self._backoff * 2))
                self._resume_at = time.monotonic() + random.uniform(self._backoff / 2,
                                                                    self._backoff)
                self._queue.appendleft(job)
                self._queued_bytes += job.size
                self._stats["async_retries"] += 1
                self._cond.notify_all()
                return
            self._backoff = 0.0 if err is None else self._backoff
            if self._pending.get(kb) is job:
                del self._pending[kb]
            self._stats["async_done" if err is None else "async_failed"] += 1
            self._cond.notify_all()
        if job.on_done is not None and not job.cancelled:
            try:
                job.on_done(kb, err)
            except Exception:  # noqa: BLE001 - a callback must not kill the writer
                log.exception("S3 write-behind on_done callback failed for %r", kb[:80])

    def _cancel(self, kb: bytes) -> None:
        with self._cond:
            job = self._pending.pop(kb, None)
            if job is not None:
                job.cancelled = True
                self._cond.notify_all()

    # ---- reads -----------------------------------------------------------------------------------
    def _get_range(self, name: str, start: int, end: int) -> tuple[bytes, int]:
        """Bytes [start, end] (inclusive) and the object's total size."""
        def go():
            r = self._client.get_object(Bucket=self.cfg.bucket, Key=name,
                                        Range=f"bytes={start}-{end}")
            data = r["Body"].read()
            cr = r.get("ContentRange") or ""
            total = int(cr.rsplit("/", 1)[1]) if "/" in cr and not cr.endswith("*") \
                else r.get("ContentLength", len(data))
            return data, total
        data, total = self._call(f"get {name}", go)
        with self._lock:
            self._stats["bytes_down"] += len(data)
        return data, total

    def _fetch(self, kb: bytes, dst_for: Callable[[Header], Any]) -> Header:
        self._check_open()
        name = self.object_name(kb)
        data, total = self._get_range(name, 0, self.cfg.first_range - 1)
        try:
            hdr = decode_header(data)
            if hdr.key != kb:
                raise ChecksumMismatch(f"S3 object {name} holds key {hdr.key!r:.60}")
            if total != hdr.header_len + hdr.value_len:
                raise ChecksumMismatch(f"S3 object {name} is {total} bytes, its header says "
                                       f"{hdr.header_len + hdr.value_len}")
            dst = dst_for(hdr)
            hlen, vlen = hdr.header_len, hdr.value_len
            first = memoryview(data)[hlen:]
            crc = lib.mcs_copy_crc32c(dst, ffi.from_buffer(first), len(first), 0) \
                if len(first) else 0
            done = len(first)
            spans = [(at, min(self.cfg.part_size, vlen - at))
                     for at in range(done, vlen, self.cfg.part_size)]

            def fetch(span: tuple[int, int]) -> int:
                at, n = span
                chunk, _ = self._get_range(name, hlen + at, hlen + at + n - 1)
                if len(chunk) != n:
                    raise ChecksumMismatch(f"S3 object {name} changed size during the read")
                return lib.mcs_copy_crc32c(dst + at, ffi.from_buffer(chunk), n, 0)

            # Ranges in parallel (S3 is latency-bound per request); the CRCs of the
            # pieces are combined in order, so the whole value is still verified.
            if len(spans) < 2:
                parts = [fetch(sp) for sp in spans]
            else:
                futs = [self._readers().submit(fetch, sp) for sp in spans]
                wait(futs)  # every writer into dst has finished before anything returns
                parts = [f.result() for f in futs]
            for (_, n), part_crc in zip(spans, parts):
                crc = lib.mcs_crc32c_combine(crc, part_crc, n)
            if crc != hdr.value_crc:
                raise ChecksumMismatch(f"value checksum mismatch in S3 object {name}")
        except ChecksumMismatch:
            with self._lock:
                self._stats["checksum_errors"] += 1
            raise
        with self._lock:
            self._stats["gets"] += 1
        return hdr

    def _readers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._get_pool is None:
                self._get_pool = ThreadPoolExecutor(max_workers=self.cfg.get_concurrency,
                                                    thread_name_prefix="s3-get")
            return self._get_pool

    def get_into(self, key: bytes | str, dst: Any, size: int | None = None) -> int:
        kb = key_bytes(key)
        r = dst_region(dst, size)

        def dst_for(hdr: Header) -> Any:
            if r.size < hdr.value_len:
                raise InvalidParams(f"buffer of {r.size} bytes is smaller than the "
                                    f"{hdr.value_len}-byte value of {kb!r:.60}")
            return r.ptr
        return self._fetch(kb, dst_for).value_len

    def read_record(self, key: bytes | str) -> tuple[Header, bytes]:
        kb = key_bytes(key)
        box: list[bytearray] = []

        def dst_for(hdr: Header) -> Any:
            box.append(bytearray(hdr.value_len))
            return ffi.from_buffer("char[]", box[0], require_writable=True)
        hdr = self._fetch(kb, dst_for)
        return hdr, bytes(box[0])

    def read(self, key: bytes | str) -> bytes:
        return self.read_record(key)[1]

    def header(self, key: bytes | str) -> Header:
        self._check_open()
        kb = key_bytes(key)
        name = self.object_name(kb)
        return self._header_of(name, kb)

    def _header_of(self, name: str, kb: bytes | None) -> Header:
        data, total = self._get_range(name, 0, MAX_HEAD - 1)
        hdr = decode_header(data)
        if (kb is not None and hdr.key != kb) or total != hdr.header_len + hdr.value_len:
            raise ChecksumMismatch(f"S3 object {name} does not match its header")
        return hdr

    def contains(self, key: bytes | str) -> bool:
        self._check_open()
        name = self.object_name(key)
        try:
            self._call(f"head {name}", lambda: self._client.head_object(
                Bucket=self.cfg.bucket, Key=name))
            return True
        except ObjectNotFound:
            return False

    def remove(self, key: bytes | str) -> bool:
        kb = key_bytes(key)
        self._check_open()
        self._cancel(kb)
        existed = self.contains(kb)
        if existed:
            name = self.object_name(kb)
            self._call(f"delete {name}", lambda: self._client.delete_object(
                Bucket=self.cfg.bucket, Key=name))
            with self._lock:
                self._stats["removes"] += 1
        return existed

    def _delete_quiet(self, kb: bytes) -> None:
        try:
            self._client.delete_object(Bucket=self.cfg.bucket, Key=self.object_name(kb))
        except Exception:  # noqa: BLE001 - a leftover copy is removed by the next remove/scan
            pass

    def scan(self, workers: int = 8) -> Iterator[tuple[bytes, Header, str]]:
        """Every valid record under the prefix: lists it, then reads each header (ranged GET).
        Objects whose header is bad, or whose name does not match their key, are skipped."""
        self._check_open()
        names = self._list_names()

        def one(item: tuple[str, int]):
            name, size = item
            try:
                hdr = self._header_of(name, None)
            except (ChecksumMismatch, ObjectNotFound):
                return None
            if hdr.header_len + hdr.value_len != size or self.object_name(hdr.key) != name:
                return None
            return hdr.key, hdr, name

        found = []
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for r in ex.map(one, names):
                if r is not None:
                    found.append(r)
        with self._lock:
            self._used = sum(h.header_len + h.value_len for _, h, _ in found)
        return iter(found)

    def _list_names(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        token = None
        for _ in range(1_000_000):  # bounded: 1e9 objects at 1000 a page
            kw = {"Bucket": self.cfg.bucket, "Prefix": self.cfg.prefix}
            if token:
                kw["ContinuationToken"] = token
            try:
                page = self._call("list", lambda: self._client.list_objects_v2(**kw))
            except ObjectNotFound:  # no bucket yet: nothing stored
                return out
            out.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        return out

    # ---- accounting / lifecycle ---------------------------------------------------------------
    @property
    def capacity(self) -> int | None:
        return None

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def stats(self) -> dict:
        with self._lock:
            st = dict(self._stats)
            st.update(tier=self.name, bucket=self.cfg.bucket, prefix=self.cfg.prefix,
                      endpoint_url=self.cfg.endpoint_url, used=self._used,
                      queue_items=len(self._queue), queue_bytes=self._queued_bytes,
                      inflight=self._inflight)
        return st

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("S3 tier is closed")

    def close(self, flush_timeout: float = 5.0) -> None:
        """Give queued uploads up to flush_timeout, then stop; uploads still queued are
        reported to their on_done as StoreClosed (the caller still holds those objects)."""
        if self._closed:
            return
        self.flush(flush_timeout)
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._pending.clear()
            self._cond.notify_all()
        for t in self._workers:
            t.join(timeout=self.cfg.read_timeout + self.cfg.connect_timeout + 5)
        if self._get_pool is not None:
            self._get_pool.shutdown(wait=True)
        for job in left:
            if job.on_done is not None and not job.cancelled:
                try:
                    job.on_done(job.spec.key, StoreClosed("S3 tier closed before the upload"))
                except Exception:  # noqa: BLE001
                    log.exception("S3 write-behind on_done callback failed")

