"""The CLI and the Prefect flow of a stage run the same steps: on the same inputs they write the
same bytes and log the same figures to MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from housegan import ingest, labels, storage, synth
from housegan.cli import main
from housegan.config import Settings, get_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "HOUSEGAN_EMBED__INPUT_SIZE": "32",
    "HOUSEGAN_EMBED__NUM_WORKERS": "0",
    "HOUSEGAN_CURATE__FINETUNE": "true",  # the fine-tune step (and its accuracy) on both paths
    "HOUSEGAN_CURATE__FINETUNE_EPOCHS": "2",
}


@pytest.fixture
def twin_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A tiny synthetic bucket (``file://``), ingested and labelled into one store, copied to a
    second: two stores holding the same image manifest and labels. Settings via the
    environment, as the CLI and a deployment read them."""
    source = (tmp_path / "source").as_uri()
    made = synth.synthesize(
        source, cities=2, per_city=8, seed=0, truth_uri=(tmp_path / "truth.parquet").as_uri()
    )
    env = {
        "HOUSEGAN_SOURCE_URI": source,
        "HOUSEGAN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **TINY,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    first = (tmp_path / "store-cli").as_uri()
    settings = Settings(store_uri=first)
    ingest.ingest(
        source, first, key_pattern=settings.key_pattern, limits=settings.images, cfg=settings.ingest
    )
    label_file = synth.write_truth_labels(made.truth_uri, per_type=3, seed=0)
    labels.import_labels(label_file, first, labeller="test")
    shutil.copytree(tmp_path / "store-cli", tmp_path / "store-flow")
    return first, (tmp_path / "store-flow").as_uri()


def test_cli_and_flow_curate_write_byte_identical_curated_manifests(
    prefect_harness, twin_stores: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from flows.curate import curate_flow

    cli_store, flow_store = twin_stores
    assert main(["curate", "--store", cli_store, "--json"]) == 0
    by_cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_flow = curate_flow(None, flow_store)

    assert by_flow.embed.computed == by_cli["embedded"] > 0  # each store embedded on its own
    assert by_flow.finetune is not None and not by_flow.finetune.reused
    cli_bytes = storage.read_bytes(by_cli["curated_manifest_uri"])
    assert storage.read_bytes(by_flow.curated_uri) == cli_bytes
    assert (
        by_flow.curated_uri.startswith(flow_store)
        and by_flow.curated_uri != by_cli["curated_manifest_uri"]
    )

    client = mlflow.MlflowClient(get_settings().mlflow_tracking_uri)
    cli_metrics = client.get_run(by_cli["mlflow_run_id"]).data.metrics
    flow_metrics = client.get_run(by_flow.mlflow_run_id).data.metrics
    assert "finetune_holdout_accuracy" in cli_metrics and "type_accuracy_cv" in cli_metrics
    assert flow_metrics == cli_metrics
