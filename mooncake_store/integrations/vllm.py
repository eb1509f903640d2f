"""A connector with the method shape of vLLM's KV connector (v1), built on `KVConnector`.

vLLM is not imported: this module mirrors the calls vLLM makes on a KV connector so
a thin subclass of vLLM's base class can forward to it (docs/integrations.md).

Scheduler side (one process, no KV tensors):
  get_num_new_matched_tokens(request, num_computed_tokens) -> (tokens to load, async?)
  update_state_after_alloc(request, blocks, num_external_tokens)
  build_connector_meta(scheduler_output) -> metadata handed to the workers
  request_finished(request, block_ids) -> (delay block free?, transfer params)
Worker side (one per GPU / tp rank, owns the paged KV tensors):
  register_kv_caches({layer_name: [2, blocks, block_size, kv_heads, head_dim]})
  bind_connector_metadata(meta) / clear_connector_metadata()
  start_load_kv(forward_context)   before the forward pass
  wait_for_layer_load(layer_name)  inside attention layer i, before it reads the cache
  save_kv_layer(layer_name, kv_layer, attn_metadata)   after layer i wrote its KV
  wait_for_save()                  after the forward pass
  get_finished(finished_req_ids) -> (None, None): loads and saves complete in-step
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import InvalidParams
from .kv import BlockLayout, KVConnector, LoadHandle, PagedKV, SaveHandle

log = logging.getLogger(__name__)


class KVConnectorRole(enum.IntEnum):
    SCHEDULER = 0
    WORKER = 1


@dataclass
class ReqMeta:
    """What a worker does for one request in one step."""

    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    skip_tokens: int = 0     # already in the engine's cache (its own prefix-cache hit)
    load_tokens: int = 0     # prefix length after the load (0: nothing to load)
    save_tokens: int = 0     # tokens whose full blocks are saved after this step


@dataclass
class MooncakeStoreConnectorMetadata:
    requests: list[ReqMeta] = field(default_factory=list)


@dataclass
class NewRequestData:
    """The fields of vLLM's scheduled-new-request record this adapter reads."""

    req_id: str
    prompt_token_ids: list[int]
    block_ids: Any                 # list[int], or a tuple of lists (one per KV-cache group)
    num_computed_tokens: int = 0


@dataclass
class SchedulerOutput:
    """The fields of vLLM's SchedulerOutput this adapter reads."""

    scheduled_new_reqs: list[NewRequestData] = field(default_factory=list)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_new(cls, items: Iterable[tuple[Any, Any, int]]) -> "SchedulerOutput":
        """From (request, block_ids, num_scheduled_tokens) triples (tests, examples)."""
        out = cls()
        for req, blocks, scheduled in items:
            rid = _req_id(req)
            out.scheduled_new_reqs.append(NewRequestData(
                rid, _tokens(req), blocks, int(getattr(req, "num_computed_tokens", 0))))
            out.num_scheduled_tokens[rid] = scheduled
        return out


def _req_id(request: Any) -> str:
    rid = getattr(request, "request_id", None) or getattr(request, "req_id", None)
    if rid is None:
        raise InvalidParams("request has neither request_id nor req_id")
    return str(rid)


def _tokens(request: Any) -> list[int]:
    for name in ("prompt_token_ids", "all_token_ids", "token_ids"):
        toks = getattr(request, name, None)
        if toks is not None:
            return list(toks)
    raise InvalidParams("request has no prompt_token_ids / all_token_ids / token_ids")


def _block_list(blocks: Any) -> list[int]:
    """vLLM hands block ids as KVCacheBlocks, a tuple of per-group lists, or a list."""
    if hasattr(blocks, "get_block_ids"):
        blocks = blocks.get_block_ids()
    if isinstance(blocks, tuple) and blocks and isinstance(blocks[0], (list, tuple)):
        if len(blocks) != 1:
            raise InvalidParams(f"{len(blocks)} KV-cache groups; this adapter handles one")
        blocks = blocks[0]
    return [int(b) for b in blocks]


