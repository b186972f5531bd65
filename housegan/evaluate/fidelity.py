"""Fidelity and diversity on embedder features: Fréchet distance, KID, precision/recall
(k-NN manifolds, Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Features are the curation embedder's (no Inception weights can be downloaded here). The k-NN
metrics centre them on the real mean first: distances do not change, but their float32
expansion loses less (random-init VGG16 vectors share one large direction).

- KID is torch-fidelity's unbiased estimator (``kid_features_to_metric``).
- FD is computed here, with the same formula as torch-fidelity's ``fid_statistics_to_metric``
  (the tests compare them), but through symmetric eigenvalue problems: at 4096-d torch-fidelity's
  general ``eigvals`` takes tens of seconds per call, and a per-city FD makes a dozen calls. The
  real statistics are accumulated in blocks, so 200k x 4096 never becomes float64 at once.
- Precision, recall, density and coverage use the blockwise exact k-NN for the radii and
  count over distance blocks, so no N x M matrix exists (``prdc`` builds three; the tests compare
  against it on small inputs). FD is biased at small N; KID is not, which is why both are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from housegan.evaluate.knn import distance_blocks, knn


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance (float64, ``np.cov``'s n-1 normalization) of features."""

    mean: np.ndarray
    cov: np.ndarray
    n: int


def gaussian(features: np.ndarray, block: int = 8192, device: str = "cpu") -> Gaussian:
    """Mean and covariance of ``features``, accumulated ``block`` rows at a time."""
    n, dim = features.shape
    if n < 1:
        raise ValueError("a mean needs at least 1 row, got none")
    target = torch.device(device)
    mean = torch.as_tensor(np.mean(features, axis=0, dtype=np.float64), device=target)
    scatter = torch.zeros((dim, dim), dtype=torch.float32, device=target)
    mean32 = mean.float()
    for start in range(0, n, block):
        rows = torch.as_tensor(features[start : start + block])
        rows = rows.to(target, torch.float32, copy=True).sub_(mean32)  # centred: no cancellation
        scatter.addmm_(rows.T, rows)
    cov = scatter.double().div_(max(n - 1, 1))
    return Gaussian(mean.cpu().numpy(), cov.cpu().numpy(), n)


def merge(a: Gaussian | None, b: Gaussian) -> Gaussian:
    """The Gaussian of the union of two disjoint row sets, from theirs (Chan et al.'s update):
    one pass over the rows serves the per-city statistics and the overall ones."""
    if a is None:
        return b
    n = a.n + b.n
    shift = b.mean - a.mean
    scatter = max(a.n - 1, 0) * a.cov + max(b.n - 1, 0) * b.cov
    scatter += np.outer(shift, shift) * (a.n * b.n / n)
    return Gaussian(a.mean + shift * (b.n / n), scatter / max(n - 1, 1), n)


def frechet_distance(generated: np.ndarray, real: Gaussian) -> float:
    """``|mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr sqrt(S_g S_r)``.

    With fewer generated rows than dimensions, ``S_g = A^T A`` (A: centred rows / sqrt(n-1)) and
    the non-zero eigenvalues of ``S_g S_r`` are those of ``A S_r A^T`` (n x n, symmetric);
    otherwise those of ``sqrt(S_r) S_g sqrt(S_r)`` (d x d, symmetric). Both are exact.
    """
    gen = np.asarray(generated, dtype=np.float64)
    n, dim = gen.shape
    if n < 2:
        raise ValueError(f"FD needs at least 2 generated rows, got {n}")
    mean = gen.mean(axis=0)
    centred = (gen - mean) / np.sqrt(n - 1)
    if n <= dim:
        product = centred @ real.cov @ centred.T
    else:
        values, vectors = np.linalg.eigh(real.cov)
        root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        product = root @ (centred.T @ centred) @ root
    eig = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mean - real.mean
    trace_gen = float(np.square(centred).sum())
    fd = float(diff @ diff + trace_gen + np.trace(real.cov) - 2 * trace_sqrt)
    return max(fd, 0.0)  # identical sets can round to -1e-16


