"""Human labels and the image-type classifier.

Labels are append-only: each import writes a new immutable Parquet part to the parts collection
``<store>/labels/`` and publishes it (see ``housegan.collections``); reading merges all
published parts and the latest label of a photo wins. A label names its photo by ``key`` or
``sha256`` (or both); keys are mapped to content through the manifest, so a label follows its
photo's content across renames and duplicates.

Every photo gets ``image_type`` and ``type_confidence``: a human label if it has one; else a
logistic regression on the projected embeddings trained on the labels (held-out accuracy by
cross-validation); without labels, the configured cluster -> type mapping; else ``unknown``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from housegan import manifest, storage
from housegan.cluster import UNKNOWN_TYPE, types_from_clusters
from housegan.collections import PartsCollection
from housegan.config import IMAGE_TYPES, ClusterSettings, CurateSettings
from housegan.manifest import TIMESTAMP, Status

LABELS_DIR = "labels"
LABEL_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("label", pa.string(), nullable=False),
        pa.field("labeller", pa.string()),
        pa.field("labelled_at", TIMESTAMP, nullable=False),
    ],
    metadata={"housegan.labels": "1"},
)

TYPES_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("image_type", pa.string(), nullable=False),
        pa.field("type_confidence", pa.float32(), nullable=False),
        pa.field("type_margin", pa.float32()),
        pa.field("type_source", pa.string(), nullable=False),  # label|classifier|cluster|none
    ],
    metadata={"housegan.types": "1"},
)


class LabelError(ValueError):
    """A label file a user must fix; the message names the rows and the allowed values."""


def labels_uri(store_uri: str) -> str:
    return storage.join(store_uri, LABELS_DIR)


def label_parts(uri: str, storage_options: Mapping[str, Any] | None = None) -> PartsCollection:
    """The parts collection of a labels folder (``LABEL_SCHEMA``; a label names its photo by
    key or sha256, so rows have no single key: "latest wins" is ``labels_by_content``'s)."""
    return PartsCollection(uri, None, LABEL_SCHEMA, storage_options)


def read_label_file(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A CSV or Parquet file of labels, as written by a person or a tool."""
    if uri.lower().endswith(".parquet"):
        return manifest.read(uri, storage_options)
    if uri.lower().endswith(".csv"):
        data = storage.read_bytes(uri, storage_options)
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    raise LabelError(f"{uri}: label files are .csv or .parquet")


def validate_labels(
    frame: pd.DataFrame, labeller: str | None = None, now: datetime | None = None
) -> pd.DataFrame:
    """Conform a label table to ``LABEL_SCHEMA``; raises ``LabelError`` naming bad rows."""
    frame = frame.reset_index(drop=True)
    if "label" not in frame.columns:
        raise LabelError(f"labels need a 'label' column; got {list(frame.columns)}")
    for column in ("key", "sha256", "labeller"):
        if column not in frame.columns:
            frame[column] = None
        frame[column] = frame[column].replace("", None)
    frame["label"] = frame["label"].fillna("").astype(str).str.strip().str.lower()
    frame = frame[frame["label"] != ""]  # not labelled (yet): skipped; index = file row
    bad = frame.index[~frame["label"].isin(IMAGE_TYPES)]
    if len(bad):
        shown = ", ".join(f"row {i + 1}: {frame.at[i, 'label']!r}" for i in bad[:5])
        raise LabelError(f"{len(bad)} unknown label(s) ({shown}); valid: {', '.join(IMAGE_TYPES)}")
    unnamed = frame.index[frame["key"].isna() & frame["sha256"].isna()]
    if len(unnamed):
        raise LabelError(f"rows {[i + 1 for i in unnamed[:5]]} name no photo: give key or sha256")
    if labeller is not None:
        frame["labeller"] = frame["labeller"].fillna(labeller)
    stamp = pd.Timestamp(now or datetime.now(UTC))
    if "labelled_at" not in frame.columns:
        frame["labelled_at"] = stamp
    frame["labelled_at"] = pd.to_datetime(frame["labelled_at"].replace("", None), utc=True)
    frame["labelled_at"] = frame["labelled_at"].fillna(stamp)
    return frame[LABEL_SCHEMA.names].reset_index(drop=True)


def append_labels(
    frame: pd.DataFrame, store_uri: str, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Append validated labels (``validate_labels``) to the store's label collection as one new
    immutable part and publish it; returns the part's URI. Every label writer goes through here."""
    collection = label_parts(labels_uri(store_uri), storage_options)
    part = collection.append(manifest.to_table(frame, LABEL_SCHEMA))
    collection.publish([part])
    return part


@dataclass(frozen=True)
class ImportResult:
    part_uri: str
    rows: int
    counts: dict[str, int]
    skipped: int = 0  # rows with an empty label


def import_labels(
    file_uri: str,
    store_uri: str,
    labeller: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Validate a label file and append it to the store as a new immutable, published part."""
    raw = read_label_file(file_uri, storage_options)
    frame = validate_labels(raw, labeller)
    if frame.empty:
        raise LabelError(f"{file_uri} holds no labels (the 'label' column is empty)")
    part = append_labels(frame, store_uri, storage_options)
    counts = {str(k): int(v) for k, v in frame["label"].value_counts().items()}
    return ImportResult(part, len(frame), counts, skipped=len(raw) - len(frame))


def read_labels(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """All labels of a labels folder (published parts in publish order), or of one CSV/Parquet
    file."""
    if uri.lower().endswith((".csv", ".parquet")):
        return validate_labels(read_label_file(uri, storage_options))
    return label_parts(uri, storage_options).read().to_pandas()


def labels_fingerprint(uri: str | None, storage_options: Mapping[str, Any] | None = None) -> str:
    """Changes whenever the labels do: parts are immutable, so their names suffice."""
    if uri is None:
        return "none"
    if uri.lower().endswith((".csv", ".parquet")):
        return hashlib.sha256(storage.read_bytes(uri, storage_options)).hexdigest()[:16]
    names = "\n".join(part.name for part in label_parts(uri, storage_options).list_parts())
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def labels_by_content(labels: pd.DataFrame, images: pd.DataFrame) -> pd.Series:
    """The latest label per sha256 (index), keys mapped through the manifest's ``key, sha256``.

    Labels naming keys or hashes the manifest does not know are left out.
    """
    sha_of_key = images.dropna(subset=["sha256"]).set_index("key")["sha256"]
    sha = labels["sha256"].fillna(labels["key"].map(sha_of_key))
    known = sha.isin(set(images["sha256"].dropna()))
    ordered = labels.assign(sha256=sha)[known].reset_index(names="order")
    ordered = ordered.sort_values(["labelled_at", "order"], kind="stable")
    latest = ordered.drop_duplicates("sha256", keep="last")
    return latest.set_index("sha256")["label"]


@dataclass(frozen=True)
class ClassifierReport:
    classes: list[str]
    n_labelled: int
    label_counts: dict[str, int]
    cv_accuracy: float | None  # held-out (cross-validated) accuracy on the labelled set
    cv_folds: int
    confusion: pd.DataFrame | None = field(default=None, compare=False)  # rows true, cols pred

    def as_dict(self) -> dict[str, Any]:
        confusion = None if self.confusion is None else self.confusion.to_dict(orient="index")
        return {
            "classes": self.classes,
            "n_labelled": self.n_labelled,
            "label_counts": self.label_counts,
            "cv_accuracy": self.cv_accuracy,
            "cv_folds": self.cv_folds,
            "confusion": confusion,
        }


def new_classifier(cfg: CurateSettings, seed: int) -> LogisticRegression:
    return LogisticRegression(
        C=cfg.classifier_c, class_weight="balanced", max_iter=2000, random_state=seed
    )


def train_classifier(
    features: np.ndarray, labels: np.ndarray, cfg: CurateSettings, seed: int = 0
) -> tuple[LogisticRegression, ClassifierReport]:
    """Fit on all labels; report accuracy and a confusion matrix from held-out folds."""
    classes, counts = np.unique(labels, return_counts=True)
    folds = int(min(cfg.cv_folds, counts.min()))
    accuracy, confusion = None, None
    if folds >= 2 and len(classes) >= 2:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        predicted = cross_val_predict(new_classifier(cfg, seed), features, labels, cv=splitter)
        accuracy = float(np.mean(predicted == labels))
        matrix = confusion_matrix(labels, predicted, labels=classes)
        confusion = pd.DataFrame(matrix, index=list(classes), columns=list(classes))
    model = new_classifier(cfg, seed).fit(features, labels) if len(classes) >= 2 else None
    report = ClassifierReport(
        classes=[str(c) for c in classes],
        n_labelled=len(labels),
        label_counts={str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        cv_accuracy=accuracy,
        cv_folds=folds if accuracy is not None else 0,
        confusion=confusion,
    )
    return model, report


def assign_types(
    sha256s: np.ndarray,
    features: np.ndarray,
    clusters: np.ndarray,
    labelled: pd.Series,
    cluster_cfg: ClusterSettings,
    cfg: CurateSettings,
) -> tuple[pd.DataFrame, ClassifierReport | None]:
    """``image_type``, ``type_confidence``, ``type_margin`` and ``type_source`` per sha256.

    ``labelled`` maps sha256 -> label. ``type_margin`` (top-1 minus top-2 probability) says how
    sure the classifier is; labelling the lowest margins first helps it most.
    """
    frame = pd.DataFrame({"sha256": sha256s})
    label = frame["sha256"].map(labelled)
    has_label = label.notna().to_numpy()
    report = None
    if labelled.nunique() >= 2:
        # Centred, normalized embeddings have tiny entries (the shared direction is gone), which
        # would make C=1 a very strong penalty: rescale to unit variance overall (one number, so
        # the PCA's shape is kept; per-component whitening would amplify noise).
        features = features / max(float(np.std(features)), 1e-12)
        model, report = train_classifier(
            features[has_label], label[has_label].to_numpy(str), cfg, cluster_cfg.seed
        )
        probabilities = model.predict_proba(features)
        top2 = np.sort(probabilities, axis=1)[:, -2:]
        frame["image_type"] = model.classes_[probabilities.argmax(axis=1)]
        frame["type_confidence"] = top2[:, 1]
        frame["type_margin"] = top2[:, 1] - top2[:, 0]
        frame["type_source"] = "classifier"
    else:
        frame["image_type"] = types_from_clusters(clusters, cluster_cfg.cluster_to_type)
        mapped = frame["image_type"] != UNKNOWN_TYPE
        frame["type_confidence"] = np.where(mapped, 1.0, 0.0)  # a mapping carries no probability
        frame["type_margin"] = np.nan
        frame["type_source"] = np.where(mapped, "cluster", "none")
    frame.loc[has_label, "image_type"] = label[has_label]
    frame.loc[has_label, "type_confidence"] = 1.0
    frame.loc[has_label, "type_source"] = "label"
    return frame, report


def types_for_clusters(
    cluster_frame: pd.DataFrame,
    pca: np.ndarray,
    label_table: pd.DataFrame,
    images: pd.DataFrame,
    cluster_cfg: ClusterSettings,
    cfg: CurateSettings,
) -> tuple[pd.DataFrame, ClassifierReport | None, int]:
    """``assign_types`` over a clustering run (``cluster.read_clusters``), with the labels of
    ``label_table`` matched to its photos by content; also returns how many labels it used."""
    labelled = labels_by_content(label_table, images)
    labelled = labelled[labelled.index.isin(cluster_frame["sha256"])]
    types, report = assign_types(
        cluster_frame["sha256"].to_numpy(),
        pca,
        cluster_frame["cluster"].to_numpy(),
        labelled,
        cluster_cfg,
        cfg,
    )
    return types, report, len(labelled)


def write_types(
    frame: pd.DataFrame,
    report: ClassifierReport | None,
    store_uri: str,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Store one run's types (and classifier report) under ``<store>/types/``; returns its URI."""
    run_uri = storage.join(store_uri, "types", storage.new_version_name(""))
    uri = storage.join(run_uri, "types.parquet")
    storage.write_parquet(manifest.to_table(frame, TYPES_SCHEMA), uri, storage_options)
    body = json.dumps(report.as_dict() if report else None, indent=2).encode()
    storage.write_bytes_atomic(storage.join(run_uri, "classifier.json"), body, storage_options)
    return uri


def export_candidates(curated: pd.DataFrame, labelled_shas: set[str], n: int) -> pd.DataFrame:
    """Photos to label next, most uncertain first: lowest classifier margin, else farthest
    from their cluster centroid. One row per content; photos already labelled are skipped."""
    rows = curated[(curated["status"] == Status.OK) & curated["sha256"].notna()]
    rows = rows[~rows["sha256"].isin(labelled_shas)].drop_duplicates("sha256")
    if rows["type_margin"].notna().any():
        rows = rows.sort_values(["type_margin", "key"], na_position="last")
    else:
        rows = rows.sort_values(["cluster_distance", "key"], ascending=[False, True])
    out = rows.head(n)[["key", "uri", "sha256", "image_type", "type_confidence"]]
    return out.rename(columns={"image_type": "suggested_label"}).reset_index(drop=True)
