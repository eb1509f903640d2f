"""Drop-in path for `from mooncake.store import MooncakeDistributedStore`:
write `from mooncake_store.store import MooncakeDistributedStore` instead."""
from .client.compat import MooncakeDistributedStore
from .replica import ReplicateConfig

__all__ = ["MooncakeDistributedStore", "ReplicateConfig"]
