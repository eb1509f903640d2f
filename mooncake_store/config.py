"""One configuration object, built from kwargs, a dict, a JSON/YAML file and MOONCAKE_* env vars.

Precedence (later wins): defaults < file (MOONCAKE_CONFIG_PATH or `path`) < env < explicit values.
Every validation error names the offending field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

from .errors import InvalidParams

MAX_KEY_LEN = 4096  # the object header's key field (codec.MAX_KEY_LEN; codec imports the C core)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
          "tib": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any, field: str = "size") -> int:
    """Parse 4096, "16MB", "4 GB", "512kb" (binary units: 1 KB = 1024 B) into bytes."""
    if isinstance(value, bool):
        raise InvalidParams(f"{field}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidParams(f"{field}: size must be >= 0, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise InvalidParams(f"{field}: cannot parse size {value!r} (examples: 4096, '16MB', '4 GB')")


@dataclasses.dataclass
class Config:
    # where the master is: "" or "embedded" runs master + one node in this process
    master_server_addr: str = ""
    metadata_server: str = "P2PHANDSHAKE"
    local_hostname: str = "127.0.0.1"
    protocol: str = "tcp"
    rdma_devices: str = ""
    # bytes this client contributes to the pool (the whole capacity in embedded mode)
    global_segment_size: int = 1 << 30
    local_buffer_size: int = 64 << 20
    # read leases and eviction
    lease_ttl_ms: int = 5000
    high_watermark: float = 0.95
    eviction_ratio: float = 0.05
    eviction_policy: str = "prefix-prune"
    soft_pin_ttl_ms: int = 30 * 60 * 1000
    # limits
    max_key_len: int = 4096
    max_value_size: int = 1 << 40
    max_batch_size: int = 65536
    # put_start that never reaches put_end is reclaimed after this long
    put_timeout_ms: int = 30_000
    auth_token: str = dataclasses.field(default="", repr=False)
    # cold tiers (embedded store / node): SSD directory and S3/OSS bucket
    enable_ssd_offload: bool = False
    ssd_offload_path: str = ""
    ssd_capacity: int = 0                 # 0: four times global_segment_size
    s3_bucket: str = ""
    s3_prefix: str = "mooncake_store/"
    s3_endpoint_url: str = ""
    s3_region: str = ""
    demote_watermark: float = 0.85        # DRAM use above which the demoter moves LRU objects down
    promotion: str = "on-hit"             # off | on-hit | on-second-hit
    cold_codec: str = "auto"              # none | lz4 | zstd | auto (compress only when it saves >= 10%)
    tenant_id: str = "default"
    # cluster mode: control-plane call timeout, node heartbeat period and the silence after
    # which the master declares a node dead; cluster_id namespaces the etcd keys
    rpc_timeout_ms: int = 5000
    heartbeat_ms: int = 1000
    node_ttl_ms: int = 5000
    cluster_id: str = "default"
    stripe_size: int = 4 << 20   # cluster: values larger than this are split over several nodes
    enable_client_http_server: bool = False
    client_http_port: int = 9300
    # raise glibc's mmap/trim thresholds once per process, so bytes returned by get/batch_get
    # reuse mapped memory instead of faulting in fresh pages per read (client/malloc_tune.py)
    tune_malloc: bool = True

    _SIZES = ("global_segment_size", "local_buffer_size", "max_value_size", "ssd_capacity",
              "stripe_size")
    _ALIASES = {"master": "master_server_addr", "capacity": "global_segment_size",
                "device_name": "rdma_devices", "default_kv_lease_ttl": "lease_ttl_ms"}

    def __post_init__(self) -> None:
        self.validate()

    # ---- construction -------------------------------------------------------------
    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def load(cls, values: Mapping[str, Any] | None = None, path: str | None = None,
             env: Mapping[str, str] | None = None, **kwargs: Any) -> "Config":
        env = os.environ if env is None else env
        merged: dict[str, Any] = {}
        path = path or env.get("MOONCAKE_CONFIG_PATH")
        if path:
            merged.update(cls._normalize(load_file(path), source=path))
        merged.update(cls._normalize(_from_env(env), source="environment"))
        merged.update(cls._normalize(dict(values or {}), source="config"))
        merged.update(cls._normalize(kwargs, source="arguments"))
        return cls(**merged)

    @classmethod
    def _normalize(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
        known = set(cls.fields())
        out: dict[str, Any] = {}
        for key, val in values.items():
            name = cls._ALIASES.get(key, key)
            if name not in known:
                raise InvalidParams(f"unknown config field {key!r} (from {source}); "
                                    f"known fields: {', '.join(sorted(known))}")
            out[name] = val
        return out

    def replace(self, **kwargs: Any) -> "Config":
        return dataclasses.replace(self, **self._normalize(kwargs, source="arguments"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> None:
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name in self.fields():
            val = getattr(self, name)
            if name in self._SIZES:
                setattr(self, name, parse_size(val, name))
                continue
            kind = types[name]
            setattr(self, name, _coerce(name, val, kind))
        if self.master_server_addr == "embedded":
            self.master_server_addr = ""
        if not 0.0 < self.high_watermark <= 1.0:
            raise InvalidParams(f"high_watermark: must be in (0, 1], got {self.high_watermark}")
        if not 0.0 < self.eviction_ratio <= 1.0:
            raise InvalidParams(f"eviction_ratio: must be in (0, 1], got {self.eviction_ratio}")
        for name in ("lease_ttl_ms", "soft_pin_ttl_ms", "put_timeout_ms", "max_key_len",
                     "max_batch_size"):
            if getattr(self, name) < 0:
                raise InvalidParams(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.heartbeat_ms <= 0:
            raise InvalidParams(f"heartbeat_ms: must be > 0, got {self.heartbeat_ms}")
        if self.node_ttl_ms < 2 * self.heartbeat_ms:
            # A node silent for node_ttl_ms is declared dead: with less than two heartbeats
            # in it, every node would be dropped and rejoin over and over.
            raise InvalidParams(f"node_ttl_ms: must be at least 2 x heartbeat_ms, got "
                                f"{self.node_ttl_ms} with heartbeat_ms {self.heartbeat_ms}")
        if not 0.0 < self.demote_watermark <= 1.0:
            raise InvalidParams(f"demote_watermark: must be in (0, 1], got {self.demote_watermark}")
        if self.promotion not in ("off", "on-hit", "on-second-hit"):
            raise InvalidParams(f"promotion: must be off, on-hit or on-second-hit, "
                                f"got {self.promotion!r}")
        if self.cold_codec not in ("none", "lz4", "zstd", "auto"):
            raise InvalidParams(f"cold_codec: must be none, lz4, zstd or auto, got {self.cold_codec!r}")
        if self.enable_ssd_offload and not self.ssd_offload_path:
            raise InvalidParams("ssd_offload_path: required when enable_ssd_offload is set")
        if not 1 <= self.max_key_len <= MAX_KEY_LEN:
            raise InvalidParams(f"max_key_len: must be 1..{MAX_KEY_LEN} (the record format's key "
                                f"field), got {self.max_key_len}")
        if self.protocol not in ("tcp", "rdma", "shm"):
            raise InvalidParams(f"protocol: must be tcp, rdma or shm, got {self.protocol!r}")

    @property
    def embedded(self) -> bool:
        return self.master_server_addr == ""


def _coerce(name: str, val: Any, kind: str) -> Any:
    try:
        if kind == "bool":
            if isinstance(val, str):
                low = val.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(val)
            if isinstance(val, (bool, int)):
                return bool(val)
            raise ValueError(val)
        if kind == "int":
            if isinstance(val, bool) or (isinstance(val, float) and not val.is_integer()):
                raise ValueError(val)
            return int(val)
        if kind == "float":
            if isinstance(val, bool):
                raise ValueError(val)
            return float(val)
        if kind == "str":
            if not isinstance(val, str):
                raise ValueError(val)
            return val
    except (TypeError, ValueError):
        raise InvalidParams(f"{name}: expected {kind}, got {val!r}") from None
    return val


def load_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidParams(f"config file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InvalidParams(f"config file {path!r}: not UTF-8 text ({e.reason} at byte "
                            f"{e.start})") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise InvalidParams(f"config file {path!r}: cannot parse: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidParams(f"config file {path!r}: top level must be a mapping")
    return data


# Mooncake's own variable names, then MOONCAKE_<FIELD> for every field.
_ENV_NAMES = {
    "MOONCAKE_MASTER": "master_server_addr",
    "MOONCAKE_TE_META_DATA_SERVER": "metadata_server",
    "MOONCAKE_PROTOCOL": "protocol",
    "MOONCAKE_DEVICE": "rdma_devices",
    "MOONCAKE_GLOBAL_SEGMENT_SIZE": "global_segment_size",
    "MOONCAKE_LOCAL_BUFFER_SIZE": "local_buffer_size",
    "MOONCAKE_AUTH_TOKEN": "auth_token",
}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = set(Config.fields())
    for var, val in env.items():
        if not var.startswith("MOONCAKE_") or var == "MOONCAKE_CONFIG_PATH":
            continue
        name = _ENV_NAMES.get(var) or var[len("MOONCAKE_"):].lower()
        if name in fields:
            out[name] = val
    return out
