"""The full refresh: source bucket -> image manifest -> curated manifest -> trained model ->
evaluation -> promotion (the ``champion`` alias the app serves).

This is what the Prefect UI's "full-refresh" deployment runs; each stage is also a flow of its
own (``flows.ingest``, ``flows.curate``, ``flows.train``, ``flows.evaluate``) and shows up here
as a subflow run. Run with ``python -m flows.refresh``.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from housegan.config import get_settings
from housegan.steps import to_json


@flow(name="full-refresh")
def full_refresh(
    source_uri: str | None = None,
    store_uri: str | None = None,
    labels_uri: str | None = None,
    train: bool = True,
    kimg: float | None = None,
    max_minutes: float | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Ingest what is new, curate, and (unless ``train`` is False) train, register and evaluate
    a model, then (with ``promote``) gate it for ``champion``; each stage's result by name."""
    settings = get_settings()
    store = store_uri or settings.store_uri
    ingested = ingest_flow(source_uri or settings.source_uri, store)
    curated = curate_flow(ingested.manifest_uri, store, labels_uri)
    trained = (
        train_flow(curated.curated_uri, store, kimg=kimg, max_minutes=max_minutes)
        if train
        else None
    )
    checked = (
        evaluate_flow(trained.model_uri, promote=promote)
        if trained is not None
        else {"evaluate": None, "promote": None}
    )
    return {"ingest": ingested, "curate": curated, "train": trained, **checked}


if __name__ == "__main__":
    print(json.dumps(to_json(full_refresh()), indent=2))
