"""The source watcher: has anything landed in the bucket since the latest image manifest?

A listing only, compared with the latest manifest by (key, etag): nothing is downloaded.
``tasks.watch`` wraps ``check_source`` and announces a positive answer as a Prefect event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from housegan import ingest
from housegan.config import IngestSettings
from housegan.ingest import SourceChanges
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


@dataclass(frozen=True)
class WatchResult:
    changes: SourceChanges
    event_id: str | None  # the announcement emitted, None when nothing changed
