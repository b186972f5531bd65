"""Image-type clusters over embeddings: projection, k-means, silhouette report, galleries.

Random-init VGG16 features are nearly collinear (cosine 0.97-0.99 between unrelated photos),
so every vector is L2-normalized and the mean is subtracted before PCA; the same projection
serves clustering, the type classifier and the k-NN searches of the filtering funnel.

The cluster step stores one Parquet per run under ``<store>/clusters/``: per content hash the
cluster id, distance to its centroid and the PCA coordinates, plus a labelled gallery PNG per
cluster next to it, so a person can name clusters (``ClusterSettings.cluster_to_type``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from housegan import manifest, storage
from housegan.config import ClusterSettings
from housegan.images import to_rgb

CLUSTERS_DIR = "clusters"
UNKNOWN_TYPE = "unknown"


def cluster_schema(pca_dim: int) -> pa.Schema:
    """Per content hash: cluster, distance to its centroid, PCA coordinates."""
    return pa.schema(
        [
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("cluster", pa.int32(), nullable=False),
            pa.field("cluster_distance", pa.float32(), nullable=False),
            pa.field("pca", pa.list_(pa.float32(), pca_dim), nullable=False),
        ],
        metadata={"housegan.clusters": "1"},
    )


@dataclass(frozen=True)
class Projection:
    """L2-normalize, subtract the mean, PCA; fitted once, applied to any rows."""

    mean: np.ndarray
    components: np.ndarray  # (dim, features)
    pca_mean: np.ndarray

    def transform(self, vectors: np.ndarray, chunk: int = 8192) -> np.ndarray:
        out = np.empty((len(vectors), len(self.components)), dtype=np.float32)
        for start in range(0, len(vectors), chunk):  # bounded memory for 200k x 4096
            rows = normalize_rows(np.asarray(vectors[start : start + chunk], dtype=np.float32))
            out[start : start + chunk] = (rows - self.mean - self.pca_mean) @ self.components.T
        return out


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def fit_projection(vectors: np.ndarray, dim: int, seed: int, fit_rows: int) -> Projection:
    """Fit the projection on at most ``fit_rows`` rows (a seeded sample)."""
    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > fit_rows:
        sample = vectors[np.sort(rng.choice(len(vectors), fit_rows, replace=False))]
    rows = normalize_rows(np.asarray(sample, dtype=np.float32))
    mean = rows.mean(axis=0)
    dim = max(1, min(dim, len(rows) - 1, rows.shape[1]))
    pca = PCA(n_components=dim, svd_solver="randomized", random_state=seed).fit(rows - mean)
    return Projection(mean, pca.components_.astype(np.float32), pca.mean_.astype(np.float32))


@dataclass(frozen=True)
class Clusters:
    labels: np.ndarray  # (n,) int
    distances: np.ndarray  # (n,) distance to own centroid in PCA space
    centroids: np.ndarray  # (k, dim)
    silhouette: dict[int, float] = field(default_factory=dict)


def kmeans(reduced: np.ndarray, k: int, seed: int, minibatch_above: int) -> Any:
    k = min(k, len(reduced))
    if len(reduced) > minibatch_above:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=4)


def silhouette_report(
    reduced: np.ndarray,
    k_range: tuple[int, int],
    cfg: ClusterSettings,
    fitted: Mapping[int, np.ndarray] | None = None,
) -> dict[int, float]:
    """Silhouette score per k (on a seeded sample when large); higher is better separated.

    ``fitted`` holds labels already fitted for some k (same seed), which are not fitted again.
    """
    report = {}
    sample = min(cfg.silhouette_sample, len(reduced))
    for k in range(k_range[0], k_range[1] + 1):
        if not 2 <= k < len(reduced):
            continue
        labels = (fitted or {}).get(k)
        if labels is None:
            labels = kmeans(reduced, k, cfg.seed, cfg.minibatch_above).fit_predict(reduced)
        if len(set(labels)) < 2:
            continue
        report[k] = float(
            silhouette_score(reduced, labels, sample_size=sample, random_state=cfg.seed)
        )
    return report


def fit_clusters(reduced: np.ndarray, cfg: ClusterSettings, report: bool = True) -> Clusters:
    model = kmeans(reduced, cfg.k, cfg.seed, cfg.minibatch_above).fit(reduced)
    labels = model.labels_.astype(np.int32)
    centroids = model.cluster_centers_.astype(np.float32)
    distances = np.linalg.norm(reduced - centroids[labels], axis=1).astype(np.float32)
    fitted = {len(centroids): labels}  # the report's k-means for this k is the same fit
    silhouette = silhouette_report(reduced, cfg.k_range, cfg, fitted) if report else {}
    return Clusters(labels, distances, centroids, silhouette)


def types_from_clusters(labels: np.ndarray, cluster_to_type: Mapping[int, str]) -> np.ndarray:
    """Each cluster's configured type; clusters not named are ``unknown``."""
    return np.array([cluster_to_type.get(int(c), UNKNOWN_TYPE) for c in labels], dtype=object)


