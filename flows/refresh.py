"""The full refresh: source bucket -> image manifest -> curated manifest -> trained model ->
evaluation -> promotion (the ``champion`` alias the app serves).

This is what the Prefect UI's "full-refresh" deployment runs (its parameters are the Run form)
and what the ``retrain`` deployment runs when photos land. Each stage is also a flow of its own
(``flows.ingest``, ``flows.curate``, ``flows.train``, ``flows.evaluate``) and shows up here as
a subflow run; training goes to the ``train`` deployment on work pool ``gpu`` when a worker is
online there. In MLflow the refresh is one parent run with every stage's run nested under it.
Run with ``python -m flows.refresh``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from prefect import flow

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.train import train_stage
from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.refresh import RefreshInput, RefreshOutcome
from tasks.refresh import close_refresh_task, open_refresh_task, record_ingest_task


@flow(name="full-refresh")
def full_refresh(
    source_uri: str | None = None,
    cities: list[str] | None = None,
    image_size: int | None = None,
    kimg: float | None = None,
    max_minutes: float | None = None,
    promote: bool = True,
    train: bool = True,
    warm_start: bool | None = None,
    store_uri: str | None = None,
    labels_uri: str | None = None,
) -> dict[str, Any]:
    """Ingest what is new, curate, train, evaluate and gate a model for ``champion``.

    Args:
        source_uri: Bucket prefix the listing photos land in (s3://bucket/prefix); empty: the
            configured source.
        cities: Train on these cities only (e.g. ["austin", "boston"]); empty: every city.
        image_size: Side of the generated images in pixels (32, 64, 128 or 256); empty: the
            configured gan.image_size.
        kimg: Training budget in thousands of images shown; empty: the configured gan.kimg
            (gan.warm_start_kimg for a warm start).
        max_minutes: Wall-clock cap on training, in minutes; empty: no cap.
        promote: Gate the new model for the champion alias the app serves.
        train: Train, evaluate and promote; off: ingest and curate only.
        warm_start: Start from the champion's weights when the labels match; empty: the
            configured orchestration.warm_start (the retrain deployment turns it on).
        store_uri: Root of manifests, datasets and checkpoints; empty: the configured store.
        labels_uri: Human image-type labels (Parquet); empty: the store's latest.
    """
    settings = get_settings()
    store = store_uri or settings.store_uri
    source = source_uri or settings.source_uri
    warm = settings.orchestration.warm_start if warm_start is None else warm_start
    request = RefreshInput(
        source,
        store,
        cities=tuple(cities) if cities else None,
        image_size=image_size,
        kimg=kimg,
        max_minutes=max_minutes,
        train=train,
        promote=promote,
    )
    outcome = RefreshOutcome(open_refresh_task(request))
    try:
        outcome = _stages(outcome, request, labels_uri, warm)
    except BaseException as error:
        close_refresh_task(_failed(outcome, error))
        raise
    close_refresh_task(outcome)
    return outcome.by_stage()


def _stages(
    outcome: RefreshOutcome, request: RefreshInput, labels_uri: str | None, warm: bool
) -> RefreshOutcome:
    """Each stage in order, its result kept in ``outcome`` as it finishes (for the parent run)."""
    parent = outcome.parent_run_id
    ingested = ingest_flow(request.source_uri, request.store_uri)
    record_ingest_task(ingested, parent)
    outcome = replace(outcome, ingest=ingested)
    curated = curate_flow(ingested.manifest_uri, request.store_uri, labels_uri, parent)
    outcome = replace(outcome, curate=curated)
    if not request.train:
        return outcome
    trained = train_stage(
        curated.curated_uri,
        request.store_uri,
        image_size=request.image_size,
        cities=list(request.cities) if request.cities else None,
        kimg=request.kimg,
        max_minutes=request.max_minutes,
        warm_start=warm,
        parent_run_id=parent,
    )
    outcome = replace(outcome, train=trained)
    checked = evaluate_flow(trained.model_uri, promote=request.promote)
    return replace(outcome, evaluate=checked["evaluate"], promote=checked["promote"])


def _failed(outcome: RefreshOutcome, error: BaseException) -> RefreshOutcome:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return replace(outcome, error=f"{type(error).__name__}: {first_line}")


if __name__ == "__main__":
    print(json.dumps(to_json(full_refresh()), indent=2))
