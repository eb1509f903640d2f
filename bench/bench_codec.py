"""Cold-tier codec benchmark: ratio and MB/s of plain vs byte-plane-shuffled lz4/zstd.

    python bench/bench_codec.py [--mib 16] [--repeat 3] [--json]

Data: the K/V activations of a small random-weight Llama (transformers, CPU)
cast to fp16 and bf16, plus torch.randn / torch.rand noise. Every method runs
with min_saving=0 so the real ratio shows; "kept" says whether the default
10% rule would store it compressed. The memcpy ceiling and the order-0
entropy bound of the byte planes (the best any per-plane entropy coder could
save) are measured in the same run, so compare ratios, not absolute MB/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mooncake_store import compress as c  # noqa: E402

METHODS = [  # (label, elem_size, codec)
    ("plain lz4", 1, "lz4"),
    ("plain zstd", 1, "zstd"),
    ("shuffle+lz4", 2, "lz4"),
    ("shuffle+zstd", 2, "zstd"),
    ("auto", 2, "auto"),
]


def llama_kv(n_bytes: int) -> torch.Tensor:
    """fp32 K/V of a random-weight Llama over random tokens, about n_bytes/2 elements."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, kv_heads, head_dim = 4, 8, 64
    tokens = max(16, n_bytes // 2 // (2 * layers * kv_heads * head_dim))
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=kv_heads,
                      max_position_embeddings=max(4096, tokens))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    if hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:
        pairs = list(cache)
    return torch.cat([t.reshape(-1) for kv in pairs for t in kv])


def datasets(n_bytes: int) -> dict[str, torch.Tensor]:
    kv = llama_kv(n_bytes)
    g = torch.Generator().manual_seed(2)
    n = n_bytes // 2
    noise = torch.randn(n, generator=g)
    uniform = torch.rand(n, generator=g)
    return {
        "llama KV fp16": kv.half(), "llama KV bf16": kv.bfloat16(),
        "randn fp16": noise.half(), "randn bf16": noise.bfloat16(),
        "rand[0,1) bf16": uniform.bfloat16(),
    }


def best_time(fn, repeat: int) -> float:
    fn()  # warm caches, allocator and thread-local codec objects
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def plane_entropy_saving(raw: np.ndarray, width: int = 2) -> float:
    """1 - (order-0 entropy of each byte plane) / 8 bits, averaged: a per-plane coder's limit."""
    n = len(raw) // width
    bits = 0.0
    for k in range(width):
        counts = np.bincount(raw[k: n * width: width], minlength=256).astype(np.float64)
        p = counts[counts > 0] / n
        bits += float(-(p * np.log2(p)).sum())
    return 1.0 - bits / (8 * width)


def run(n_bytes: int, repeat: int) -> dict:
    torch.set_num_threads(1)
    results = {"machine": machine(), "bytes_per_tensor": n_bytes, "rows": []}
    ceilings = []
    for name, tensor in datasets(n_bytes).items():
        raw = tensor.contiguous().view(torch.uint8).numpy()
        size = raw.nbytes
        out = np.empty(size, dtype=np.uint8)
        # The ceiling is re-measured next to each data set: the machine is shared.
        ceilings.append(size / best_time(lambda: np.copyto(out, raw), repeat) / 1e6)
        row = {"data": name, "bytes": size, "entropy_bound_saving": plane_entropy_saving(raw),
               "memcpy_MBps": ceilings[-1]}
        for label, width, codec in METHODS:
            cid, payload = c.encode(raw, width, codec, min_saving=0.0)
            enc = best_time(lambda: c.encode(raw, width, codec, min_saving=0.0), repeat)
            dec = best_time(lambda: c.decode_into(cid, payload, out, size), repeat)
            assert np.array_equal(out, raw), (name, label)
            saving = 1 - len(payload) / size
            row[label] = {"codec": c.codec_name(cid), "ratio": len(payload) / size, "saving": saving,
                          "kept": saving >= c.MIN_SAVING, "encode_MBps": size / enc / 1e6,
                          "decode_MBps": size / dec / 1e6}
        results["rows"].append(row)
    results["memcpy_MBps"] = max(ceilings)
    return results


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lz4
    import zstandard
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "lz4": lz4.__version__,
            "zstandard": zstandard.__version__, "zstd_level": c.ZSTD_LEVEL}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores (shared), Python {m['python']}, "
             f"lz4 {m['lz4']}, zstandard {m['zstandard']} (level {m['zstd_level']}); "
             f"{res['bytes_per_tensor'] >> 20} MiB per tensor; memcpy ceiling "
             f"(best next to any data set) {res['memcpy_MBps']:.0f} MB/s.", "",
             "| data | method | saved | kept (>=10%) | encode MB/s | decode MB/s "
             "| decode / memcpy (same data set) |",
             "|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        for label, _, _ in METHODS:
            r = row[label]
            name = label if label != "auto" else f"auto ({r['codec']})"
            lines.append(f"| {row['data']} | {name} | {100 * r['saving']:.1f}% | "
                         f"{'yes' if r['kept'] else 'no'} | {r['encode_MBps']:.0f} | "
                         f"{r['decode_MBps']:.0f} | {r['decode_MBps'] / row['memcpy_MBps']:.2f} |")
    lines += ["", "Order-0 entropy bound per byte plane (most any per-plane coder could save): "
              + ", ".join(f"{row['data']} {100 * row['entropy_bound_saving']:.1f}%"
                          for row in res["rows"]) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=16, help="MiB per tensor (default 16)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure; best kept")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = ap.parse_args()
    if not 1 <= args.mib <= 1024 or not 1 <= args.repeat <= 50:
        ap.error("--mib must be 1..1024 and --repeat 1..50")
    res = run(args.mib << 20, args.repeat)
    print(json.dumps(res, indent=1) if args.json else markdown(res))


if __name__ == "__main__":
    main()