def gallery_members(
    clusters: Clusters, cluster: int, nearest: int, random: int, seed: int
) -> np.ndarray:
    """Row indices for a cluster's gallery: the ``nearest`` to its centroid, then random ones."""
    members = np.flatnonzero(clusters.labels == cluster)
    by_distance = members[np.argsort(clusters.distances[members], kind="stable")]
    head = by_distance[:nearest]
    rest = by_distance[nearest:]
    rng = np.random.default_rng(seed + cluster)
    tail = rng.choice(rest, min(random, len(rest)), replace=False) if len(rest) else rest
    return np.concatenate([head, np.sort(tail)]).astype(int)


def image_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    tile: int = 96,
    title: str | None = None,
) -> Image.Image:
    """A labelled contact sheet: each image fitted into a ``tile`` square, caption beneath."""
    caption_h = 12 if captions else 0
    title_h = 16 if title else 0
    ncols = max(1, min(ncols, len(images) or 1))
    nrows = max(1, -(-len(images) // ncols))
    sheet = Image.new("RGB", (ncols * tile, title_h + nrows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill="black")
    for index, image in enumerate(images):
        x, y = (index % ncols) * tile, title_h + (index // ncols) * (tile + caption_h)
        thumb = to_rgb(image)  # a fresh copy: thumbnail() below resizes in place
        thumb.thumbnail((tile, tile))
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        if captions:
            draw.text((x + 2, y + tile), captions[index][: tile // 6], fill="black")
    return sheet


@dataclass(frozen=True)
class ClusterResult:
    uri: str  # the per-image Parquet of this run
    k: int
    silhouette: dict[int, float]
    sizes: dict[int, int]
    galleries: dict[int, str]  # cluster id -> PNG URI


ImageLoader = Callable[[str], Image.Image]


def cluster_embeddings(
    sha256s: np.ndarray,
    vectors: np.ndarray,
    uris_by_sha: Mapping[str, str],
    store_uri: str,
    cfg: ClusterSettings,
    load_thumbnail: ImageLoader,
    storage_options: Mapping[str, Any] | None = None,
) -> ClusterResult:
    """Project, cluster, write the per-image Parquet and a gallery PNG per cluster."""
    projection = fit_projection(vectors, cfg.pca_dim, cfg.seed, cfg.pca_fit_rows)
    reduced = projection.transform(vectors)
    clusters = fit_clusters(reduced, cfg)
    run_uri = storage.join(store_uri, CLUSTERS_DIR, storage.new_version_name(""))
    galleries = {}
    for cluster in range(len(clusters.centroids)):
        rows = gallery_members(clusters, cluster, cfg.gallery_nearest, cfg.gallery_random, cfg.seed)
        images = [load_thumbnail(uris_by_sha[sha256s[i]]) for i in rows]
        captions = [f"{clusters.distances[i]:.2f}" for i in rows]
        title = f"cluster {cluster}: {int((clusters.labels == cluster).sum())} photos"
        grid = image_grid(images, captions, ncols=8, tile=cfg.thumb_size, title=title)
        galleries[cluster] = storage.join(run_uri, f"gallery-cluster-{cluster}.png")
        storage.write_bytes_atomic(galleries[cluster], png_bytes(grid), storage_options)
    frame = pd.DataFrame(
        {
            "sha256": sha256s,
            "cluster": clusters.labels,
            "cluster_distance": clusters.distances,
            "pca": list(reduced),
        }
    )
    table = manifest.to_table(frame, cluster_schema(reduced.shape[1]))
    ids, counts = np.unique(clusters.labels, return_counts=True)
    sizes = {int(c): int(n) for c, n in zip(ids, counts, strict=True)}
    summary = {"k": len(clusters.centroids), "silhouette": clusters.silhouette, "sizes": sizes}
    parquet_uri = storage.write_parquet(
        table, storage.join(run_uri, "clusters.parquet"), storage_options
    )
    summary_bytes = json.dumps(summary, indent=2).encode()
    storage.write_bytes_atomic(
        storage.join(run_uri, "summary.json"), summary_bytes, storage_options
    )
    return ClusterResult(
        parquet_uri, len(clusters.centroids), clusters.silhouette, sizes, galleries
    )


def read_clusters(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The per-image frame (sha256, cluster, cluster_distance) and its PCA matrix."""
    table = storage.read_parquet(uri, storage_options=storage_options)
    pca = table.column("pca").combine_chunks()
    matrix = pca.values.to_numpy().reshape(len(table), pca.type.list_size)
    return table.drop(["pca"]).to_pandas(), matrix.astype(np.float32)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
