"""Error codes (numbers kept from Mooncake Store) and the typed exceptions of the Pythonic API."""
from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    OK = 0
    INTERNAL_ERROR = -1
    BUFFER_OVERFLOW = -10
    SEGMENT_NOT_FOUND = -101
    SEGMENT_ALREADY_EXISTS = -102
    NO_AVAILABLE_HANDLE = -200
    INVALID_PARAMS = -600
    INVALID_WRITE = -700
    INVALID_READ = -701
    INVALID_REPLICA = -702
    REPLICA_IS_NOT_READY = -703
    OBJECT_NOT_FOUND = -704
    OBJECT_ALREADY_EXISTS = -705
    OBJECT_HAS_LEASE = -706
    LEASE_EXPIRED = -707
    TRANSFER_FAIL = -800
    CHECKSUM_MISMATCH = -801
    RPC_FAIL = -900
    RPC_TIMEOUT = -901
    ETCD_OPERATION_ERROR = -1000
    UNAVAILABLE_IN_CURRENT_STATUS = -1010


class StoreError(Exception):
    """Base of every store error; `.code` is the ErrorCode."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str = "", code: ErrorCode | int | None = None):
        if code is not None:
            self.code = ErrorCode(code)
        super().__init__(message or self.code.name)


class InvalidParams(StoreError, ValueError):
    code = ErrorCode.INVALID_PARAMS


class ObjectNotFound(StoreError, KeyError):
    code = ErrorCode.OBJECT_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0] if self.args else self.code.name


class ObjectExists(StoreError):
    code = ErrorCode.OBJECT_ALREADY_EXISTS


class ObjectHasLease(StoreError):
    code = ErrorCode.OBJECT_HAS_LEASE


class NoSpace(StoreError):
    code = ErrorCode.NO_AVAILABLE_HANDLE


class ChecksumMismatch(StoreError):
    code = ErrorCode.CHECKSUM_MISMATCH


class SegmentNotFound(StoreError):
    code = ErrorCode.SEGMENT_NOT_FOUND


class ReplicaNotReady(StoreError):
    code = ErrorCode.REPLICA_IS_NOT_READY


class TransferFailed(StoreError):
    code = ErrorCode.TRANSFER_FAIL


class RpcFailed(StoreError):
    code = ErrorCode.RPC_FAIL


class RpcTimeout(StoreError):
    code = ErrorCode.RPC_TIMEOUT


class Unavailable(StoreError):
    code = ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS


class StoreClosed(Unavailable):
    pass


_BY_CODE: dict[int, type[StoreError]] = {
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.OBJECT_NOT_FOUND: ObjectNotFound,
    ErrorCode.OBJECT_ALREADY_EXISTS: ObjectExists,
    ErrorCode.OBJECT_HAS_LEASE: ObjectHasLease,
    ErrorCode.NO_AVAILABLE_HANDLE: NoSpace,
    ErrorCode.CHECKSUM_MISMATCH: ChecksumMismatch,
    ErrorCode.REPLICA_IS_NOT_READY: ReplicaNotReady,
    ErrorCode.SEGMENT_NOT_FOUND: SegmentNotFound,
    ErrorCode.TRANSFER_FAIL: TransferFailed,
    ErrorCode.RPC_FAIL: RpcFailed,
    ErrorCode.RPC_TIMEOUT: RpcTimeout,
    ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS: Unavailable,
}


def error_for(code: int, message: str = "") -> StoreError:
    """The typed exception for a negative code (StoreError for codes without a class)."""
    cls = _BY_CODE.get(code, StoreError)
    try:
        ec = ErrorCode(code)
    except ValueError:
        ec = ErrorCode.INTERNAL_ERROR
    return cls(message or ec.name, ec)