class MooncakeStoreConnector:
    """vLLM-shaped KV connector over a `Store` (see the module docstring for the calls).

    Both roles need the model name and the block geometry (`layout`) so their keys
    agree; a worker also needs its tp rank/size. The scheduler looks up rank 0's keys:
    every rank saves the same blocks, each under its own namespace.
    """

    def __init__(self, store: Any, role: KVConnectorRole, *, model: str, layout: BlockLayout,
                 tp_rank: int = 0, tp_size: int = 1, revision: str = "", lora: str = "",
                 tenant: str = "", key_prefix: str = "kv/") -> None:
        self.role = KVConnectorRole(role)
        rank = tp_rank if self.role == KVConnectorRole.WORKER else 0
        self._kw = dict(model=model, layout=layout, revision=revision, tp_rank=rank,
                        tp_size=tp_size, lora=lora, tenant=tenant, key_prefix=key_prefix)
        self.store = store
        self.layout = layout
        self.conn = KVConnector(store, None, **self._kw)   # lookups; replaced on register
        # scheduler state
        self._loads: dict[str, tuple[int, int]] = {}        # req -> (skip, load_to)
        # worker state
        self._layer_index: dict[str, int] = {}
        self._meta: MooncakeStoreConnectorMetadata | None = None
        self._load_handles: list[tuple[ReqMeta, LoadHandle]] = []
        self._save_handles: list[SaveHandle] = []
        self._failed_blocks: set[int] = set()
        self._warned: set[str] = set()

    # ------------------------------------------------------------ scheduler ---
    def get_num_new_matched_tokens(self, request: Any,
                                   num_computed_tokens: int) -> tuple[int, bool]:
        """Tokens beyond `num_computed_tokens` the store can supply; loads are synchronous."""
        toks = _tokens(request)
        bs = self.layout.block_size
        # A fully cached prompt still computes its last token (the engine needs its logits).
        cap = (len(toks) - 1) // bs * bs if toks else 0
        hit = min(self.conn.lookup(toks), cap)
        return max(0, hit - num_computed_tokens), False

    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        if num_external_tokens <= 0:
            return
        computed = int(getattr(request, "num_computed_tokens", 0))
        self._loads[_req_id(request)] = (computed, computed + num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> MooncakeStoreConnectorMetadata:
        meta = MooncakeStoreConnectorMetadata()
        scheduled = getattr(scheduler_output, "num_scheduled_tokens", {}) or {}
        for new in getattr(scheduler_output, "scheduled_new_reqs", []):
            rid = str(new.req_id)
            toks = list(new.prompt_token_ids)
            skip, load_to = self._loads.pop(rid, (0, 0))
            computed = int(getattr(new, "num_computed_tokens", 0) or 0)
            done = min(len(toks), computed + int(scheduled.get(rid, len(toks))))
            meta.requests.append(ReqMeta(rid, toks, _block_list(new.block_ids),
                                         skip_tokens=skip, load_tokens=load_to,
                                         save_tokens=done))
        return meta

    def request_finished(self, request: Any, block_ids: Any) -> tuple[bool, dict | None]:
        """Saves finish within the step, so blocks can be freed at once."""
        self._loads.pop(_req_id(request), None)
        return False, None

    # --------------------------------------------------------------- worker ---
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        """Per-layer paged caches in forward order, keyed by attention layer name."""
        self._need(KVConnectorRole.WORKER, "register_kv_caches")
        kv = PagedKV(list(kv_caches.values()))
        if kv.block_layout != self.layout:
            raise InvalidParams(f"registered cache geometry {kv.block_layout} != "
                                f"configured {self.layout}")
        self.conn = KVConnector(self.store, kv, **self._kw)
        self._layer_index = {name: i for i, name in enumerate(kv_caches)}

    def bind_connector_metadata(self, metadata: MooncakeStoreConnectorMetadata) -> None:
        self._meta = metadata

    def clear_connector_metadata(self) -> None:
        self._meta = None

    def start_load_kv(self, forward_context: Any = None, **kwargs: Any) -> None:
        """Start every load of this step (background, layer by layer) and open the saves."""
        self._need(KVConnectorRole.WORKER, "start_load_kv")
        if self.conn.kv is None:
            raise InvalidParams("call register_kv_caches before start_load_kv")
        self._load_handles, self._save_handles = [], []
        self._warned: set[str] = set()
        for r in (self._meta.requests if self._meta else []):
            if r.load_tokens > r.skip_tokens:
                h = self.conn.start_load(r.token_ids, r.block_ids, num_tokens=r.load_tokens,
                                         skip_tokens=r.skip_tokens)
                self._load_handles.append((r, h))
            if r.save_tokens >= self.layout.block_size:
                self._save_handles.append(
                    self.conn.start_save(r.token_ids[:r.save_tokens], r.block_ids))

    def wait_for_layer_load(self, layer_name: str) -> None:
        i = self._index(layer_name)
        for r, h in self._load_handles:
            try:
                h.wait_for_layer(i)
            except Exception:  # noqa: BLE001 - reported as load errors, recomputed by the engine
                if r.req_id not in self._warned:
                    self._warned.add(r.req_id)
                    log.warning("KV load for request %s failed (from layer %d); its blocks "
                                "will be reported for recompute", r.req_id, i, exc_info=True)

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any,
                      **kwargs: Any) -> None:
        """Gather layer i of the blocks to save into staging (the put happens in wait_for_save)."""
        i = self._index(layer_name)
        for s in self._save_handles:
            s.save_layer(i)

    def wait_for_save(self) -> None:
        """Put every gathered block (one object per block, one batch per request)."""
        for r, h in self._load_handles:
            try:
                got = h.wait()
            except Exception:  # noqa: BLE001 - every block after the skipped ones is suspect
                got = h.first_block * self.layout.block_size
            if got < r.load_tokens:
                bs = self.layout.block_size
                self._failed_blocks.update(r.block_ids[got // bs:r.load_tokens // bs])
        saves, self._save_handles = self._save_handles, []
        for s in saves:
            s.finish()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        return None, None

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks promised by the scheduler that could not be loaded (to be recomputed)."""
        out, self._failed_blocks = self._failed_blocks, set()
        return out

    # -------------------------------------------------------------- helpers ---
    def _need(self, role: KVConnectorRole, what: str) -> None:
        if self.role != role:
            raise InvalidParams(f"{what} is a {role.name.lower()}-side call; this connector "
                                f"has role {self.role.name.lower()}")

    def _index(self, layer_name: str) -> int:
        try:
            return self._layer_index[layer_name]
        except KeyError:
            raise InvalidParams(f"unknown layer {layer_name!r}; registered: "
                                f"{list(self._layer_index)[:4]}...") from None


__all__: Sequence[str] = ("KVConnectorRole", "MooncakeStoreConnector",
                          "MooncakeStoreConnectorMetadata", "ReqMeta", "NewRequestData",
                          "SchedulerOutput")
