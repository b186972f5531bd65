"""Prefect tasks around GAN training: pack the dataset, train + log + register the model.

Both return small dicts of URIs, ids and counts, never arrays or networks, so each task can
run alone, be retried or move to a GPU worker.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from housegan import storage
from housegan.config import get_settings
from tasks.runtime import ProgressArtifact, in_task_run, task_logger

TRAINING_DIR = "training"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """A missing manifest or one without trainable rows will not fix itself on retry."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, FileNotFoundError | ValueError)


@task(
    name="prepare-gan-dataset",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_transient,
    # prepare is content-addressed: a rerun finds <store>/datasets/<id>/ and only reads rows.
    cache_policy=NO_CACHE,
)
def prepare_task(manifest_uri: str | None, store_uri: str, image_size: int) -> dict[str, Any]:
    """Pack the manifest's trainable rows at R×R (default manifest: the latest curated one);
    returns the dataset's id, URI and counts."""
    from housegan import manifest
    from housegan.curate import CURATED_COLLECTION
    from housegan.gan.data import prepare

    settings = get_settings()
    manifest_uri = manifest_uri or manifest.collection_uri(store_uri, CURATED_COLLECTION)
    progress = ProgressArtifact("prepare-progress", "images packed") if in_task_run() else None
    dataset = prepare(
        manifest_uri,
        store_uri,
        image_size,
        settings.storage_options(),
        progress=progress.update if progress else None,
    )
    task_logger(__name__).info(
        "dataset %s: %d images (%d unreadable), cities %s, types %s -> %s",
        dataset.dataset_id,
        dataset.n,
        dataset.skipped,
        dataset.cities,
        dataset.image_types,
        dataset.uri,
    )
    return asdict(dataset)


def _not_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """A retry resumes from the newest checkpoint; divergence would only repeat itself."""
    from housegan.gan.train import TrainingDiverged

    return not isinstance(state.result(raise_on_failure=False), TrainingDiverged)


@task(
    name="train-gan",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_not_diverged,
    cache_policy=NO_CACHE,  # training is the expensive, side-effecting part: never skipped
)
def train_task(
    dataset_uri: str,
    out_dir: str,
    gan: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train inside an MLflow run, log and register G_ema; returns the run id and model URI.

    ``gan`` overrides fields of the configured ``GanSettings``. A retry of this task resumes
    from the newest checkpoint in ``out_dir`` and continues the same MLflow run.
    """
    from housegan import tracking
    from housegan.gan.train import total_kimg

    settings = get_settings()
    cfg = settings.gan.with_overrides(gan)
    context = TaskRunContext.get()
    retrying = context is not None and context.task_run.run_count > 1
    reporter = _TrainProgress(total_kimg(cfg)) if context is not None else None
    tracked = tracking.train_tracked(
        dataset_uri,
        out_dir,
        cfg,
        settings.mlflow_tracking_uri,
        settings.mlflow_experiment,
        resume=resume or retrying,
        reporter=reporter,
        storage_options=settings.storage_options(),
    )
    result = tracked.result
    summary = {
        "run_id": tracked.run_id,
        "model_uri": tracked.model_uri,
        "model_version": tracked.model_version,
        "out_dir": tracked.out_dir,
        "dataset_id": tracked.dataset_id,
        "samples_uri": tracked.samples_uri,
        "run_url": tracked.run_url,
        "step": result.step,
        "kimg": result.kimg,
        "images_per_second": result.images_per_second,
        "rollbacks": result.rollbacks,
    }
    task_logger(__name__).info("trained %s", summary)
    if context is not None:
        reporter.finish()
        create_markdown_artifact(
            key="gan-model",
            markdown=_model_markdown(summary, settings.mlflow_tracking_uri),
            description="the trained generator",
        )
    return summary


def run_folder(store_uri: str, dataset_id: str, image_size: int) -> str:
    """A fresh training folder ``<store>/training/<dataset>-r<R>/<stamp>`` (checkpoints, model)."""
    name = storage.new_version_name("")
    return storage.join(
        storage.normalize_uri(store_uri), TRAINING_DIR, f"{dataset_id}-r{image_size}", name
    )


def _model_markdown(summary: dict[str, Any], tracking_uri: str) -> str:
    lines = [
        "| | |",
        "| --- | --- |",
        *(f"| {key} | `{value}` |" for key, value in summary.items()),
        f"| tracking | `{tracking_uri}` |",
        "",
        f"Sample grids: `{summary['samples_uri']}`. Generate with "
        f"`housegan generate --model {summary['model_uri']} --city C --image-type T --seed 0`.",
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

    def finish(self) -> None:
        update_progress_artifact(self.artifact_id, 100.0)
