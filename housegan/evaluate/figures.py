"""Figures of an evaluation: the generated images most similar to a training photo, per cell.

One column per pair: the generated image on top, its nearest training image below, the cosine
under both. A reader sees at once whether "most similar" means "the same photo".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PAD = 4
_TITLE = 18
_CAPTION = 16


def _tile(image: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST)


def pair_figure(
    generated: np.ndarray,
    nearest: np.ndarray,
    cosines: Sequence[float],
    title: str,
    thumb: int = 96,
) -> Image.Image:
    """``generated[i]`` over ``nearest[i]`` with ``cosines[i]`` under them, left to right."""
    n = len(generated)
    width = max(1, n) * (thumb + _PAD) + _PAD
    height = _TITLE + 2 * thumb + 3 * _PAD + _CAPTION
    canvas = Image.new("RGB", (max(width, 8 * len(title)), height), "white")
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    pen.text((_PAD, 2), title, fill="black", font=font)
    for i in range(n):
        x = _PAD + i * (thumb + _PAD)
        canvas.paste(_tile(generated[i], thumb), (x, _TITLE))
        canvas.paste(_tile(nearest[i], thumb), (x, _TITLE + thumb + _PAD))
        caption = f"cos {cosines[i]:.3f}"
        pen.text((x, _TITLE + 2 * thumb + 2 * _PAD), caption, fill="black", font=font)
    if n == 0:
        pen.text((_PAD, _TITLE + _PAD), "(no generated images)", fill="gray", font=font)
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically (a rename from the same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    image.save(partial, "PNG")
    partial.replace(path)
    return path
