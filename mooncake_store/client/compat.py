"""`MooncakeDistributedStore`: Mooncake Store's Python interface over our `Store`.

Same methods, arguments and return conventions as Mooncake 0.3.x (see
../shared/API.md): nothing raises for store errors; calls return 0 or a
negative ErrorCode, `get` returns b"" on a miss. Any call before `setup` or
after `close` returns UNAVAILABLE_IN_CURRENT_STATUS (-1010).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

from ..config import Config
from ..errors import ErrorCode, StoreError
from ..replica import ReplicateConfig
from .store import BufferHandle, Store

log = logging.getLogger(__name__)

OK = int(ErrorCode.OK)
INVALID = int(ErrorCode.INVALID_PARAMS)
NOT_READY = int(ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS)


def _as_code(exc: BaseException) -> int:
    if isinstance(exc, StoreError):
        return int(exc.code)
    if isinstance(exc, (TypeError, ValueError, OverflowError)):
        return INVALID
    log.exception("unexpected error in compat call")
    return int(ErrorCode.INTERNAL_ERROR)


def _returns(on_error: Callable[[int, tuple], Any]) -> Callable:
    """Run the method on the open store; map any failure through on_error(code, args)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self: "MooncakeDistributedStore", *args: Any, **kwargs: Any) -> Any:
            if self._store is None or self._store.closed:
                return on_error(NOT_READY, args)
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the compat face never raises
                return on_error(_as_code(e), args)
        return wrapper
    return deco


_code = _returns(lambda code, args: code)
_empty = _returns(lambda code, args: b"")
_none = _returns(lambda code, args: None)


def _per_key(code: int, args: tuple) -> list:
    keys = args[0] if args else []
    try:
        return [code] * len(keys)
    except TypeError:
        return []


_codes = _returns(_per_key)
_nones = _returns(lambda code, args: [None] * len(args[0]) if args and hasattr(args[0], "__len__")
                  else [])
_empties = _returns(lambda code, args: [b""] * len(args[0]) if args and hasattr(args[0], "__len__")
                    else [])

_SETUP_ARGS = ("local_hostname", "metadata_server", "global_segment_size", "local_buffer_size",
               "protocol", "rdma_devices", "master_server_addr")
# Mooncake's optional setup arguments, in positional order after the required ones.
_SETUP_OPTIONAL = ("engine", "enable_ssd_offload", "ssd_offload_path", "tenant_id",
                   "enable_client_http_server", "client_http_port")


