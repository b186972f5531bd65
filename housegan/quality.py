"""Image quality scores and flags in cleanvision's manner: dark, overexposed, blurry, low
information, grayscale, odd aspect ratio; and perceptual hashes of the same decoded pixels.

Scores are computed once per content hash on a downscaled copy and stored content-addressed
in a parts collection ``<store>/quality/<QUALITY_VERSION>/`` keyed by sha256 (one immutable
Parquet part per run that found new photos, see ``housegan.collections``), so a renamed,
re-uploaded or duplicated photo is never scored again. Flags are
derived from scores at read time, so changing a threshold needs no recomputation.

The perceptual hashes (pHash, of the photo and of its mirror image) are per-content data
computed in the same decode pass; near-duplicate detection (``housegan.curate``) compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageOps

from housegan import images, manifest, storage
from housegan.collections import PartsCollection
from housegan.config import CurateSettings
from housegan.manifest import Status

# Bump when a score's definition or the decoder's pixels (images.DECODER_VERSION) change: scores
# then live in a fresh folder. v2: transparency composited on white, 16-bit gray scaled.
# v3: perceptual hashes (phash, phash_flip) and mean colour.
QUALITY_VERSION = "v3"
QUALITY_FLAGS = (
    "dark",
    "overexposed",
    "blurry",
    "low_information",
    "grayscale",
    "odd_aspect_ratio",
)

QUALITY_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("brightness_p99", pa.float32()),
        pa.field("brightness_p05", pa.float32()),
        pa.field("sharpness", pa.float32()),
        pa.field("entropy", pa.float32()),
        pa.field("colorfulness", pa.float32()),
        # mean of each channel in [0, 1]: copies keep it, look-alikes in other colours do not
        pa.field("mean_red", pa.float32()),
        pa.field("mean_green", pa.float32()),
        pa.field("mean_blue", pa.float32()),
        # 64-bit pHash as imagehash writes it (16 hex digits): a string, so a missing hash is a
        # null rather than a float NaN that would round the bits.
        pa.field("phash", pa.string()),
        pa.field("phash_flip", pa.string()),  # of the mirror image: flipped copies match it
        pa.field("error", pa.string()),
    ],
    metadata={"housegan.quality": QUALITY_VERSION},
)
HASH_COLUMNS = ("phash", "phash_flip")
MEAN_COLOUR_COLUMNS = ("mean_red", "mean_green", "mean_blue")
SCORE_COLUMNS = tuple(
    name for name in QUALITY_SCHEMA.names if name not in ("sha256", "error", *HASH_COLUMNS)
)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class QualityResult:
    uri: str  # the score folder (all parts)
    computed: int
    reused: int


def quality_uri(store_uri: str) -> str:
    return storage.join(store_uri, "quality", QUALITY_VERSION)


def quality_scores(
    store_uri: str, storage_options: Mapping[str, Any] | None = None
) -> PartsCollection:
    """The parts collection of stored scores (``QUALITY_SCHEMA``)."""
    return PartsCollection(quality_uri(store_uri), "sha256", QUALITY_SCHEMA, storage_options)


def load_image(
    uri: str, max_side: int, storage_options: Mapping[str, Any] | None = None
) -> Image.Image:
    """The photo at ``uri`` as ``images.decode_rgb`` sees it, no side longer than ``max_side``;
    ``storage.StoreUnreachable`` when the store does not answer."""
    return images.decode_rgb(storage.read_reachable(uri, storage_options), max_side)


def score_image(image: Image.Image) -> dict[str, float]:
    """Raw scores of one image (as ``images.to_rgb`` flattens it); see ``CurateSettings`` for
    what each threshold means."""
    image = images.to_rgb(image)
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    brightness = np.sqrt(0.241 * red**2 + 0.691 * green**2 + 0.068 * blue**2)
    luma = image.convert("L")
    gray = np.asarray(luma, dtype=np.float32) / 255.0
    return {
        "brightness_p99": float(np.percentile(brightness, 99)),
        "brightness_p05": float(np.percentile(brightness, 5)),
        "sharpness": _laplacian_variance(gray),
        "entropy": float(luma.entropy()),
        "colorfulness": float(np.mean(rgb.max(axis=2) - rgb.min(axis=2))),
        "mean_red": float(red.mean()),
        "mean_green": float(green.mean()),
        "mean_blue": float(blue.mean()),
    }


def perceptual_hashes(image: Image.Image) -> dict[str, str]:
    """pHash (64 bits, hex) of the image and of its mirror image.

    A pHash is the sign pattern of the lowest 8x8 DCT frequencies of a 32x32 grayscale
    thumbnail: resizing and re-encoding barely change it, but mirroring does, hence the second
    hash (a flipped copy's hash is close to the original's ``phash_flip``).
    """
    image = images.to_rgb(image)
    return {
        "phash": str(imagehash.phash(image)),
        "phash_flip": str(imagehash.phash(ImageOps.mirror(image))),
    }


def hash_bits(hashes: pd.Series | Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 bits, present mask) of hex hashes; a missing hash is 0 and not present."""
    values = pd.Series(hashes, dtype=object)
    present = values.notna().to_numpy()
    bits = np.zeros(len(values), dtype=np.uint64)
    bits[present] = [int(value, 16) for value in values[present]]
    return bits, present


