"""The source watcher: when enough photos land in the bucket, announce it so retraining starts.

Deployed on a schedule (``deployments/prefect.yaml``: ``watch-source``); the event it emits
triggers the ``retrain`` deployment, debounced there. It lists the bucket, or with
``watch.sqs_queue_url`` reads S3 event notifications from SQS. Below ``watch.min_new_photos``
it announces nothing (and keeps the SQS messages for the next run). Run once with
``python -m flows.watch``.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger

from housegan.config import WatchSettings, get_settings
from housegan.steps import to_json
from housegan.steps.ingest import IngestInput
from housegan.steps.watch import WatchResult, reaches_threshold
from tasks.watch import (
    acknowledge_task,
    announce_task,
    check_source_task,
    receive_notifications_task,
)


@flow(name="watch-source")
def watch_source(source_uri: str | None = None, store_uri: str | None = None) -> WatchResult:
    """Count the photos pending since the latest manifest (or on the queue); announce them
    when they reach the threshold."""
    settings = get_settings()
    inputs = IngestInput(source_uri or settings.source_uri, store_uri or settings.store_uri)
    if settings.watch.mode == "sqs":
        result = _watch_queue(inputs, settings.watch)
    else:
        result = _watch_listing(inputs, settings.watch)
    get_run_logger().info(result.summary())
    return result


def _watch_listing(inputs: IngestInput, cfg: WatchSettings) -> WatchResult:
    changes = check_source_task(inputs)
    pending = changes.to_fetch
    event_id = announce_task(inputs, pending) if reaches_threshold(pending, cfg) else None
    return WatchResult("listing", pending, cfg.min_new_photos, event_id, changes=changes)


def _watch_queue(inputs: IngestInput, cfg: WatchSettings) -> WatchResult:
    batch = receive_notifications_task(inputs)
    pending = batch.counts.photos
    if not reaches_threshold(pending, cfg):
        # Kept, not deleted: they come back after the visibility timeout and add up.
        return WatchResult("sqs", pending, cfg.min_new_photos, None, notifications=batch.counts)
    event_id = announce_task(inputs, pending)
    acknowledged = acknowledge_task(batch)  # only now: a crash before this loses nothing
    return WatchResult(
        "sqs",
        pending,
        cfg.min_new_photos,
        event_id,
        notifications=batch.counts,
        acknowledged=acknowledged,
    )


if __name__ == "__main__":
    print(json.dumps(to_json(watch_source()), indent=2))
