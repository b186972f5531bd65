"""Held-out real photos and the copies a listing site makes of them, for near-duplicate tests
and benchmarks.

The photos are ones our code never drew: scikit-image's bundled photographs (only those in its
wheel, never a pooch download) and scikit-learn's two sample images. Each is cut into a grid of
non-overlapping tiles, so tiles of one photo are distinct content of one kind (the hardest
negatives), and every copy is made from one tile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from housegan.steps.ingest import IngestInput, ingest_source
from housegan.testing import encode

# In scikit-image's wheel (load without a download); chelsea is the same photo as cat, and
# stereo_motorcycle's right view overlaps the left, so each appears once.
COLOUR_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
GRAY_PHOTOS = ("camera", "coins", "brick", "grass", "gravel", "moon", "clock", "cell")

CopyKind = Literal[
    "resized",
    "reencoded",
    "cropped",
    "flipped",
    "resized+reencoded",
    "cropped+reencoded",
    "flipped+reencoded",
    "cropped+resized+reencoded",
    "flipped+cropped+resized",
]
COPY_KINDS: tuple[CopyKind, ...] = get_args(CopyKind)


@dataclass(frozen=True)
class Photo:
    """One file of a copy set: an original (``kind`` None) or a copy of one."""

    name: str  # file name stem, unique
    family: str  # the original it is (a copy of)
    kind: CopyKind | None
    data: bytes
    ext: str
    image_type: str | None = None  # synthetic photos: the synth kind
    params: dict[str, float] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.ext}"


def real_photos(max_side: int = 800, gray: bool = True) -> dict[str, Image.Image]:
    """The bundled real photographs as RGB, none longer than ``max_side``."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    def loaded(name: str) -> np.ndarray:
        pixels = getattr(data, name)()
        return pixels[0] if isinstance(pixels, tuple) else pixels  # stereo: the left view

    names = COLOUR_PHOTOS + (GRAY_PHOTOS if gray else ())
    arrays = {name: loaded(name) for name in names}
    samples = load_sample_images()
    for path, pixels in zip(samples.filenames, samples.images, strict=True):
        arrays[path.rsplit("/", 1)[-1].split(".")[0]] = pixels
    photos = {}
    for name, pixels in arrays.items():
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        photos[name] = image
    return photos


def tiles(photos: dict[str, Image.Image], grid: int = 2) -> dict[str, Image.Image]:
    """Each photo cut into ``grid`` x ``grid`` non-overlapping tiles: distinct content."""
    out = {}
    for name, image in photos.items():
        w, h = image.size
        for row in range(grid):
            for col in range(grid):
                box = (
                    col * w // grid,
                    row * h // grid,
                    (col + 1) * w // grid,
                    (row + 1) * h // grid,
                )
                out[f"{name}-{row}{col}"] = image.crop(box)
    return out


