"""The training flow: curated manifest -> packed dataset -> trained, registered generator.

Run with ``python -m flows.train`` (defaults from the config) or from a Prefect deployment.
The same two steps as ``housegan train`` (``housegan.steps.train.run_train``).
"""

from __future__ import annotations

import json

from prefect import flow

from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.train import GanOverrides, PrepareInput, Trained, TrainInput, run_folder
from tasks.train import prepare_task, train_task


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
) -> Trained:
    """Pack the manifest (default: the latest curated one), train, log and register the model.

    ``out_dir`` defaults to a fresh folder under ``<store>/training/``; pass an earlier run's
    folder with ``resume=True`` to continue it (same checkpoints, same MLflow run).
    """
    settings = get_settings()
    store = store_uri or settings.store_uri
    size = image_size or settings.gan.image_size
    overrides = GanOverrides(size, kimg, max_minutes, batch_size, device)
    dataset = prepare_task(PrepareInput.of(manifest_uri, store, size))
    folder = out_dir or run_folder(store, dataset.dataset_id, size)
    return train_task(TrainInput(dataset.uri, folder, overrides, resume))


if __name__ == "__main__":
    print(json.dumps(to_json(train_flow()), indent=2))
