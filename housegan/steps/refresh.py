"""A full refresh's lineage in MLflow: one parent run per refresh, every stage's run nested under
it (ingest's counts, the curation, the training -> its evaluations), and the refresh's totals
(photos, GPU minutes, the decision) on the parent when it ends.

The parent is created and ended by id, not held as MLflow's active run: the training may log
its run from another machine (the ``gpu`` pool's worker), given only the parent's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from housegan import tracking
from housegan.ingest import IngestResult
from housegan.steps import step
from housegan.steps.curate import CurateResult
from housegan.steps.evaluate import Evaluated, Promoted
from housegan.steps.train import Trained
from housegan.tracking import RefreshStatus

Options = Mapping[str, Any] | None
FLOW_RUN_TAG = "prefect.flow_run_id"  # on the parent run: the Prefect run that made it
REFRESH_SUMMARY = "refresh.json"  # the parent run's artifact: every stage's result


@dataclass(frozen=True)
class RefreshInput:
    """What a refresh was asked to do (its Prefect parameters, resolved)."""

    source_uri: str
    store_uri: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    cities: tuple[str, ...] | None = None
    image_size: int | None = None
    kimg: float | None = None
    max_minutes: float | None = None
    train: bool = True
    promote: bool = True


@dataclass(frozen=True)
class RefreshOutcome:
    """Every stage's result of one refresh; a stage that did not run is None."""

    parent_run_id: str
    ingest: IngestResult | None = None
    curate: CurateResult | None = None
    train: Trained | None = None
    evaluate: Evaluated | None = None
    promote: Promoted | None = None
    error: str | None = None  # why the refresh failed, in one line

    def by_stage(self) -> dict[str, Any]:
        """Each stage's result by name, and the parent run's id (what the flow returns)."""
        stages = ("ingest", "curate", "train", "evaluate", "promote")
        return {name: getattr(self, name) for name in stages} | {
            "mlflow_run_id": self.parent_run_id
        }


@step("mlflow_tracking_uri", "mlflow_experiment")
def open_refresh(
    inputs: RefreshInput, tracking_uri: str, experiment: str, *, storage_options: Options = None
) -> str:
    """Create the refresh's parent run; returns its id."""
    name = f"refresh-{inputs.flow_run_name}" if inputs.flow_run_name else "refresh"
    params = {k: v for k, v in asdict(inputs).items() if k not in ("flow_run_id", "flow_run_name")}
    tags = {FLOW_RUN_TAG: inputs.flow_run_id} if inputs.flow_run_id else {}
    return tracking.start_refresh_run(tracking_uri, experiment, name, params, tags)


@step("mlflow_tracking_uri")
def record_ingest(
    ingested: IngestResult,
    tracking_uri: str,
    *,
    parent_run_id: str,
    storage_options: Options = None,
) -> str:
    """Ingest keeps no run of its own: its counts become a run nested under the refresh."""
    metrics = {f"photos/{status}": count for status, count in ingested.counts.items()}
    metrics |= {
        "photos/listed": ingested.listed,
        "photos/new": ingested.new,
        "photos/downloaded": ingested.downloaded,
        "photos/failed": len(ingested.failed),
    }
    params = {"manifest_uri": ingested.manifest_uri, "published": ingested.published}
    return tracking.log_stage_run(parent_run_id, "ingest", params, metrics, tracking_uri)


def totals(outcome: RefreshOutcome) -> dict[str, float | None]:
    """The parent run's metrics: what came in, what was kept, what training cost."""
    ingested, curated, trained = outcome.ingest, outcome.curate, outcome.train
    funnel = curated.filter.funnel if curated else {}
    return {
        "photos/new": ingested.new if ingested else None,
        "photos/curated": list(funnel.values())[-1] if funnel else None,
        "cost/gpu_minutes": trained.gpu_minutes if trained else 0.0,
        "train/kimg": trained.kimg if trained else None,
        **(
            {f"evaluate/{k}": v for k, v in outcome.evaluate.metrics().items()}
            if outcome.evaluate
            else {}
        ),
    }


@step("mlflow_tracking_uri")
def close_refresh(
    outcome: RefreshOutcome, tracking_uri: str, *, storage_options: Options = None
) -> RefreshOutcome:
    """End the parent run: FINISHED with its totals and summary, or FAILED with the error."""
    from housegan.steps import to_json

    status: RefreshStatus = "FAILED" if outcome.error else "FINISHED"
    tags = {"error": outcome.error[:5000]} if outcome.error else {}
    if outcome.promote is not None:
        tags[tracking.PROMOTION_DECISION_TAG] = outcome.promote.decision
    tracking.log_dict_to_run(outcome.parent_run_id, to_json(outcome), REFRESH_SUMMARY, tracking_uri)
    tracking.end_refresh_run(outcome.parent_run_id, totals(outcome), status, tracking_uri, tags)
    return outcome


def read_outcome(flow_run_id: str, tracking_uri: str, experiment: str) -> RefreshOutcome:
    """What the refresh run ``flow_run_id`` (perhaps on another machine) recorded at its end."""
    from housegan.steps import from_json

    run_id = tracking.find_run_by_tag(experiment, FLOW_RUN_TAG, flow_run_id, tracking_uri)
    if run_id is None:
        raise LookupError(f"no refresh run in MLflow experiment {experiment!r} for {flow_run_id}")
    data = tracking.load_dict_artifact(run_id, REFRESH_SUMMARY, tracking_uri)
    return from_json(RefreshOutcome, data)