def encode_copy(image: Image.Image, fmt: Literal["PNG", "JPEG"], quality: int = 92) -> bytes:
    """A copy as stored: JPEG at ``quality``, PNG lossless."""
    return encode(image, fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def make_copy(
    image: Image.Image, kind: CopyKind, rng: np.random.Generator
) -> tuple[bytes, str, dict[str, float]]:
    """A copy of ``image``: resized to 50-90 %, re-encoded at JPEG q50-90, cropped by 2-5 % of
    each side's length (split unevenly between the two edges), mirrored, or a combination."""
    steps = kind.split("+")
    params: dict[str, float] = {}
    if "flipped" in steps:
        image = ImageOps.mirror(image)
        params["flipped"] = 1.0
    if "cropped" in steps:
        fraction = float(rng.uniform(0.02, 0.05))
        w, h = image.size
        cut_w, cut_h = round(w * fraction), round(h * fraction)
        left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
        image = image.crop((left, top, w - (cut_w - left), h - (cut_h - top)))
        params["crop"] = fraction
    if "resized" in steps:
        scale = float(rng.uniform(0.5, 0.9))
        w, h = image.size
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        params["scale"] = scale
    if "reencoded" in steps:
        quality = int(rng.integers(50, 91))
        params["quality"] = quality
        return encode_copy(image, "JPEG", quality), "jpg", params
    return encode_copy(image, "PNG"), "png", params


def copy_set(
    originals: dict[str, Image.Image],
    copies_per_photo: int = 4,
    kinds: Sequence[CopyKind] = COPY_KINDS,
    seed: int = 0,
    image_types: dict[str, str] | None = None,
) -> list[Photo]:
    """Every original (JPEG q92) plus ``copies_per_photo`` copies of it, the kinds dealt in
    turn across photos so each kind is made about equally often.

    Few copies per photo, as in real listings: the k-th nearest neighbour of a photo must
    still be a distinct photo for the near-duplicate threshold to calibrate.
    """
    rng = np.random.default_rng(seed)
    photos, turn = [], 0
    for family, image in sorted(originals.items()):
        image_type = (image_types or {}).get(family)
        photos.append(Photo(family, family, None, encode_copy(image, "JPEG"), "jpg", image_type))
        for number in range(copies_per_photo):
            kind = kinds[turn % len(kinds)]
            turn += 1
            data, ext, params = make_copy(image, kind, rng)
            name = f"{family}-copy{number}"
            photos.append(Photo(name, family, kind, data, ext, image_type, params))
    return photos


def held_out_copy_set(copies_per_photo: int = 4, seed: int = 0, grid: int = 2) -> list[Photo]:
    """Tiles of the bundled real photos and copies of them (see ``copy_set``)."""
    return copy_set(tiles(real_photos(), grid), copies_per_photo, seed=seed)


def synthetic_copy_set(
    per_type: int = 10,
    cities: int = 4,
    copies_per_photo: int = 2,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> list[Photo]:
    """Distinct synthetic listing photos (``housegan.synth``, every image type in every city)
    and copies of them; each photo carries its image type."""
    from housegan import synth

    rng = np.random.default_rng(seed)
    originals, types = {}, {}
    for city in synth.city_names(cities):
        for kind in synth.KINDS:
            for number in range(per_type):
                name = f"{city}-{kind}-{number}"
                originals[name] = synth.render(kind, city, rng, size)
                types[name] = kind
    return copy_set(originals, copies_per_photo, seed=seed, image_types=types)


# --- through the real curate stage ---------------------------------------------------------------


def write_photos(photos: Sequence[Photo], source: Path, city: str = "held-out") -> pd.DataFrame:
    """Write a copy set as a listing source (``<city>/<family>/<file>``); its truth per key."""
    rows = []
    for photo in photos:
        city_name = photo.family.split("-")[0] if photo.image_type else city
        key = f"{city_name}/{photo.family}/{photo.filename}"
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(photo.data)
        kind = photo.kind or "original"
        rows.append({"key": key, "family": photo.family, "kind": kind, "truth": photo.image_type})
    return pd.DataFrame(rows)


def curate_photos(
    photos: Sequence[Photo], root: Path, settings: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Ingest a copy set from a local folder and run the whole curate stage on it (no MLflow):
    the curated frame with the truth columns ``family``, ``kind`` and ``truth`` joined on."""
    from housegan import manifest
    from housegan.config import Settings
    from housegan.steps.curate import CurateInput, run_curate

    truth = write_photos(photos, root / "source")
    cfg = Settings.model_validate(
        {
            "source_uri": (root / "source").as_uri(),
            "store_uri": (root / "store").as_uri(),
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            **(settings or {}),
        }
    )
    ingested = ingest_source.run(IngestInput(cfg.source_uri, cfg.store_uri), cfg)
    result = run_curate(CurateInput.resolve(ingested.manifest_uri, cfg.store_uri), cfg, track=False)
    return manifest.read(result.curated_uri).merge(truth, on="key", how="left")


@dataclass(frozen=True)
class CopyReport:
    recall: pd.DataFrame  # per image type and copy kind: copies, caught, recall
    false_duplicates: pd.DataFrame  # per image type: distinct pairs, flagged, rate

    def text(self) -> str:
        return "\n".join(
            [
                "recall (copies grouped with their original):",
                self.recall.to_string(index=False, float_format="{:.3f}".format),
                "false duplicates (pairs of distinct photos grouped together):",
                self.false_duplicates.to_string(index=False, float_format="{:.4f}".format),
            ]
        )


def copy_report(curated: pd.DataFrame) -> CopyReport:
    """Recall per copy kind and false-duplicate rate over pairs of distinct photos.

    Near-duplicate groups are read from ``near_dup_of`` (a row without it heads its own group).
    A copy is caught when it is in its original's group; a pair of distinct photos is a false
    duplicate when any photo of one (original or copy) shares a group with any of the other.
    Image types are the truth's where there is one ("all" rows cover everything).
    """
    frame = curated[curated["family"].notna() & (curated["status"] == "ok")].copy()
    frame["group"] = frame["near_dup_of"].fillna(frame["key"])
    frame["truth"] = frame["truth"].fillna("photo")
    original = frame[frame["kind"] == "original"].set_index("family")["group"]
    copies = frame[frame["kind"] != "original"]
    caught = copies["group"].to_numpy() == original.reindex(copies["family"]).to_numpy()
    copies = copies.assign(caught=caught)
    recall = pd.concat(
        [
            copies.groupby(["truth", "kind"], as_index=False).agg(
                copies=("caught", "size"), caught=("caught", "sum")
            ),
            copies.groupby("kind", as_index=False)
            .agg(copies=("caught", "size"), caught=("caught", "sum"))
            .assign(truth="all"),
            pd.DataFrame(
                [{"truth": "all", "kind": "all", "copies": len(copies), "caught": caught.sum()}]
            ),
        ],
        ignore_index=True,
    )
    recall["recall"] = recall["caught"] / recall["copies"]
    recall = recall.rename(columns={"truth": "image_type"})
    return CopyReport(recall, _false_duplicates(frame))


def _false_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    type_of = frame.groupby("family")["truth"].first()
    groups = frame.groupby("family")["group"].agg(frozenset)
    families_of: dict[str, set[str]] = {}
    for family, members in groups.items():
        for group in members:
            families_of.setdefault(group, set()).add(family)
    flagged = {
        tuple(sorted(pair))
        for families in families_of.values()
        for pair in combinations(sorted(families), 2)
    }
    rows = []
    for image_type in [*sorted(type_of.unique()), "all"]:
        members = type_of.index if image_type == "all" else type_of.index[type_of == image_type]
        pairs = len(members) * (len(members) - 1) // 2
        inside = set(members)
        hits = sum(1 for a, b in flagged if a in inside and b in inside)
        rows.append(
            {
                "image_type": image_type,
                "photos": len(members),
                "pairs": pairs,
                "flagged": hits,
                "rate": hits / max(pairs, 1),
            }
        )
    return pd.DataFrame(rows)
