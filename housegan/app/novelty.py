"""For each generated image, the most similar real training photo: the "it is not a copy" check.

The same lookup the evaluation makes (``housegan.evaluate``): both sides embedded by the
curation embedder at the generator's resolution (``evaluate.sampling.Embedder``), real features
of the packed training set read from (or written to) the evaluation's feature cache under
``<store>/evaluations/features/``, centred on the training set's mean and searched exactly and
blockwise (``evaluate.knn``). So the cosine shown here is the one the evaluation compares with
its calibrated copy threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from housegan import storage
from housegan.app.problems import NothingThereYet
from housegan.config import EmbedSettings, EvaluateSettings


@dataclass(frozen=True)
class RealSet:
    """A packed training set with its embedder features (``evaluate.sampling.Sample``)."""

    dataset_id: str
    sample: Any  # housegan.evaluate.sampling.Sample: images, labels, float16 features
    center: np.ndarray  # float32 [D]: subtracted from both sides before the cosine

    @property
    def images(self) -> np.ndarray:
        return self.sample.images

    def __len__(self) -> int:
        return len(self.sample)


@dataclass(frozen=True)
class Match:
    index: int  # row of the training set
    cosine: float
    city: str
    image_type: str


def dataset_uri(store_uri: str, dataset_id: str) -> str:
    from housegan.gan.data import DATASETS_DIR

    return storage.join(storage.normalize_uri(store_uri), DATASETS_DIR, dataset_id)


def build_embedder(cfg: EmbedSettings, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The curation embedder on the CPU (``evaluate.sampling.Embedder``)."""
    from housegan.evaluate.sampling import Embedder

    return Embedder(cfg, "cpu", storage_options)


def load_real_set(
    store_uri: str,
    dataset_id: str,
    embedder: Any,
    cache: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> RealSet:
    """The training set ``dataset_id`` with its features: from the evaluation's cache when an
    evaluation (or this app) embedded it before, else embedded now (and cached if ``cache``)."""
    from housegan.evaluate.novelty import real_mean
    from housegan.evaluate.sampling import real_sample
    from housegan.gan.data import INFO_FILE, load_packed

    uri = dataset_uri(store_uri, dataset_id)
    if not storage.exists(storage.join(uri, INFO_FILE), storage_options):
        raise NothingThereYet(
            f"The training set {dataset_id} is not in the store ({uri}): nearest real photos "
            "cannot be shown for this model."
        )
    packed = load_packed(uri, storage_options)
    sample = real_sample(packed, embedder, store_uri if cache else None, storage_options)
    return RealSet(dataset_id, sample, real_mean(sample.features))


def nearest_real(
    embedder: Any, images: np.ndarray, real: RealSet, cfg: EvaluateSettings
) -> list[Match]:
    """The nearest training photo of each generated image, searched as the evaluation does."""
    from housegan.evaluate.knn import knn

    found = knn(
        embedder(images),
        real.sample.features,
        1,
        metric="cosine",
        center=real.center,
        memory_bytes=cfg.knn_memory_mb * 2**20,
        precision=cfg.knn_precision,
        rerank=cfg.knn_rerank,
    )
    sample = real.sample
    return [
        Match(
            index=int(i),
            cosine=float(c),
            city=sample.cities[int(sample.city[i])],
            image_type=sample.image_types[int(sample.image_type[i])],
        )
        for i, c in zip(found.indices[:, 0], found.values[:, 0], strict=True)
    ]
