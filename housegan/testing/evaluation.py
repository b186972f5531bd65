"""Small packed datasets and reference "generators" for evaluation tests and benchmarks.

Photos are the class-dependent drawings of ``housegan.testing.gan`` (city = hue, type = shape),
so a classifier can tell cells apart and a GAN can learn them in seconds. The reference sources
bracket any real model: a memorizer (returns training photos: a copier) and uniform noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from housegan.config import EmbedSettings
from housegan.gan.data import PackedDataset
from housegan.testing.gan import TYPES, draw

# A small, fast embedder for evaluation tests: pooled conv5 at 32 px (seconds, not minutes).
TINY_EMBED = EmbedSettings(input_size=32, layer="conv5", num_workers=0, batch_size=64)


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
