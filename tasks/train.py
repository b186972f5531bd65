"""Prefect tasks around the train steps (``housegan.steps.train``): pack the dataset, train +
log + register the model. Both return small records (URIs, ids, counts), never arrays or
networks, so each task can run alone, be retried or move to a GPU worker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from housegan.config import get_settings
from housegan.gan.data import PreparedDataset
from housegan.steps import to_json
from housegan.steps import train as steps
from housegan.steps.train import PrepareInput, Trained, TrainInput
from tasks.runtime import ProgressArtifact, in_task_run, run_step, step_task, task_logger


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """A missing manifest or one without trainable rows will not fix itself on retry."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, FileNotFoundError | ValueError)


# prepare is content-addressed: a rerun finds <store>/datasets/<id>/ and only reads rows.
@step_task(
    steps.prepare_dataset,
    cache=False,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_transient,
)
def prepare_task(inputs: PrepareInput) -> PreparedDataset:
    progress = ProgressArtifact("prepare-progress", "images packed") if in_task_run() else None
    dataset = run_step(steps.prepare_dataset, inputs, progress=progress)
    task_logger(__name__).info("packed %s", dataset)
    return dataset


def _not_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """A retry resumes from the newest checkpoint; divergence would only repeat itself."""
    from housegan.gan.train import TrainingDiverged

    return not isinstance(state.result(raise_on_failure=False), TrainingDiverged)


# Training is the expensive, side-effecting part: never skipped by a cache.
@step_task(
    steps.train_model,
    cache=False,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_not_diverged,
)
def train_task(inputs: TrainInput) -> Trained:
    """A retry resumes from the newest checkpoint in ``out_dir`` and continues the MLflow run."""
    from housegan.gan.train import total_kimg

    context = TaskRunContext.get()
    if context is not None and context.task_run.run_count > 1:
        inputs = replace(inputs, resume=True)
    cfg = inputs.overrides.apply(get_settings().gan)
    reporter = _TrainProgress(total_kimg(cfg)) if context is not None else None
    trained = run_step(steps.train_model, inputs, reporter=reporter)
    task_logger(__name__).info("trained %s", trained)
    if reporter is not None:
        reporter.finish()
        create_markdown_artifact(
            key="gan-model", markdown=_model_markdown(trained), description="the trained generator"
        )
    return trained


def _model_markdown(trained: Trained) -> str:
    lines = [
        "| | |",
        "| --- | --- |",
        *(f"| {key} | `{value}` |" for key, value in to_json(trained).items()),
        f"| tracking | `{get_settings().mlflow_tracking_uri}` |",
        "",
        f"Sample grids: `{trained.samples_uri}`. Generate with "
        f"`housegan generate --model {trained.model_uri} --city C --image-type T --seed 0`.",
    ]
    return "\n".join(lines)


class _TrainProgress(ProgressArtifact):
    """The training loop's second reporter: kimg progress and a log line per report."""

    def __init__(self, total_kimg: float) -> None:
        super().__init__("train-progress", "kimg trained")
        self.total_kimg = total_kimg

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if "progress/kimg" not in metrics:
            return
        self.update(metrics["progress/kimg"], self.total_kimg)
        task_logger(__name__).info(
            "step %d  kimg %.2f  loss G %.3f  D %.3f  %.0f img/s",
            step,
            metrics["progress/kimg"],
            metrics.get("loss/g", float("nan")),
            metrics.get("loss/d", float("nan")),
            metrics.get("speed/img_per_s", float("nan")),
        )

    def image(self, name: str, image: Any, step: int) -> None:
        pass


@task(name="sample-grid", cache_policy=NO_CACHE)
def sample_grid_task(model_uri: str, path: str, seed: int = 0, per_class: int = 8) -> str:
    """Draw every (city, type) of the model into one labelled PNG at ``path`` (local)."""
    from pathlib import Path

    from housegan import tracking
    from housegan.gan import serving

    model = tracking.load_generator_model(model_uri, get_settings().mlflow_tracking_uri)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    serving.class_grid(model, seed, per_class).save(out)
    task_logger(__name__).info("sample grid of %s -> %s", model_uri, out)
    return str(out)
