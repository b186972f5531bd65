"""Prefect tasks around the train steps (``housegan.steps.train``): pack the dataset, train +
log + register the model. Both return small records (URIs, ids, counts), never arrays or
networks, so each task can run alone, be retried or move to a GPU worker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal
from uuid import UUID

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


Placement = Literal["gpu-pool", "in-process"]


@task(name="train-placement", cache_policy=NO_CACHE)
def train_placement_task() -> Placement:
    """Where the refresh trains: the train deployment's pool when a worker is online there
    (``orchestration.train_on``), else in this process, and the log says why."""
    cfg = get_settings().orchestration
    if cfg.train_on == "in-process":
        return "in-process"
    unavailable = _pool_unavailable(cfg.train_deployment)
    if unavailable is None:
        task_logger(__name__).info("training on the pool of deployment %s", cfg.train_deployment)
        return "gpu-pool"
    if cfg.train_on == "gpu-pool":
        raise RuntimeError(f"orchestration.train_on='gpu-pool' but {unavailable}")
    task_logger(__name__).warning("%s: training in-process on this worker instead", unavailable)
    return "in-process"


def _pool_unavailable(deployment_name: str) -> str | None:
    """Why the deployment cannot take a run now (no such deployment, no online worker on its
    pool), or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return f"no deployment {deployment_name!r} on this Prefect server"
        pool = deployment.work_pool_name
        if pool is None:
            return f"deployment {deployment_name!r} has no work pool"
        workers = client.read_workers_for_work_pool(pool)
    if not any(worker.status == WorkerStatus.ONLINE for worker in workers):
        return f"no worker is online on work pool {pool!r} (deployment {deployment_name})"
    return None


@task(name="warm-start", cache_policy=NO_CACHE)
def warm_start_task(dataset: PreparedDataset) -> str | None:
    """The champion's checkpoint when its labels are this dataset's (a warm start), else None."""
    settings = get_settings()
    found = steps.warm_start_from(dataset, settings, settings.storage_options())
    task_logger(__name__).info(
        "warm start from %s" if found else "cold start: %s has no champion with the same labels",
        found or dataset.dataset_id,
    )
    return found


@task(name="pool-training-result", cache_policy=NO_CACHE)
def pool_training_result_task(run_id: str, out_dir: str) -> Trained:
    """The record of a training run on the pool, once it COMPLETED; a run that failed, crashed
    or is still going after the timeout fails this task with one line saying which."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(run_id))
    state = flow_run.state
    if state is not None and state.is_completed():
        trained = steps.read_trained(out_dir, get_settings().storage_options())
        task_logger(__name__).info("trained on the pool: %s", trained)
        return trained
    if state is None or not state.is_final():
        _cancel(flow_run.id)
        minutes = get_settings().orchestration.train_timeout_minutes
        raise TimeoutError(
            f"train run {flow_run.name} did not finish within {minutes:g} minutes "
            f"(state {state.name if state else 'unknown'}); it was cancelled"
        )
    raise RuntimeError(f"train run {flow_run.name} ended {state.name}: {state.message}")


def _cancel(run_id: UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
