"""Synthetic listings: procedural listing photos, the demo's and the tests' dataset.

Photos of the five kinds a listing bucket holds (exteriors, landscapes, floorplans, interiors,
misc) land under ``<dest>/<city>/<listing_id>/photo_NN.<ext>``, together with the defects real
buckets have (truncated JPEGs, empty objects, non-images, duplicates, odd modes, EXIF rotation,
folder markers, dotfiles). What each object *is* goes to a separate truth Parquet, never into
keys, so later stages have to find it out.

Exteriors and landscapes are drawn from a per-city style (palette, roof, windows, sky, trees),
so the city is learnable from them. Everything is deterministic per seed: each object draws
from its own generator seeded by (seed, city, listing, photo), never from global state.
"""

from __future__ import annotations

import colorsys
import io
import json
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageChops, ImageDraw, ImageFont
from tqdm import tqdm

from housegan import storage
from housegan.config import IMAGE_TYPES

KINDS: tuple[str, ...] = IMAGE_TYPES
# Share of each kind among clean photos: exteriors and landscapes dominate, like a real bucket.
KIND_WEIGHTS: tuple[float, ...] = (0.35, 0.20, 0.15, 0.15, 0.15)
PHOTOS_PER_LISTING = (1, 5)
SIDE_RANGE = (160, 640)
ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3)
# Encodings of clean photos: mostly JPEG, like listing sites serve.
FORMATS = (("JPEG", "jpg", 0.8), ("PNG", "png", 0.1), ("WEBP", "webp", 0.1))
WRITE_CONCURRENCY = 16
TINY_SIZE = (8, 8)
EXIF_ORIENTATION_TAG = 0x0112

# Defects that replace a clean photo slot, in this order (each needs one photo).
SLOT_DEFECTS = (
    "truncated_jpeg",
    "zero_bytes",
    "not_image",
    "tiny",
    "exif_rotated",
    "grayscale",
    "rgba",
    "cmyk",
    "palette",
)
DUPLICATES_PER_DATASET = 2
DEFECTS: tuple[str, ...] = (*SLOT_DEFECTS, "duplicate", "folder_marker", "dotfile")

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # relative to dest, as ingest reads keys
        pa.field("uri", pa.string(), nullable=False),
        pa.field("city", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("kind", pa.string()),  # one of KINDS, or None (no picture)
        pa.field("defect", pa.string()),  # one of DEFECTS, or None (a clean photo)
        pa.field("dup_of", pa.string()),  # key of the original, for exact duplicates
        pa.field("seed", pa.int64()),  # render(kind, city, default_rng(seed), (w, h)) redraws it
        pa.field("width", pa.int32()),  # as displayed (after EXIF orientation)
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
    ],
    metadata={"housegan.manifest": "synth_truth", "housegan.schema_version": "1"},
)

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- city styles


@dataclass(frozen=True)
class CityStyle:
    """How a city's exteriors and landscapes look; each image jitters around it."""

    sky: tuple[RGB, RGB]  # top, horizon
    ground: RGB
    walls: tuple[RGB, ...]
    roofs: tuple[RGB, ...]
    roof_shapes: tuple[str, ...]  # gable, hip, flat, mansard
    storeys: tuple[int, int]
    window_cols: tuple[int, int]
    window_shape: str  # rect, tall, wide, arched
    trim: RGB
    tree: str  # round, conifer, palm, cactus
    trees: tuple[int, int]
    foliage: RGB
    clouds: float  # probability of clouds
    far: RGB  # distant hills / mountains in landscapes
    snow: bool = False


