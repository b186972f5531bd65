"""MLflow helpers: the only library module that imports mlflow.

Small and generic so every stage logs the same way: a run context, params (nested mappings
flattened with dots), metrics, tables, images and image grids, and datasets as run inputs.
All ``log_*`` functions act on the active run (``start_run``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from PIL import Image

# MLflow refuses param values longer than this.
_MAX_PARAM_CHARS = 6000


@contextmanager
def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open (or, given ``run_id``, resume) a run in ``experiment``; ends it on exit."""
    mlflow.set_tracking_uri(tracking_uri)
    if run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=run_name, tags=dict(tags or {})) as run:
        yield run


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; sequences and other values become strings."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{key}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            flat[key] = value
        else:
            flat[key] = json.dumps(value, default=str)
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    flat = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_metrics(metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Log numeric metrics; ``None`` values (not measured) are skipped."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def log_table(frame: pd.DataFrame, artifact_file: str) -> None:
    """A table artifact MLflow's UI renders (``.json``); a CSV copy beside it for people."""
    mlflow.log_table(data=frame.reset_index(drop=True), artifact_file=artifact_file)
    csv_name = artifact_file.rsplit(".", 1)[0] + ".csv"
    mlflow.log_text(frame.to_csv(index=False), csv_name)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)


def log_image(image: Image.Image, artifact_file: str) -> None:
    mlflow.log_image(image, artifact_file=artifact_file)


def log_image_grid(
    images: Sequence[Image.Image] | Image.Image,
    artifact_file: str,
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    tile: int = 96,
    title: str | None = None,
) -> None:
    """Log one image, or a labelled grid made of several."""
    if isinstance(images, Image.Image):
        log_image(images, artifact_file)
        return
    from housegan.cluster import image_grid

    log_image(image_grid(images, captions, ncols=ncols, tile=tile, title=title), artifact_file)


def log_dataset_input(
    frame: pd.DataFrame,
    name: str,
    source: str,
    context: str = "training",
    digest: str | None = None,
    targets: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Record ``frame`` (e.g. a curated manifest) as an input of the active run; returns the
    digest, which by default hashes the content so equal data gets equal ids."""
    if digest is None:
        digest = content_digest(frame)
    dataset = mlflow.data.from_pandas(
        frame, source=source, name=name, digest=digest, targets=targets
    )
    mlflow.log_input(dataset, context=context, tags=dict(tags or {}) or None)
    return digest


def content_digest(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None