def _laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the Laplacian over the variance of the image: edge energy relative to
    contrast, so a dim but sharp photo does not read as blurry. Flat images score 0."""
    if min(gray.shape) < 3 or gray.var() < 1e-6:
        return 0.0
    laplacian = (
        4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    )
    return float(laplacian.var() / gray.var())


def flag_frame(
    scores: pd.DataFrame, width: pd.Series, height: pd.Series, cfg: CurateSettings
) -> pd.DataFrame:
    """Boolean flags (columns ``QUALITY_FLAGS``) for rows of scores and displayed sizes.

    Rows without scores (unreadable photo, or never scored) get no score-based flags.
    """
    long_side = np.maximum(width, height).astype(float)
    short_side = np.minimum(width, height).astype(float).replace(0, np.nan)
    flags = pd.DataFrame(
        {
            "dark": scores["brightness_p99"] < cfg.dark_threshold,
            "overexposed": scores["brightness_p05"] > cfg.overexposed_threshold,
            "blurry": scores["sharpness"] < cfg.blurry_threshold,
            "low_information": scores["entropy"] < cfg.low_information_threshold,
            "grayscale": scores["colorfulness"] < cfg.grayscale_threshold,
            "odd_aspect_ratio": (long_side / short_side) > cfg.max_aspect_ratio,
        },
        index=scores.index,
    )
    return flags.fillna(False).astype(bool)


def load_scores(
    store_uri: str,
    sha256s: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """All stored scores (one row per sha256: the last written), optionally only those named."""
    collection = quality_scores(store_uri, storage_options)
    keys = None if sha256s is None else [str(sha) for sha in sha256s]
    return collection.read(keys=keys, dedupe=True).to_pandas()


def scorable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct content among the manifest's usable photos."""
    usable = frame[(frame["status"] == Status.OK) & frame["sha256"].notna()]
    return usable.drop_duplicates("sha256").sort_values("key")


def compute_quality(
    manifest_uri: str,
    store_uri: str,
    cfg: CurateSettings,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> QualityResult:
    """Score every usable photo of a manifest whose content was never scored; store new parts."""
    rows = scorable_rows(
        manifest.read(manifest.resolve(manifest_uri, storage_options), storage_options)
    )
    collection = quality_scores(store_uri, storage_options)
    known = set(collection.read(["sha256"])["sha256"].to_pylist())
    todo = rows[~rows["sha256"].isin(known)]
    if len(todo):
        scores = _score_many(todo["uri"].tolist(), cfg, storage_options, progress)
        scores.insert(0, "sha256", todo["sha256"].to_numpy())
        collection.publish([collection.append(manifest.to_table(scores, QUALITY_SCHEMA))])
    return QualityResult(quality_uri(store_uri), computed=len(todo), reused=len(rows) - len(todo))


def _score_many(
    uris: list[str],
    cfg: CurateSettings,
    storage_options: Mapping[str, Any] | None,
    progress: ProgressFn | None,
) -> pd.DataFrame:
    def score(uri: str) -> dict[str, Any]:
        try:
            image = load_image(uri, cfg.quality_max_side, storage_options)
            return {**score_image(image), **perceptual_hashes(image), "error": None}
        except storage.StoreUnreachable:
            raise  # an outage is no verdict on the photo: stored, its error would never be retried
        except Exception as exc:  # a bad photo is recorded, never fatal
            return (
                {name: np.nan for name in SCORE_COLUMNS}
                | dict.fromkeys(HASH_COLUMNS)
                | {"error": f"{type(exc).__name__}: {exc}"}
            )

    results = []
    with ThreadPoolExecutor(cfg.quality_workers) as pool:
        for done, result in enumerate(pool.map(score, uris), start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(uris))
    return pd.DataFrame(results, columns=[*SCORE_COLUMNS, *HASH_COLUMNS, "error"])