class MooncakeDistributedStore:
    def __init__(self) -> None:
        self._store: Store | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def setup(self, *args: Any, **kwargs: Any) -> int:
        if self._store is not None and not self._store.closed:
            return int(ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS)
        try:
            values = self._setup_values(args, kwargs)
            values.pop("engine", None)  # a shared transfer engine: ours is per store
            self._store = Store(Config.load(values=values))
            return OK
        except Exception as e:  # noqa: BLE001
            return _as_code(e)

    @staticmethod
    def _setup_values(args: tuple, kwargs: dict) -> dict:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            return dict(args[0])
        names = _SETUP_ARGS + _SETUP_OPTIONAL
        if len(args) > len(names):
            raise TypeError("too many positional arguments to setup()")
        values = dict(zip(names, args))
        values.update(kwargs)
        missing = [a for a in _SETUP_ARGS if a not in values]
        if missing:
            raise TypeError(f"setup() missing {', '.join(missing)}")
        return values

    def close(self) -> int:
        if self._store is not None:
            self._store.close()
        return OK

    def health_check(self) -> int:
        """0 healthy, 1 not set up or closed, 2 master unreachable."""
        if self._store is None or self._store.closed:
            return 1
        cluster = getattr(self._store, "_cluster", None)
        if cluster is not None:
            try:
                cluster.master.call("ping", timeout_ms=1000)
            except StoreError:
                return 2
        return 0

    def get_hostname(self) -> str:
        """This client's segment name ("host:port"), usable as a preferred_segment."""
        if self._store is None:
            return ""
        return self._store.hostname

    @property
    def store(self) -> Store | None:
        """The Pythonic face of the same client."""
        return self._store

    # ---- copying API --------------------------------------------------------------------------
    @_code
    def put(self, key: Any, value: Any, config: ReplicateConfig | None = None) -> int:
        self._store.put(key, value, config)
        return OK

    @_code
    def put_parts(self, key: Any, *parts: Any, config: ReplicateConfig | None = None) -> int:
        self._store.put_parts(key, *parts, config=config)
        return OK

    @_code
    def put_batch(self, keys: Sequence[Any], values: Sequence[Any],
                  config: ReplicateConfig | None = None) -> int:
        return _first_error(self._store.batch_put(keys, values, config))

    @_codes
    def batch_put_from_multi_buffers(self, keys: Sequence[Any], all_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]],
                                     config: ReplicateConfig | None = None) -> list[int]:
        """Each key's value is the concatenation of its buffers."""
        return self._store.batch_put_gather(keys, all_ptrs, all_sizes, config)

    @_code
    def upsert(self, key: Any, value: Any, config: ReplicateConfig | None = None) -> int:
        self._store.upsert(key, value, config)
        return OK

    @_code
    def upsert_parts(self, key: Any, *parts: Any, config: ReplicateConfig | None = None) -> int:
        self._store.upsert_parts(key, *parts, config=config)
        return OK

    @_code
    def upsert_batch(self, keys: Sequence[Any], values: Sequence[Any],
                     config: ReplicateConfig | None = None) -> int:
        return _first_error(self._store.batch_upsert(keys, values, config))

    @_empty
    def get(self, key: Any) -> bytes:
        return self._store.get(key)

    @_empties
    def get_batch(self, keys: Sequence[Any]) -> list[bytes]:
        return [v if v is not None else b"" for v in self._store.batch_get(keys)]

    @_none
    def get_buffer(self, key: Any) -> BufferHandle | None:
        return self._store.get_buffer(key)

    @_nones
    def batch_get_buffer(self, keys: Sequence[Any]) -> list[BufferHandle | None]:
        out = []
        for key in keys:
            try:
                out.append(self._store.get_buffer(key))
            except StoreError:
                out.append(None)
        return out

    # ---- query and removal ------------------------------------------------------------------------
    @_code
    def is_exist(self, key: Any) -> int:
        return 1 if self._store.exists(key) else 0

    @_codes
    def batch_is_exist(self, keys: Sequence[Any]) -> list[int]:
        return [1 if e else 0 for e in self._store.batch_exists(keys)]

    @_code
    def get_size(self, key: Any) -> int:
        return self._store.size(key)

    @_code
    def remove(self, key: Any, force: bool = False) -> int:
        self._store.remove(key, force)
        return OK

    @_codes
    def batch_remove(self, keys: Sequence[Any], force: bool = False) -> list[int]:
        return self._store.batch_remove(keys, force)

    @_code
    def remove_by_regex(self, pattern: str, force: bool = False) -> int:
        return self._store.remove_by_regex(pattern, force)

    @_code
    def remove_all(self, force: bool = False) -> int:
        return self._store.remove_all(force)

    # ---- zero-copy ------------------------------------------------------------------------------------
    @_code
    def register_buffer(self, ptr: int, size: int) -> int:
        self._store.register_buffer(ptr, size)
        return OK

    @_code
    def unregister_buffer(self, ptr: int) -> int:
        self._store.unregister_buffer(ptr)
        return OK

    @_code
    def put_from(self, key: Any, ptr: int, size: int, config: ReplicateConfig | None = None) -> int:
        self._store.put_from(key, ptr, size, config)
        return OK

    @_code
    def upsert_from(self, key: Any, ptr: int, size: int,
                    config: ReplicateConfig | None = None) -> int:
        self._store.upsert_from(key, ptr, size, config)
        return OK

    @_code
    def get_into(self, key: Any, ptr: int, size: int) -> int:
        return self._store.get_into(key, ptr, size)

    @_codes
    def batch_put_from(self, keys: Sequence[Any], ptrs: Sequence[int], sizes: Sequence[int],
                       config: ReplicateConfig | None = None) -> list[int]:
        return self._store.batch_put_from(keys, ptrs, sizes, config)

    @_codes
    def batch_upsert_from(self, keys: Sequence[Any], ptrs: Sequence[int], sizes: Sequence[int],
                          config: ReplicateConfig | None = None) -> list[int]:
        return self._store.batch_put_from(keys, ptrs, sizes, config, upsert=True)

    @_codes
    def batch_get_into(self, keys: Sequence[Any], ptrs: Sequence[int],
                       sizes: Sequence[int]) -> list[int]:
        return self._store.batch_get_into(keys, ptrs, sizes)

    # ---- tensors ---------------------------------------------------------------------------------------
    @_code
    def put_tensor(self, key: Any, tensor: Any) -> int:
        self._store.put_tensor(key, tensor)
        return OK

    @_none
    def get_tensor(self, key: Any) -> Any:
        return self._store.get_tensor(key)

    @_codes
    def batch_put_tensor(self, keys: Sequence[Any], tensors: Sequence[Any]) -> list[int]:
        return self._store.batch_put_tensor(keys, tensors)

    @_nones
    def batch_get_tensor(self, keys: Sequence[Any]) -> list[Any]:
        return self._store.batch_get_tensor(keys)

    @_code
    def get_tensor_into_cuda(self, key: Any, tensor: Any) -> int:
        self._store.get_tensor_into(key, tensor)
        return OK

    @_code
    def put_tensor_with_tp(self, key: Any, tensor: Any, tp_rank: int = 0, tp_size: int = 1,
                           split_dim: int = 0) -> int:
        """Split `tensor` into tp_size shards along split_dim, stored as `<key>_tp_<rank>`."""
        if tp_size < 1 or not 0 <= tp_rank < tp_size:
            return INVALID
        shards = tensor.chunk(tp_size, dim=split_dim)
        if len(shards) != tp_size:
            return INVALID
        codes = self._store.batch_put_tensor([f"{key}_tp_{r}" for r in range(tp_size)],
                                             [s.contiguous() for s in shards])
        return _first_error(codes)

    @_none
    def get_tensor_with_tp(self, key: Any, tp_rank: int = 0, tp_size: int = 1) -> Any:
        if tp_size < 1 or not 0 <= tp_rank < tp_size:
            return None
        return self._store.get_tensor(f"{key}_tp_{tp_rank}")


def _first_error(codes: Sequence[int]) -> int:
    return next((c for c in codes if c < 0), OK)
