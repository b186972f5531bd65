"""The evaluate and promote tasks under a real (temporary) Prefect server: a registered version
is evaluated in a run nested under its training run and gated; a second gate leaves it be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from housegan.config import get_settings
from housegan.testing.gan import write_photos

NAME = "cgan-flow"
EVALUATE_ENV = {
    "DEVICE": "cpu",
    "SAMPLES_PER_CELL": "4",
    "HOLDOUT_FRACTION": "0.25",
    "KID_SUBSETS": "2",
    "CLASSIFIER_PCA_DIM": "2",
    "PAIRS_PER_CELL": "1",
    "FIGURE_THUMB": "16",
    "MAX_COPY_RATE": "1.0",  # the gate's bars are test_evaluate_promote's; here: the wiring
}


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOUSEGAN_STORE_URI", (tmp_path / "store").as_uri())
    monkeypatch.setenv("HOUSEGAN_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HOUSEGAN_EMBED__INPUT_SIZE", "32")
    monkeypatch.setenv("HOUSEGAN_EMBED__LAYER", "conv5")
    monkeypatch.setenv("HOUSEGAN_EMBED__NUM_WORKERS", "0")
    for key, value in EVALUATE_ENV.items():
        monkeypatch.setenv(f"HOUSEGAN_EVALUATE__{key}", value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _registered(root: Path) -> tuple[str, str]:
    """(models:/NAME/1, its training run id): an untrained generator in a training run."""
    from housegan import tracking
    from housegan.gan import serving
    from housegan.gan.models import Generator, ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(image_size=32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    vocab = {"city": ["austin", "boston"], "image_type": ["exterior", "landscape"]}
    folder = serving.save_model_dir(Generator(spec), spec, vocab, str(root / "model"))
    settings = get_settings()
    with tracking.start_run(settings.mlflow_tracking_uri, settings.mlflow_experiment) as run:
        info = tracking.log_generator_model(folder.removeprefix("file://"), NAME)
    return f"models:/{NAME}/{info.registered_model_version}", run.info.run_id


@pytest.mark.slow
@pytest.mark.integration
def test_evaluate_flow_logs_a_nested_run_and_the_gate_makes_the_first_version_champion(
    prefect_harness: None, configured: Path
) -> None:
    from mlflow import MlflowClient

    from flows.evaluate import evaluate_flow, promote_flow
    from housegan import tracking
    from housegan.gan.data import prepare
    from housegan.steps import from_json, to_json
    from housegan.steps.evaluate import Evaluated, Promoted

    dataset = prepare(
        str(write_photos(configured, per_class=6, size=32)), get_settings().store_uri, 32
    )
    model_uri, training_run = _registered(configured)

    result = evaluate_flow(model_uri, dataset.uri)

    evaluated, promoted = result["evaluate"], result["promote"]
    assert from_json(Evaluated, to_json(evaluated)) == evaluated
    assert evaluated.model_uri == model_uri and evaluated.training_run_id == training_run
    uri = get_settings().mlflow_tracking_uri
    run = MlflowClient(uri).get_run(evaluated.run_id)
    assert run.data.tags["mlflow.parentRunId"] == training_run
    assert run.data.metrics["fd"] == pytest.approx(evaluated.fd)
    assert evaluated.pairs_uri is not None and evaluated.pairs_uri.endswith("/novelty")
    assert promoted.decision == "champion" and promoted.alias_uri == f"models:/{NAME}@champion"
    assert tracking.alias_version(NAME, "champion", uri) == promoted.version == "1"
    # The gate again: the version already is champion, nothing is evaluated or moved.
    again = promote_flow(model_uri, dataset.uri)
    assert isinstance(again, Promoted) and again.decision == "unchanged"
    assert again.alias == "champion"
