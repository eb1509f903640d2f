"""Benchmark workloads behind `mstore bench`: ceilings, store workloads, the Mooncake
comparison driver and result formatting. The CLI modules only parse options and call in here.

Every result is a flat dict (one JSON line) in the record format of the Mooncake anchor's
bench_mooncake.py (`test`, `op`, `api`, `path`, `value_size`, `GBps`, `ops_per_s`, `p50_us`, ...),
so rows of the two implementations can be matched one to one.
"""
