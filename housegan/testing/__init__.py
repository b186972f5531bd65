"""Helpers for tests and benchmarks (not used by the pipeline itself)."""

from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """``image`` saved as ``fmt`` (Pillow's save options pass through), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo_bytes(
    width: int = 64,
    height: int = 48,
    *,
    seed: int = 0,
    fmt: str = "JPEG",
    mode: str = "RGB",
    exif_orientation: int | None = None,
    quality: int = 85,
) -> bytes:
    """A small, unique (per seed) photo-like image: a colour gradient with noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(60, 200, size=3)
    noise = rng.normal(0, 25, size=(height, width, 3))
    pixels = np.clip(ramp + noise + rng.integers(0, 55, size=3), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    options: dict[str, object] = {"quality": quality} if fmt == "JPEG" else {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = exif_orientation
        options["exif"] = exif
    return encode(image, fmt, **options)
