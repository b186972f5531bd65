"""Small, real data for the app's tests and screenshots: a tiny generator trained for a couple
of steps and registered in MLflow, and a store with a curated manifest and a clustering run.

Photos are drawn so classes look different: the city sets the background hue, the image type
the shape on it (a square for exteriors, a band for landscapes, a grid for floorplans).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from housegan.testing.gan import draw

GAN_TYPES = ("exterior", "landscape")
MODEL_NAME = "housegan-cgan"


@dataclass(frozen=True)
class Photo:
    path: Path
    key: str
    city: str
    image_type: str
    sha256: str


def write_photos(
    folder: Path,
    per_class: int,
    cities: tuple[str, ...] = ("austin", "boston"),
    types: tuple[str, ...] = GAN_TYPES,
    seed: int = 0,
    size: int = 48,
) -> list[Photo]:
    rng = np.random.default_rng(seed)
    photos = []
    for city in cities:
        for image_type in types:
            for i in range(per_class):
                key = f"{city}/l{i:03d}/{image_type}.png"
                path = folder / key
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(city, image_type, rng, size).save(path)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                photos.append(Photo(path, key, city, image_type, digest))
    return photos


@dataclass(frozen=True)
class TinyModel:
    tracking_uri: str
    store_uri: str
    experiment: str
    model_uri: str  # models:/NAME/VERSION
    version: str
    run_id: str
    dataset_id: str
    out_dir: Path


def train_tiny_model(root: Path, experiment: str = "housegan", steps: int = 2) -> TinyModel:
    """Pack a few photos at 32 px, train a tiny generator for ``steps`` steps on the CPU in an
    MLflow run (SQLite under ``root``), register it and alias it ``champion``."""
    from housegan import storage, tracking
    from housegan.config import GanSettings
    from housegan.gan.data import prepare

    photos = write_photos(root / "photos", per_class=4)
    frame = pd.DataFrame(
        [{"uri": p.path.as_uri(), "city": p.city, "image_type": p.image_type} for p in photos]
    )
    frame.to_parquet(root / "manifest.parquet")
    store_uri = (root / "store").as_uri()
    dataset = prepare(str(root / "manifest.parquet"), store_uri, 32)
    cfg = GanSettings(
        image_size=32,
        width=4,
        z_dim=16,
        embed_dim=8,
        batch_size=8,
        steps=steps,
        log_every=1,
        snapshot_every=steps,
        grid_per_class=1,
        cpu_threads=2,
        device="cpu",
        registered_model_name=MODEL_NAME,
    )
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    trained = tracking.train_tracked(dataset.uri, str(root / "run"), cfg, tracking_uri, experiment)
    tracking.set_alias(MODEL_NAME, str(trained.model_version), "champion")
    return TinyModel(
        tracking_uri=tracking_uri,
        store_uri=store_uri,
        experiment=experiment,
        model_uri=trained.model_uri,
        version=str(trained.model_version),
        run_id=trained.run_id,
        dataset_id=trained.dataset_id,
        out_dir=storage.local_path(trained.out_dir),
    )


LABEL_TYPES = ("exterior", "landscape", "floorplan")


def write_curated_store(
    root: Path, store_uri: str, per_class: int = 4, seed: int = 0
) -> list[Photo]:
    """A curated manifest (every photo usable, classifier guesses and margins filled in) and a
    clustering run whose PCA features separate the photos' true types; returns the photos."""
    from housegan import cluster, curate, manifest, quality, storage

    photos = write_photos(root / "listing-photos", per_class, types=LABEL_TYPES, seed=seed)
    rng = np.random.default_rng(seed)
    margins = rng.uniform(0.05, 0.95, len(photos)).astype(np.float32)
    now = pd.Timestamp(datetime.now(UTC))
    rows = []
    for photo, margin in zip(photos, margins, strict=True):
        cluster_id = LABEL_TYPES.index(photo.image_type)
        row = {name: None for name in curate.CURATED_SCHEMA.names}
        row |= {
            "key": photo.key,
            "uri": photo.path.as_uri(),
            "city": photo.city,
            "listing_id": photo.key.split("/")[1],
            "sha256": photo.sha256,
            "width": 48,
            "height": 48,
            "format": "PNG",
            "mode": "RGB",
            "status": "ok",
            "ingested_at": now,
            "image_type": photo.image_type,
            "type_confidence": float(0.5 + margin / 2),
            "type_margin": float(margin),
            "type_source": "classifier",
            "cluster": cluster_id,
            "cluster_distance": float(rng.uniform(0.1, 1.0)),
            **{name: np.nan for name in quality.SCORE_COLUMNS},
            **{name: False for name in curate.FLAG_COLUMNS},
            "is_outlier": False,
            "keep": photo.image_type in GAN_TYPES,
            "drop_reason": None if photo.image_type in GAN_TYPES else "unwanted_type",
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    collection = manifest.collection_uri(store_uri, curate.CURATED_COLLECTION)
    manifest.write_version(frame, collection, curate.CURATED_SCHEMA)

    dim = 8
    centres = rng.normal(0, 1, (len(LABEL_TYPES), dim))
    pca = np.stack(
        [centres[LABEL_TYPES.index(p.image_type)] + rng.normal(0, 0.1, dim) for p in photos]
    ).astype(np.float32)
    clusters = pd.DataFrame(
        {
            "sha256": [p.sha256 for p in photos],
            "cluster": frame["cluster"].astype("int32"),
            "cluster_distance": frame["cluster_distance"].astype("float32"),
            "pca": list(pca),
        }
    )
    run_uri = storage.join(store_uri, cluster.CLUSTERS_DIR, storage.new_version_name(""))
    table = manifest.to_table(clusters, cluster.cluster_schema(dim))
    storage.write_parquet(table, storage.join(run_uri, "clusters.parquet"))
    return photos


def log_history(model: TinyModel) -> TinyModel:
    """What a few refreshes leave in MLflow: a curate run (funnel metrics and table), a second
    version of the model trained on the same data, an evaluation nested under each training run;
    the new version becomes ``champion``, the first ``previous``. Returns the champion."""
    from housegan import storage, tracking
    from housegan.curate import STAGES

    uri, experiment = model.tracking_uri, model.experiment
    funnel = {stage: 1443 - 90 * i for i, stage in enumerate(STAGES)}
    with tracking.start_run(uri, experiment, "curate", tags={tracking.STAGE_TAG: "curate"}):
        tracking.log_metrics({f"funnel.{stage}": count for stage, count in funnel.items()})
        rows = [{"city": "ALL", "image_type": "ALL", **funnel}]
        tracking.log_table(pd.DataFrame(rows), "funnel.json")
    tags = {tracking.STAGE_TAG: "train", "dataset_id": model.dataset_id}
    with tracking.start_run(uri, experiment, f"cgan-{model.dataset_id}-r32", tags=tags) as run:
        tracking.log_metrics({"loss/g": 1.1, "loss/d": 1.9, "progress/kimg": 0.032})
        info = tracking.log_generator_model(str(model.out_dir), MODEL_NAME)
    version = str(info.registered_model_version)
    evaluations = {model.run_id: (0.0, 40.0, 0.03), run.info.run_id: (0.0, 31.5, 0.02)}
    for parent, (copy_rate, fd, kid) in evaluations.items():
        nested = {"mlflow.parentRunId": parent, tracking.STAGE_TAG: "evaluate"}
        with tracking.start_run(uri, experiment, "evaluate", tags=nested):
            tracking.log_metrics(
                {"copy_rate": copy_rate, "copy_threshold": 0.97, "fd": fd, "kid": kid}
            )
    tracking.set_alias(MODEL_NAME, model.version, "previous")
    tracking.set_alias(MODEL_NAME, version, "champion")
    return TinyModel(
        tracking_uri=uri,
        store_uri=model.store_uri,
        experiment=experiment,
        model_uri=f"models:/{MODEL_NAME}/{version}",
        version=version,
        run_id=run.info.run_id,
        dataset_id=model.dataset_id,
        out_dir=storage.local_path(storage.normalize_uri(str(model.out_dir))),
    )
