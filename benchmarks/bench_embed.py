"""Embedding throughput: the embed stage vs. the pure model and a naive per-image loop.

Renders N synthetic listing photos (``housegan.synth.render``) as JPEGs on local disk, then
measures images/s of

* stage: ``housegan.embed.embed_manifest`` on a fresh store (fsspec reads, sha256 checks,
  DataLoader decoding overlapping bf16/channels_last inference, Parquet parts, publish);
* pure model: the same extractor on pre-made, model-ready tensors (same batch size, bf16 and
  channels_last): the ceiling the stage can approach;
* naive: PIL open -> transform -> model, batch 1, fp32, contiguous, one photo at a time.

Model construction and worker start-up are one-off per process and are warmed up first.
Prints figures and ratios; asserts nothing.

    .venv/bin/python benchmarks/bench_embed.py [--n 500] [--size 112] [--naive-n 100]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision import transforms

from housegan import embed, manifest, synth
from housegan.config import EmbedSettings
from housegan.manifest import IMAGE_MANIFEST_SCHEMA, Status


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="photos the stage embeds")
    parser.add_argument("--size", type=int, default=112, help="embed.input_size")
    parser.add_argument("--batch-size", type=int, default=EmbedSettings().batch_size)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader decoders")
    parser.add_argument("--layer", default="fc7", choices=sorted(embed.LAYER_DIMS))
    parser.add_argument("--naive-n", type=int, default=100, help="photos for the naive loop")
    parser.add_argument(
        "--rounds", type=int, default=3, help="stage and pure model alternate; best round counts"
    )
    return parser.parse_args()


def render_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of every kind and ten cities, sized like listing photos (160-640 px a side)."""
    rng = np.random.default_rng(seed)
    cities = synth.city_names(10)
    paths = []
    for index in range(n):
        kind, city = synth.KINDS[index % len(synth.KINDS)], cities[index % len(cities)]
        size = tuple(int(side) for side in rng.integers(*synth.SIDE_RANGE, size=2))
        path = folder / city / f"listing{index // 4}" / f"photo_{index:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synth.render(kind, city, rng, size).save(path, quality=90)
        paths.append(path)
    return paths


def publish_manifest(paths: list[Path], store_uri: str) -> str:
    now = datetime.now(UTC)
    rows = []
    for path in paths:
        data = path.read_bytes()
        rows.append(
            {
                "key": str(path),
                "uri": path.as_uri(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
                "status": Status.OK.value,
                "ingested_at": now,
            }
        )
    frame = pd.DataFrame(rows).reindex(columns=IMAGE_MANIFEST_SCHEMA.names)
    frame["last_modified"] = now
    frame = frame.astype(object).where(frame.notna(), None)  # absent fields: nulls
    collection = manifest.collection_uri(store_uri)
    return manifest.write_version(frame, collection, IMAGE_MANIFEST_SCHEMA)


def bench_stage(manifest_uri: str, store_uri: str, cfg: EmbedSettings) -> tuple[float, float]:
    """(images/s, share of the wall time spent inside the model's forward passes)."""
    in_model = 0.0
    embed_batch = embed.embed_batch

    def timed_embed_batch(*args, **kwargs):
        nonlocal in_model
        started = time.perf_counter()
        try:
            return embed_batch(*args, **kwargs)
        finally:
            in_model += time.perf_counter() - started

    embed.embed_batch = timed_embed_batch  # the stage looks it up at each call
    try:
        started = time.perf_counter()
        result = embed.embed_manifest(manifest_uri, store_uri, cfg)
        elapsed = time.perf_counter() - started
    finally:
        embed.embed_batch = embed_batch
    assert not result.failed, result.failed
    return result.computed / elapsed, in_model / elapsed


def bench_pure_model(paths: list[Path], cfg: EmbedSettings) -> tuple[float, float, float]:
    """(images/s, CPU ms per image to read + decode, CPU ms per image of the model)."""
    model = embed.build_model(cfg)
    cpu_started = time.process_time()
    pixels = torch.stack([embed.load_photo(path.read_bytes(), cfg.input_size) for path in paths])
    decode_cpu = time.process_time() - cpu_started
    batches = [
        embed.to_model_input(pixels[start : start + cfg.batch_size], torch.device("cpu"))
        for start in range(0, len(paths), cfg.batch_size)
    ]
    embed.embed_batch(model, batches[0], cfg.bf16)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        embed.embed_batch(model, batch, cfg.bf16)
    elapsed, model_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    per_image_ms = 1000 / len(paths)
    return len(paths) / elapsed, decode_cpu * per_image_ms, model_cpu * per_image_ms


def bench_naive(paths: list[Path], cfg: EmbedSettings) -> float:
    from PIL import Image

    model = embed.build_model(cfg).to(memory_format=torch.contiguous_format)
    transform = transforms.Compose(
        [
            transforms.Resize(cfg.input_size),
            transforms.CenterCrop(cfg.input_size),
            transforms.ToTensor(),
            transforms.Normalize(embed.IMAGENET_MEAN, embed.IMAGENET_STD),
        ]
    )
    started = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path).convert("RGB")
            model(transform(image).unsqueeze(0))
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    cfg = EmbedSettings(
        input_size=args.size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        layer=args.layer,
    )
    print(f"embed benchmark: {args.n} photos, {embed.model_tag(cfg)}, batch {cfg.batch_size},")
    print(f"  {cfg.num_workers} decoders, {torch.get_num_threads()} torch threads, bf16 {cfg.bf16}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = render_photos(root / "raw", args.n)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(f"  photos: {megabytes:.1f} MB of JPEG, {synth.SIDE_RANGE} px a side")

        warm_store = (root / "warm").as_uri()
        embed.embed_manifest(publish_manifest(paths[:8], warm_store), warm_store, cfg)

        # Alternating rounds: load from other processes on the machine hits both alike.
        stages, pures = [], []
        for round_no in range(args.rounds):
            store = (root / f"store{round_no}").as_uri()
            stage, in_model = bench_stage(publish_manifest(paths, store), store, cfg)
            pure, decode_ms, model_ms = bench_pure_model(paths, cfg)
            stages.append(stage)
            pures.append(pure)
            print(
                f"  round {round_no}: stage {stage:.1f} ({100 * in_model:.0f}% of it in the "
                f"model), pure model {pure:.1f} images/s; CPU per image: decode "
                f"{decode_ms:.1f} ms, model {model_ms:.1f} ms"
            )
        naive = bench_naive(paths[: args.naive_n], cfg)

    stage, pure = max(stages), max(pures)
    print(f"  stage       {stage:7.1f} images/s")
    print(f"  pure model  {pure:7.1f} images/s  (pre-made tensors, same batch/bf16/channels_last)")
    print(f"  naive loop  {naive:7.1f} images/s  (batch 1, fp32, {args.naive_n} photos)")
    print(f"  stage / pure model = {stage / pure:.2f}  (best rounds; target >= 0.9)")
    ratios = sorted(s / p for s, p in zip(stages, pures, strict=True))
    print(f"  stage / pure model per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  stage / naive      = {stage / naive:.2f}  (target >= 3)")


if __name__ == "__main__":
    main()
