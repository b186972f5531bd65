"""For each generated image, the most similar real training photo: the "it is not a copy" check.

Both sides are embedded by the curation embedder (``housegan.embed``, the ``embed`` settings)
at the generator's resolution: real photos as packed for training (``housegan.gan.data``), so a
copy of a training image would score a cosine near 1. Vectors are centred on the training
set's mean before the cosine (random-init VGG16 features are nearly collinear otherwise), and
the search is exact, one block of training rows at a time.

The app's own, small version of the lookup: ``housegan.evaluate`` computes the same kind of
nearest neighbours for a whole evaluation; this module is the piece to swap for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from housegan import storage
from housegan.app.problems import NothingThereYet
from housegan.config import EmbedSettings


@dataclass(frozen=True)
class RealSet:
    """A packed training set with its embedder features (centred, unit rows)."""

    dataset_id: str
    images: np.ndarray  # uint8 [N, R, R, 3]
    city: np.ndarray  # codes into cities
    image_type: np.ndarray  # codes into image_types
    cities: list[str]
    image_types: list[str]
    mean: np.ndarray  # float32 [D]: subtracted before normalizing, both sides
    features: np.ndarray  # float32 [N, D], unit rows

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Match:
    index: int  # row of the training set
    cosine: float
    city: str
    image_type: str


def dataset_uri(store_uri: str, dataset_id: str) -> str:
    from housegan.gan.data import DATASETS_DIR

    return storage.join(storage.normalize_uri(store_uri), DATASETS_DIR, dataset_id)


def build_embedder(cfg: EmbedSettings) -> Any:
    """The curation embedder (a torch module), on CPU."""
    from housegan import embed

    return embed.build_model(cfg, "cpu")


def embed_images(
    model: Any, images: np.ndarray, cfg: EmbedSettings, batch_size: int = 64
) -> np.ndarray:
    """float32 ``[N, D]`` features of uint8 ``[N, R, R, 3]`` images, resized to the
    embedder's input size as curation resizes photos."""
    import torch
    import torchvision.transforms.functional as TF

    from housegan import embed

    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        resized = TF.resize(batch, [cfg.input_size, cfg.input_size], antialias=True)
        inputs = embed.to_model_input(resized, torch.device("cpu"))
        out.append(embed.embed_batch(model, inputs, cfg.bf16))
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.empty((0, dim), np.float32)


def unit_rows(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    centred = vectors.astype(np.float32) - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def load_real_set(
    store_uri: str,
    dataset_id: str,
    model: Any,
    cfg: EmbedSettings,
    storage_options: Mapping[str, Any] | None = None,
) -> RealSet:
    """The training set ``dataset_id`` from the store, embedded (minutes for ~10k photos on a
    CPU: callers cache it per dataset id)."""
    from housegan.gan.data import INFO_FILE, load_packed

    uri = dataset_uri(store_uri, dataset_id)
    if not storage.exists(storage.join(uri, INFO_FILE), storage_options):
        raise NothingThereYet(
            f"The training set {dataset_id} is not in the store ({uri}): nearest real photos "
            "cannot be shown for this model."
        )
    packed = load_packed(uri, storage_options)
    raw = embed_images(model, packed.images, cfg)
    mean = raw.mean(axis=0)
    return RealSet(
        dataset_id=packed.dataset_id,
        images=packed.images,
        city=packed.city,
        image_type=packed.image_type,
        cities=packed.cities,
        image_types=packed.image_types,
        mean=mean,
        features=unit_rows(raw, mean),
    )


def nearest(
    queries: np.ndarray, reference: np.ndarray, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-1 cosine of unit ``queries`` among unit ``reference`` rows: (index, cosine)."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(reference), block):
        scores = queries @ reference[start : start + block].T
        top = scores.argmax(axis=1)
        value = scores[np.arange(len(queries)), top]
        better = value > best
        best[better] = value[better]
        where[better] = top[better] + start
    return where, best


def nearest_real(model: Any, images: np.ndarray, real: RealSet, cfg: EmbedSettings) -> list[Match]:
    """The nearest training photo of each generated image."""
    queries = unit_rows(embed_images(model, images, cfg), real.mean)
    index, cosine = nearest(queries, real.features)
    return [
        Match(
            index=int(i),
            cosine=float(c),
            city=real.cities[int(real.city[i])],
            image_type=real.image_types[int(real.image_type[i])],
        )
        for i, c in zip(index, cosine, strict=True)
    ]
