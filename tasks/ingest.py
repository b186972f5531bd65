"""Prefect task around ``housegan.ingest.ingest``: retries, progress and counts artifacts."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from housegan.config import IngestSettings, get_settings
from housegan.ingest import IngestError, ingest
from tasks.runtime import ProgressArtifact, in_task_run, task_logger

_DEFAULTS = IngestSettings()  # decorator defaults; the flow applies the configured values


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient trouble; a missing bucket or refused credentials will not fix itself."""
    error = getattr(state, "data", None)
    return not (isinstance(error, IngestError) and not error.transient)


@task(
    name="ingest",
    retries=_DEFAULTS.task_retries,
    retry_delay_seconds=_DEFAULTS.task_retry_delay_s,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,  # the source changes under the same URI: never reuse a result
)
def ingest_task(source_uri: str, store_uri: str) -> dict[str, Any]:
    """Update the image manifest; returns its URI and counts (``IngestResult.summary()``)."""
    settings = get_settings()
    logger = task_logger(__name__)
    progress = (
        ProgressArtifact("ingest-progress", "objects fetched", settings.ingest.progress_every_s)
        if in_task_run()
        else None
    )
    result = ingest(
        source_uri,
        store_uri,
        key_pattern=settings.key_pattern,
        limits=settings.images,
        cfg=settings.ingest,
        storage_options=settings.storage_options(),
        progress=progress,
    )
    logger.info(
        "ingest %s: listed %d, new %d, downloaded %d, counts %s -> %s",
        source_uri,
        result.listed,
        result.new,
        result.downloaded,
        result.counts,
        result.manifest_uri,
    )
    if progress is not None:  # inside a task run
        progress.finish()
        create_table_artifact(
            [{"status": status, "objects": n} for status, n in result.counts.items()],
            key="ingest-counts",
            description=(
                f"Image manifest `{result.manifest_uri}`: listed {result.listed}, "
                f"new {result.new}, downloaded {result.downloaded}, "
                f"{'published' if result.published else 'unchanged'}"
            ),
        )
    if result.failed:
        key, error = next(iter(result.failed.items()))
        # What succeeded is published; a retry fetches only the objects that failed.
        raise IngestError(
            f"{len(result.failed)} objects could not be fetched (first: {key}: {error})",
            transient=True,
        )
    return result.summary()
