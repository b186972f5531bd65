"""The training flow: curated manifest -> packed dataset -> trained, registered generator.

Run with ``python -m flows.train`` (defaults from the config) or from a Prefect deployment.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow

from housegan.config import get_settings
from tasks.train import prepare_task, run_folder, train_task


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
) -> dict[str, Any]:
    """Pack the manifest (default: the latest curated one), train, log and register the model.

    ``out_dir`` defaults to a fresh folder under ``<store>/training/``; pass an earlier run's
    folder with ``resume=True`` to continue it (same checkpoints, same MLflow run).
    """
    settings = get_settings()
    store = store_uri or settings.store_uri
    size = image_size or settings.gan.image_size
    dataset = prepare_task(manifest_uri, store, size)
    overrides = {
        "image_size": size,
        "kimg": kimg,
        "max_minutes": max_minutes,
        "batch_size": batch_size,
        "device": device,
    }
    return train_task(
        dataset["uri"],
        out_dir or run_folder(store, dataset["dataset_id"], size),
        {k: v for k, v in overrides.items() if v is not None},
        resume,
    )


if __name__ == "__main__":
    print(json.dumps(train_flow(), indent=2))
