"""Training data: pack manifest rows into one uint8 array that is loaded whole onto the device.

``prepare`` decodes each photo, applies its EXIF orientation, center-crops and resizes it to
R×R and stores, under ``<store>/datasets/<dataset_id>/``:

- ``data.safetensors``: ``images`` uint8 [N, R, R, 3], ``city`` and ``image_type`` int64 [N];
- ``skipped.json``: rows that could not be decoded (uri and error), so none is lost silently;
- ``dataset.json``: id, size and the label vocabularies, written last (it marks completion).

The dataset id is a content hash of the rows (sha256 where the manifest has it, else uri),
their labels, R and ``images.DECODER_VERSION``, so preparing the same rows again is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from housegan import manifest, storage
from housegan.images import DECODER_VERSION, decode_rgb

TRAIN_COLUMNS = ("uri", "city", "image_type")
DATASETS_DIR = "datasets"
DATA_FILE = "data.safetensors"
INFO_FILE = "dataset.json"
SKIPPED_FILE = "skipped.json"
FORMAT = "housegan.gan.dataset/1"

Progress = Callable[[int, int], None]  # (rows done, rows total)


@dataclass(frozen=True)
class PreparedDataset:
    dataset_id: str
    uri: str  # the dataset folder
    n: int
    cities: list[str]
    image_types: list[str]
    skipped: int = 0


@dataclass(frozen=True)
class PackedDataset:
    dataset_id: str
    images: np.ndarray  # uint8 [N, R, R, 3]
    city: np.ndarray  # int64 [N], codes into cities
    image_type: np.ndarray  # int64 [N], codes into image_types
    cities: list[str]
    image_types: list[str]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def vocab(self) -> dict[str, list[str]]:
        return {"city": list(self.cities), "image_type": list(self.image_types)}

    def __len__(self) -> int:
        return int(self.images.shape[0])


def select_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The trainable rows: ``keep == True`` and ``status == "ok"`` where those columns exist."""
    missing = [c for c in TRAIN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; training needs {list(TRAIN_COLUMNS)}")
    mask = pd.Series(True, index=frame.index)
    if "keep" in frame.columns:
        mask &= frame["keep"].fillna(False).astype(bool)
    if "status" in frame.columns:
        mask &= frame["status"] == "ok"
    for column in TRAIN_COLUMNS:
        mask &= frame[column].notna()
    return frame.loc[mask].reset_index(drop=True)


def dataset_id(rows: pd.DataFrame, image_size: int) -> str:
    """Content hash of (sorted content key, city, image type) rows, R and the decoder version."""
    keys = _content_keys(rows)
    labels = zip(rows["city"].astype(str), rows["image_type"].astype(str), strict=True)
    triples = sorted((key, *pair) for key, pair in zip(keys, labels, strict=True))
    # The same rows decoded differently are another dataset.
    digest = hashlib.sha256(json.dumps([FORMAT, DECODER_VERSION, image_size, triples]).encode())
    return digest.hexdigest()[:16]


def prepare(
    manifest_uri: str,
    store_uri: str,
    image_size: int,
    storage_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    workers: int = 8,
    cities: Sequence[str] | None = None,
) -> PreparedDataset:
    """Pack the manifest's trainable rows (of ``cities`` only, when given) at R×R under the
    store; idempotent by dataset id."""
    frame = manifest.read(manifest.resolve(manifest_uri, storage_options), storage_options)
    rows = select_rows(frame)
    if cities:
        rows = rows[rows["city"].astype(str).isin(list(cities))]
    if rows.empty:
        only = f" of cities {sorted(cities)}" if cities else ""
        raise ValueError(
            f"{manifest_uri} has no trainable rows{only} (keep/status filters applied)"
        )
    rows = rows.assign(_key=_content_keys(rows)).sort_values(["_key", "uri"], kind="stable")
    ds_id = dataset_id(rows, image_size)
    folder = storage.join(storage.normalize_uri(store_uri), DATASETS_DIR, ds_id)
    if storage.exists(storage.join(folder, INFO_FILE), storage_options):
        return _prepared_from_info(folder, storage_options)

    uris = rows["uri"].tolist()
    images, errors = _decode_all(uris, image_size, storage_options, progress, workers)
    ok = np.ones(len(uris), dtype=bool)
    ok[list(errors)] = False
    if not ok.any():
        raise ValueError(f"none of the {len(uris)} images of {manifest_uri} could be decoded")
    kept = rows.loc[ok]
    cities = sorted(kept["city"].astype(str).unique())
    types = sorted(kept["image_type"].astype(str).unique())
    arrays = {
        "images": images[ok] if errors else images,
        "city": _codes(kept["city"], cities),
        "image_type": _codes(kept["image_type"], types),
    }
    skipped = [{"uri": uris[i], "error": error} for i, error in sorted(errors.items())]
    info = {
        "format": FORMAT,
        "dataset_id": ds_id,
        "image_size": image_size,
        "n": int(ok.sum()),
        "skipped": len(skipped),
        "vocab": {"city": cities, "image_type": types},
    }
    _write_dataset(folder, arrays, skipped, info, storage_options)
    return _prepared(folder, info)


def _decode_all(
    uris: list[str],
    image_size: int,
    storage_options: Mapping[str, Any] | None,
    progress: Progress | None,
    workers: int,
) -> tuple[np.ndarray, dict[int, str]]:
    """All photos decoded into one preallocated array; errors by row index (rows left zero)."""
    images = np.zeros((len(uris), image_size, image_size, 3), dtype=np.uint8)
    errors: dict[int, str] = {}

    def load(index: int) -> None:
        try:
            images[index] = load_image(storage.read_bytes(uris[index], storage_options), image_size)
        except Exception as error:  # one bad photo is recorded, never fatal
            errors[index] = f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(load, range(len(uris))), start=1):
            if progress:
                progress(done, len(uris))
    return images, errors


