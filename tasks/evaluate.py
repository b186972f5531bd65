"""Prefect tasks around the evaluate and promote steps (``housegan.steps.evaluate``).

Neither is cached: evaluation logs an MLflow run and tags the version, promotion moves registry
aliases. A rerun of evaluate logs a second run with the same key; promote reuses the newest."""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from housegan.evaluate.sampling import ProgressFactory
from housegan.steps import evaluate as steps
from housegan.steps.evaluate import Evaluated, EvaluateInput, Promoted, PromoteInput
from tasks.runtime import ProgressArtifact, in_task_run, run_step, step_task, task_logger


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """An unknown model, a missing dataset or bad settings will not fix themselves on retry."""
    from mlflow.exceptions import MlflowException

    error = state.result(raise_on_failure=False)
    return not isinstance(error, FileNotFoundError | ValueError | MlflowException)


@step_task(
    steps.evaluate_model,
    cache=False,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_transient,
)
def evaluate_task(inputs: EvaluateInput) -> Evaluated:
    evaluated = run_step(steps.evaluate_model, inputs, progress=_progress("evaluate"))
    task_logger(__name__).info("evaluated %s: %s", evaluated.model_uri, metrics_line(evaluated))
    if in_task_run():
        create_table_artifact(
            key="evaluation-metrics",
            table=[{"metric": k, "value": v} for k, v in evaluated.metrics().items()],
            description=f"headline metrics of {evaluated.model_uri}",
        )
        create_markdown_artifact(
            key="evaluation", markdown=_evaluation_markdown(evaluated), description="evaluation"
        )
    return evaluated


@step_task(
    steps.promote_model,
    cache=False,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_transient,
)
def promote_task(inputs: PromoteInput) -> Promoted:
    promoted = run_step(steps.promote_model, inputs, progress=_progress("promote"))
    task_logger(__name__).info(
        "%s version %s: %s (%s)",
        promoted.name,
        promoted.version,
        promoted.decision,
        promoted.reason,
    )
    if in_task_run():
        create_markdown_artifact(
            key="promotion",
            markdown=_promotion_markdown(promoted),
            description="the promotion gate's decision",
        )
    return promoted


def metrics_line(evaluated: Evaluated) -> str:
    """``copy_rate=0.000  fd=12.3  ...``: the headline metrics on one line."""
    return "  ".join(
        f"{name}={'n/a' if value is None else f'{value:.4g}'}"
        for name, value in evaluated.metrics().items()
    )


def _evaluation_markdown(evaluated: Evaluated) -> str:
    lines = [
        f"Evaluation of `{evaluated.model_uri}` on dataset `{evaluated.dataset_id}` "
        f"(key `{evaluated.key}`).",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(
            f"| {k} | {'n/a' if v is None else f'{v:.4g}'} |"
            for k, v in evaluated.metrics().items()
        ),
        "",
        "MLflow evaluation run: "
        + (
            f"[{evaluated.run_id}]({evaluated.run_url})"
            if evaluated.run_url
            else f"`{evaluated.run_id}`"
        )
        + (f", nested under `{evaluated.training_run_id}`" if evaluated.training_run_id else ""),
    ]
    if evaluated.pairs_uri:
        lines.append(f"Nearest (generated, training) pairs: `{evaluated.pairs_uri}`")
    return "\n".join(lines)


def _promotion_markdown(promoted: Promoted) -> str:
    return "\n".join(
        [
            f"**{promoted.name} version {promoted.version}: {promoted.decision}**",
            "",
            promoted.reason,
            "",
            f"Champion before: `{promoted.champion_before}`. "
            + (f"Now `{promoted.alias_uri}`." if promoted.alias_uri else ""),
        ]
    )


def _progress(stage: str) -> ProgressFactory | None:
    """One progress artifact per phase of the evaluation (in a task run only)."""
    if not in_task_run():
        return None

    def make(phase: str, total: int):
        key = f"{stage}-{re.sub(r'[^a-z0-9]+', '-', phase.lower()).strip('-')}"
        artifact = ProgressArtifact(key, f"{stage}: {phase}")
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            artifact.update(done[0], total)

        return update

    return make
