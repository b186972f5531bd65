"""Prefect tasks around the synthetic listing bucket (the demo's and the tests' dataset)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from housegan import synth
from housegan.config import get_settings
from tasks.runtime import task_logger

DEMO_LABELLER = "demo-synth-truth"


@task(name="synthesize-listings", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def synthesize_task(dest_uri: str, cities: int, per_city: int, seed: int) -> dict[str, Any]:
    """Write the synthetic bucket, unless its truth shows the same recipe was written already."""
    options = get_settings().storage_options()
    recipe = {"cities": cities, "per_city": per_city, "seed": seed}
    result = synth.existing(dest_uri, storage_options=options, **recipe)
    if result is None:
        result = synth.synthesize(dest_uri, storage_options=options, **recipe)
        task_logger(__name__).info("synth: wrote %d objects under %s", result.objects, dest_uri)
    else:
        task_logger(__name__).info("synth: %d objects already under %s", result.objects, dest_uri)
    return {
        "truth_uri": result.truth_uri,
        "objects": result.objects,
        "counts": result.counts,
        "cities": synth.city_names(cities),
    }


@task(name="seed-labels", cache_policy=NO_CACHE)
def seed_labels_task(truth_uri: str, store_uri: str, per_type: int, seed: int) -> dict[str, Any]:
    """Play the human labeller once: ``per_type`` labels per image type from the synth truth."""
    from housegan import labels

    options = get_settings().storage_options()
    labels_uri = labels.labels_uri(store_uri)
    present = labels.read_labels(labels_uri, options)
    seeded = present[present["labeller"] == DEMO_LABELLER]
    if len(seeded):
        counts = seeded["label"].value_counts()
        return {"labels_uri": labels_uri, "rows": len(seeded), "counts": counts.to_dict()}
    label_file = synth.write_truth_labels(
        truth_uri, per_type=per_type, seed=seed, storage_options=options
    )
    imported = labels.import_labels(label_file, store_uri, DEMO_LABELLER, options)
    return {"labels_uri": labels_uri, "rows": imported.rows, "counts": imported.counts}
