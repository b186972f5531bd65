"""Prefect tasks of a refresh's lineage (``housegan.steps.refresh``): open the parent MLflow run,
record ingest's counts under it, and close it with the totals or the error."""

from __future__ import annotations

from dataclasses import replace

from prefect.artifacts import create_link_artifact
from prefect.runtime import flow_run

from housegan import tracking
from housegan.config import get_settings
from housegan.ingest import IngestResult
from housegan.steps import refresh as steps
from housegan.steps.refresh import RefreshInput, RefreshOutcome
from tasks.runtime import in_task_run, run_step, step_task, task_logger


@step_task(steps.open_refresh, cache=False, retries=2, retry_delay_seconds=5)
def open_refresh_task(inputs: RefreshInput) -> str:
    """The refresh's parent MLflow run (linked from the flow run's artifacts)."""
    inputs = replace(inputs, flow_run_id=flow_run.get_id(), flow_run_name=flow_run.get_name())
    run_id = run_step(steps.open_refresh, inputs)
    tracking_uri = get_settings().mlflow_tracking_uri
    _, url = tracking.run_location(run_id, tracking_uri)
    task_logger(__name__).info("refresh run %s (%s)", run_id, url or tracking_uri)
    if in_task_run() and url:
        create_link_artifact(url, link_text="MLflow: this refresh", key="refresh-run")
    return run_id


@step_task(steps.record_ingest, cache=False, retries=2, retry_delay_seconds=5)
def record_ingest_task(ingested: IngestResult, parent_run_id: str) -> str:
    return run_step(steps.record_ingest, ingested, parent_run_id=parent_run_id)


@step_task(steps.close_refresh, cache=False, retries=2, retry_delay_seconds=5)
def close_refresh_task(outcome: RefreshOutcome) -> RefreshOutcome:
    closed = run_step(steps.close_refresh, outcome)
    task_logger(__name__).info(
        "refresh run %s ended %s", outcome.parent_run_id, "FAILED" if outcome.error else "FINISHED"
    )
    return closed
