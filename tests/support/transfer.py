"""Transfer-engine test helpers shared by tests/transfer."""
from __future__ import annotations

import numpy as np


def sync_roundtrips(te, target_name: str, base: int, size: int, rng, count: int,
                    max_len: int) -> None:
    """`count` times: write random bytes of a random length (1..max_len) at a random offset of
    [base, base + size) with the synchronous calls, read them back, compare byte for byte."""
    for _ in range(count):
        n = int(rng.integers(1, max_len + 1))
        off = int(rng.integers(0, size - n))
        src = rng.integers(0, 256, size=n, dtype=np.uint8)
        assert te.transfer_sync_write(target_name, src, base + off, n) == 0
        out = np.zeros(n, dtype=np.uint8)
        assert te.transfer_sync_read(target_name, out, base + off, n) == 0
        assert np.array_equal(src, out)
