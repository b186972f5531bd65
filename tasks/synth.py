"""Prefect tasks around the synthetic listing bucket (the demo's and the tests' dataset)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS

from housegan import synth
from housegan.config import get_settings


@task(name="synthesize-listings", cache_policy=INPUTS, retries=2, retry_delay_seconds=5)
def synthesize_task(dest_uri: str, cities: int, per_city: int, seed: int) -> dict[str, Any]:
    """Write the synthetic bucket; deterministic per seed, so re-running rewrites equal bytes."""
    result = synth.synthesize(
        dest_uri,
        cities=cities,
        per_city=per_city,
        seed=seed,
        storage_options=get_settings().storage_options(),
    )
    get_run_logger().info("synth: %d objects under %s", result.objects, dest_uri)
    return {"truth_uri": result.truth_uri, "objects": result.objects, "counts": result.counts}


@task(name="seed-labels", cache_policy=INPUTS)
def seed_labels_task(truth_uri: str, store_uri: str, per_type: int, seed: int) -> dict[str, Any]:
    """Play the human labeller: take ``per_type`` labels per image type from the synth truth."""
    from housegan import labels

    settings = get_settings()
    options = settings.storage_options()
    label_file = synth.write_truth_labels(
        truth_uri, per_type=per_type, seed=seed, storage_options=options
    )
    imported = labels.import_labels(label_file, store_uri, labeller="demo", storage_options=options)
    return {
        "labels_uri": labels.labels_uri(store_uri),
        "rows": imported.rows,
        "counts": imported.counts,
    }