_STYLES: dict[str, CityStyle] = {
    "austin": CityStyle(
        sky=((96, 150, 215), (200, 220, 235)),
        ground=(120, 140, 70),
        walls=((225, 215, 190), (200, 180, 150), (235, 230, 220)),
        roofs=((110, 100, 90), (150, 80, 60)),
        roof_shapes=("hip", "gable"),
        storeys=(1, 1),
        window_cols=(3, 4),
        window_shape="wide",
        trim=(245, 245, 240),
        tree="round",
        trees=(2, 4),
        foliage=(80, 110, 50),
        clouds=0.3,
        far=(140, 150, 120),
    ),
    "boston": CityStyle(
        sky=((120, 140, 170), (190, 200, 210)),
        ground=(90, 120, 70),
        walls=((150, 60, 45), (130, 50, 40), (170, 80, 60)),
        roofs=((50, 50, 55), (70, 70, 80)),
        roof_shapes=("gable", "mansard"),
        storeys=(2, 3),
        window_cols=(3, 4),
        window_shape="tall",
        trim=(240, 240, 235),
        tree="round",
        trees=(1, 2),
        foliage=(60, 100, 50),
        clouds=0.6,
        far=(110, 120, 130),
    ),
    "chicago": CityStyle(
        sky=((150, 160, 175), (215, 215, 215)),
        ground=(110, 115, 100),
        walls=((170, 150, 120), (120, 110, 100), (190, 170, 140)),
        roofs=((40, 40, 40), (90, 60, 50)),
        roof_shapes=("flat", "gable"),
        storeys=(2, 3),
        window_cols=(2, 3),
        window_shape="rect",
        trim=(60, 60, 60),
        tree="round",
        trees=(0, 2),
        foliage=(70, 95, 60),
        clouds=0.8,
        far=(150, 150, 150),
    ),
    "denver": CityStyle(
        sky=((40, 110, 220), (170, 205, 240)),
        ground=(140, 130, 95),
        walls=((110, 80, 60), (180, 160, 130), (90, 100, 110)),
        roofs=((60, 50, 45), (40, 45, 50)),
        roof_shapes=("gable", "gable", "hip"),
        storeys=(1, 2),
        window_cols=(2, 3),
        window_shape="wide",
        trim=(230, 225, 210),
        tree="conifer",
        trees=(2, 5),
        foliage=(40, 80, 50),
        clouds=0.2,
        far=(95, 100, 140),
        snow=True,
    ),
    "miami": CityStyle(
        sky=((30, 150, 230), (150, 220, 245)),
        ground=(215, 200, 150),
        walls=((250, 200, 200), (190, 235, 220), (255, 240, 180), (240, 240, 245)),
        roofs=((220, 120, 80), (240, 240, 235)),
        roof_shapes=("flat", "hip"),
        storeys=(1, 2),
        window_cols=(2, 4),
        window_shape="arched",
        trim=(255, 255, 255),
        tree="palm",
        trees=(1, 3),
        foliage=(60, 160, 70),
        clouds=0.3,
        far=(120, 190, 200),
    ),
    "phoenix": CityStyle(
        sky=((70, 140, 230), (240, 215, 170)),
        ground=(205, 165, 115),
        walls=((215, 170, 120), (200, 150, 110), (230, 200, 160)),
        roofs=((170, 90, 60), (190, 110, 70)),
        roof_shapes=("flat", "flat", "hip"),
        storeys=(1, 1),
        window_cols=(2, 3),
        window_shape="rect",
        trim=(150, 90, 60),
        tree="cactus",
        trees=(1, 3),
        foliage=(100, 140, 80),
        clouds=0.1,
        far=(190, 130, 100),
    ),
    "seattle": CityStyle(
        sky=((110, 120, 130), (180, 185, 190)),
        ground=(60, 95, 55),
        walls=((70, 90, 100), (95, 110, 95), (60, 60, 70)),
        roofs=((30, 35, 40), (55, 60, 60)),
        roof_shapes=("gable", "gable"),
        storeys=(2, 2),
        window_cols=(2, 3),
        window_shape="tall",
        trim=(235, 235, 235),
        tree="conifer",
        trees=(3, 6),
        foliage=(25, 60, 35),
        clouds=0.9,
        far=(80, 95, 100),
        snow=True,
    ),
    "portland": CityStyle(
        sky=((130, 150, 160), (200, 205, 200)),
        ground=(80, 110, 60),
        walls=((200, 170, 90), (120, 140, 110), (180, 110, 80)),
        roofs=((60, 55, 50), (80, 60, 45)),
        roof_shapes=("gable", "hip"),
        storeys=(1, 2),
        window_cols=(2, 3),
        window_shape="rect",
        trim=(250, 245, 230),
        tree="round",
        trees=(2, 4),
        foliage=(50, 90, 45),
        clouds=0.7,
        far=(100, 120, 110),
    ),
    "atlanta": CityStyle(
        sky=((80, 140, 210), (210, 225, 230)),
        ground=(100, 140, 60),
        walls=((240, 240, 240), (225, 225, 215), (200, 210, 220)),
        roofs=((70, 70, 75), (40, 50, 70)),
        roof_shapes=("hip", "gable"),
        storeys=(2, 2),
        window_cols=(4, 5),
        window_shape="tall",
        trim=(40, 40, 45),
        tree="round",
        trees=(2, 4),
        foliage=(70, 130, 50),
        clouds=0.4,
        far=(120, 150, 110),
    ),
    "nashville": CityStyle(
        sky=((100, 150, 200), (225, 210, 190)),
        ground=(110, 135, 65),
        walls=((190, 90, 70), (220, 200, 170), (100, 110, 130)),
        roofs=((30, 30, 30), (90, 40, 35)),
        roof_shapes=("gable", "mansard"),
        storeys=(1, 2),
        window_cols=(3, 4),
        window_shape="arched",
        trim=(235, 225, 200),
        tree="round",
        trees=(1, 3),
        foliage=(90, 120, 45),
        clouds=0.5,
        far=(130, 125, 115),
    ),
}


def city_names(n: int) -> list[str]:
    """``n`` deterministic city slugs: up to 10 real-ish US cities, then ``city11``, ..."""
    if n < 1:
        raise ValueError(f"need at least one city, got {n}")
    real = list(_STYLES)
    return real[:n] + [f"city{i:02d}" for i in range(len(real) + 1, n + 1)]


@lru_cache(maxsize=256)
def city_style(city: str) -> CityStyle:
    """The style of a named city; any other name gets its own style derived from the name."""
    if city in _STYLES:
        return _STYLES[city]
    rng = np.random.default_rng(zlib.crc32(city.encode()))
    base = list(_STYLES.values())

    def pick() -> CityStyle:  # each trait from some known city, walls of its own
        return base[int(rng.integers(len(base)))]

    return replace(
        pick(),
        sky=pick().sky,
        walls=tuple(_rand_rgb(rng) for _ in range(3)),
        roofs=pick().roofs,
        roof_shapes=pick().roof_shapes,
        window_shape=pick().window_shape,
        tree=pick().tree,
        ground=pick().ground,
    )


# --------------------------------------------------------------------------- drawing helpers


def _vivid(rng: np.random.Generator, saturation=(0.4, 0.9), value=(0.5, 0.95)) -> RGB:
    """A saturated colour of any hue: brand colours, map features."""
    hue = rng.uniform(0, 1)
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))
    return int(r * 255), int(g * 255), int(b * 255)


def _rand_rgb(rng: np.random.Generator, low: int = 40, high: int = 240) -> RGB:
    r, g, b = rng.integers(low, high, size=3)
    return int(r), int(g), int(b)


def _jitter(rng: np.random.Generator, color: RGB, amount: int = 14) -> RGB:
    shifted = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return int(shifted[0]), int(shifted[1]), int(shifted[2])


def _choice(rng: np.random.Generator, options: tuple[Any, ...]) -> Any:
    return options[int(rng.integers(len(options)))]


