"""The evaluation samples: generated images per (city, type) cell and the real reference, both
embedded by the curation embedder.

Every model is drawn with the same evaluation seed, so image ``i`` of a cell has the same latent
whichever model draws it (``serving.latents``): two evaluations differ only by the models.
Generated and real images go through one path, uint8 R x R -> resized to the embedder's input
-> VGG16 features, so neither side gets an advantage from its own preprocessing. Real features
are cached per (dataset id, embedder tag): a dataset is immutable, and so are its features.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from housegan import embed, storage
from housegan.config import EmbedSettings
from housegan.devices import resolve_device
from housegan.gan.data import PackedDataset

# (city, image_type, seed, n) -> uint8 [n, R, R, 3]; image i depends only on (seed, i).
ImageSource = Callable[[str, str, int, int], np.ndarray]
# (phase name, total) -> a callable taking the number of items just finished (tqdm's update).
ProgressFactory = Callable[[str, int], Callable[[int], Any]]

FEATURES_DIR = "evaluations/features"
FEATURES_FORMAT = "housegan.evaluate.features/1"


@dataclass(frozen=True)
class Sample:
    """Images with their labels (codes into ``cities``/``image_types``) and features."""

    images: np.ndarray  # uint8 [n, R, R, 3]
    city: np.ndarray  # int64 [n]
    image_type: np.ndarray  # int64 [n]
    cities: list[str]
    image_types: list[str]
    features: np.ndarray  # float16 [n, dim]

    def __len__(self) -> int:
        return len(self.images)

    def cell_of(self) -> np.ndarray:
        """Per row, the cell ``city * len(image_types) + image_type``."""
        return self.city * len(self.image_types) + self.image_type


def cells(
    model_vocab: Mapping[str, Sequence[str]], dataset: PackedDataset
) -> list[tuple[str, str]]:
    """The (city, type) cells both the model and the real data know, in the dataset's order."""
    model_cities, model_types = set(model_vocab["city"]), set(model_vocab["image_type"])
    found = [
        (city, image_type)
        for city in dataset.cities
        for image_type in dataset.image_types
        if city in model_cities and image_type in model_types
    ]
    if not found:
        raise ValueError(
            f"the model ({sorted(model_cities)} x {sorted(model_types)}) and the dataset "
            f"{dataset.dataset_id} ({dataset.cities} x {dataset.image_types}) share no cell"
        )
    return found


def generator_source(model: Any, batch_size: int = 64) -> ImageSource:
    """An ``ImageSource`` drawing from a ``serving.LoadedGenerator``."""
    from housegan.gan import serving

    def draw(city: str, image_type: str, seed: int, n: int) -> np.ndarray:
        return serving.generate(model, city, image_type, seed, n, batch_size=batch_size)

    return draw


