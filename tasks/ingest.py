"""Prefect task around the ingest step (``housegan.steps.ingest``): retries, progress and
counts artifacts."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_table_artifact

from housegan.config import IngestSettings, get_settings
from housegan.ingest import IngestError, IngestResult
from housegan.steps import ingest as steps
from housegan.steps.ingest import IngestInput, failure_summary
from tasks.runtime import ProgressArtifact, in_task_run, run_step, step_task, task_logger

_DEFAULTS = IngestSettings()  # decorator defaults; the flow applies the configured values


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient trouble; a missing bucket or refused credentials will not fix itself."""
    error = getattr(state, "data", None)
    return not (isinstance(error, IngestError) and not error.transient)


@step_task(
    steps.ingest_source,
    cache=False,  # the source changes under the same URI: never reuse a result
    name="ingest",
    retries=_DEFAULTS.task_retries,
    retry_delay_seconds=_DEFAULTS.task_retry_delay_s,
    retry_condition_fn=_worth_retrying,
)
def ingest_task(inputs: IngestInput) -> IngestResult:
    """Update the image manifest; objects that still failed make the task fail (and retry:
    what succeeded is published, a retry fetches only what failed)."""
    every_s = get_settings().ingest.progress_every_s
    progress = (
        ProgressArtifact("ingest-progress", "objects fetched", every_s) if in_task_run() else None
    )
    result = run_step(steps.ingest_source, inputs, progress=progress)
    task_logger(__name__).info(
        "ingest %s: listed %d, new %d, downloaded %d, counts %s -> %s",
        inputs.source_uri,
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
    failure = failure_summary(result)
    if failure is not None:
        raise IngestError(failure, transient=True)
    return result
