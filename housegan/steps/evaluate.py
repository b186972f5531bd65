"""The evaluate and promote stages: a registered generator -> an MLflow evaluation run -> the
promotion gate that moves the ``champion`` alias.

    evaluate (evaluation run nested under the training run) -> promote (champion | challenger)

Both wrap the library (``housegan.evaluate.evaluation.evaluate_and_log`` and
``housegan.evaluate.promote.promote``); promotion reuses the evaluation logged under the same
key, so evaluating first costs nothing twice. ``run_evaluate`` runs both in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from housegan.config import EmbedSettings, EvaluateSettings, Settings
from housegan.evaluate.sampling import ProgressFactory
from housegan.steps import step

Options = Mapping[str, Any] | None
PAIRS_DIR = "novelty"  # where the evaluation run keeps its nearest-pair figures


@dataclass(frozen=True)
class _Sections:
    """What ``evaluate_and_log`` and ``promote`` read of a ``Settings``: exactly the step's
    sections, so the cache key names everything the result depends on."""

    evaluate: EvaluateSettings
    embed: EmbedSettings
    store_uri: str
    mlflow_tracking_uri: str
    mlflow_experiment: str
    options: dict[str, Any]

    def storage_options(self) -> dict[str, Any]:
        return self.options


SECTIONS = ("evaluate", "embed", "store_uri", "mlflow_tracking_uri", "mlflow_experiment")


@dataclass(frozen=True)
class EvaluateInput:
    model_uri: str  # models:/NAME/VERSION (what training registered), @ALIAS, runs:/ or a folder
    dataset_uri: str | None = None  # default: the packed dataset the model was trained on


@dataclass(frozen=True)
class Evaluated:
    model_uri: str  # the version measured (an alias resolved)
    model_version: str | None
    run_id: str  # the MLflow evaluation run
    training_run_id: str | None  # the run it is nested under
    key: str  # evaluations with one key are comparable
    dataset_id: str
    copy_rate: float | None
    fd: float | None
    kid: float | None
    precision: float | None
    recall: float | None
    density: float | None
    coverage: float | None
    diversity: float | None  # within-class spread of generated over real (1 = as varied)
    diversity_min: float | None  # the same, in the least varied (city, type) cell
    cond_acc_city: float | None
    cond_acc_type: float | None
    pairs_uri: str | None  # the run's nearest-pair figures (an artifact folder); None: none drawn
    run_url: str | None  # the run's MLflow UI page, when tracking goes to a server

    def metrics(self) -> dict[str, float | None]:
        """The headline metrics, in ``SUMMARY_METRICS`` order."""
        from housegan.evaluate.evaluation import SUMMARY_METRICS

        return {name: getattr(self, name) for name in SUMMARY_METRICS}


@step(*SECTIONS)
def evaluate_model(
    inputs: EvaluateInput,
    cfg: EvaluateSettings,
    embed_cfg: EmbedSettings,
    store_uri: str,
    tracking_uri: str,
    experiment: str,
    *,
    storage_options: Options = None,
    progress: ProgressFactory | None = None,
) -> Evaluated:
    """Evaluate the model and log the run nested under its training run (``evaluate_and_log``)."""
    from housegan import tracking
    from housegan.evaluate.evaluation import SUMMARY_METRICS, evaluate_and_log

    view = _Sections(
        cfg, embed_cfg, store_uri, tracking_uri, experiment, dict(storage_options or {})
    )
    logged = evaluate_and_log(
        inputs.model_uri, view, dataset_uri=inputs.dataset_uri, progress=progress
    )
    evaluation = logged.evaluation
    summary = {name: _finite(evaluation.metrics.get(name)) for name in SUMMARY_METRICS}
    artifact_uri, url = tracking.run_location(logged.run_id, tracking_uri)
    return Evaluated(
        model_uri=evaluation.model_uri,
        model_version=logged.version.version if logged.version else None,
        run_id=logged.run_id,
        training_run_id=logged.training_run_id,
        key=evaluation.key,
        dataset_id=evaluation.dataset_id,
        **summary,
        pairs_uri=f"{artifact_uri.rstrip('/')}/{PAIRS_DIR}" if evaluation.figures else None,
        run_url=url,
    )


@dataclass(frozen=True)
class PromoteInput:
    model_uri: str  # the candidate: models:/NAME/VERSION (or @ALIAS)
    dataset_uri: str | None = None  # default: the candidate's training data


@dataclass(frozen=True)
class Promoted:
    name: str
    version: str
    decision: Literal["champion", "challenger", "unchanged"]
    reason: str
    champion_before: str | None  # the version champion pointed at before the gate
    alias: str | None  # the alias the version holds now (champion or challenger)

    @property
    def alias_uri(self) -> str | None:
        return f"models:/{self.name}@{self.alias}" if self.alias else None


@step(*SECTIONS)
def promote_model(
    inputs: PromoteInput,
    cfg: EvaluateSettings,
    embed_cfg: EmbedSettings,
    store_uri: str,
    tracking_uri: str,
    experiment: str,
    *,
    storage_options: Options = None,
    progress: ProgressFactory | None = None,
) -> Promoted:
    """The promotion gate (``promote.promote``): champion if it passes, else challenger."""
    from housegan.evaluate import promote

    view = _Sections(
        cfg, embed_cfg, store_uri, tracking_uri, experiment, dict(storage_options or {})
    )
    result = promote.promote(
        inputs.model_uri,
        view,  # type: ignore[arg-type]  # the sections promote reads
        dataset_uri=inputs.dataset_uri,
        progress=progress,
    )
    # "unchanged" means it already is the champion
    alias = promote.CHALLENGER if result.decision == "challenger" else promote.CHAMPION
    return Promoted(
        result.name, result.candidate, result.decision, result.reason, result.champion_before, alias
    )


@dataclass(frozen=True)
class EvaluateStage:
    evaluation: Evaluated
    promotion: Promoted | None


def run_evaluate(
    model_uri: str,
    settings: Settings,
    *,
    dataset_uri: str | None = None,
    promote: bool = True,
    progress: ProgressFactory | None = None,
) -> EvaluateStage:
    """Both steps in order: evaluate ``model_uri``, then (with ``promote``) gate it."""
    options = settings.storage_options()
    evaluated = evaluate_model.run(
        EvaluateInput(model_uri, dataset_uri), settings, storage_options=options, progress=progress
    )
    promoted = (
        promote_model.run(
            PromoteInput(evaluated.model_uri, dataset_uri),
            settings,
            storage_options=options,
            progress=progress,
        )
        if promote
        else None
    )
    return EvaluateStage(evaluated, promoted)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a metric that could not be measured is None."""
    return None if value is None or not math.isfinite(value) else float(value)
