"""The Label page's logic: which photo next, writing one label, counts, retraining the head.

The queue is the latest curated manifest's usable photos without a label, least sure first
(``labels.export_candidates``: lowest classifier margin, else farthest from the centroid).
Each click appends one row to the label table (a new immutable part under ``<store>/labels/``),
exactly as ``housegan label import`` does with a file, so the next curation run uses it.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from housegan import cluster, curate, images, labels, manifest, storage
from housegan.app.problems import NothingThereYet
from housegan.config import IMAGE_TYPES, Settings

QUEUE_COLUMNS = (
    "key",
    "uri",
    "sha256",
    "city",
    "cluster",
    "suggested_label",
    "type_confidence",
    "type_margin",
)
RETRAINED_COLUMNS = ("image_type", "type_confidence", "type_margin")


def latest_curated_uri(store_uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The latest curated manifest's file; ``NothingThereYet`` before the first curation."""
    collection = manifest.collection_uri(store_uri, curate.CURATED_COLLECTION)
    try:
        return manifest.resolve(collection, storage_options)
    except FileNotFoundError:
        raise NothingThereYet(
            f"No curated manifest in {store_uri} yet: run `housegan curate` (or `make demo`) "
            "to get photos to label."
        ) from None


def read_curated(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    return manifest.read(uri, storage_options)


def read_label_table(
    store_uri: str, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    return labels.read_labels(labels.labels_uri(store_uri), storage_options)


def filter_choices(curated: pd.DataFrame) -> tuple[list[str], list[int]]:
    """The cities and clusters a user can narrow the queue to."""
    cities = sorted(curated["city"].dropna().astype(str).unique())
    clusters = sorted(int(c) for c in curated["cluster"].dropna().unique())
    return cities, clusters


def with_retrained(curated: pd.DataFrame, retrained: pd.DataFrame | None) -> pd.DataFrame:
    """The curated rows with the types, confidences and margins of a retrained classifier."""
    if retrained is None or retrained.empty:
        return curated
    by_sha = retrained.drop_duplicates("sha256").set_index("sha256")
    out = curated.copy()
    known = out["sha256"].isin(by_sha.index)
    for column in RETRAINED_COLUMNS:
        # A whole new column: the classifier's float64 must not be squeezed into float32.
        out[column] = out["sha256"].map(by_sha[column]).where(known, out[column])
    return out


def label_queue(
    curated: pd.DataFrame,
    label_table: pd.DataFrame,
    n: int,
    *,
    cities: Collection[str] = (),
    clusters: Collection[int] = (),
    skipped: Collection[str] = (),
    retrained: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Up to ``n`` unlabelled photos, least sure first, within the chosen cities and clusters
    (all when none is chosen); ``skipped`` sha256s go to the back of the queue."""
    rows = with_retrained(curated, retrained)
    if cities:
        rows = rows[rows["city"].isin(list(cities))]
    if clusters:
        rows = rows[rows["cluster"].isin(list(clusters))]
    labelled = set(labels.labels_by_content(label_table, curated).index)
    candidates = labels.export_candidates(rows, labelled, len(rows))
    extra = rows.drop_duplicates("key").set_index("key")[["city", "cluster", "type_margin"]]
    queue = candidates.join(extra, on="key")
    later = queue["sha256"].isin(list(skipped))
    queue = pd.concat([queue[~later], queue[later]], ignore_index=True)
    return queue.head(n)[list(QUEUE_COLUMNS)].reset_index(drop=True)


def append_label(
    store_uri: str,
    key: str,
    sha256: str | None,
    label: str,
    labeller: str,
    storage_options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """One label as a new part of the label table; returns the part's URI."""
    row = pd.DataFrame([{"key": key, "sha256": sha256, "label": label}])
    frame = labels.validate_labels(row, labeller, now or datetime.now(UTC))
    return labels.append_labels(frame, store_uri, storage_options)


def label_counts(label_table: pd.DataFrame, curated: pd.DataFrame) -> dict[str, int]:
    """Photos of the curated manifest labelled as each type (the latest label counts)."""
    latest = labels.labels_by_content(label_table, curated)
    counts = latest.value_counts()
    return {image_type: int(counts.get(image_type, 0)) for image_type in IMAGE_TYPES}


def latest_clusters_uri(
    store_uri: str, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """The newest clustering run's per-photo Parquet (its PCA features feed the classifier)."""
    root = storage.join(storage.normalize_uri(store_uri), cluster.CLUSTERS_DIR)
    fs, path = storage.get_fs(root, storage_options)
    if not fs.exists(path):
        return None
    runs = sorted(fs.glob(f"{path}/*/clusters.parquet"))
    if not runs:
        return None
    return storage.join(root, runs[-1][len(path) :].strip("/"))


@dataclass(frozen=True)
class Retrained:
    report: labels.ClassifierReport | None  # None: labels name fewer than two types
    types: pd.DataFrame  # sha256, image_type, type_confidence, type_margin, type_source
    clusters_uri: str
    labels_used: int


def retrain(
    store_uri: str,
    curated: pd.DataFrame,
    label_table: pd.DataFrame,
    settings: Settings,
    storage_options: Mapping[str, Any] | None = None,
) -> Retrained:
    """Fit the type classifier on the current labels, over the newest clustering's features
    (as curation does), and report its held-out accuracy."""
    clusters_uri = latest_clusters_uri(store_uri, storage_options)
    if clusters_uri is None:
        raise NothingThereYet(f"No clustering run in {store_uri} yet: run `housegan curate`.")
    frame, pca = cluster.read_clusters(clusters_uri, storage_options)
    types, report, n_labels = labels.types_for_clusters(
        frame, pca, label_table, curated, settings.cluster, settings.curate
    )
    return Retrained(report, types, clusters_uri, n_labels)


def confusion_frame(report: labels.ClassifierReport) -> pd.DataFrame | None:
    """Rows: true type; columns: predicted type (held-out folds)."""
    if report.confusion is None:
        return None
    return report.confusion.rename_axis(index="true \\ predicted")


def thumbnail_png(
    uri: str, max_side: int, storage_options: Mapping[str, Any] | None = None
) -> bytes:
    """The photo at ``uri`` shrunk to ``max_side`` (aspect kept), as PNG bytes."""
    picture = images.decode_rgb(storage.read_bytes(uri, storage_options), max_side)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def shortcut_keys() -> dict[str, str]:
    """One key per image type, in IMAGE_TYPES order: '1' exterior, '2' landscape, ..."""
    return {image_type: str(number) for number, image_type in enumerate(IMAGE_TYPES, start=1)}


def margin_text(margin: float | None) -> str:
    if margin is None or (isinstance(margin, float) and np.isnan(margin)):
        return "no classifier margin yet (ordered by distance to the cluster centre)"
    return f"classifier margin {margin:.2f} (top-1 minus top-2 probability)"