class Embedder:
    """The curation embedder (same settings, same model tag) applied to uint8 images."""

    def __init__(
        self,
        cfg: EmbedSettings,
        device: str = "cpu",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tag = embed.model_tag(cfg, storage_options)
        self.device = resolve_device(device)
        self.model = embed.build_model(cfg, str(self.device), storage_options)

    @property
    def dim(self) -> int:
        return embed.LAYER_DIMS[self.cfg.layer]

    def __call__(
        self, images: np.ndarray, progress: Callable[[int], Any] | None = None
    ) -> np.ndarray:
        """float16 ``[n, dim]`` features of uint8 ``[n, R, R, 3]`` images."""
        out = np.empty((len(images), self.dim), dtype=np.float16)
        size = [self.cfg.input_size, self.cfg.input_size]
        for start in range(0, len(images), self.cfg.batch_size):
            batch = torch.from_numpy(images[start : start + self.cfg.batch_size]).permute(
                0, 3, 1, 2
            )
            pixels = TF.resize(batch.contiguous(), size, antialias=True)
            model_input = embed.to_model_input(pixels, self.device)
            vectors = embed.embed_batch(self.model, model_input, self.cfg.bf16)
            out[start : start + len(batch)] = vectors.astype(np.float16)
            if progress is not None:
                progress(len(batch))
        return out


def _phase(progress: ProgressFactory | None, name: str, total: int) -> Callable[[int], Any] | None:
    return None if progress is None else progress(name, total)


def draw_cells(
    source: ImageSource,
    cell_list: Sequence[tuple[str, str]],
    dataset: PackedDataset,
    per_cell: int,
    seed: int,
    embedder: Embedder,
    progress: ProgressFactory | None = None,
) -> Sample:
    """``per_cell`` images of every cell from ``seed``, embedded; labels coded as the dataset's."""
    update = _phase(progress, "generate+embed", per_cell * len(cell_list))
    images, features, city, image_type = [], [], [], []
    for name, kind in cell_list:
        drawn = np.asarray(source(name, kind, seed, per_cell), dtype=np.uint8)
        if drawn.shape[0] != per_cell or drawn.ndim != 4 or drawn.shape[3] != 3:
            raise ValueError(f"{name} x {kind}: expected {per_cell} RGB images, got {drawn.shape}")
        images.append(drawn)
        features.append(embedder(drawn, update))
        city.append(np.full(per_cell, dataset.cities.index(name), dtype=np.int64))
        image_type.append(np.full(per_cell, dataset.image_types.index(kind), dtype=np.int64))
    return Sample(
        images=_stack_images(images),
        city=np.concatenate(city),
        image_type=np.concatenate(image_type),
        cities=list(dataset.cities),
        image_types=list(dataset.image_types),
        features=np.concatenate(features),
    )


def _stack_images(images: list[np.ndarray]) -> np.ndarray:
    """One array even when models of different R are mixed (resized to the largest)."""
    side = max(batch.shape[1] for batch in images)
    same = [batch if batch.shape[1] == side else _resize(batch, side) for batch in images]
    return np.concatenate(same)


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return TF.resize(tensor, [side, side], antialias=True).permute(0, 2, 3, 1).numpy()


def features_uri(store_uri: str, tag: str, dataset_id: str) -> str:
    """``<store>/evaluations/features/<tag>/<dataset id>.safetensors``."""
    root = storage.normalize_uri(store_uri)
    return storage.join(root, FEATURES_DIR, tag, f"{dataset_id}.safetensors")


def real_sample(
    dataset: PackedDataset,
    embedder: Embedder,
    store_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressFactory | None = None,
) -> Sample:
    """The packed training set, embedded (read from the cache under ``store_uri`` when there)."""
    uri = None if store_uri is None else features_uri(store_uri, embedder.tag, dataset.dataset_id)
    vectors = _read_cached(uri, len(dataset), embedder.dim, storage_options)
    if vectors is None:
        vectors = embedder(dataset.images, _phase(progress, "embed real", len(dataset)))
        if uri is not None:
            _write_cached(uri, vectors, dataset.dataset_id, embedder.tag, storage_options)
    return Sample(
        images=dataset.images,
        city=np.asarray(dataset.city, dtype=np.int64),
        image_type=np.asarray(dataset.image_type, dtype=np.int64),
        cities=list(dataset.cities),
        image_types=list(dataset.image_types),
        features=vectors,
    )


def _read_cached(
    uri: str | None, n: int, dim: int, storage_options: Mapping[str, Any] | None
) -> np.ndarray | None:
    from safetensors.numpy import load, load_file

    if uri is None or not storage.exists(uri, storage_options):
        return None
    if storage.is_local(uri):  # straight from disk: no second in-memory copy (1.6 GB at 200k)
        vectors = load_file(storage.local_path(uri))["features"]
    else:
        vectors = load(storage.read_bytes(uri, storage_options))["features"]
    # A cache of another shape is stale (it cannot be: ids are content hashes); recompute.
    return vectors if vectors.shape == (n, dim) else None


def _write_cached(
    uri: str,
    vectors: np.ndarray,
    dataset_id: str,
    tag: str,
    storage_options: Mapping[str, Any] | None,
) -> None:
    from safetensors.numpy import save, save_file

    metadata = {"format": FEATURES_FORMAT, "dataset_id": dataset_id, "model_tag": tag}
    tensors = {"features": np.ascontiguousarray(vectors)}
    if not storage.is_local(uri):
        storage.write_bytes_atomic(uri, save(tensors, metadata=metadata), storage_options)
        return
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:  # renamed into place whole: a crash never leaves half a cache
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
