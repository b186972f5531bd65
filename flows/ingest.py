"""The ingest flow: source bucket -> image manifest. Run with ``python -m flows.ingest``."""

from __future__ import annotations

import json

from prefect import flow

from housegan.config import get_settings
from housegan.ingest import IngestResult
from housegan.steps import to_json
from housegan.steps.ingest import IngestInput
from tasks.ingest import ingest_task


@flow(name="ingest")
def ingest_flow(source_uri: str | None = None, store_uri: str | None = None) -> IngestResult:
    """List the source, fetch what is new or changed, publish the image manifest."""
    settings = get_settings()
    configured = ingest_task.with_options(
        retries=settings.ingest.task_retries,
        retry_delay_seconds=settings.ingest.task_retry_delay_s,
    )
    return configured(
        IngestInput(source_uri or settings.source_uri, store_uri or settings.store_uri)
    )


if __name__ == "__main__":
    print(json.dumps(to_json(ingest_flow())))
