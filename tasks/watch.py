"""Prefect tasks of the source watcher: list the bucket (``housegan.steps.watch``), and
announce new photos as an event that the ``retrain`` deployment's trigger turns into a full
refresh."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from housegan.ingest import SourceChanges
from housegan.steps import to_json
from housegan.steps import watch as steps
from housegan.steps.ingest import IngestInput
from tasks.runtime import run_step, step_task, task_logger

SOURCE_UPDATED_EVENT = "housegan.source.updated"
SOURCE_RESOURCE_PREFIX = "housegan.source."


@step_task(steps.check_source, cache=False, retries=2, retry_delay_seconds=30)
def check_source_task(inputs: IngestInput) -> SourceChanges:
    """How many objects an ingest would fetch now (a listing only: nothing is downloaded)."""
    changes = run_step(steps.check_source, inputs)
    task_logger(__name__).info(
        "%s: %d listed, %d new or changed since %s",
        inputs.source_uri,
        changes.listed,
        changes.to_fetch,
        changes.manifest_uri,
    )
    return changes


@task(name="announce-source-update", cache_policy=NO_CACHE)
def announce_task(inputs: IngestInput, changes: SourceChanges) -> str | None:
    """Emit ``housegan.source.updated`` for this source; returns the event id."""
    event = emit_event(
        event=SOURCE_UPDATED_EVENT,
        resource={
            "prefect.resource.id": f"{SOURCE_RESOURCE_PREFIX}{inputs.source_uri}",
            "prefect.resource.name": inputs.source_uri,
        },
        payload={**to_json(inputs), **to_json(changes)},
    )
    return str(event.id) if event else None
