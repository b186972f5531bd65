"""Prefect tasks of the source watcher: find pending photos (a listing, or S3 notifications on
SQS: ``housegan.steps.watch``), announce them as an event that the ``retrain`` deployment's
trigger turns into a full refresh, and only then acknowledge the SQS messages."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.events import Event

from housegan.config import get_settings
from housegan.ingest import SourceChanges
from housegan.notifications import NotificationBatch
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


# No retries: a retry would receive other messages while these stay hidden; they come back
# to the next run after the visibility timeout anyway.
@step_task(steps.receive_notifications, cache=False)
def receive_notifications_task(inputs: IngestInput) -> NotificationBatch:
    """Photos notified on the SQS queue since the last acknowledged batch."""
    batch = run_step(steps.receive_notifications, inputs)
    counts = batch.counts
    logger = task_logger(__name__)
    logger.info(
        "%s: %d messages, %d photos under %s, %d ignored, %d unreadable",
        get_settings().watch.sqs_queue_url,
        counts.messages,
        counts.photos,
        inputs.source_uri,
        counts.ignored,
        counts.bad,
    )
    for reason in counts.bad_examples:
        logger.warning("unreadable message left for the dead-letter queue: %s", reason)
    return batch


@task(name="acknowledge-notifications", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def acknowledge_task(batch: NotificationBatch) -> int:
    """Delete the announced batch's messages from the queue."""
    settings = get_settings()
    deleted = steps.acknowledge(batch, settings.watch, settings.s3_region)
    if deleted < len(batch.receipts):
        # Their visibility timed out (a slow run): they come back and announce again.
        task_logger(__name__).warning(
            "deleted %d of %d messages; the rest will be received again",
            deleted,
            len(batch.receipts),
        )
    return deleted


@task(name="announce-source-update", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def announce_task(inputs: IngestInput, pending: int) -> str:
    """Post ``housegan.source.updated`` for this source to the Prefect API; returns its id.

    Posted, not ``emit_event``-ed: that only queues the event for a background websocket, and
    the SQS messages may be deleted only once the server has accepted it (HTTP 204).
    """
    event = Event(
        event=SOURCE_UPDATED_EVENT,
        resource={
            "prefect.resource.id": f"{SOURCE_RESOURCE_PREFIX}{inputs.source_uri}",
            "prefect.resource.name": inputs.source_uri,
        },
        payload={**to_json(inputs), "pending": pending},
    )
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()
    return str(event.id)
