"""The ingest stage: source bucket -> a new image manifest version (``housegan.ingest`` works).

``housegan ingest`` runs ``ingest_source``; ``tasks.ingest`` wraps the same step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from housegan import ingest
from housegan.config import ImageLimits, IngestSettings
from housegan.ingest import IngestResult
from housegan.steps import step


@dataclass(frozen=True)
class IngestInput:
    source_uri: str  # raw photos (read only)
    store_uri: str  # where the image manifest collection lives


@step("ingest", "images", "key_pattern", writes=lambda result: [result.manifest_uri])
def ingest_source(
    inputs: IngestInput,
    cfg: IngestSettings,
    limits: ImageLimits,
    key_pattern: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: ingest.Progress | None = None,
) -> IngestResult:
    """List the source, fetch what is new or changed, publish the manifest if anything changed."""
    return ingest.ingest(
        inputs.source_uri,
        inputs.store_uri,
        key_pattern=key_pattern,
        limits=limits,
        cfg=cfg,
        storage_options=storage_options,
        progress=progress,
    )


def failure_summary(result: IngestResult) -> str | None:
    """One line about the objects that still failed after every retry, or None."""
    if not result.failed:
        return None
    key, error = next(iter(result.failed.items()))
    return f"{len(result.failed)} objects could not be fetched (first: {key}: {error})"
