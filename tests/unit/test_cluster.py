from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from housegan import cluster
from housegan.config import ClusterSettings
from housegan.testing.curation import collinear_blobs


def test_collinear_features_cluster_by_class_after_centring():
    vectors, truth = collinear_blobs(40, 5)
    cfg = ClusterSettings(pca_dim=16, k=5, k_range=(3, 6))
    projection = cluster.fit_projection(vectors, cfg.pca_dim, cfg.seed, cfg.pca_fit_rows)
    clusters = cluster.fit_clusters(projection.transform(vectors), cfg)
    ari = adjusted_rand_score(truth, clusters.labels)
    print(f"ARI on collinear blobs: {ari:.3f}")
    assert ari > 0.95
    assert max(clusters.silhouette, key=clusters.silhouette.get) == 5


def test_projection_fitted_on_sample_transforms_all_rows_in_chunks():
    vectors, _ = collinear_blobs(100, 3)
    projection = cluster.fit_projection(vectors, 8, seed=0, fit_rows=120)
    whole = projection.transform(vectors)
    chunked = projection.transform(vectors, chunk=7)
    assert whole.shape == (300, 8)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-5)


def test_minibatch_kmeans_is_used_above_the_configured_size():
    assert type(cluster.kmeans(np.zeros((100, 2)), 3, 0, minibatch_above=50)).__name__ == (
        "MiniBatchKMeans"
    )
    assert type(cluster.kmeans(np.zeros((10, 2)), 3, 0, minibatch_above=50)).__name__ == "KMeans"


def test_clustering_is_reproducible_for_a_seed():
    vectors, _ = collinear_blobs(30, 4, seed=3)
    cfg = ClusterSettings(pca_dim=8, k=4)
    reduced = cluster.fit_projection(vectors, 8, 0, 1000).transform(vectors)
    first = cluster.fit_clusters(reduced, cfg, report=False)
    second = cluster.fit_clusters(reduced, cfg, report=False)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_gallery_shows_nearest_members_first_then_random_ones():
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    distances = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5, 0.1])
    clusters = cluster.Clusters(labels, distances, np.zeros((2, 2)))
    rows = cluster.gallery_members(clusters, 0, nearest=2, random=2, seed=0)
    assert list(rows[:2]) == [1, 3]
    assert set(rows[2:]) <= {0, 2, 4} and len(rows) == 4


def test_cluster_mapping_names_types_and_leaves_others_unknown():
    types = cluster.types_from_clusters(np.array([0, 1, 2]), {0: "exterior", 2: "floorplan"})
    assert list(types) == ["exterior", "unknown", "floorplan"]


def test_cluster_mapping_to_unknown_type_is_rejected():
    with pytest.raises(ValueError, match="exterior"):
        ClusterSettings(cluster_to_type={0: "castle"})


def test_image_grid_places_every_tile():
    colours = ["red", "green", "blue", "yellow", "white"]
    images = [Image.new("RGB", (40, 20), c) for c in colours]
    grid = cluster.image_grid(images, captions=list(colours), ncols=2, tile=32, title="t")
    assert grid.size == (64, 16 + 3 * (32 + 12))
    assert grid.getpixel((16, 16 + 16)) == (255, 0, 0)
    assert grid.getpixel((16, 16 + 44 + 16)) == (0, 0, 255)
    assert grid.getpixel((32 + 16, 16 + 44 + 16)) == (255, 255, 0)


def test_cluster_run_round_trips_through_the_store(tmp_path):
    vectors, _ = collinear_blobs(10, 3)
    sha = np.array([f"s{i:03d}" for i in range(len(vectors))], dtype=object)
    cfg = ClusterSettings(pca_dim=4, k=3, k_range=(2, 3), gallery_nearest=2, gallery_random=1)

    def thumbnail(uri: str) -> Image.Image:
        return Image.new("RGB", (10, 10), "gray")

    result = cluster.cluster_embeddings(
        sha, vectors, {s: f"u/{s}" for s in sha}, tmp_path.as_uri(), cfg, thumbnail
    )
    frame, pca = cluster.read_clusters(result.uri)
    assert list(frame["sha256"]) == list(sha)
    assert pca.shape == (30, 4)
    assert sum(result.sizes.values()) == 30
    assert set(result.galleries) == {0, 1, 2}
    assert Image.open(result.galleries[0].removeprefix("file://")).width == 3 * cfg.thumb_size
