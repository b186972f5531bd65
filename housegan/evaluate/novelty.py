"""Does the generator copy its training photos?

For every generated image, the exact nearest training image by cosine similarity of centred
features (random-init VGG16 vectors are nearly collinear: without centring, every pair scores
~0.98). Two verdicts per image:

- **copy**: its similarity exceeds a threshold calibrated on real photos: the
  ``copy_percentile`` of the nearest-neighbour similarity of held-out training photos to the
  rest of the training set (how close a *new* real photo gets by chance). A model as novel as
  fresh photos therefore scores a copy rate near ``1 - percentile/100``; a memorizer near 1.
- **unauthentic** (Alaa et al. 2022, "How Faithful is your Synthetic Data?"): it is closer to its
  nearest training image than that image is to its own nearest other training image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from housegan.config import EvaluateSettings
from housegan.evaluate.knn import Neighbours, knn

ThresholdSource = Literal["calibrated", "fixed"]


@dataclass(frozen=True)
class Split:
    """Row indices of the real set: held out (calibration, classifier tests) and the rest."""

    holdout: np.ndarray
    rest: np.ndarray


@dataclass(frozen=True)
class Novelty:
    threshold: float
    threshold_source: ThresholdSource
    nn_cosine: np.ndarray  # float32 [n_generated]: cosine to the nearest training image
    nn_index: np.ndarray  # int64 [n_generated]: which training image
    real_nn_cosine: np.ndarray  # float32 [n_generated]: that image's cosine to its own nearest
    holdout_cosine: np.ndarray  # float32 [n_holdout]: the calibration sample

    @property
    def copies(self) -> np.ndarray:
        return self.nn_cosine > self.threshold

    @property
    def authentic(self) -> np.ndarray:
        return self.nn_cosine < self.real_nn_cosine

    @property
    def copy_rate(self) -> float:
        return float(self.copies.mean()) if len(self.copies) else float("nan")

    @property
    def authenticity(self) -> float:
        return float(self.authentic.mean()) if len(self.authentic) else float("nan")


def split(n_real: int, cfg: EvaluateSettings) -> Split:
    """A seeded held-out share of the real rows (at least 1, leaving at least 2 behind)."""
    if n_real < 3:
        raise ValueError(f"evaluation needs at least 3 real images, the dataset has {n_real}")
    size = round(cfg.holdout_fraction * n_real)
    size = max(1, min(size, cfg.holdout_max, n_real - 2))
    order = np.random.default_rng(cfg.split_seed).permutation(n_real)
    return Split(holdout=np.sort(order[:size]), rest=np.sort(order[size:]))


def real_mean(real: np.ndarray) -> np.ndarray:
    """The centre subtracted before every cosine (float32)."""
    return np.mean(real, axis=0, dtype=np.float64).astype(np.float32)


def _search(
    queries: np.ndarray,
    keys: np.ndarray,
    center: np.ndarray,
    cfg: EvaluateSettings,
    device: str,
    exclude: np.ndarray | None = None,
    key_rows: np.ndarray | None = None,
) -> Neighbours:
    return knn(
        queries,
        keys,
        1,
        metric="cosine",
        center=center,
        exclude=exclude,
        key_rows=key_rows,
        memory_bytes=cfg.knn_memory_mb * 2**20,
        precision=cfg.knn_precision,
        rerank=cfg.knn_rerank,
        device=device,
    )


def calibrate(
    real: np.ndarray, rows: Split, center: np.ndarray, cfg: EvaluateSettings, device: str = "cpu"
) -> tuple[float, ThresholdSource, np.ndarray]:
    """(threshold, how it was set, the held-out photos' nearest-neighbour cosines)."""
    found = _search(real[rows.holdout], real, center, cfg, device, key_rows=rows.rest)
    holdout_cosine = found.values[:, 0]
    if cfg.copy_threshold is not None:
        return float(cfg.copy_threshold), "fixed", holdout_cosine
    return float(np.percentile(holdout_cosine, cfg.copy_percentile)), "calibrated", holdout_cosine


def novelty(
    generated: np.ndarray,
    real: np.ndarray,
    rows: Split,
    cfg: EvaluateSettings,
    device: str = "cpu",
    center: np.ndarray | None = None,
) -> Novelty:
    """Nearest training image of every generated one, copy and authenticity verdicts."""
    center = real_mean(real) if center is None else center
    threshold, source, holdout_cosine = calibrate(real, rows, center, cfg, device)
    nearest = _search(generated, real, center, cfg, device)
    nn_index = nearest.indices[:, 0]
    matched, inverse = np.unique(nn_index, return_inverse=True)
    # Only the matched training images need their own nearest neighbour (<= n_generated).
    own = _search(real[matched], real, center, cfg, device, exclude=matched)
    return Novelty(
        threshold=threshold,
        threshold_source=source,
        nn_cosine=nearest.values[:, 0],
        nn_index=nn_index,
        real_nn_cosine=own.values[inverse, 0],
        holdout_cosine=holdout_cosine,
    )


def closest_pairs(novel: Novelty, members: np.ndarray, k: int) -> np.ndarray:
    """Of the generated rows ``members``, the ``k`` most similar to their training image."""
    if k <= 0 or len(members) == 0:
        return members[:0]
    order = np.argsort(-novel.nn_cosine[members], kind="stable")[:k]
    return members[order]
