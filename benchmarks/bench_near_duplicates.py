"""Near-duplicate detection: recall per kind of copy and false duplicates per image type.

Two copy sets go through the real curate stage (local ``file://`` store, VGG16 weights=None,
default settings unless given):

* held-out real photos: tiles of scikit-image's and scikit-learn's bundled photographs
  (``housegan.testing.copies.held_out_copy_set``), 4 copies each;
* synthetic listings (``housegan.synth``, every image type), 2 copies each.

Copies are resized to 50-90 %, re-encoded at JPEG q50-90, cropped by 2-5 %, mirrored, or
combinations. For each set it prints recall (copies grouped with their original) per image
type and kind of copy, and the false-duplicate rate (pairs of distinct photos grouped
together) per image type, for the deep features alone and for the full decision (deep + pHash
+ agreement). Then it times the blockwise pHash search on random hashes (``--search-n``).
Asserts nothing.

    .venv/bin/python benchmarks/bench_near_duplicates.py [--size 224] [--search-n 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from housegan import curate, manifest
from housegan.config import CurateSettings, Settings
from housegan.steps.curate import CurateInput, run_curate
from housegan.testing import copies


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="embed.input_size")
    parser.add_argument("--synth-per-type", type=int, default=10, help="per city and type")
    parser.add_argument("--synth-cities", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="copy parameters")
    parser.add_argument("--search-n", type=int, default=200_000, help="hashes searched; 0: skip")
    parser.add_argument("--search-only", action="store_true", help="skip the copy sets")
    return parser.parse_args()


def curated_both_ways(photos: list[copies.Photo], root: Path, size: int) -> dict[str, pd.DataFrame]:
    """The copy set curated with the full decision, then again (embeddings and scores reused)
    with the deep features alone."""
    settings = {"embed": {"input_size": size}}
    full = copies.curate_photos(photos, root, settings)
    cfg = Settings.model_validate(
        {
            "source_uri": (root / "source").as_uri(),
            "store_uri": (root / "store").as_uri(),
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "curate": {"near_duplicate_hash": False},
            **settings,
        }
    )
    source = CurateInput.resolve(None, cfg.store_uri)
    result = run_curate(source, cfg, track=False)

    deep = manifest.read(result.curated_uri).merge(
        full[["key", "family", "kind", "truth"]], on="key", how="left"
    )
    return {"deep only": deep, "deep + pHash": full}


def report(name: str, frames: dict[str, pd.DataFrame]) -> None:
    print(f"\n=== {name} ===")
    recalls, falses = [], []
    for variant, frame in frames.items():
        result = copies.copy_report(frame)
        recalls.append(result.recall.set_index(["image_type", "kind"])["recall"].rename(variant))
        falses.append(
            result.false_duplicates.set_index("image_type")[
                ["pairs", "flagged", "rate"]
            ].add_prefix(f"{variant}: ")
        )
        signals = frame.loc[frame["near_dup_of"].notna(), "near_dup_signal"].value_counts()
        print(f"{variant}: dropped as near-duplicates by signal: {signals.to_dict()}")
    copies_per = copies.copy_report(frames["deep + pHash"]).recall.set_index(
        ["image_type", "kind"]
    )["copies"]
    table = pd.concat([copies_per, *recalls], axis=1).reset_index()
    print("recall (copies grouped with their original):")
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print("false duplicates (pairs of distinct photos grouped together):")
    print(
        pd.concat(falses, axis=1).reset_index().to_string(index=False, float_format="{:.4f}".format)
    )


def time_search(n: int) -> None:
    """The blockwise pHash search on ``n`` random hashes at the calibrated ceiling."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    flipped = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    hashes = curate.PerceptualHashes(
        bits, flipped, np.full((n, 3), 0.5), np.zeros(n), np.ones(n, dtype=bool)
    )
    cfg = CurateSettings()
    threshold = np.full(n, cfg.near_duplicate_max_hamming)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    start = time.perf_counter()
    links = curate.hamming_links(hashes, threshold, cfg)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"\npHash search: {n} hashes, radius {cfg.near_duplicate_max_hamming}: {seconds:.1f} s, "
        f"{len(links.hashed[0])} links among random hashes, "
        f"peak traced memory {peak / 2**20:.0f} MiB (block budget "
        f"{cfg.near_duplicate_block_mib} MiB)"
    )


def main() -> None:
    args = parse_args()
    if not args.search_only:
        curate_copy_sets(args)
    if args.search_n:
        time_search(args.search_n)


def curate_copy_sets(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        held_out = copies.held_out_copy_set(seed=args.seed)
        (root / "real").mkdir()
        report(
            f"held-out real photos ({len(held_out)} files, {args.size} px)",
            curated_both_ways(held_out, root / "real", args.size),
        )
        synthetic = copies.synthetic_copy_set(
            args.synth_per_type, args.synth_cities, seed=args.seed
        )
        (root / "synth").mkdir()
        report(
            f"synthetic listings ({len(synthetic)} files, {args.size} px)",
            curated_both_ways(synthetic, root / "synth", args.size),
        )
        print(f"\ncuration of both sets: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":  # DataLoader workers (forkserver) import this module again
    main()