def kid(
    generated: np.ndarray,
    real: np.ndarray,
    subsets: int,
    subset_size: int,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased KID over ``subsets`` random subsets (torch-fidelity)."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(subset_size, len(generated), len(real))
    if size < 2:
        raise ValueError(f"KID needs at least 2 rows a side, got {len(generated)} and {len(real)}")
    out = kid_features_to_metric(
        torch.as_tensor(np.asarray(generated, dtype=np.float32)),
        torch.as_tensor(np.asarray(real, dtype=np.float32)),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def _kth_distances(
    rows: np.ndarray, k: int, center: np.ndarray | None, memory_bytes: float, device: str
) -> np.ndarray:
    """Per row, the distance to its k-th nearest other row ([n, k], nearest first)."""
    found = knn(
        rows,
        rows,
        k,
        metric="euclidean",
        center=center,
        exclude=np.arange(len(rows)),
        memory_bytes=memory_bytes,
        device=device,
    )
    return found.values


def prdc(
    real: np.ndarray,
    generated: np.ndarray,
    pr_k: int = 3,
    dc_k: int = 5,
    center: np.ndarray | None = None,
    memory_bytes: float = 2**30,
    device: str = "cpu",
) -> PRDC:
    """Precision/recall with ``pr_k``-NN balls, density/coverage with ``dc_k``-NN balls."""
    if len(real) <= max(pr_k, dc_k) or len(generated) <= pr_k:
        raise ValueError(
            f"precision/recall/density/coverage need more than k={max(pr_k, dc_k)} rows a side; "
            f"got {len(real)} real and {len(generated)} generated"
        )
    real_radii = _kth_distances(real, max(pr_k, dc_k), center, memory_bytes, device)
    real_pr = torch.as_tensor(real_radii[:, pr_k - 1], device=device)
    real_dc = torch.as_tensor(real_radii[:, dc_k - 1], device=device)
    gen_pr = torch.as_tensor(
        _kth_distances(generated, pr_k, center, memory_bytes, device)[:, pr_k - 1], device=device
    )
    in_real = torch.zeros(len(generated), dtype=torch.bool, device=device)
    in_gen = torch.zeros(len(real), dtype=torch.bool, device=device)
    density = torch.zeros((), dtype=torch.float64, device=device)
    nearest_gen = torch.full((len(real),), float("inf"), device=device)
    # a: generated rows, b: real rows; comparisons are strict, as in prdc.
    for rows, cols, dist in distance_blocks(
        generated, real, center=center, memory_bytes=memory_bytes, device=device
    ):
        in_real[rows] |= (dist < real_pr[cols]).any(dim=1)
        in_gen[cols] |= (dist < gen_pr[rows, None]).any(dim=0)
        density += (dist < real_dc[cols]).sum(dtype=torch.float64)
        nearest_gen[cols] = torch.minimum(nearest_gen[cols], dist.min(dim=0).values)
    return PRDC(
        precision=int(in_real.sum()) / len(generated),
        recall=int(in_gen.sum()) / len(real),
        density=float(density) / (dc_k * len(generated)),
        coverage=int((nearest_gen < real_dc).sum()) / len(real),
    )


def spread(features: np.ndarray, center: np.ndarray | None = None) -> float | None:
    """Mean cosine distance between all pairs of rows (centred on ``center`` first), in O(n d):
    for unit vectors, ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - n``. ``None`` below 2 rows."""
    n = len(features)
    if n < 2:
        return None
    rows = features.astype(np.float64) - (0.0 if center is None else center)
    units = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    mean_cosine = (np.square(units.sum(axis=0)).sum() - n) / (n * (n - 1))
    return float(1.0 - mean_cosine)


def diversity_ratio(
    generated: np.ndarray,
    generated_cells: np.ndarray,
    real: np.ndarray,
    real_cells: np.ndarray,
    center: np.ndarray | None = None,
) -> dict[int, float]:
    """Per cell: the generated images' ``spread`` over the real images' (1 = as varied as the
    photos of that cell; a collapsed class tends to 0). Cells with < 2 rows on a side are left
    out."""
    ratios = {}
    for cell in np.unique(generated_cells):
        made = spread(generated[generated_cells == cell], center)
        seen = spread(real[real_cells == cell], center)
        if made is not None and seen:
            ratios[int(cell)] = made / seen
    return ratios
