"""Prefect tasks of the source watcher: list the bucket, and announce new photos as an event
that the ``retrain`` deployment's trigger turns into a full refresh."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from housegan.config import get_settings
from housegan.ingest import pending_changes
from tasks.runtime import task_logger

SOURCE_UPDATED_EVENT = "housegan.source.updated"
SOURCE_RESOURCE_PREFIX = "housegan.source."


@task(name="check-source", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE)
def check_source_task(source_uri: str, store_uri: str) -> dict[str, Any]:
    """How many objects an ingest would fetch now (a listing only: nothing is downloaded)."""
    settings = get_settings()
    changes = pending_changes(source_uri, store_uri, settings.ingest, settings.storage_options())
    task_logger(__name__).info(
        "%s: %d listed, %d new or changed since %s",
        source_uri,
        changes.listed,
        changes.to_fetch,
        changes.manifest_uri,
    )
    return asdict(changes)


@task(name="announce-source-update", cache_policy=NO_CACHE)
def announce_task(source_uri: str, store_uri: str, changes: dict[str, Any]) -> str | None:
    """Emit ``housegan.source.updated`` for this source; returns the event id."""
    event = emit_event(
        event=SOURCE_UPDATED_EVENT,
        resource={
            "prefect.resource.id": f"{SOURCE_RESOURCE_PREFIX}{source_uri}",
            "prefect.resource.name": source_uri,
        },
        payload={"source_uri": source_uri, "store_uri": store_uri, **changes},
    )
    return str(event.id) if event else None
