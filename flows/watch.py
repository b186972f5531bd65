"""The source watcher: when photos land in the bucket, announce it so retraining starts.

Deployed on a schedule (``deployments/prefect.yaml``: ``watch-source``); the event it emits
triggers the ``retrain`` deployment. Run once with ``python -m flows.watch``.
"""

from __future__ import annotations

import json

from prefect import flow

from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.ingest import IngestInput
from housegan.steps.watch import WatchResult
from tasks.watch import announce_task, check_source_task


@flow(name="watch-source")
def watch_source(source_uri: str | None = None, store_uri: str | None = None) -> WatchResult:
    """List the source; if anything is new or changed since the latest manifest, announce it."""
    settings = get_settings()
    inputs = IngestInput(source_uri or settings.source_uri, store_uri or settings.store_uri)
    changes = check_source_task(inputs)
    event_id = announce_task(inputs, changes) if changes.changed else None
    return WatchResult(changes, event_id)


if __name__ == "__main__":
    print(json.dumps(to_json(watch_source()), indent=2))
