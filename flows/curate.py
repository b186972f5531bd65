"""The curate flow: image manifest -> curated manifest. Run with ``python -m flows.curate``.

(fine-tune VGG16 on the labels, when configured) -> embed (shards mapped, on Dask when
configured) and quality scores -> clusters -> image types -> the filtering funnel -> publish
the curated manifest -> log to MLflow. The same steps, in the same order, as
``housegan curate`` (``housegan.steps.curate.run_curate``).
"""

from __future__ import annotations

import json

from prefect import flow

from flows.embed import run_embed_stage
from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.curate import ClusterInput, CurateResult, FilterInput, TypesInput
from tasks.curate import (
    cluster_task,
    configured,
    filter_task,
    finetune_task,
    quality_task,
    resolve_task,
    types_task,
)
from tasks.curate_publish import log_task, publish_task
from tasks.runtime import run_fresh


@flow(name="curate")
def curate_flow(
    manifest_uri: str | None = None,
    store_uri: str | None = None,
    labels_uri: str | None = None,
    parent_run_id: str | None = None,
) -> CurateResult:
    """Curate an image manifest (default: the store's latest); the result names the curated
    manifest, the funnel and the MLflow run (nested under ``parent_run_id`` when given)."""
    store = store_uri or get_settings().store_uri
    source = configured(resolve_task)(manifest_uri, store, labels_uri)
    scoring = configured(quality_task).submit(source.photos)  # reads while embedding computes
    tuned = run_fresh(configured(finetune_task), source)  # None: the configured VGG16 embeds
    embedded = run_embed_stage(source.embedding(tuned))
    scored = scoring.result()
    clusters = run_fresh(configured(cluster_task), ClusterInput.after(source, embedded))
    types = run_fresh(configured(types_task), TypesInput.after(source, clusters))
    filtered = run_fresh(
        configured(filter_task), FilterInput.after(source, clusters, types, scored)
    )
    curated = CurateResult(source, tuned, embedded, scored, clusters, types, filtered)
    return log_task(publish_task(curated), parent_run_id)


if __name__ == "__main__":
    print(json.dumps(to_json(curate_flow()), indent=2))
