"""The curate flow: image manifest -> curated manifest. Run with ``python -m flows.curate``.

(fine-tune VGG16 on the labels, when configured) -> embed (shards mapped, on Dask when
configured) and quality scores -> clusters -> image types -> the filtering funnel -> publish
the curated manifest -> log to MLflow.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from housegan.config import get_settings
from tasks.curate import (
    cluster_task,
    filter_task,
    finetune_task,
    log_task,
    publish_task,
    quality_task,
    resolve_manifest,
    run_fresh,
    types_task,
)
from tasks.embed import run_embed_stage


@flow(name="curate")
def curate_flow(
    manifest_uri: str | None = None, store_uri: str | None = None, labels_uri: str | None = None
) -> dict[str, Any]:
    """Curate an image manifest (default: the store's latest); returns the curated manifest
    URI, the funnel counts and the MLflow run id."""
    store = store_uri or get_settings().store_uri
    source = resolve_manifest(manifest_uri, store)
    scoring = quality_task.submit(source, store)  # reads photos while embedding computes
    embedder = finetune_task(source, store, labels_uri)  # the configured VGG16 unless fine-tuned
    embedded = run_embed_stage(source, store, embedder)
    scored = scoring.result()
    clusters = run_fresh(cluster_task, "uri", source, store, embedded["tag"], embedded["uri"])
    types = run_fresh(types_task, "uri", source, clusters["uri"], store, labels_uri)
    filtered = run_fresh(
        filter_task, "uri", source, clusters["uri"], types["uri"], scored["uri"], store
    )
    curated = publish_task(filtered, store, source, embedded["tag"])
    run_id = log_task(curated, source, embedded, scored, clusters, types, filtered, labels_uri)
    return {
        "manifest_uri": curated,
        "source_manifest_uri": source,
        "funnel": filtered["funnel"],
        "drop_counts": filtered["drop_counts"],
        "embedded": embedded["computed"],
        "embeddings_reused": embedded["reused"],
        "type_accuracy_cv": (types["classifier"] or {}).get("cv_accuracy"),
        "mlflow_run_id": run_id,
    }


if __name__ == "__main__":
    print(json.dumps(curate_flow(), indent=2, default=str))