def _between(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _gradient(height: int, top: RGB, bottom: RGB) -> np.ndarray:
    """A (height, 1, 3) uint8 column fading from ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    column = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return column.astype(np.uint8)


def _soften(img: Image.Image) -> Image.Image:
    """A lens-like softness, cheaply: halve, then scale back up."""
    return img.reduce(2).resize(img.size, Image.Resampling.BILINEAR) if min(img.size) > 2 else img


def _warm(img: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    """Tint by per-channel gains (warm indoor light), through one lookup table."""
    table = [min(255, int(v * gain)) for gain in gains for v in range(256)]
    return img.point(table)


def _finish(img: Image.Image, rng: np.random.Generator, grain: float) -> Image.Image:
    """Photographic grain: per-pixel luminance noise, so no kind is trivially flat."""
    spread = max(1, round(grain * 1.7))  # uniform noise with about this standard deviation
    noise = rng.integers(128 - spread, 128 + spread + 1, size=img.size[::-1], dtype=np.uint8)
    return ImageChops.add(img, Image.fromarray(noise).convert("RGB"), offset=-128)


_thread_fonts = threading.local()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The default font at ``size``, one per thread (a FreeType face is not thread-safe)."""
    fonts = _thread_fonts.__dict__.setdefault("by_size", {})
    if size not in fonts:
        fonts[size] = ImageFont.load_default(size=size)
    return fonts[size]


_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ      "))


def _words(rng: np.random.Generator, n: int) -> str:
    return "".join(_LETTERS[rng.integers(len(_LETTERS), size=n)]).strip() or "A"


def _ridge(rng: np.random.Generator, w: int, base: float, amplitude: float, smooth: int) -> list:
    """A smooth random skyline: points (x, y) across the image width."""
    steps = rng.standard_normal(w // 4 + 2).cumsum()
    kernel = np.ones(smooth) / smooth
    steps = np.convolve(steps, kernel, mode="same")
    steps = (steps - steps.min()) / (np.ptp(steps) + 1e-6)
    xs = np.linspace(0, w, len(steps))
    return [(float(x), float(base - amplitude * s)) for x, s in zip(xs, steps, strict=True)]


# --------------------------------------------------------------------------- the five kinds


def _draw_tree(draw: ImageDraw.ImageDraw, rng, kind: str, x: float, base: float, s: float, leaf):
    trunk = (90, 65, 45)
    if kind == "palm":
        top = base - 3.2 * s
        draw.line([(x, base), (x + 0.3 * s, top)], fill=(120, 95, 70), width=max(2, int(s / 6)))
        for angle in np.linspace(0, 2 * np.pi, 7, endpoint=False):
            end = (x + 0.3 * s + np.cos(angle) * 1.3 * s, top + np.sin(angle) * 0.6 * s + 0.3 * s)
            draw.line([(x + 0.3 * s, top), end], fill=_jitter(rng, leaf), width=max(2, int(s / 5)))
    elif kind == "conifer":
        draw.rectangle([x - s / 8, base - s / 2, x + s / 8, base], fill=trunk)
        for level in range(3):
            y = base - s / 3 - level * 0.8 * s
            draw.polygon(
                [
                    (x - s * (0.9 - 0.2 * level), y),
                    (x + s * (0.9 - 0.2 * level), y),
                    (x, y - 1.3 * s),
                ],
                fill=_jitter(rng, leaf, 8),
            )
    elif kind == "cactus":
        green = _jitter(rng, (70, 120, 60))
        draw.rounded_rectangle([x - s / 5, base - 2 * s, x + s / 5, base], s / 5, fill=green)
        draw.rounded_rectangle(
            [x - s * 0.7, base - 1.5 * s, x - s * 0.4, base - 0.8 * s], s / 8, fill=green
        )
        draw.rectangle([x - s * 0.7, base - 1.0 * s, x, base - 0.8 * s], fill=green)
    else:  # round
        draw.rectangle([x - s / 8, base - s, x + s / 8, base], fill=trunk)
        draw.ellipse([x - s, base - 2.6 * s, x + s, base - 0.8 * s], fill=_jitter(rng, leaf))


def _sky_and_ground(size, style: CityStyle, rng, horizon: int) -> Image.Image:
    w, h = size
    ground = _jitter(rng, style.ground)
    column = np.concatenate(
        [
            _gradient(horizon, _jitter(rng, style.sky[0]), _jitter(rng, style.sky[1])),
            _gradient(h - horizon, ground, tuple(int(c * 0.8) for c in ground)),
        ]
    )
    img = Image.fromarray(column).resize(size, Image.Resampling.NEAREST)
    if rng.random() < style.clouds:
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, horizon * 0.5)
            rx, ry = rng.uniform(0.05, 0.15) * w, rng.uniform(0.02, 0.05) * h
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_jitter(rng, (235, 235, 240)))
    return img


def _draw_roof(draw, rng, style, shape: str, left, right, top, pitch) -> None:
    color = _jitter(rng, _choice(rng, style.roofs))
    overhang = (right - left) * 0.05
    if shape == "gable":
        draw.polygon(
            [(left - overhang, top), (right + overhang, top), ((left + right) / 2, top - pitch)],
            fill=color,
        )
    elif shape == "hip":
        inset = (right - left) * 0.25
        draw.polygon(
            [
                (left - overhang, top),
                (right + overhang, top),
                (right - inset, top - pitch * 0.7),
                (left + inset, top - pitch * 0.7),
            ],
            fill=color,
        )
    elif shape == "mansard":
        inset = (right - left) * 0.08
        draw.polygon(
            [
                (left - overhang, top),
                (right + overhang, top),
                (right - inset, top - pitch * 0.8),
                (left + inset, top - pitch * 0.8),
            ],
            fill=color,
        )
        draw.rectangle(
            [left + inset, top - pitch * 0.9, right - inset, top - pitch * 0.8],
            fill=tuple(int(c * 0.7) for c in color),
        )
    else:  # flat, with a parapet
        draw.rectangle(
            [left - overhang / 2, top - pitch * 0.15, right + overhang / 2, top], fill=color
        )


