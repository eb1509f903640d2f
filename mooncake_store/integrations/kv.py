"""Paged KV-cache connector: full blocks of a vLLM-style paged KV cache in and out of the store.

A paged KV cache is held in torch tensors in one of two layouts:

* per layer: a list of `[2, num_blocks, block_size, num_kv_heads, head_dim]` tensors
  (K at index 0, V at index 1), the shape vLLM's FlashAttention backend uses;
* layer-stacked: one `[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]` tensor.

A block of `block_size` tokens is stored as ONE store object holding every layer
contiguously, laid out `[num_layers, 2, block_size, num_kv_heads, head_dim]`, so
moving a block is one transfer whatever the layer count. Both cache layouts produce
the same object bytes, so a block saved from one layout loads into the other.

Keys come from `mooncake_store.keys`: the token-prefix chain of the full blocks,
seeded by a Namespace built from the model, the dtype, the block geometry and the
tp rank/size, so a different model, dtype, geometry or tp rank never hits.

Data path: the blocks of a batch are gathered with torch index ops into a staging
tensor (pinned host memory when the cache is on CUDA), and the whole batch goes to
the store in one `batch_put_from` / `batch_get_into` call with a pointer per block.
Loads can proceed layer by layer (`start_load` + `wait_for_layer`) so the model can
compute layer i while layer i+1 is still being copied into the paged cache.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..errors import InvalidParams
from ..keys import DEFAULT_HASH, KeySpec, Namespace

PER_LAYER = "per_layer"
STACKED = "stacked"
LAYOUTS = (PER_LAYER, STACKED)

# How long a layer wait may block before it is reported as a hang (seconds).
LAYER_WAIT_TIMEOUT_S = 120.0


# ------------------------------------------------------------------ geometry ---

@dataclass(frozen=True)
class BlockLayout:
    """The shape of one stored block: what a reader must agree on with the writer."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        for name in ("num_layers", "block_size", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidParams(f"{name} must be a positive int; got {value!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise InvalidParams(f"dtype must be a torch.dtype; got {self.dtype!r}")

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one stored block: [layers, 2, block_size, kv_heads, head_dim]."""
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def block_nbytes(self) -> int:
        n = self.element_size
        for d in self.block_shape:
            n *= d
        return n

    @property
    def tag(self) -> str:
        """The Namespace `layout` field: the byte layout of a stored block."""
        return ("paged-kv/v1/[L{},2,B{},H{},D{}]".format(
            self.num_layers, self.block_size, self.num_kv_heads, self.head_dim))

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


# ----------------------------------------------------------------- paged KV ---

class PagedKV:
    """A paged KV cache in torch tensors, per-layer or layer-stacked."""

    def __init__(self, caches: Any) -> None:
        if isinstance(caches, torch.Tensor):
            self.layout = STACKED
            self._check_stacked(caches)
            self.stacked: torch.Tensor | None = caches
            self.layers = [caches[i] for i in range(caches.shape[0])]
        elif isinstance(caches, (list, tuple)) and caches:
            self.layout = PER_LAYER
            self._check_per_layer(caches)
            self.stacked = None
            self.layers = list(caches)
        else:
            raise InvalidParams("caches must be a [L, 2, blocks, block_size, heads, head_dim] "
                                "tensor or a non-empty list of [2, blocks, block_size, heads, "
                                "head_dim] tensors")
        first = self.layers[0]
        self.num_blocks = int(first.shape[1])
        self.device = first.device
        self.block_layout = BlockLayout(len(self.layers), int(first.shape[2]),
                                        int(first.shape[3]), int(first.shape[4]), first.dtype)

    @staticmethod
    def _check_stacked(t: torch.Tensor) -> None:
        if t.dim() != 6 or t.shape[1] != 2:
            raise InvalidParams(f"a stacked cache must be [L, 2, blocks, block_size, heads, "
                                f"head_dim]; got shape {tuple(t.shape)}")

    @staticmethod
    def _check_per_layer(ts: Sequence[Any]) -> None:
        ref = ts[0]
        for i, t in enumerate(ts):
            if not isinstance(t, torch.Tensor):
                raise InvalidParams(f"layer {i} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() != 5 or t.shape[0] != 2:
                raise InvalidParams(f"layer {i} must be [2, blocks, block_size, heads, head_dim]; "
                                    f"got shape {tuple(t.shape)}")
            if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
                raise InvalidParams(f"layer {i} ({tuple(t.shape)}, {t.dtype}, {t.device}) differs "
                                    f"from layer 0 ({tuple(ref.shape)}, {ref.dtype}, {ref.device})")

    @classmethod
    def empty(cls, layout: BlockLayout, num_blocks: int, *, kind: str = PER_LAYER,
              device: Any = "cpu", zero: bool = True) -> "PagedKV":
        """Allocate a cache of `num_blocks` blocks with the given geometry."""
        if kind not in LAYOUTS:
            raise InvalidParams(f"kind must be one of {LAYOUTS}; got {kind!r}")
        make = torch.zeros if zero else torch.empty
        per = (2, num_blocks) + layout.block_shape[2:]
        if kind == STACKED:
            return cls(make((layout.num_layers,) + per, dtype=layout.dtype, device=device))
        return cls([make(per, dtype=layout.dtype, device=device)
                    for _ in range(layout.num_layers)])

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def block_ids(self, block_table: Any, count: int) -> torch.Tensor:
        """The first `count` entries of `block_table`, range-checked, as a long tensor
        on the cache's device."""
        if isinstance(block_table, torch.Tensor):
            ids = block_table.reshape(-1)[:count].to(device="cpu", dtype=torch.long)
        else:
            try:
                ids = torch.as_tensor(list(block_table)[:count], dtype=torch.long)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise InvalidParams("block_table must be a sequence of ints") from None
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_blocks):
            raise InvalidParams(f"block ids must be in 0..{self.num_blocks - 1}; got "
                                f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.to(self.device)

    # Gathers and scatters: one index op per layer (or one for a stacked cache).
    # `staging` is [n, L, 2, block_size, heads, head_dim] on the cache's device.
    def gather(self, ids: torch.Tensor, staging: torch.Tensor) -> None:
        if self.stacked is not None:
            staging.copy_(self.stacked.index_select(2, ids).permute(2, 0, 1, 3, 4, 5))
            return
        for i in range(self.num_layers):
            self.gather_layer(i, ids, staging)

    def gather_layer(self, i: int, ids: torch.Tensor, staging: torch.Tensor) -> None:
        staging[:, i].copy_(self.layers[i].index_select(1, ids).transpose(0, 1))

    def scatter(self, ids: torch.Tensor, staging: torch.Tensor) -> None:
        if self.stacked is not None:
            self.stacked.index_copy_(2, ids, staging.permute(1, 2, 0, 3, 4, 5))
            return
        for i in range(self.num_layers):
            self.scatter_layer(i, ids, staging)

    def scatter_layer(self, i: int, ids: torch.Tensor, staging: torch.Tensor) -> None:
        self.layers[i].index_copy_(1, ids, staging[:, i].transpose(0, 1))


# ------------------------------------------------------------------ staging ---

class _Staging:
    """A reusable host buffer of whole blocks, registered with the store.

    Pinned when the cache is on CUDA so host<->device copies can run async.
    One operation holds it at a time; a concurrent one gets a private buffer.
    """

    def __init__(self, store: Any, layout: BlockLayout, pinned: bool) -> None:
        self._store = store
        self._layout = layout
        self._pinned = pinned
        self._buf: torch.Tensor | None = None
        self._addr = 0
        self._lock = threading.Lock()

    def acquire(self, n: int) -> tuple[torch.Tensor, bool]:
        """A [n, *block_shape] host tensor and whether it is the shared buffer."""
        if not self._lock.acquire(blocking=False):
            return self._alloc(n), False
        if self._buf is None or self._buf.shape[0] < n:
            old = 0 if self._buf is None else self._buf.shape[0]
            self._drop()
            self._buf = self._alloc(max(n, old + old // 2))
            self._addr = self._store.register_buffer(self._buf)
        return self._buf[:n], True

    def release(self, shared: bool) -> None:
        if shared:
            self._lock.release()

    def _alloc(self, n: int) -> torch.Tensor:
        return torch.empty((n,) + self._layout.block_shape, dtype=self._layout.dtype,
                           pin_memory=self._pinned)

    def _drop(self) -> None:
        if self._buf is not None and self._addr:
            try:
                self._store.unregister_buffer(self._addr)
            except Exception:  # noqa: BLE001 - a closed store forgets registrations anyway
                pass
        self._buf, self._addr = None, 0

    def close(self) -> None:
        with self._lock:
            self._drop()


def _pointers(staging: torch.Tensor, block_nbytes: int) -> list[int]:
    base = staging.data_ptr()
    return [base + i * block_nbytes for i in range(staging.shape[0])]


# ------------------------------------------------------------------- handles ---

class LoadHandle:
    """An in-flight layer-wise load. `wait_for_layer(i)` returns once layer i is in the cache."""

    def __init__(self, kv: PagedKV, num_blocks: int, block_size: int,
                 first_block: int = 0) -> None:
        self._kv = kv
        self.first_block = first_block      # blocks before this were already in the cache
        self.num_blocks_requested = num_blocks
        self.num_blocks = num_blocks        # lowered if some blocks turn out missing
        self.block_size = block_size
        self.bytes_loaded = 0
        self.error: BaseException | None = None
        self._ready = [threading.Event() for _ in range(kv.num_layers)]
        self._cuda_events: list[Any] = [None] * kv.num_layers
        self._thread: threading.Thread | None = None
        self._steps: Iterator[None] | None = None   # set for a load run on the caller's thread

    @property
    def num_tokens(self) -> int:
        """Prefix tokens now in the cache (skipped + loaded); valid once `wait()` returned."""
        return self.num_blocks * self.block_size

    def _layer_done(self, i: int, cuda_event: Any = None) -> None:
        self._cuda_events[i] = cuda_event
        self._ready[i].set()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.num_blocks = self.first_block
        for ev in self._ready:
            ev.set()

    def _drain(self, steps: Iterator[None]) -> None:
        # Inference mode is per thread; inside it, in-place writes are allowed to both
        # normal tensors and caches allocated under the caller's inference_mode().
        try:
            with torch.inference_mode():
                for _ in steps:
                    pass
        except BaseException as e:  # noqa: BLE001 - surfaced to the waiter
            self._fail(e)

    def _advance(self, i: int) -> None:
        # Caller-thread load: run steps until layer i is in place (at most one per layer).
        for _ in range(len(self._ready) + 1):
            if self._ready[i].is_set():
                return
            try:
                next(self._steps)
            except StopIteration:
                break
            except BaseException as e:  # noqa: BLE001 - surfaced below
                self._fail(e)
        if not self._ready[i].is_set():
            self._fail(RuntimeError(f"KV load ended before layer {i} was loaded"))

    def wait_for_layer(self, i: int, timeout: float = LAYER_WAIT_TIMEOUT_S) -> None:
        if not 0 <= i < len(self._ready):
            raise InvalidParams(f"layer {i} out of range 0..{len(self._ready) - 1}")
        if self._steps is not None:
            self._advance(i)
        if not self._ready[i].wait(timeout):
            raise TimeoutError(f"layer {i} of a KV load not ready after {timeout} s")
        if self.error is not None:
            raise self.error
        ev = self._cuda_events[i]
        if ev is not None:
            # Make the compute stream wait for the copy stream, without blocking the host.
            torch.cuda.current_stream(self._kv.device).wait_event(ev)

    def wait(self, timeout: float = LAYER_WAIT_TIMEOUT_S) -> int:
        """Wait for every layer; returns the number of tokens loaded."""
        for i in range(len(self._ready)):
            self.wait_for_layer(i, timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.num_tokens


class SaveHandle:
    """A layer-wise save: `save_layer(i)` as each layer's KV is final, then `finish()`."""

    def __init__(self, conn: "KVConnector", keys: list[str], ids: torch.Tensor) -> None:
        self._conn = conn
        self.keys = keys
        self._ids = ids
        self._done = [False] * conn.kv.num_layers
        n = len(keys)
        self._dev: torch.Tensor | None = None
        self._host: torch.Tensor | None = None
        self._shared = False
        if n:
            self._host, self._shared = conn._save_staging.acquire(n)
            self._dev = (torch.empty((n,) + conn.layout.block_shape, dtype=conn.layout.dtype,
                                     device=conn.kv.device)
                         if conn.kv.on_cuda else self._host)

    def save_layer(self, i: int) -> None:
        if not 0 <= i < len(self._done):
            raise InvalidParams(f"layer {i} out of range 0..{len(self._done) - 1}")
        if self._dev is not None and not self._done[i]:
            self._conn.kv.gather_layer(i, self._ids, self._dev)
        self._done[i] = True

    def save_all(self) -> None:
        if self._dev is not None:
            self._conn.kv.gather(self._ids, self._dev)
        self._done = [True] * len(self._done)

    def finish(self) -> int:
        """Put the gathered blocks (one object each, one batch); returns blocks stored."""
        if self._host is None:
            return 0
        try:
            missing = [i for i, d in enumerate(self._done) if not d]
            if missing:
                raise InvalidParams(f"finish() before save_layer() for layers {missing}")
            if self._dev is not self._host:
                self._host.copy_(self._dev)  # device -> pinned host; synchronous
            return self._conn._put_blocks(self.keys, self._host)
        finally:
            self._conn._save_staging.release(self._shared)
            self._host = self._dev = None


# ----------------------------------------------------------------- connector ---

@dataclass
class ConnectorStats:
    blocks_saved: int = 0
    blocks_skipped: int = 0       # already present at save time
    blocks_failed: int = 0        # put refused (no space, ...)
    blocks_loaded: int = 0
    bytes_saved: int = 0
    bytes_loaded: int = 0
    lookups: int = 0


class KVConnector:
    """Save and load full KV blocks of a paged cache through a `Store`.

    >>> kv = PagedKV([torch.zeros(2, 64, 16, 8, 128) for _ in range(32)])
    >>> conn = KVConnector(store, kv, model="llama-3-8b")
    >>> conn.save(token_ids, block_table)           # -> blocks stored
    >>> conn.load(token_ids, other_block_table)     # -> tokens loaded (longest cached prefix)

    `kv` may be None on a scheduler-side connector that only answers `lookup`; it
    then needs `layout=BlockLayout(...)` to know its namespace.
    """

    def __init__(self, store: Any, kv: Any = None, model: str = "", *,
                 layout: BlockLayout | None = None, revision: str = "", tp_rank: int = 0,
                 tp_size: int = 1, lora: str = "", tenant: str = "",
                 hash: str = DEFAULT_HASH, key_prefix: str = "kv/") -> None:  # noqa: A002
        if kv is not None and not isinstance(kv, PagedKV):
            kv = PagedKV(kv)
        if kv is None and layout is None:
            raise InvalidParams("KVConnector needs the paged cache or a BlockLayout")
        if kv is not None and layout is not None and kv.block_layout != layout:
            raise InvalidParams(f"cache geometry {kv.block_layout} != layout {layout}")
        if not isinstance(model, str) or not model:
            raise InvalidParams("model must be a non-empty str (it names the key namespace)")
        self.store = store
        self.kv: PagedKV | None = kv
        self.layout: BlockLayout = kv.block_layout if kv is not None else layout
        self.namespace = Namespace(model=model, revision=revision, dtype=self.layout.dtype_name,
                                   layout=self.layout.tag, tp_rank=tp_rank, tp_size=tp_size,
                                   lora=lora, tenant=tenant)
        self.spec = KeySpec(self.namespace, self.layout.block_size, hash, key_prefix)
        self.stats = ConnectorStats()
        self._max_batch = int(getattr(getattr(store, "config", None), "max_batch_size", 4096))
        pinned = kv is not None and kv.on_cuda
        self._save_staging = _Staging(store, self.layout, pinned)
        self._load_staging = _Staging(store, self.layout, pinned)
        self._copy_stream = (torch.cuda.Stream(device=kv.device)
                             if kv is not None and kv.on_cuda else None)

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    def close(self) -> None:
        self._save_staging.close()
        self._load_staging.close()

    # ---- keys and lookup ------------------------------------------------------------------
    def keys(self, token_ids: Any) -> list[str]:
        """Keys of the full blocks of `token_ids` (a partial tail block has none)."""
        return self.spec.keys(token_ids)

    def lookup(self, token_ids: Any) -> int:
        """How many leading tokens of `token_ids` are cached (a multiple of block_size)."""
        self.stats.lookups += 1
        return self._cached_blocks(self.keys(token_ids)) * self.block_size

    def _cached_blocks(self, keys: list[str]) -> int:
        hit = 0
        for lo in range(0, len(keys), self._max_batch):
            chunk = keys[lo:lo + self._max_batch]
            n = self.store.longest_prefix(chunk)
            hit += n
            if n < len(chunk):
                break
        return hit

    def _need_kv(self) -> PagedKV:
        if self.kv is None:
            raise InvalidParams("this connector has no paged cache (scheduler side); "
                                "pass the cache to move blocks")
        return self.kv

    # ---- save ---------------------------------------------------------------------------------
    def start_save(self, token_ids: Any, block_table: Any) -> SaveHandle:
        """Begin a layer-wise save of the full blocks of `token_ids` not yet in the store."""
        kv = self._need_kv()
        keys = self.keys(token_ids)
        if len(block_table) < len(keys):
            raise InvalidParams(f"block_table has {len(block_table)} entries; the "
                                f"{len(keys)} full blocks of the tokens need that many")
        present = self._exists(keys)
        todo = [i for i, p in enumerate(present) if not p]
        self.stats.blocks_skipped += len(keys) - len(todo)
        ids = kv.block_ids(block_table, len(keys))
        if len(todo) < len(keys):
            ids = ids[torch.as_tensor(todo, dtype=torch.long, device=ids.device)]
        return SaveHandle(self, [keys[i] for i in todo], ids)

    def save(self, token_ids: Any, block_table: Any) -> int:
        """Store every full block of `token_ids` not already stored; returns blocks stored.

        `block_table[i]` is the cache block holding tokens [i*block_size, (i+1)*block_size).
        """
        handle = self.start_save(token_ids, block_table)
        handle.save_all()
        return handle.finish()

    def _exists(self, keys: list[str]) -> list[bool]:
        out: list[bool] = []
        for lo in range(0, len(keys), self._max_batch):
            out += self.store.batch_exists(keys[lo:lo + self._max_batch])
        return out

    def _put_blocks(self, keys: list[str], host: torch.Tensor) -> int:
        nbytes = self.layout.block_nbytes
        # Tail first: under recency-based eviction the head of the chain is then the
        # newest, so a store that overflows during the save drops tail blocks (a shorter
        # prefix still hits) rather than head blocks (which would make the rest useless).
        keys, ptrs = keys[::-1], _pointers(host, nbytes)[::-1]
        stored = 0
        for lo in range(0, len(keys), self._max_batch):
            hi = lo + self._max_batch
            codes = self.store.batch_put_from(keys[lo:hi], ptrs[lo:hi], [nbytes] * len(ptrs[lo:hi]))
            ok = sum(1 for c in codes if c == 0)
            stored += ok
            self.stats.blocks_failed += len(codes) - ok
        self.stats.blocks_saved += stored
        self.stats.bytes_saved += stored * nbytes
        return stored

    # ---- load ---------------------------------------------------------------------------------
    def load(self, token_ids: Any, block_table: Any) -> int:
        """Load the longest cached prefix of `token_ids` into the blocks of `block_table`.

        Returns the number of tokens loaded (a multiple of block_size, at most
        len(block_table) blocks).
        """
        kv = self._need_kv()
        keys = self._load_keys(token_ids, block_table)
        n = self._cached_blocks(keys)
        if n == 0:
            return 0
        host, shared = self._load_staging.acquire(n)
        try:
            n = self._get_blocks(keys[:n], host)
            if n:
                ids = kv.block_ids(block_table, n)
                src = host[:n].to(kv.device, non_blocking=True) if kv.on_cuda else host[:n]
                kv.scatter(ids, src)
                if kv.on_cuda:
                    torch.cuda.current_stream(kv.device).synchronize()
        finally:
            self._load_staging.release(shared)
        return n * self.block_size

    def load_layers(self, token_ids: Any, block_table: Any) -> Iterator[int]:
        """Load like `load`, yielding each layer index once that layer is in the cache.

        Sequential, on the caller's thread: the store read happens before the first
        yield, then one layer is scattered per step, so the caller can run layer i
        between steps. `.last_num_tokens` holds the tokens loaded once exhausted.
        """
        handle = self.start_load(token_ids, block_table, background=False)
        for i in range(self._need_kv().num_layers):
            handle.wait_for_layer(i)
            yield i
        self.last_num_tokens = handle.num_tokens

    def start_load(self, token_ids: Any, block_table: Any, num_tokens: int | None = None,
                   background: bool = True, skip_tokens: int = 0) -> LoadHandle:
        """Begin loading the cached prefix layer by layer.

        `num_tokens` (a multiple of block_size) is how many tokens a scheduler already
        decided to load; None looks it up now. With `background`, a thread reads the
        blocks and scatters one layer at a time (on a side CUDA stream when the cache
        is on a GPU); `wait_for_layer(i)` blocks only until layer i is in place.
        Without it, each `wait_for_layer` call advances the load on the caller's thread.
        `skip_tokens` (a multiple of block_size) are already in the cache and not read.
        """
        kv = self._need_kv()
        keys = self._load_keys(token_ids, block_table)
        skip = self._check_tokens("skip_tokens", skip_tokens) // self.block_size
        if num_tokens is None:
            n = self._cached_blocks(keys)
        else:
            n = min(self._check_tokens("num_tokens", num_tokens) // self.block_size, len(keys))
        skip = min(skip, n)
        handle = LoadHandle(kv, n, self.block_size, first_block=skip)
        steps = self._load_steps(handle, keys[skip:n], kv.block_ids(block_table, n)[skip:])
        if background:
            handle._thread = threading.Thread(target=handle._drain, args=(steps,),
                                              name="mstore-kv-load", daemon=True)
            handle._thread.start()
        else:
            handle._steps = steps
        return handle

    def _load_steps(self, handle: LoadHandle, keys: list[str],
                    ids: torch.Tensor) -> Iterator[None]:
        """The load as a generator: read every block (one batch), then one step per layer."""
        kv = self.kv
        host, shared = self._load_staging.acquire(len(keys)) if keys else (None, False)
        try:
            n = self._get_blocks(keys, host) if keys else 0
            handle.num_blocks = handle.first_block + n
            handle.bytes_loaded = n * self.layout.block_nbytes
            if n and kv.on_cuda:
                self._scatter_cuda(handle, host[:n], ids[:n])
                return
            for i in range(kv.num_layers):
                if n:
                    kv.scatter_layer(i, ids[:n], host[:n])
                handle._layer_done(i)
                yield
        finally:
            self._load_staging.release(shared)

    def _scatter_cuda(self, handle: LoadHandle, host: torch.Tensor, ids: torch.Tensor) -> None:
        # One async host->device copy of the batch, then one scatter kernel per layer on
        # the copy stream; each layer records an event the compute stream waits on.
        # This runs on the load thread, whose current device is cuda:0 unless set here.
        kv, stream = self.kv, self._copy_stream
        with torch.cuda.device(kv.device):
            stream.wait_stream(torch.cuda.current_stream(kv.device))
            with torch.cuda.stream(stream):
                dev = host.to(kv.device, non_blocking=True)
                for i in range(kv.num_layers):
                    kv.scatter_layer(i, ids, dev)
                    ev = torch.cuda.Event()
                    ev.record(stream)
                    handle._layer_done(i, ev)
            # The staging buffer is reused after this returns: wait until the copy read it.
            stream.synchronize()

    def _check_tokens(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
                or value % self.block_size:
            raise InvalidParams(f"{name} must be a non-negative multiple of "
                                f"{self.block_size}; got {value!r}")
        return value

    def _load_keys(self, token_ids: Any, block_table: Any) -> list[str]:
        keys = self.keys(token_ids)
        try:
            n_table = len(block_table)
        except TypeError:
            raise InvalidParams("block_table must be a sequence of ints") from None
        return keys[:n_table]

    def _get_blocks(self, keys: list[str], host: torch.Tensor) -> int:
        """Read blocks into `host`; returns how many leading blocks arrived intact."""
        nbytes = self.layout.block_nbytes
        ptrs = _pointers(host, nbytes)
        good = 0
        for lo in range(0, len(keys), self._max_batch):
            hi = lo + self._max_batch
            codes = self.store.batch_get_into(keys[lo:hi], ptrs[lo:hi],
                                              [nbytes] * len(ptrs[lo:hi]))
            for c in codes:
                if c != nbytes:
                    break  # evicted since the lookup, or a wrong-sized value: stop the prefix
                good += 1
            else:
                continue
            break
        self.stats.blocks_loaded += good
        self.stats.bytes_loaded += good * nbytes
        return good

