"""Novelty search throughput: the exact nearest real image of every generated one.

Times ``housegan.evaluate.knn.knn`` (cosine of centred vectors, k=1, what
``housegan.evaluate.novelty`` runs) on random features made in-process: keys share a large
common direction, like random-init VGG16 fc7 vectors, and a few queries are planted as noisy
copies of known keys, so the run also checks that the search finds them. For each precision it
prints seconds, the peak working memory (the process's peak RSS during the search above its RSS
before it; the inputs are not counted), the block sizes the memory budget gave, and the
effective GFLOP/s (2 x queries x keys x dim / seconds).

Goal: 10k x 200k x 4096 under 60 s on 2 CPU cores within a 1 GiB budget.

Full size (the machine must be quiet; needs ~2 GiB for the float16 keys):
    python benchmarks/bench_novelty.py --threads 2
Reduced:
    python benchmarks/bench_novelty.py --queries 1000 --keys 20000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from housegan.evaluate.knn import knn

PLANTED = 50  # queries that are noisy copies of known keys


def features(n: int, dim: int, dtype: np.dtype, seed: int, shared: torch.Tensor) -> np.ndarray:
    """``n`` random vectors around a common direction, made a block at a time."""
    out = np.empty((n, dim), dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, 8192):
        rows = min(8192, n - start)
        block = torch.randn(rows, dim, generator=generator).abs_().add_(shared)
        out[start : start + rows] = block.numpy().astype(dtype)
    return out


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so it measures the search alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument(
        "--precision", nargs="+", choices=["bfloat16", "float32"], default=["bfloat16", "float32"]
    )
    parser.add_argument("--memory-mb", type=float, default=1024.0)
    parser.add_argument("--rerank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    made = time.perf_counter()
    shared = torch.randn(args.dim, generator=torch.Generator().manual_seed(9)).abs_() * 4
    keys = features(args.keys, args.dim, np.dtype(args.dtype), 1, shared)
    queries = features(args.queries, args.dim, np.dtype(args.dtype), 2, shared)
    rng = np.random.default_rng(3)
    planted_rows = rng.choice(args.queries, PLANTED, replace=False)
    planted_keys = rng.choice(args.keys, PLANTED, replace=False)
    noise = rng.normal(0, 0.05, (PLANTED, args.dim))
    queries[planted_rows] = (keys[planted_keys].astype(np.float32) + noise).astype(args.dtype)
    center = np.mean(keys, axis=0, dtype=np.float64).astype(np.float32)
    print(
        f"features: {args.queries} x {args.keys} x {args.dim} {args.dtype} "
        f"({keys.nbytes / 2**30:.2f} GiB of keys) made in {time.perf_counter() - made:.1f} s; "
        f"{args.threads} threads, budget {args.memory_mb:.0f} MiB, device {args.device}"
    )
    flops = 2.0 * args.queries * args.keys * args.dim
    rows = []
    for precision in args.precision:
        before = _rss_kib()
        exact_peak = _reset_peak()
        start = time.perf_counter()
        found = knn(
            queries,
            keys,
            1,
            metric="cosine",
            center=center,
            memory_bytes=args.memory_mb * 2**20,
            precision=precision,
            rerank=args.rerank,
            device=args.device,
        )
        seconds = time.perf_counter() - start
        peak_mib = (_peak_kib() - before) / 1024
        hits = float(np.mean(found.indices[planted_rows, 0] == planted_keys))
        rows.append(
            {
                "precision": precision,
                "seconds": round(seconds, 2),
                "peak_mib": round(peak_mib, 1),
                "peak_exact": exact_peak,
                "blocks": [found.blocks.queries, found.blocks.keys, found.blocks.rerank],
                "gflop_s": round(flops / seconds / 1e9, 1),
                "planted_found": hits,
            }
        )
        print(
            f"{precision:>9}: {seconds:7.2f} s   peak +{peak_mib:7.1f} MiB"
            f"{'' if exact_peak else ' (process peak: upper bound)'}   "
            f"blocks q={found.blocks.queries} k={found.blocks.keys}   "
            f"{flops / seconds / 1e9:6.1f} GFLOP/s   "
            f"planted copies found {hits:.0%}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