def _draw_windows(draw, rng, style, left, right, top, storey_h, storeys, door_x) -> None:
    cols = _between(rng, style.window_cols)
    glass = _jitter(rng, (70, 95, 120), 20)
    win_h = storey_h * 0.5
    win_w = {"tall": 0.45, "wide": 1.5, "arched": 0.6}.get(style.window_shape, 0.8) * win_h
    xs = np.linspace(left, right, cols + 2)[1:-1]
    for level in range(storeys):
        y0 = top + level * storey_h + storey_h * 0.22
        for x in xs:
            if level == storeys - 1 and abs(x - door_x) < win_w:
                continue  # the door is here
            box = [x - win_w / 2, y0, x + win_w / 2, y0 + win_h]
            draw.rectangle(box, fill=glass, outline=style.trim, width=max(1, int(win_h / 12)))
            if style.window_shape == "arched":
                draw.pieslice(
                    [box[0], y0 - win_w / 2, box[2], y0 + win_w / 2],
                    180,
                    360,
                    fill=glass,
                    outline=style.trim,
                )
            draw.line([(x, y0), (x, y0 + win_h)], fill=style.trim, width=max(1, int(win_h / 20)))


def _exterior(size, style: CityStyle, rng) -> Image.Image:
    w, h = size
    horizon = int(h * rng.uniform(0.62, 0.75))
    img = _sky_and_ground(size, style, rng, horizon)
    draw = ImageDraw.Draw(img)
    house_w = w * rng.uniform(0.55, 0.85)
    left = (w - house_w) / 2 + rng.uniform(-0.08, 0.08) * w
    right = left + house_w
    storeys = _between(rng, style.storeys)
    bottom = horizon + h * 0.06
    storey_h = min(h * rng.uniform(0.17, 0.24), (bottom - h * 0.3) / storeys)
    top = bottom - storeys * storey_h
    for x in rng.uniform(0, w, size=_between(rng, style.trees) // 2):
        _draw_tree(draw, rng, style.tree, x, horizon + 2, h * 0.06, style.foliage)
    draw.rectangle([left, top, right, bottom], fill=_jitter(rng, _choice(rng, style.walls)))
    _draw_roof(
        draw,
        rng,
        style,
        _choice(rng, style.roof_shapes),
        left,
        right,
        top,
        house_w * rng.uniform(0.2, 0.35),
    )
    door_x = rng.uniform(left + house_w * 0.2, right - house_w * 0.2)
    door_w, door_h = storey_h * 0.35, storey_h * 0.7
    draw.rectangle(
        [door_x - door_w / 2, bottom - door_h, door_x + door_w / 2, bottom],
        fill=_jitter(rng, (110, 70, 50), 30),
        outline=style.trim,
    )
    _draw_windows(draw, rng, style, left, right, top, storey_h, storeys, door_x)
    path = _jitter(rng, (165, 160, 150), 15)  # a concrete path from the door to the street
    draw.polygon(
        [
            (door_x - door_w / 2, bottom),
            (door_x + door_w / 2, bottom),
            (door_x + door_w * 1.5, h),
            (door_x - door_w * 1.5, h),
        ],
        fill=path,
    )
    for x in np.linspace(left, right, int(rng.integers(2, 6))):  # bushes along the facade
        r = h * rng.uniform(0.025, 0.05)
        draw.ellipse(
            [x - 1.5 * r, bottom - r, x + 1.5 * r, bottom + r], fill=_jitter(rng, style.foliage)
        )
    for x in rng.uniform(0, w, size=(_between(rng, style.trees) + 1) // 2):
        if left < x < right:
            x = left - w * 0.05 if x < (left + right) / 2 else right + w * 0.05
        _draw_tree(
            draw, rng, style.tree, x, bottom + h * 0.04, h * rng.uniform(0.08, 0.13), style.foliage
        )
    return _finish(_soften(img), rng, grain=5.0)


def _landscape(size, style: CityStyle, rng) -> Image.Image:
    w, h = size
    horizon = int(h * rng.uniform(0.45, 0.65))
    img = _sky_and_ground(size, style, rng, horizon)
    draw = ImageDraw.Draw(img)
    far = _ridge(rng, w, horizon, h * rng.uniform(0.15, 0.35), 5)
    draw.polygon([(0, horizon + 1), *far, (w, horizon + 1)], fill=_jitter(rng, style.far))
    if style.snow:
        peak = min(far, key=lambda p: p[1])
        draw.polygon(
            [
                (peak[0] - w * 0.05, peak[1] + h * 0.05),
                peak,
                (peak[0] + w * 0.05, peak[1] + h * 0.05),
            ],
            fill=(245, 245, 250),
        )
    near = _ridge(rng, w, horizon + h * 0.1, h * rng.uniform(0.08, 0.18), 9)
    draw.polygon([(0, h), *near, (w, h)], fill=_jitter(rng, style.foliage, 20))
    foreground = h * rng.uniform(0.78, 0.9)
    if rng.random() < 0.5:  # a lake with ripples
        water = _jitter(rng, (60, 110, 160), 20)
        draw.rectangle([0, foreground, w, h], fill=water)
        for y in rng.uniform(foreground, h, size=12):
            x = rng.uniform(0, w)
            draw.line([(x, y), (x + w * 0.1, y)], fill=tuple(min(255, c + 50) for c in water))
    else:  # fields in stripes
        for i, y in enumerate(np.linspace(foreground, h, 6)):
            tone = style.ground if i % 2 else style.foliage
            draw.rectangle([0, y, w, h], fill=_jitter(rng, tone, 20))
    for x in rng.uniform(0, w, size=_between(rng, style.trees)):
        _draw_tree(draw, rng, style.tree, x, foreground, h * rng.uniform(0.04, 0.09), style.foliage)
    return _finish(_soften(img), rng, grain=6.0)


def _split_rooms(rng, box, depth: int) -> list[tuple[float, float, float, float]]:
    x0, y0, x1, y1 = box
    if depth == 0 or min(x1 - x0, y1 - y0) < 40:
        return [box]
    if (x1 - x0) > (y1 - y0):
        cut = rng.uniform(x0 + (x1 - x0) * 0.3, x0 + (x1 - x0) * 0.7)
        halves = [(x0, y0, cut, y1), (cut, y0, x1, y1)]
    else:
        cut = rng.uniform(y0 + (y1 - y0) * 0.3, y0 + (y1 - y0) * 0.7)
        halves = [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    return [room for half in halves for room in _split_rooms(rng, half, depth - 1)]


def _floorplan(size, style: CityStyle, rng) -> Image.Image:
    w, h = size
    paper = _jitter(rng, (248, 248, 246), 6)
    img = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(img)
    ink = _jitter(rng, (35, 35, 40), 15)
    margin = min(w, h) * rng.uniform(0.06, 0.12)
    outer = (margin, margin, w - margin, h - margin)
    wall = max(2, int(min(w, h) / 90))
    font = _font(max(8, int(min(w, h) / 30)))
    for x0, y0, x1, y1 in _split_rooms(rng, outer, _between(rng, (2, 4))):
        draw.rectangle([x0, y0, x1, y1], outline=ink, width=wall)
        door = min(x1 - x0, y1 - y0) * 0.25  # a gap in the wall and the door's swing
        dx = rng.uniform(x0 + door, max(x0 + door + 1, x1 - 2 * door))
        draw.line([(dx, y1), (dx + door, y1)], fill=paper, width=wall + 1)
        draw.arc([dx - door, y1 - door, dx + door, y1 + door], 270, 360, fill=ink, width=1)
        draw.line([(dx, y1), (dx, y1 - door)], fill=ink, width=1)
        label = (x0 + (x1 - x0) * 0.2, y0 + (y1 - y0) * 0.4)
        draw.text(label, _words(rng, int(rng.integers(4, 9))), fill=ink, font=font)
    draw.line([(margin, h - margin / 2), (w - margin, h - margin / 2)], fill=ink, width=1)
    # A scanned sheet: slightly soft lines and paper noise (misc graphics are clean digital art).
    return _finish(_soften(img), rng, grain=4.0)


def _interior(size, style: CityStyle, rng) -> Image.Image:
    w, h = size
    wall = _jitter(
        rng, _choice(rng, ((225, 200, 165), (235, 215, 180), (215, 180, 150), (240, 225, 200))), 12
    )
    img = Image.new("RGB", size, wall)
    draw = ImageDraw.Draw(img)
    vx, vy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.4, 0.55)  # vanishing point
    back = [vx - w * 0.3, vy - h * 0.25, vx + w * 0.3, vy + h * 0.2]
    shade = tuple(int(c * 0.8) for c in wall)
    draw.polygon([(0, 0), (back[0], back[1]), (back[0], back[3]), (0, h)], fill=shade)
    draw.polygon([(w, 0), (back[2], back[1]), (back[2], back[3]), (w, h)], fill=shade)
    draw.polygon(
        [(0, 0), (w, 0), (back[2], back[1]), (back[0], back[1])],
        fill=tuple(min(255, c + 15) for c in wall),
    )
    floor = _jitter(rng, _choice(rng, ((150, 100, 60), (180, 130, 80), (120, 80, 50))), 15)
    draw.polygon([(0, h), (back[0], back[3]), (back[2], back[3]), (w, h)], fill=floor)
    for t in np.linspace(0, 1, 9):  # planks converge to the vanishing point
        draw.line(
            [(back[0] + t * (back[2] - back[0]), back[3]), (t * w, h)],
            fill=tuple(int(c * 0.8) for c in floor),
            width=1,
        )
    window = [vx - w * 0.12, back[1] + h * 0.06, vx + w * 0.05, back[3] - h * 0.12]
    draw.rectangle(window, fill=_jitter(rng, (250, 248, 235), 5), outline=(255, 255, 255), width=3)
    draw.line(
        [((window[0] + window[2]) / 2, window[1]), ((window[0] + window[2]) / 2, window[3])],
        fill=(200, 190, 170),
        width=2,
    )
    sofa = _jitter(rng, _choice(rng, ((150, 60, 50), (90, 100, 120), (170, 140, 100))), 20)
    sx, sy = w * rng.uniform(0.1, 0.4), h * rng.uniform(0.62, 0.72)
    draw.rounded_rectangle([sx, sy, sx + w * 0.4, sy + h * 0.18], radius=8, fill=sofa)
    draw.rectangle(
        [sx + w * 0.05, sy + h * 0.08, sx + w * 0.35, sy + h * 0.12],
        fill=tuple(int(c * 0.8) for c in sofa),
    )
    table = _jitter(rng, (90, 60, 40), 15)
    tx = w * rng.uniform(0.45, 0.75)
    draw.rectangle([tx, h * 0.8, tx + w * 0.2, h * 0.84], fill=table)
    draw.rectangle([tx + 4, h * 0.84, tx + 8, h * 0.93], fill=table)
    draw.rectangle([tx + w * 0.2 - 8, h * 0.84, tx + w * 0.2 - 4, h * 0.93], fill=table)
    draw.ellipse([w * 0.8, h * 0.3, w * 0.9, h * 0.4], fill=(255, 235, 190))  # a lamp
    return _finish(_warm(_soften(img), (1.06, 0.98, 0.86)), rng, grain=4.0)


def _map(size, rng) -> Image.Image:
    """A street map: tinted blocks between white streets, a river, a highway and a pin; the
    grid is turned, as city grids rarely line up with north (and floorplans always do)."""
    w, h = size
    side = int(np.hypot(w, h)) + 2
    img = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    step = max(4.0, rng.uniform(0.08, 0.16) * min(w, h))
    road = max(1, int(step / 6))
    tones = [_vivid(rng, (0.3, 0.6), (0.55, 0.85)) for _ in range(3)]
    for x in np.arange(-rng.uniform(0, step), side, step):
        for y in np.arange(-rng.uniform(0, step), side, step):
            tone = tones[int(rng.integers(len(tones)))]
            draw.rectangle([x + road, y + road, x + step, y + step], fill=tone)
    img = img.rotate(rng.uniform(15, 75), resample=Image.Resampling.BILINEAR)
    img = img.crop(((side - w) // 2, (side - h) // 2, (side - w) // 2 + w, (side - h) // 2 + h))
    draw = ImageDraw.Draw(img)
    river = _ridge(rng, w, rng.uniform(0.3, 0.8) * h, rng.uniform(0.1, 0.3) * h, 9)
    width = rng.uniform(0.06, 0.14) * h
    draw.polygon([*river, *[(x, y + width) for x, y in reversed(river)]], fill=(140, 185, 230))
    y = rng.uniform(0.2, 0.8) * h
    highway = max(4, int(min(w, h) / 30))
    draw.line([(0, y), (w, y + rng.uniform(-0.3, 0.3) * h)], fill=(250, 190, 80), width=highway)
    px, py = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    pin = min(w, h) / 25
    draw.ellipse([px - pin, py - 2.5 * pin, px + pin, py - 0.5 * pin], fill=(220, 50, 50))
    draw.polygon(
        [(px - 0.75 * pin, py - 1.2 * pin), (px + 0.75 * pin, py - 1.2 * pin), (px, py)],
        fill=(220, 50, 50),
    )
    return img


def _logo(size, rng) -> Image.Image:
    w, h = size
    background = _vivid(rng) if rng.random() < 0.8 else (255, 255, 255)
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    cx, cy, r = w / 2, h * 0.42, min(w, h) * rng.uniform(0.2, 0.32)
    for i in range(int(rng.integers(1, 4))):
        color, k = _rand_rgb(rng, 0, 220), r * (1 - 0.3 * i)
        shape = _choice(rng, ("ellipse", "rectangle", "triangle"))
        if shape == "triangle":
            draw.polygon([(cx - k, cy + k), (cx + k, cy + k), (cx, cy - k)], fill=color)
        else:
            getattr(draw, shape)([cx - k, cy - k, cx + k, cy + k], fill=color)
    font = _font(max(10, int(min(w, h) / 10)))
    draw.text(
        (cx, cy + r * 1.5),
        _words(rng, int(rng.integers(4, 10))),
        fill=_rand_rgb(rng, 0, 90),
        font=font,
        anchor="mm",
    )
    return img


def _text_card(size, rng) -> Image.Image:
    w, h = size
    dark = rng.random() < 0.4
    background = _rand_rgb(rng, 10, 60) if dark else _vivid(rng, (0.3, 0.8), (0.7, 1.0))
    ink = (240, 240, 240) if dark else _rand_rgb(rng, 0, 50)
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    title = _font(max(10, int(h / 9)))
    draw.text((w * 0.08, h * 0.08), _words(rng, int(rng.integers(5, 12))), fill=ink, font=title)
    body = _font(max(8, int(h / 20)))
    for y in np.arange(h * 0.3, h * 0.9, h / 14):
        draw.text((w * 0.08, y), _words(rng, int(rng.integers(15, 40))), fill=ink, font=body)
    return img


def _misc(size, style: CityStyle, rng) -> Image.Image:
    draw_one = _choice(rng, (_map, _map, _logo, _text_card))
    return _finish(draw_one(size, rng), rng, grain=1.0)


_RENDERERS: dict[str, Callable[..., Image.Image]] = {
    "exterior": _exterior,
    "landscape": _landscape,
    "floorplan": _floorplan,
    "interior": _interior,
    "misc": _misc,
}


def render(kind: str, city: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Draw one RGB photo of ``kind`` for ``city`` at ``size`` (width, height)."""
    if kind not in _RENDERERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return _RENDERERS[kind](tuple(size), city_style(city), rng)


# --------------------------------------------------------------------------- the dataset plan


@dataclass(frozen=True)
class SynthResult:
    truth_uri: str
    objects: int
    counts: dict[str, int]  # every object once: by defect if it has one, else by kind


@dataclass(frozen=True)
class _Planned:
    """One object to write: what it shows and how it is encoded."""

    key: str
    city: str
    listing_id: str | None
    kind: str | None = None
    defect: str | None = None
    dup_of: str | None = None
    seed: int | None = None
    size: tuple[int, int] | None = None
    fmt: str | None = None


def default_truth_uri(dest_uri: str) -> str:
    """Where the truth goes by default: a sibling of ``dest`` (never under it)."""
    dest = storage.normalize_uri(dest_uri).rstrip("/")
    _, path = dest.split("://", 1)
    if "/" not in path.strip("/"):
        raise ValueError(f"{dest_uri} is a bucket or filesystem root; name a truth URI")
    return f"{dest}_truth.parquet"


def _seed_for(seed: int, *path: int) -> int:
    """An independent, reproducible seed for one object, from the dataset seed and its place."""
    return int(np.random.SeedSequence(seed, spawn_key=path).generate_state(1)[0])


def _photo_size(rng: np.random.Generator) -> tuple[int, int]:
    low, high = SIDE_RANGE
    width = int(rng.integers(low, high + 1))
    height = int(np.clip(round(width / _choice(rng, ASPECTS)), low, high))
    return width, height


def _plan_photo(seed: int, city: str, ci: int, listing_no: int, index: int) -> _Planned:
    object_seed = _seed_for(seed, ci, listing_no, index)
    rng = np.random.default_rng(object_seed)
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    fmt_rng = np.random.default_rng(_seed_for(seed, ci, listing_no, index, 1))
    fmt = FORMATS[int(fmt_rng.choice(len(FORMATS), p=[f[2] for f in FORMATS]))]
    listing_id = f"L{listing_no:06d}"
    return _Planned(
        key=f"{city}/{listing_id}/photo_{index + 1:02d}.{fmt[1]}",
        city=city,
        listing_id=listing_id,
        kind=kind,
        seed=object_seed,
        size=_photo_size(fmt_rng),
        fmt=fmt[0],
    )


def _plan_clean(cities: list[str], per_city: int, seed: int) -> list[_Planned]:
    photos: list[_Planned] = []
    for ci, city in enumerate(cities):
        for j in range(per_city):
            listing_no = ci * per_city + j + 1
            count_rng = np.random.default_rng(_seed_for(seed, ci, listing_no))
            for index in range(_between(count_rng, PHOTOS_PER_LISTING)):
                photos.append(_plan_photo(seed, city, ci, listing_no, index))
    return photos


_DEFECT_FORMATS = {
    "truncated_jpeg": "JPEG",
    "exif_rotated": "JPEG",
    "grayscale": "JPEG",
    "cmyk": "JPEG",
    "tiny": "JPEG",
    "rgba": "PNG",
    "palette": "PNG",
    "zero_bytes": "JPEG",
    "not_image": "JPEG",
}
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def _with_defect(photo: _Planned, defect: str) -> _Planned:
    fmt = _DEFECT_FORMATS[defect]
    key = photo.key.rsplit(".", 1)[0] + "." + _EXTENSIONS[fmt]
    has_picture = defect not in ("zero_bytes", "not_image")
    if not has_picture:
        return replace(photo, key=key, defect=defect, fmt=None, kind=None, seed=None, size=None)
    return replace(photo, key=key, defect=defect, fmt=fmt)


def _plan_defects(photos: list[_Planned], seed: int) -> list[_Planned]:
    """Turn a few photos into defects and add duplicates, a folder marker and a dotfile."""
    needed = len(SLOT_DEFECTS) + DUPLICATES_PER_DATASET
    if len(photos) < needed:
        raise ValueError(
            f"defects need at least {needed} photos, the plan has {len(photos)}: "
            "add listings or turn defects off"
        )
    rng = np.random.default_rng(_seed_for(seed, 2**31 - 1))
    order = rng.permutation(len(photos))
    photos = list(photos)
    for defect, slot in zip(SLOT_DEFECTS, order, strict=False):
        photos[slot] = _with_defect(photos[slot], defect)
    extra: list[_Planned] = []
    originals = order[len(SLOT_DEFECTS) : len(SLOT_DEFECTS) + DUPLICATES_PER_DATASET]
    for n, slot in enumerate(originals):
        original, host = photos[slot], photos[int(rng.integers(len(photos)))]
        ext = original.key.rsplit(".", 1)[1]
        key = f"{host.city}/{host.listing_id}/photo_{90 + n:02d}.{ext}"  # a re-upload
        extra.append(
            replace(
                original,
                key=key,
                city=host.city,
                listing_id=host.listing_id,
                defect="duplicate",
                dup_of=original.key,
            )
        )
    first = photos[0]
    extra.append(
        _Planned(key=f"{first.city}/", city=first.city, listing_id=None, defect="folder_marker")
    )
    extra.append(
        _Planned(
            key=f"{first.city}/{first.listing_id}/.DS_Store",
            city=first.city,
            listing_id=first.listing_id,
            defect="dotfile",
        )
    )
    return photos + extra


# --------------------------------------------------------------------------- encoding


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# Fast settings: the demo draws ~1,500 photos, and PNG/WebP dominate the cost otherwise.
_ENCODE_PARAMS = {
    "JPEG": {"quality": 88},
    "PNG": {"compress_level": 1},
    "WEBP": {"quality": 85, "method": 1},
}


def _picture(photo: _Planned) -> Image.Image:
    assert photo.kind is not None and photo.seed is not None and photo.size is not None
    size = TINY_SIZE if photo.defect == "tiny" else photo.size
    return render(photo.kind, photo.city, np.random.default_rng(photo.seed), size)


def _materialize(photo: _Planned) -> bytes:
    """The bytes of one planned object (defects included)."""
    defect = photo.defect
    if defect in ("zero_bytes", "folder_marker"):
        return b""
    if defect == "not_image":
        return b"<html><body><h1>503 Service Unavailable</h1></body></html>\n"
    if defect == "dotfile":
        return b"\x00\x00\x00\x01Bud1" + bytes(64)
    img = _picture(photo)
    params = dict(_ENCODE_PARAMS[photo.fmt or "JPEG"])
    if defect == "truncated_jpeg":
        data = _encode(img, "JPEG", **params)
        return data[: len(data) * 3 // 5]
    if defect == "exif_rotated":
        # Stored sideways; Orientation=6 tells viewers to turn it 90° clockwise to upright.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = 6
        return _encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, **params)
    if defect == "grayscale":
        img = img.convert("L")
    elif defect == "cmyk":
        img = img.convert("CMYK")
    elif defect == "rgba":
        img = img.convert("RGBA")
        alpha = np.full((img.height, img.width), 255, np.uint8)
        alpha[:, : img.width // 4] = 0  # a transparent band, like a cut-out logo
        img.putalpha(Image.fromarray(alpha))
    elif defect == "palette":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return _encode(img, photo.fmt or "JPEG", **params)


def _displayed_size(photo: _Planned) -> tuple[int | None, int | None]:
    if photo.kind is None:
        return None, None
    w, h = TINY_SIZE if photo.defect == "tiny" else (photo.size or (None, None))
    return w, h


# --------------------------------------------------------------------------- writing


def _put(fs: Any, root: str, key: str, data: bytes) -> None:
    path = f"{root}/{key}"
    if key.endswith("/"):  # a folder marker: only object stores have such objects
        if getattr(fs, "protocol", None) and "s3" in fs.protocol:
            bucket, _, prefix = path.partition("/")
            fs.call_s3("put_object", Bucket=bucket, Key=prefix, Body=b"")
        return
    if "file" in fs.protocol:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def _truth_frame(plan: list[_Planned], dest: str) -> pd.DataFrame:
    rows = []
    for photo in plan:
        width, height = _displayed_size(photo)
        rows.append(
            {
                "key": photo.key,
                "uri": storage.join(dest, photo.key) + ("/" * photo.key.endswith("/")),
                "city": photo.city,
                "listing_id": photo.listing_id,
                "kind": photo.kind,
                "defect": photo.defect,
                "dup_of": photo.dup_of,
                "seed": photo.seed,
                "width": width,
                "height": height,
                "format": photo.fmt,
            }
        )
    frame = pd.DataFrame(rows, columns=TRUTH_SCHEMA.names)
    return frame.sort_values("key", ignore_index=True)


def _count(plan: list[_Planned]) -> dict[str, int]:
    return dict(sorted(Counter(p.defect or p.kind or "unknown" for p in plan).items()))


def plan_dataset(cities: int, per_city: int, seed: int, defects: bool = True) -> list[_Planned]:
    """Every object of a dataset, decided before anything is drawn."""
    if per_city < 1:
        raise ValueError(f"need at least one listing per city, got {per_city}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    plan = _plan_clean(city_names(cities), per_city, seed)
    return _plan_defects(plan, seed) if defects else plan


def synthesize(
    dest_uri: str,
    *,
    cities: int,
    per_city: int,
    seed: int,
    storage_options: Mapping[str, Any] | None = None,
    truth_uri: str | None = None,
    defects: bool = True,
    progress: bool = False,
) -> SynthResult:
    """Draw and write a synthetic listing bucket under ``dest_uri`` and its truth Parquet."""
    dest = storage.normalize_uri(dest_uri).rstrip("/")
    truth_uri = storage.normalize_uri(truth_uri) if truth_uri else default_truth_uri(dest)
    if truth_uri.startswith(dest + "/"):
        raise ValueError(f"truth {truth_uri} must not lie under the photos at {dest}")
    plan = plan_dataset(cities, per_city, seed, defects)
    originals = {p.key: p for p in plan if p.defect != "duplicate"}
    fs, root = storage.get_fs(dest, storage_options)
    root = root.rstrip("/")

    def write(photo: _Planned) -> None:
        source = originals[photo.dup_of] if photo.dup_of else photo
        _put(fs, root, photo.key, _materialize(source))

    with (
        ThreadPoolExecutor(max_workers=WRITE_CONCURRENCY) as pool,
        tqdm(total=len(plan), desc="synth", unit="obj", disable=not progress) as bar,
    ):
        for _ in pool.map(write, plan):
            bar.update()

    table = pa.Table.from_pandas(
        _truth_frame(plan, dest), schema=TRUTH_SCHEMA, preserve_index=False
    )
    recipe = {
        "dest": dest,
        "cities": cities,
        "per_city": per_city,
        "seed": seed,
        "defects": defects,
    }
    table = table.replace_schema_metadata(
        {**TRUTH_SCHEMA.metadata, b"housegan.synth": json.dumps(recipe).encode()}
    )
    storage.write_parquet(table, truth_uri, storage_options)
    return SynthResult(truth_uri=truth_uri, objects=len(plan), counts=_count(plan))


def existing(
    dest_uri: str,
    *,
    cities: int,
    per_city: int,
    seed: int,
    defects: bool = True,
    truth_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> SynthResult | None:
    """The bucket ``synthesize`` would write, if its truth says it was already written so."""
    dest = storage.normalize_uri(dest_uri).rstrip("/")
    truth_uri = storage.normalize_uri(truth_uri) if truth_uri else default_truth_uri(dest)
    try:
        table = storage.read_parquet(truth_uri, storage_options=storage_options)
    except FileNotFoundError:
        return None
    recipe = json.loads((table.schema.metadata or {}).get(b"housegan.synth", b"{}"))
    wanted = {"dest": dest, "cities": cities, "per_city": per_city, "seed": seed}
    if any(recipe.get(k) != v for k, v in wanted.items()) or recipe.get("defects") != defects:
        return None
    truth = _truth_to_pandas(table)
    counts = truth["defect"].fillna(truth["kind"]).value_counts()
    return SynthResult(truth_uri, len(truth), {str(k): int(n) for k, n in counts.items()})


def read_truth(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The truth table written by ``synthesize``."""
    return _truth_to_pandas(storage.read_parquet(uri, storage_options=storage_options))


def _truth_to_pandas(table: pa.Table) -> pd.DataFrame:
    nullable_ints = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}
    return table.to_pandas(types_mapper=nullable_ints.get)


def write_truth_labels(
    truth_uri: str,
    *,
    per_type: int,
    seed: int = 0,
    labels_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Play the human labeller: a label CSV (``key,label``) of ``per_type`` clean photos per kind,
    drawn from the truth; returns its URI (default: beside the truth file)."""
    truth = read_truth(truth_uri, storage_options)
    clean = truth[truth["defect"].isna() & truth["kind"].notna()]
    picked = [
        group.sample(n=min(per_type, len(group)), random_state=seed)
        for _, group in clean.groupby("kind", sort=True)
    ]
    frame = pd.concat(picked)[["key", "kind"]].rename(columns={"kind": "label"})
    uri = labels_uri or truth_uri.removesuffix(".parquet") + f"_labels_{per_type}_s{seed}.csv"
    body = frame.sort_values("key").to_csv(index=False).encode()
    storage.write_bytes_atomic(uri, body, storage_options)
    return uri
