"""Blockwise exact k-NN: equal to brute force, and its working set stays within the budget."""

from __future__ import annotations

import numpy as np
import pytest
from torch.profiler import ProfilerActivity, profile

from housegan.evaluate.knn import distance_blocks, knn, plan_blocks


def _brute(queries, keys, k, metric, center, exclude=None):
    q = queries.astype(np.float64) - center
    kk = keys.astype(np.float64) - center
    if metric == "cosine":
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        kk /= np.linalg.norm(kk, axis=1, keepdims=True)
        score = q @ kk.T
    else:
        square = (q**2).sum(1)[:, None] + (kk**2).sum(1)[None] - 2 * q @ kk.T
        score = -np.sqrt(np.maximum(square, 0))  # float64: exact enough for a reference
    if exclude is not None:
        score[np.arange(len(q)), exclude] = -np.inf
    index = np.argsort(-score, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(score, index, 1)
    return (values if metric == "cosine" else -values), index


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 vectors sharing a large common direction, like random-init VGG16 features."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(48) * 4
    queries = (shared + rng.standard_normal((150, 48))).astype(np.float16)
    keys = (shared + rng.standard_normal((1200, 48))).astype(np.float16)
    return queries, keys, keys.astype(np.float32).mean(axis=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_blockwise_search_equals_brute_force(features, metric, precision) -> None:
    queries, keys, center = features
    budget = 150_000 if precision == "float32" else 450_000  # bf16 keeps 16 more candidates
    found = knn(
        queries, keys, 3, metric=metric, center=center, memory_bytes=budget, precision=precision
    )
    values, index = _brute(queries, keys, 3, metric, center)
    assert found.blocks.queries < len(queries) and found.blocks.keys < len(keys)  # really blocked
    np.testing.assert_array_equal(found.indices, index)
    np.testing.assert_allclose(found.values, values, atol=2e-5)


def test_a_query_never_matches_the_key_it_excludes(features) -> None:
    _, keys, center = features
    own = np.arange(200)
    found = knn(
        keys[:200], keys, 2, metric="euclidean", center=center, exclude=own, memory_bytes=150_000
    )
    values, index = _brute(keys[:200], keys, 2, "euclidean", center, exclude=own)
    assert not np.any(found.indices == own[:, None])
    np.testing.assert_array_equal(found.indices, index)
    np.testing.assert_allclose(found.values, values, atol=2e-5)


def _peak_torch_bytes(fn) -> int:
    """Peak of the bytes torch allocated while ``fn`` ran (its own memory accounting)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_search_stays_within_its_memory_budget_not_the_full_matrix(precision) -> None:
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((400, 128)).astype(np.float16)
    keys = rng.standard_normal((20_000, 128)).astype(np.float16)
    budget = 2 * 2**20
    full_matrix = len(queries) * len(keys) * 4
    result = {}

    def search() -> None:
        result["found"] = knn(queries, keys, 1, memory_bytes=budget, precision=precision)

    peak = _peak_torch_bytes(search)
    blocks = result["found"].blocks
    assert blocks.queries * blocks.keys * 4 < budget
    assert peak <= budget < full_matrix / 3
    assert result["found"].indices.shape == (400, 1)


def test_block_plan_for_the_full_size_search_fits_one_gibibyte() -> None:
    blocks = plan_blocks(10_000, 200_000, 4096, 17, 2**30, "bfloat16")
    working = (blocks.queries + blocks.keys) * 4096 * 6 + blocks.queries * blocks.keys * 6
    assert working < 2**30
    assert blocks.queries >= 1024 and blocks.keys >= 1024  # big enough for a fast torch.mm


def test_too_small_a_budget_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="knn_memory_mb"):
        plan_blocks(10, 100, 4096, 1, 1000)


def test_distance_blocks_tile_the_whole_distance_matrix(features) -> None:
    queries, keys, center = features
    q, k = queries.astype(np.float64), keys.astype(np.float64)
    expected = np.sqrt(np.maximum((q**2).sum(1)[:, None] + (k**2).sum(1) - 2 * q @ k.T, 0))
    got = np.full(expected.shape, np.nan)
    for rows, cols, block in distance_blocks(queries, keys, center=center, memory_bytes=150_000):
        got[rows, cols] = block.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_searching_some_key_rows_equals_searching_a_copy_of_them(features) -> None:
    queries, keys, center = features
    rows = np.arange(0, len(keys), 3)
    found = knn(queries, keys, 2, center=center, key_rows=rows, memory_bytes=150_000)
    copied = knn(queries, keys[rows], 2, center=center, memory_bytes=150_000)
    np.testing.assert_array_equal(found.indices, copied.indices)
    np.testing.assert_array_equal(found.values, copied.values)
