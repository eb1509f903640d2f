"""A transfer target in its own process, driven over stdin/stdout by the tests.

Prints one JSON line: {"port", "memfd": [addr, size], "plain": [addr, size]}
(memfd memory is mappable by same-host peers; plain memory is tcp-only), then
serves until stdin closes or says "quit". "crc <addr> <len>" prints the CRC32C
of a range so tests can check bytes a peer wrote without reading them back.
"""
import json
import sys

import numpy as np

from mooncake_store._engine import ffi, lib
from mooncake_store.transfer import TransferEngine


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 96 << 20
    token = sys.argv[2] if len(sys.argv) > 2 else ""
    te = TransferEngine("127.0.0.1", auth_token=token)
    managed = te.allocate_managed_buffer(size)
    plain = np.zeros(size, dtype=np.uint8)
    assert te.register_memory(plain.ctypes.data, plain.nbytes) == 0
    print(json.dumps({"port": te.port, "memfd": [managed, size],
                      "plain": [plain.ctypes.data, plain.nbytes]}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "crc":
            print(_crc(int(cmd[1]), int(cmd[2])), flush=True)
        elif cmd[0] == "stats":
            print(json.dumps(te.stats()), flush=True)
    te.close()


def _crc(addr: int, n: int) -> int:
    return lib.mcs_crc32c(0, ffi.cast("void *", addr), n)


if __name__ == "__main__":
    main()
