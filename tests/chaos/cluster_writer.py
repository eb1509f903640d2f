"""Child process for the client-kill test: a cluster client putting derived values of
argv[3] KiB forever (printing each acknowledged key) until it is killed -9."""
import sys

from harness import soak

from mooncake_store import Store

master, prefix, kib = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = Store(master=master, global_segment_size=0, rpc_timeout_ms=5000)
for i in range(100_000):               # bounded; the parent kills it long before
    key = f"{prefix}/{i}"
    value = soak.make_value(key, 1, kib)
    print("start", key, flush=True)
    s.put(key, value)
    print("acked", key, flush=True)
