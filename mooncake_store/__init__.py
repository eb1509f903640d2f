"""mooncake_store: a distributed KV-cache store for LLM serving, with a C data plane.

`Store()` with no arguments gives an embedded store (master + one DRAM segment in
this process). `MooncakeDistributedStore` is the Mooncake-compatible face.
"""
__version__ = "0.1.0"

from .config import Config, parse_size  # noqa: E402
from .errors import (  # noqa: E402
    ChecksumMismatch,
    ErrorCode,
    InvalidParams,
    NoSpace,
    ObjectExists,
    ObjectHasLease,
    ObjectNotFound,
    ReplicaNotReady,
    SegmentNotFound,
    RpcFailed,
    RpcTimeout,
    StoreClosed,
    StoreError,
    TransferFailed,
)

__all__ = [
    "__version__", "Config", "parse_size", "ErrorCode", "StoreError", "InvalidParams",
    "ObjectNotFound", "ReplicaNotReady", "SegmentNotFound", "ObjectExists", "ObjectHasLease", "NoSpace", "ChecksumMismatch",
    "RpcFailed", "RpcTimeout", "StoreClosed", "TransferFailed",
]

from .replica import ReplicateConfig  # noqa: E402
from .client.store import BufferHandle, Store  # noqa: E402

__all__ += ["ReplicateConfig", "BufferHandle", "Store"]
from .client.compat import MooncakeDistributedStore  # noqa: E402

__all__ += ["MooncakeDistributedStore"]
