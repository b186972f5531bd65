"""Tiny, visibly class-dependent training photos for the GAN tests.

City sets the background hue, image type the shape drawn on it (a centred square for
"exterior", a horizontal band for "landscape", a grid of lines for anything else, such as
"floorplan"); position, size and colour jitter per image so each class is a distribution, not
one picture. The GAN, evaluation and app test data all draw their photos here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

CITY_COLORS = {
    "austin": (200, 40, 40),
    "boston": (40, 60, 200),
    "denver": (40, 170, 60),
    "miami": (200, 160, 40),
}
TYPES = ("exterior", "landscape")


# A GAN small enough to train in seconds on a CPU, set the way a user sets it: HOUSEGAN_GAN__*.
TINY_GAN = {
    "WIDTH": "4",
    "Z_DIM": "16",
    "EMBED_DIM": "8",
    "LOG_EVERY": "2",
    "SNAPSHOT_EVERY": "2",
    "GRID_PER_CLASS": "2",
    "CPU_THREADS": "2",
}


# GanSettings fields of a GAN that trains a step in milliseconds on one CPU thread.
TINY_SETTINGS: dict[str, Any] = {
    "image_size": 32,
    "batch_size": 8,
    "width": 4,
    "z_dim": 16,
    "embed_dim": 8,
    "device": "cpu",
    "cpu_threads": 1,
}


# The smallest GAN that learns these classes on a CPU in ~20 s (320 steps at 32 px).
LEARNING_GAN: dict[str, Any] = {
    "image_size": 32,
    "width": 8,
    "batch_size": 16,
    "z_dim": 32,
    "embed_dim": 16,
    "g_lr": 2e-4,
    "d_lr": 8e-4,
    "steps": 320,
    "log_every": 40,
    "snapshot_every": 10_000,
    "device": "cpu",
}


def configure_tiny_gan(monkeypatch, root: Path, **gan: str) -> Path:
    """Settings through the environment: a local store under ``root``, SQLite MLflow, a tiny
    GAN (``gan`` adds or overrides GanSettings fields, by upper-case name)."""
    from housegan.config import get_settings

    monkeypatch.setenv("HOUSEGAN_STORE_URI", (root / "store").as_uri())
    monkeypatch.setenv("HOUSEGAN_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for key, value in {**TINY_GAN, **gan}.items():
        monkeypatch.setenv(f"HOUSEGAN_GAN__{key}", value)
    get_settings.cache_clear()
    return root


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
    elif image_type == "landscape":
        top = size // 3 + jitter
        pen.rectangle([0, top, size, top + size // 4], fill=(shade, shade, 0))
    else:  # a floorplan-like grid of lines
        for step in range(4, size, 8):
            pen.line([0, step, size, step], fill=(255, 255, 255))
            pen.line([step, 0, step, size], fill=(255, 255, 255))
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


def prepared_dataset(root: Path, image_size: int = 32, per_class: int = 8, **kwargs) -> str:
    """Write photos, pack them at ``image_size``; returns the dataset URI."""
    from housegan.gan.data import prepare

    manifest = write_photos(root, per_class, **kwargs)
    return prepare(str(manifest), (root / "store").as_uri(), image_size).uri


class ListReporter:
    """A training Reporter that keeps everything it is given, in order."""

    def __init__(self) -> None:
        self.params_seen: list[dict[str, Any]] = []
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[str, Image.Image, int]] = []

    def params(self, params: dict[str, Any]) -> None:
        self.params_seen.append(params)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))

    def image(self, name: str, image: Image.Image, step: int) -> None:
        self.images.append((name, image, step))

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]
