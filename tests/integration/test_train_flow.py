"""The training flow under a real (temporary) Prefect server, on a tiny dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from housegan.config import get_settings
from housegan.testing.gan import configure_tiny_gan, write_photos


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return configure_tiny_gan(
        monkeypatch, tmp_path, IMAGE_SIZE="32", BATCH_SIZE="8", KIMG="0.032", DEVICE="cpu"
    )


@pytest.mark.slow
@pytest.mark.integration
def test_train_flow_returns_run_id_and_a_registered_model_that_generates(
    prefect_harness: None, configured: Path
) -> None:
    import mlflow

    from flows.train import train_flow
    from housegan import storage, tracking
    from housegan.gan import serving

    manifest = write_photos(configured / "photos", per_class=4)
    trained = train_flow(manifest_uri=str(manifest))

    assert trained.step == 4 and trained.rollbacks == 0
    assert trained.model_uri == f"models:/housegan-cgan/{trained.model_version}"
    client = mlflow.MlflowClient(get_settings().mlflow_tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [trained.dataset_id]
    out_dir = storage.local_path(trained.out_dir)
    assert out_dir.is_relative_to(configured / "store" / "training")
    model = tracking.load_generator_model(trained.model_uri)
    images = serving.generate(model, "boston", "landscape", seed=0, n=2)
    assert images.shape == (2, 32, 32, 3)
    folder = serving.generate(serving.load_generator(out_dir), "boston", "landscape", 0, 2)
    assert images.tobytes() == folder.tobytes()


@pytest.mark.integration
def test_prepare_task_returns_only_ids_uris_and_counts(
    prefect_harness: None, configured: Path
) -> None:
    from prefect import flow

    from housegan import storage
    from housegan.gan.data import PreparedDataset
    from housegan.steps import from_json, to_json
    from housegan.steps.train import PrepareInput
    from tasks.train import prepare_task

    manifest = write_photos(configured / "photos", per_class=2)

    @flow
    def prepare_only() -> PreparedDataset:
        return prepare_task(PrepareInput.of(str(manifest), get_settings().store_uri, 32))

    dataset = prepare_only()
    # Plain values through JSON and back: ready for another worker.
    assert from_json(PreparedDataset, json.loads(json.dumps(to_json(dataset)))) == dataset
    assert dataset.n == 8 and dataset.cities == ["austin", "boston"]
    assert storage.exists(storage.join(dataset.uri, "data.safetensors"))


@pytest.mark.integration
def test_without_a_train_deployment_the_refresh_trains_in_process_and_says_why(
    prefect_harness: None, configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness server holds no `train` deployment: `auto` falls back (logged), `gpu-pool`
    refuses, `in-process` does not ask."""
    from prefect import flow

    from tasks.train import train_placement_task

    @flow
    def place() -> str:
        return train_placement_task()

    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = records.append  # type: ignore[method-assign]
    run_logger = logging.getLogger("prefect.task_runs")  # what get_run_logger() adapts
    run_logger.addHandler(catcher)
    try:
        assert place() == "in-process"
    finally:
        run_logger.removeHandler(catcher)
    logged = "\n".join(record.getMessage() for record in records)
    assert "no deployment 'train/train'" in logged
    assert "training in-process on this worker instead" in logged
    monkeypatch.setenv("HOUSEGAN_ORCHESTRATION__TRAIN_ON", "gpu-pool")
    get_settings.cache_clear()
    with pytest.raises(RuntimeError, match="train_on='gpu-pool' but no deployment"):
        place()
    monkeypatch.setenv("HOUSEGAN_ORCHESTRATION__TRAIN_ON", "in-process")
    get_settings.cache_clear()
    assert place() == "in-process"
