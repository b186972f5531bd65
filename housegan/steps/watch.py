"""The source watcher: have enough photos landed in the bucket to be worth a retrain?

Two ways to know, chosen by ``watch.sqs_queue_url`` (``WatchSettings.mode``):

* ``listing``: ``check_source`` lists the source and compares it with the latest manifest by
  (key, etag); nothing is downloaded.
* ``sqs``: ``receive_notifications`` reads S3 event notifications from an SQS queue
  (``housegan.notifications``); ``tasks.watch`` deletes them only after the announcement.

Either way the answer is a count of pending photos, announced (``tasks.watch``) only when it
reaches ``watch.min_new_photos``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from housegan import ingest, notifications
from housegan.config import IngestSettings, WatchMode, WatchSettings
from housegan.ingest import SourceChanges
from housegan.notifications import NotificationBatch, NotificationCounts
from housegan.steps import step
from housegan.steps.ingest import IngestInput


@step("ingest")
def check_source(
    inputs: IngestInput,
    cfg: IngestSettings,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> SourceChanges:
    """How many objects an ingest would fetch now (new or changed since the latest manifest)."""
    return ingest.pending_changes(inputs.source_uri, inputs.store_uri, cfg, storage_options)


@step("watch", "ingest", "s3_region")
def receive_notifications(
    inputs: IngestInput,
    cfg: WatchSettings,
    ingest_cfg: IngestSettings,
    s3_region: str | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> NotificationBatch:
    """Photos notified on ``watch.sqs_queue_url`` under the source (messages not deleted)."""
    if not cfg.sqs_queue_url or not inputs.source_uri.startswith("s3://"):
        raise ValueError(
            f"SQS mode needs watch.sqs_queue_url and an s3:// source, got "
            f"{cfg.sqs_queue_url!r} and {inputs.source_uri!r}"
        )
    client = notifications.sqs_client(cfg, s3_region)
    return notifications.receive_batch(client, cfg, inputs.source_uri, ingest_cfg.skip_prefixes)


def acknowledge(batch: NotificationBatch, cfg: WatchSettings, s3_region: str | None) -> int:
    """Delete a batch's photo messages (after the announcement); returns how many went."""
    client = notifications.sqs_client(cfg, s3_region)
    return notifications.delete_batch(client, cfg, batch.receipts)


def reaches_threshold(pending: int, cfg: WatchSettings) -> bool:
    return pending >= cfg.min_new_photos


@dataclass(frozen=True)
class WatchResult:
    mode: WatchMode
    pending: int  # photos new or changed (listing) or notified (sqs)
    min_new_photos: int
    event_id: str | None  # the announcement emitted, None below the threshold
    changes: SourceChanges | None = None  # listing mode
    notifications: NotificationCounts | None = None  # sqs mode
    acknowledged: int = 0  # sqs mode: messages deleted after the announcement

    def summary(self) -> str:
        """One line for the log."""
        verdict = (
            f"announced ({self.event_id})"
            if self.event_id
            else f"threshold of {self.min_new_photos} not reached, nothing announced"
        )
        return f"{self.pending} photos pending ({self.mode}): {verdict}"
