"""The source watcher: when photos land in the bucket, announce it so retraining starts.

Deployed on a schedule (``deployments/prefect.yaml``: ``watch-source``); the event it emits
triggers the ``retrain`` deployment. Run once with ``python -m flows.watch``.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from housegan.config import get_settings
from tasks.watch import announce_task, check_source_task


@flow(name="watch-source")
def watch_source(source_uri: str | None = None, store_uri: str | None = None) -> dict[str, Any]:
    """List the source; if anything is new or changed since the latest manifest, announce it."""
    settings = get_settings()
    source = source_uri or settings.source_uri
    store = store_uri or settings.store_uri
    changes = check_source_task(source, store)
    event_id = announce_task(source, store, changes) if changes["to_fetch"] else None
    return {**changes, "event_id": event_id}


if __name__ == "__main__":
    print(json.dumps(watch_source(), indent=2))
