"""The training flow: curated manifest -> packed dataset -> trained, registered generator.

Run with ``python -m flows.train`` (defaults from the config) or from the ``train`` deployment
on work pool ``gpu``. The same two steps as ``housegan train`` (``housegan.steps.train``).
``train_stage`` is the full refresh's training: the deployment on its pool when a worker is
online there (a linked subflow run, given URIs and ids only), else this flow in-process.
"""

from __future__ import annotations

import json

from prefect import flow
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.train import GanOverrides, PrepareInput, Trained, TrainInput, run_folder
from tasks.train import (
    pool_training_result_task,
    prepare_task,
    train_placement_task,
    train_task,
    warm_start_task,
)


@flow(name="train")
def train_flow(
    manifest_uri: str | None = None,
    store_uri: str | None = None,
    image_size: int | None = None,
    kimg: float | None = None,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    out_dir: str | None = None,
    resume: bool = False,
    cities: list[str] | None = None,
    warm_start_from: str | None = None,
    parent_run_id: str | None = None,
) -> Trained:
    """Pack the manifest (default: the latest curated one; ``cities`` only, when given), train,
    log and register the model.

    ``out_dir`` defaults to a fresh folder under ``<store>/training/``; pass an earlier run's
    folder with ``resume=True`` to continue it (same checkpoints, same MLflow run).
    ``warm_start_from`` is a checkpoint with the same labels to start from; ``parent_run_id``
    the refresh's MLflow run that this training's run nests under.
    """
    settings = get_settings()
    store = store_uri or settings.store_uri
    size = image_size or settings.gan.image_size
    overrides = GanOverrides(size, kimg, max_minutes, batch_size, device)
    dataset = prepare_task(PrepareInput.of(manifest_uri, store, size, cities))
    folder = out_dir or run_folder(store, dataset.dataset_id, size)
    return train_task(
        TrainInput(dataset.uri, folder, overrides, resume, warm_start_from, parent_run_id)
    )


def train_stage(
    manifest_uri: str,
    store_uri: str,
    *,
    image_size: int | None = None,
    cities: list[str] | None = None,
    kimg: float | None = None,
    max_minutes: float | None = None,
    warm_start: bool = False,
    parent_run_id: str | None = None,
) -> Trained:
    """The refresh's training, called inside its flow: packs here (so the run folder is known),
    then trains on the ``train`` deployment's pool or, without a worker there, in-process."""
    settings = get_settings()
    size = image_size or settings.gan.image_size
    dataset = prepare_task(PrepareInput.of(manifest_uri, store_uri, size, cities))
    start_from = warm_start_task(dataset) if warm_start else None
    if start_from and kimg is None:
        kimg = settings.gan.warm_start_kimg  # a retrain continues the champion: a smaller budget
    parameters = {
        "manifest_uri": manifest_uri,
        "store_uri": store_uri,
        "image_size": size,
        "kimg": kimg,
        "max_minutes": max_minutes,
        "cities": cities,
        "warm_start_from": start_from,
        "parent_run_id": parent_run_id,
    }
    if train_placement_task() == "in-process":
        return train_flow(**parameters)
    out_dir = run_folder(store_uri, dataset.dataset_id, size)
    run = run_deployment(
        settings.orchestration.train_deployment,
        parameters={**parameters, "out_dir": out_dir},
        timeout=settings.orchestration.train_timeout_minutes * 60,
        # A retried refresh waits on the same training instead of starting a second one.
        idempotency_key=f"{flow_run.get_id()}-train",
    )
    # An earlier attempt's run (same idempotency key) trains into the folder it was given.
    return pool_training_result_task(str(run.id), run.parameters.get("out_dir", out_dir))


if __name__ == "__main__":
    print(json.dumps(to_json(train_flow()), indent=2))
