"""The Runs page's logic: recent MLflow runs with their funnel, champion against previous, and
where the MLflow and Prefect UIs are."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from housegan.config import Settings
from housegan.curate import STAGES as FUNNEL_STAGES

TRAIN_METRICS = ("progress/kimg", "loss/g", "loss/d")
# The training-run metrics worth comparing between models (the rest are in MLflow).
COMPARED_TRAINING = (
    "progress/kimg",
    "loss/g",
    "loss/d",
    "d/real",
    "d/fake",
    "speed/img_per_s",
)
CHAMPION, PREVIOUS = "champion", "previous"


def mlflow_ui_url(settings: Settings) -> str | None:
    """Configured, else the tracking server itself, else the local stack's MLflow."""
    if settings.app.mlflow_ui_url:
        return settings.app.mlflow_ui_url.rstrip("/")
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        return settings.mlflow_tracking_uri.rstrip("/")
    return _stack_endpoint(settings, "mlflow")


def prefect_ui_url(settings: Settings) -> str | None:
    """Configured, else PREFECT_API_URL without ``/api``, else the local stack's Prefect."""
    if settings.app.prefect_ui_url:
        return settings.app.prefect_ui_url.rstrip("/")
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if api.startswith(("http://", "https://")):
        return api.removesuffix("/api")
    return _stack_endpoint(settings, "prefect")


def _stack_endpoint(settings: Settings, name: str) -> str | None:
    from housegan import stack

    try:
        services = stack.status(settings.stack.dir)
    except (OSError, ValueError):  # an unreadable state file: no link rather than no page
        return None
    service, alive = services.get(name, (None, False))
    return service.endpoint if service is not None and alive else None


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def runs_table(runs: Sequence[Any], ui_url: str | None) -> pd.DataFrame:
    """One row per run (``tracking.RunSummary``): what, when, how it went, its funnel (curate
    runs) or its budget and losses (train runs), and a link into the MLflow UI."""
    from housegan import tracking

    rows = []
    for run in runs:
        started, ended = _time(run.start_time), _time(run.end_time)
        row: dict[str, Any] = {
            "run": run.name,
            "stage": run.stage or "",
            "status": run.status,
            "started": started,
            "minutes": round((ended - started).total_seconds() / 60, 1)
            if started and ended
            else None,
        }
        row |= {stage: run.metrics.get(f"funnel.{stage}") for stage in FUNNEL_STAGES}
        row |= {name: run.metrics.get(name) for name in TRAIN_METRICS}
        row["link"] = tracking.run_url(ui_url, run.experiment_id, run.run_id) if ui_url else None
        rows.append(row)
    columns = ["run", "stage", "status", "started", "minutes", *FUNNEL_STAGES, *TRAIN_METRICS]
    table = pd.DataFrame(rows, columns=[*columns, "link"])
    # Columns no shown run has (e.g. the funnel when no curate run is among them) are left out.
    return table.dropna(axis=1, how="all")


def latest_of_stage(runs: Sequence[Any], stage: str) -> Any | None:
    return next((run for run in runs if run.stage == stage), None)


def funnel_totals(run: Any) -> pd.DataFrame:
    """Photos reaching each funnel stage in a curate run (its ``funnel.*`` metrics)."""
    counts = [run.metrics.get(f"funnel.{stage}") for stage in FUNNEL_STAGES]
    return pd.DataFrame({"stage": FUNNEL_STAGES, "photos": counts}).dropna()


def compare_versions(champion: Any, previous: Any | None) -> pd.DataFrame:
    """Champion's metrics beside the previous model's (``tracking.VersionSummary``): every
    evaluation metric, then the main training ones; ``change`` = champion - previous."""
    rows = []
    for source in ("evaluation", "metrics"):
        ours = getattr(champion, source)
        theirs = getattr(previous, source) if previous is not None else {}
        names = sorted(set(ours) | set(theirs))
        if source == "metrics":
            names = [name for name in COMPARED_TRAINING if name in names]
        for name in names:
            a, b = ours.get(name), theirs.get(name)
            rows.append(
                {
                    "from": "evaluation" if source == "evaluation" else "training",
                    "metric": name,
                    CHAMPION: a,
                    PREVIOUS: b,
                    "change": a - b if a is not None and b is not None else None,
                }
            )
    return pd.DataFrame(rows, columns=["from", "metric", CHAMPION, PREVIOUS, "change"])


def version_line(version: Any) -> str:
    """``v3 · dataset 1a2b... · run 9f8e...`` for a ``tracking.VersionSummary``."""
    parts = [f"version {version.version}"]
    if version.dataset_id:
        parts.append(f"dataset {version.dataset_id}")
    if version.run_id:
        parts.append(f"run {version.run_id[:12]}")
    return " · ".join(parts)


def aliased_versions(name: str, aliases: Sequence[str], tracking_uri: str) -> dict[str, Any]:
    """The ``tracking.VersionSummary`` each alias points at; aliases not set are left out."""
    from mlflow.exceptions import MlflowException

    from housegan import tracking
    from housegan.app.problems import is_missing

    found = {}
    for alias in aliases:
        try:
            found[alias] = tracking.describe_version(name, alias=alias, tracking_uri=tracking_uri)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
    return found
