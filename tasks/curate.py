"""Prefect tasks around the computing curation steps (``housegan.steps.curate``): resolve the
inputs, fine-tune, quality, cluster, types and the filtering funnel.

Each is cached by its step's inputs and settings sections (``tasks.runtime.step_task``);
publishing and MLflow logging are in ``tasks.curate_publish``.
"""

from __future__ import annotations

from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from housegan.cluster import ClusterResult
from housegan.config import CurateSettings, get_settings
from housegan.curate import FilterResult
from housegan.finetune import FinetuneResult
from housegan.quality import QualityResult
from housegan.steps import curate as steps
from housegan.steps.curate import (
    ClusterInput,
    CurateInput,
    FilterInput,
    ManifestInput,
    TypesInput,
    TypesResult,
)
from tasks.curate_publish import classifier_markdown
from tasks.runtime import (
    ProgressArtifact,
    in_task_run,
    run_store_step,
    step_task,
    task_logger,
    with_retry_delay,
)

P = ParamSpec("P")
R = TypeVar("R")
_DELAY_S = CurateSettings().task_retry_delay_s  # the default; ``configured`` applies the set one


def configured(task: Task[P, R]) -> Task[P, R]:
    """A curate task with the configured ``curate.task_retry_delay_s``."""
    return with_retry_delay(task, "curate")


@task(name="resolve-curation", retries=2, retry_delay_seconds=_DELAY_S, cache_policy=NO_CACHE)
def resolve_task(
    manifest_uri: str | None, store_uri: str, labels_uri: str | None = None
) -> CurateInput:
    """The image manifest version to curate (a given file, or a collection's latest)."""
    options = get_settings().storage_options()
    return CurateInput.resolve(manifest_uri, store_uri, labels_uri, options)


@step_task(steps.finetune_embedder, retries=1, retry_delay_seconds=_DELAY_S)
def finetune_task(inputs: CurateInput) -> FinetuneResult | None:
    tuned = run_store_step(steps.finetune_embedder, inputs)
    if tuned is not None:
        task_logger(__name__).info(
            "fine-tuned VGG16 on %d photos (%s): held-out accuracy %s -> %s",
            tuned.train_photos,
            ", ".join(tuned.classes),
            tuned.holdout_accuracy,
            tuned.weights_uri,
        )
    return tuned


@step_task(steps.score_quality, retries=2, retry_delay_seconds=_DELAY_S)
def quality_task(inputs: ManifestInput) -> QualityResult:
    progress = ProgressArtifact("quality-progress", "photos scored") if in_task_run() else None
    scored = run_store_step(steps.score_quality, inputs, progress=progress)
    task_logger(__name__).info("quality: %d scored, %d reused", scored.computed, scored.reused)
    return scored


@step_task(steps.cluster_photos, retries=1, retry_delay_seconds=_DELAY_S)
def cluster_task(inputs: ClusterInput) -> ClusterResult:
    clusters = run_store_step(steps.cluster_photos, inputs)
    task_logger(__name__).info(
        "clusters: k=%d sizes %s silhouette %s", clusters.k, clusters.sizes, clusters.silhouette
    )
    if in_task_run():
        rows = [
            {"cluster": c, "photos": clusters.sizes.get(c, 0), "gallery": uri}
            for c, uri in clusters.galleries.items()
        ]
        create_table_artifact(rows, key="cluster-galleries", description="Name clusters here")
    return clusters


@step_task(steps.assign_types, retries=1, retry_delay_seconds=_DELAY_S)
def types_task(inputs: TypesInput) -> TypesResult:
    types = run_store_step(steps.assign_types, inputs)
    accuracy = (types.classifier or {}).get("cv_accuracy")
    task_logger(__name__).info(
        "types: %s from %d labels; held-out accuracy %s",
        types.type_counts,
        types.labels_used,
        accuracy,
    )
    if in_task_run():
        create_markdown_artifact(classifier_markdown(types), key="image-types")
    return types


@step_task(steps.filter_photos, retries=1, retry_delay_seconds=_DELAY_S)
def filter_task(inputs: FilterInput) -> FilterResult:
    filtered = run_store_step(steps.filter_photos, inputs)
    task_logger(__name__).info("funnel %s; dropped %s", filtered.funnel, filtered.drop_counts)
    return filtered
