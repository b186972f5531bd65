"""Curation fixtures shared by tests and benchmarks: manifest rows, feature blobs and a
synthetic listing bucket ingested with labels from its ground truth (the "world")."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from housegan import labels, manifest, synth
from housegan.config import Settings
from housegan.manifest import IMAGE_MANIFEST_SCHEMA
from housegan.steps.curate import CurateInput, CurateResult, run_curate
from housegan.steps.ingest import IngestInput, ingest_source


def collinear_blobs(n_per: int, k: int, dim: int = 256, seed: int = 0):
    """Vectors like random-init VGG features: a huge shared component, small class offsets."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=dim) * 20
    centres = rng.normal(size=(k, dim))
    truth = np.repeat(np.arange(k), n_per)
    vectors = shared + centres[truth] + rng.normal(scale=0.3, size=(len(truth), dim))
    return vectors.astype(np.float32), truth


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """Image-manifest rows with defaults for every column a test does not care about."""
    now = datetime.now(UTC)
    defaults = {name: None for name in IMAGE_MANIFEST_SCHEMA.names}
    defaults |= {"status": "ok", "ingested_at": now, "width": 200, "height": 150}
    frame = pd.DataFrame([defaults | row for row in rows])
    frame["uri"] = frame["uri"].fillna(frame["key"])
    return manifest.to_table(frame, IMAGE_MANIFEST_SCHEMA).to_pandas()


@dataclass
class World:
    """A synthetic listing bucket, ingested, with 30 labels per type from the ground truth."""

    settings: Settings
    bucket: str
    truth: pd.DataFrame
    manifest_uri: str
    labels_uri: str

    @property
    def store(self) -> str:
        return self.settings.store_uri

    def ingest(self) -> str:
        s = self.settings
        inputs = IngestInput(s.source_uri, s.store_uri)
        return ingest_source.run(inputs, s, storage_options=s.storage_options()).manifest_uri

    def curate(self, manifest_uri: str | None = None, track: bool = False) -> CurateResult:
        options = self.settings.storage_options()
        source = CurateInput.resolve(
            manifest_uri or self.manifest_uri, self.store, self.labels_uri, options
        )
        return run_curate(source, self.settings, storage_options=options, track=track)

    def kind_of(self, keys: pd.Series) -> pd.Series:
        return keys.map(self.truth.set_index("key")["kind"])


def build_world(
    s3_server: Any,
    root: Path,
    cities: int = 4,
    per_city: int = 25,
    labels_per_type: int = 30,
    input_size: int = 224,
) -> World:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    settings = Settings(
        source_uri=f"s3://{bucket}/raw",
        store_uri=(root / "store").as_uri(),
        s3_endpoint_url=s3_server.endpoint,
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        # The default 224 px: at 112 px, random-init VGG puts some 2%-cropped copies as far
        # apart as the closest distinct synthetic interiors.
        embed={"input_size": input_size},
    )
    synthesized = synth.synthesize(
        settings.source_uri,
        cities=cities,
        per_city=per_city,
        seed=0,
        storage_options=settings.storage_options(),
        truth_uri=(root / "truth.parquet").as_uri(),
    )
    world = World(settings, bucket, synth.read_truth(synthesized.truth_uri), "", "")
    world.manifest_uri = world.ingest()
    images = manifest.read(world.manifest_uri)
    usable = images[images["status"] == "ok"].assign(label=lambda f: world.kind_of(f["key"]))
    by_kind = usable.dropna(subset=["label"]).groupby("label")
    sample = pd.concat(
        group.sample(min(labels_per_type, len(group) - 2), random_state=0) for _, group in by_kind
    )
    sample[["key", "label"]].to_csv(root / "labels.csv", index=False)
    labels.import_labels((root / "labels.csv").as_uri(), world.store, labeller="test")
    world.labels_uri = labels.labels_uri(world.store)
    return world
