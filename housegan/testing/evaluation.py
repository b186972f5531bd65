"""Small packed datasets and reference "generators" for evaluation tests and benchmarks.

Photos are class-dependent on purpose: the city sets the background hue, the image type the
shape drawn on it (a centred square for "exterior", a band for "landscape"), with jitter, so a
classifier can tell cells apart and a GAN can learn them in seconds. The reference sources
bracket any real model: a memorizer (returns training photos: a copier) and uniform noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from housegan.gan.data import PackedDataset

CITY_COLORS = {
    "austin": (200, 40, 40),
    "boston": (40, 60, 200),
    "denver": (40, 170, 60),
    "miami": (200, 160, 40),
}
TYPES = ("exterior", "landscape")


def draw(city: str, image_type: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    base = np.array(CITY_COLORS[city])
    color = tuple(int(v) for v in np.clip(base + rng.integers(-30, 31, 3), 0, 255))
    image = Image.new("RGB", (size, size), color)
    pen = ImageDraw.Draw(image)
    jitter = int(rng.integers(-size // 10, size // 10 + 1))
    shade = int(rng.integers(200, 256))
    if image_type == "exterior":
        half = size // 4 + jitter // 2
        c = size // 2 + jitter
        pen.rectangle([c - half, c - half, c + half, c + half], fill=(shade, shade, shade))
    else:
        top = size // 3 + jitter
        pen.rectangle([0, top, size, top + size // 4], fill=(shade, shade, 0))
    return image


def write_photos(
    root: Path,
    per_class: int,
    cities: Sequence[str] = ("austin", "boston"),
    types: Sequence[str] = TYPES,
    seed: int = 0,
    size: int = 48,
) -> Path:
    """PNGs under ``root/photos`` and a manifest Parquet naming them; returns the manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for city in cities:
        for image_type in types:
            for i in range(per_class):
                path = root / "photos" / city / f"{image_type}-{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(city, image_type, rng, size).save(path)
                rows.append({"uri": path.as_uri(), "city": city, "image_type": image_type})
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


def packed(
    per_class: int,
    cities: Sequence[str] = ("austin", "boston"),
    types: Sequence[str] = TYPES,
    image_size: int = 32,
    seed: int = 0,
) -> PackedDataset:
    """An in-memory packed dataset (no files), ``per_class`` photos per (city, type)."""
    rng = np.random.default_rng(seed)
    images, city, image_type = [], [], []
    for c, name in enumerate(cities):
        for t, kind in enumerate(types):
            for _ in range(per_class):
                images.append(np.asarray(draw(name, kind, rng, image_size)))
                city.append(c)
                image_type.append(t)
    return PackedDataset(
        dataset_id=f"synthetic-{seed}-{per_class}-{image_size}",
        images=np.stack(images),
        city=np.array(city, dtype=np.int64),
        image_type=np.array(image_type, dtype=np.int64),
        cities=list(cities),
        image_types=list(types),
    )


class Memorizer:
    """An ``ImageSource`` that returns training photos of the cell asked for: a pure copier."""

    def __init__(self, dataset: PackedDataset) -> None:
        self.dataset = dataset

    def __call__(self, city: str, image_type: str, seed: int, n: int) -> np.ndarray:
        c = self.dataset.cities.index(city)
        t = self.dataset.image_types.index(image_type)
        rows = np.flatnonzero((self.dataset.city == c) & (self.dataset.image_type == t))
        order = np.random.default_rng(seed).permutation(rows)
        return self.dataset.images[np.resize(order, n)]


class Noise:
    """An ``ImageSource`` of uniform noise images: nothing like any photo."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, city: str, image_type: str, seed: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([seed, len(city), len(image_type)])
        return rng.integers(0, 256, (n, self.image_size, self.image_size, 3), dtype=np.uint8)


class FreshPhotos:
    """An ``ImageSource`` drawing new photos of the cell from the training distribution: what a
    perfect generator would return (novel, faithful, on-label)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, city: str, image_type: str, seed: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 7919, *city.encode(), *image_type.encode()])
        return np.stack(
            [np.asarray(draw(city, image_type, rng, self.image_size)) for _ in range(n)]
        )
