"""Child process for the kill -9 test: puts derived values into an SSD tier forever,
printing the count after each put, until it is killed."""
import sys

from harness import value

from mooncake_store.node.ssd import SSDTier

tier = SSDTier(sys.argv[1], "64MB")
start = int(sys.argv[2])
i = start
while i < start + 1_000_000:          # bounded; the parent kills it long before
    key = f"ssd/{i % 3000}"
    tier.put(key, value(key, 1 + i // 3000))
    i += 1
    print(i - start, flush=True)
