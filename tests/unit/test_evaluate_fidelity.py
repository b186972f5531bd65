"""FD, KID and precision/recall/density/coverage agree with the reference libraries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from housegan.evaluate import fidelity


@pytest.fixture(scope="module")
def sets() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((300, 24)) * np.linspace(0.5, 2, 24) + 3
    generated = rng.standard_normal((120, 24)) * 1.2 + 3.3
    return real.astype(np.float32), generated.astype(np.float32)


def _torch_fidelity_fd(generated: np.ndarray, real: np.ndarray) -> float:
    from torch_fidelity.metric_fid import (
        KEY_METRIC_FID,
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    stats = [fid_features_to_statistics(torch.from_numpy(x).double()) for x in (generated, real)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


@pytest.mark.parametrize("n_generated", [12, 120])  # fewer rows than dims, and more
def test_frechet_distance_equals_torch_fidelity(sets, n_generated) -> None:
    real, generated = sets
    generated = generated[:n_generated]
    ours = fidelity.frechet_distance(generated, fidelity.gaussian(real, block=64))
    assert ours == pytest.approx(_torch_fidelity_fd(generated, real), rel=1e-4)


def test_gaussian_of_parts_merged_equals_gaussian_of_all(sets) -> None:
    real, _ = sets
    merged = None
    for part in (real[:10], real[10:11], real[11:200], real[200:]):
        merged = fidelity.merge(merged, fidelity.gaussian(part))
    whole = fidelity.gaussian(real)
    np.testing.assert_allclose(merged.mean, whole.mean, atol=1e-6)
    np.testing.assert_allclose(merged.cov, np.cov(real.astype(np.float64), rowvar=False), atol=1e-4)
    assert merged.n == whole.n == len(real)


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_a_shift(sets) -> None:
    real, _ = sets
    stats = fidelity.gaussian(real)
    assert fidelity.frechet_distance(real, stats) == pytest.approx(0.0, abs=1e-3)
    assert fidelity.frechet_distance(real + 1.0, stats) == pytest.approx(24.0, rel=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_large_for_another(sets) -> None:
    real, generated = sets
    rng = np.random.default_rng(1)
    same = (rng.standard_normal((300, 24)) * np.linspace(0.5, 2, 24) + 3).astype(np.float32)
    near, near_std = fidelity.kid(same - 3, real - 3, subsets=20, subset_size=100)
    far, _ = fidelity.kid(generated - 3 + 2, real - 3, subsets=20, subset_size=100)
    assert abs(near) < 3 * near_std + 0.05
    assert far > 10 * abs(near)


@pytest.mark.parametrize("k", [3, 5])
def test_blockwise_prdc_equals_the_prdc_package(sets, k) -> None:
    from prdc import compute_prdc

    real, generated = sets
    expected = compute_prdc(real_features=real, fake_features=generated, nearest_k=k)
    ours = fidelity.prdc(real, generated, pr_k=k, dc_k=k, center=real.mean(0), memory_bytes=200_000)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(expected[name], abs=1e-9), name


def test_prdc_of_noise_against_real_is_near_zero(sets) -> None:
    real, _ = sets
    noise = np.random.default_rng(2).uniform(-40, 40, (100, 24)).astype(np.float32)
    scores = fidelity.prdc(real, noise)
    assert scores.precision < 0.05 and scores.density < 0.05 and scores.coverage < 0.05


def test_metrics_leave_the_callers_float32_features_untouched(sets) -> None:
    real, generated = sets
    before = real.copy(), generated.copy()
    fidelity.frechet_distance(generated, fidelity.gaussian(real, block=50))
    fidelity.prdc(real, generated, center=real.mean(0))
    np.testing.assert_array_equal(real, before[0])
    np.testing.assert_array_equal(generated, before[1])


def test_spread_is_zero_for_one_image_repeated_and_grows_with_variety() -> None:
    rng = np.random.default_rng(1)
    one = np.tile(rng.standard_normal(32), (50, 1))
    assert fidelity.spread(one) == pytest.approx(0.0, abs=1e-9)
    assert fidelity.spread(rng.standard_normal((50, 32))) == pytest.approx(1.0, abs=0.05)
    assert fidelity.spread(one[:1]) is None


def test_diversity_ratio_flags_a_collapsed_class_and_passes_a_varied_one() -> None:
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((2, 64)) * 3
    real = np.concatenate([c + rng.standard_normal((80, 64)) for c in centers])
    real_cells = np.repeat([0, 1], 80)
    varied = centers[0] + rng.standard_normal((40, 64))
    collapsed = np.tile(centers[1] + rng.standard_normal(64), (40, 1))
    collapsed += 0.01 * rng.standard_normal(collapsed.shape)
    generated = np.concatenate([varied, collapsed])
    ratios = fidelity.diversity_ratio(
        generated, np.repeat([0, 1], 40), real, real_cells, real.mean(0)
    )
    assert 0.85 < ratios[0] < 1.15
    assert ratios[1] < 0.05