def load_packed(uri: str, storage_options: Mapping[str, Any] | None = None) -> PackedDataset:
    """Load a prepared dataset (its folder or its ``data.safetensors``) into memory."""
    from safetensors.numpy import load, load_file

    uri = storage.normalize_uri(uri)
    folder = uri.rsplit("/", 1)[0] if uri.endswith(DATA_FILE) else uri
    info = json.loads(storage.read_bytes(storage.join(folder, INFO_FILE), storage_options))
    data_uri = storage.join(folder, DATA_FILE)
    if storage.is_local(data_uri):
        arrays = load_file(storage.local_path(data_uri))
    else:
        arrays = load(storage.read_bytes(data_uri, storage_options))
    return PackedDataset(
        dataset_id=info["dataset_id"],
        images=arrays["images"],
        city=arrays["city"],
        image_type=arrays["image_type"],
        cities=list(info["vocab"]["city"]),
        image_types=list(info["vocab"]["image_type"]),
    )


def load_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode (``decode_rgb``), center-crop to a square and resize: uint8 [R, R, 3]."""
    image = decode_rgb(data)
    square = ImageOps.fit(image, (image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8)


def _content_keys(rows: pd.DataFrame) -> list[str]:
    if "sha256" in rows.columns:
        return [
            s if isinstance(s, str) and s else u
            for s, u in zip(rows["sha256"], rows["uri"], strict=True)
        ]
    return rows["uri"].astype(str).tolist()


def _codes(values: pd.Series, vocab: list[str]) -> np.ndarray:
    index = {name: code for code, name in enumerate(vocab)}
    return np.array([index[str(v)] for v in values], dtype=np.int64)


def _write_dataset(
    folder: str,
    arrays: dict[str, np.ndarray],
    skipped: list[dict[str, str]],
    info: dict[str, Any],
    storage_options: Mapping[str, Any] | None,
) -> None:
    from safetensors.numpy import save, save_file

    metadata = {"format": FORMAT, "dataset_id": info["dataset_id"]}
    data_uri = storage.join(folder, DATA_FILE)
    if storage.is_local(data_uri):  # straight to disk: no second in-memory copy of the images
        path = storage.local_path(data_uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file(arrays, partial, metadata=metadata)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    else:
        storage.write_bytes_atomic(data_uri, save(arrays, metadata=metadata), storage_options)
    storage.write_bytes_atomic(
        storage.join(folder, SKIPPED_FILE), json.dumps(skipped, indent=1).encode(), storage_options
    )
    # Written last: its presence means the dataset is complete.
    storage.write_bytes_atomic(
        storage.join(folder, INFO_FILE), json.dumps(info, indent=2).encode(), storage_options
    )


def _prepared_from_info(folder: str, storage_options: Mapping[str, Any] | None) -> PreparedDataset:
    info = json.loads(storage.read_bytes(storage.join(folder, INFO_FILE), storage_options))
    return _prepared(folder, info)


def _prepared(folder: str, info: Mapping[str, Any]) -> PreparedDataset:
    return PreparedDataset(
        dataset_id=info["dataset_id"],
        uri=folder,
        n=info["n"],
        cities=list(info["vocab"]["city"]),
        image_types=list(info["vocab"]["image_type"]),
        skipped=info["skipped"],
    )
