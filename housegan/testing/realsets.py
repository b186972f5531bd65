"""Labelled sets of real images that install with the dev dependencies (nothing downloads).

They exist to measure the GAN recipe on data no code here drew (``benchmarks/bench_recipe.py``)
and to give the conditioning test a real floor:

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), ten classes;
- ``photo_crops``: random crops of ten bundled photographs (scikit-image and scikit-learn), the
  class being the photograph: real textures, colours and edges at every scale;
- ``listings``: the synthetic listings' exteriors and landscapes (``housegan.synth``), the
  class being (city, type) as in production.

Each writer puts PNGs under ``root`` and returns a manifest Parquet that ``gan.data.prepare``
packs; the class goes in ``city`` and a single ``image_type`` where the set has one label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from housegan.testing.copies import COLOUR_PHOTOS, real_photos

RealSet = Literal["digits", "photo_crops", "listings"]
CROP_PHOTOS = (*COLOUR_PHOTOS, "china", "flower")  # scikit-image's colour photos, scikit-learn's
Row = tuple[Image.Image, str, str]  # image, class ("city"), image type


def digits(
    per_class: int | None = None, seed: int = 0, classes: Sequence[int] = tuple(range(10))
) -> Iterator[Row]:
    """The scikit-learn digits of ``classes`` as white-on-black RGB (8x8; ``prepare`` resizes)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    taken: dict[int, int] = {}
    for i in order:
        label = int(bunch.target[i])
        if label not in classes or (per_class is not None and taken.get(label, 0) >= per_class):
            continue
        taken[label] = taken.get(label, 0) + 1
        pixels = np.round(bunch.images[i] * (255 / 16)).astype(np.uint8)
        yield Image.fromarray(pixels, "L").convert("RGB"), f"digit{label}", "digit"


def photo_crops(per_class: int = 300, side: int = 64, seed: int = 0) -> Iterator[Row]:
    """Square crops (20-45% of the short side, anywhere) of each of ten photographs."""
    photos = real_photos(max_side=512)
    rng = np.random.default_rng(seed)
    for name in CROP_PHOTOS:
        photo = photos[name]
        short = min(photo.size)
        for _ in range(per_class):
            crop = int(short * rng.uniform(0.2, 0.45))
            left = int(rng.integers(0, photo.width - crop + 1))
            top = int(rng.integers(0, photo.height - crop + 1))
            tile = photo.crop((left, top, left + crop, top + crop))
            yield tile.resize((side, side), Image.Resampling.LANCZOS), name, "photo"


def listings(per_class: int = 150, cities: int = 4, side: int = 96, seed: int = 0) -> Iterator[Row]:
    """Exteriors and landscapes of ``cities`` synthetic cities, rendered straight from
    ``housegan.synth`` (no bucket, no curation: the classes are the truth)."""
    from housegan import synth

    rng = np.random.default_rng(seed)
    for city in synth.city_names(cities):
        for image_type in ("exterior", "landscape"):
            for _ in range(per_class):
                yield synth.render(image_type, city, rng, (side, side)), city, image_type


SETS: dict[str, Callable[..., Iterator[Row]]] = {
    "digits": digits,
    "photo_crops": photo_crops,
    "listings": listings,
}


def write_set(name: RealSet, root: Path, **kwargs: object) -> Path:
    """PNGs of set ``name`` under ``root/photos`` and a manifest naming them; returns it."""
    rows = []
    for i, (image, label, image_type) in enumerate(SETS[name](**kwargs)):
        path = root / "photos" / label / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        rows.append({"uri": path.as_uri(), "city": label, "image_type": image_type})
    manifest = root / f"{name}.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest
