"""Promotion and rollback move registry aliases exactly as the gate says, against a real MLflow
SQLite store; a memorizer's evaluation keeps it out of champion; the evaluate/promote CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from housegan import tracking
from housegan.config import EvaluateSettings, Settings
from housegan.evaluate import promote
from housegan.evaluate.evaluation import ModelEvaluation, evaluation_key
from housegan.gan import serving
from housegan.gan.data import prepare
from housegan.gan.models import Generator, ModelSpec
from housegan.testing.evaluation import TINY_EMBED
from housegan.testing.gan import write_photos

NAME = "cgan-gate"
EMBED = TINY_EMBED
EVALUATE = EvaluateSettings(
    samples_per_cell=8,
    device="cpu",
    holdout_fraction=0.25,
    kid_subsets=5,
    classifier_pca_dim=4,
    pairs_per_cell=2,
    figure_thumb=32,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        store_uri=(tmp_path / "store").as_uri(),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        mlflow_experiment="gate",
        embed=EMBED,
        evaluate=EVALUATE,
    )


@pytest.fixture
def dataset_uri(tmp_path: Path, settings: Settings) -> str:
    manifest = write_photos(tmp_path, per_class=6, size=32)
    return prepare(str(manifest), settings.store_uri, 32).uri


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec(image_size=32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    vocab = {"city": ["austin", "boston"], "image_type": ["exterior", "landscape"]}
    return Path(serving.save_model_dir(Generator(spec), spec, vocab, str(tmp_path / "model"))[7:])


def _register(settings: Settings, model_dir: Path) -> tracking.RegisteredVersion:
    """One training run with the model registered, as train_tracked leaves it."""
    with tracking.start_run(settings.mlflow_tracking_uri, settings.mlflow_experiment):
        info = tracking.log_generator_model(str(model_dir), NAME)
    uri = f"models:/{NAME}/{info.registered_model_version}"
    return tracking.registered_version(uri, settings.mlflow_tracking_uri)


def _key(settings: Settings, dataset_uri: str) -> str:
    from housegan import embed
    from housegan.gan.data import load_packed

    tag = embed.model_tag(settings.embed)
    return evaluation_key(load_packed(dataset_uri).dataset_id, tag, settings.evaluate)


def _log(settings, version, key, **metrics) -> str:
    """An evaluation of ``version`` with chosen metrics, logged the way evaluate_and_log does."""
    evaluation = ModelEvaluation(
        model_uri=version.uri,
        key=key,
        dataset_id="d",
        embed_tag="vgg16-test",
        metrics={"copy_rate": 0.0, "fd": 1.0, "kid": 0.1, **metrics},
        cells=pd.DataFrame({"city": ["austin"], "copy_rate": [metrics.get("copy_rate", 0.0)]}),
        cities=pd.DataFrame({"city": ["austin"], "fd": [metrics.get("fd", 1.0)]}),
        figures={},
    )
    return tracking.log_evaluation(
        evaluation, settings.mlflow_tracking_uri, "gate", version.run_id, version
    )


def _aliases(settings: Settings) -> dict[str, str]:
    from mlflow import MlflowClient

    aliases = MlflowClient(settings.mlflow_tracking_uri).get_registered_model(NAME).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def _refuse(version, dataset):
    raise AssertionError(f"re-evaluated {version.uri} although an evaluation was logged")


def test_promotion_and_rollback_move_aliases_exactly(settings, dataset_uri, model_dir) -> None:
    key = _key(settings, dataset_uri)
    versions = [_register(settings, model_dir) for _ in range(3)]
    v1, v2, v3 = versions
    _log(settings, v1, key, copy_rate=0.01, fd=2.0, kid=0.2)
    _log(settings, v2, key, copy_rate=0.02, fd=1.5, kid=0.15)  # better than v1
    _log(settings, v3, key, copy_rate=0.0, fd=3.0, kid=0.1)  # FD far worse than v2

    def gate(version):
        return promote.promote(version.uri, settings, dataset_uri=dataset_uri, evaluate=_refuse)

    first = gate(v1)
    assert (first.decision, first.champion_before) == ("champion", None)
    assert _aliases(settings) == {"champion": v1.version}

    second = gate(v2)
    assert (second.decision, second.champion_before) == ("champion", v1.version)
    assert _aliases(settings) == {"champion": v2.version, "previous": v1.version}

    third = gate(v3)
    assert third.decision == "challenger" and "fd" in third.reason
    assert _aliases(settings) == {
        "champion": v2.version,
        "previous": v1.version,
        "challenger": v3.version,
    }
    tags = tracking.version_tags(NAME, v3.version, settings.mlflow_tracking_uri)
    assert tags[tracking.PROMOTION_DECISION_TAG] == "challenger"
    assert "fd" in tags[tracking.PROMOTION_REASON_TAG]
    assert tags[tracking.EVALUATION_KEY_TAG] == key

    assert gate(v2).decision == "unchanged"

    back = promote.rollback(NAME, settings.mlflow_tracking_uri)
    assert (back.restored, back.demoted) == (v1.version, v2.version)
    assert _aliases(settings) == {"champion": v1.version, "challenger": v3.version}
    demoted = tracking.version_tags(NAME, v2.version, settings.mlflow_tracking_uri)
    assert demoted[tracking.PROMOTION_DECISION_TAG] == "rolled_back"
    with pytest.raises(ValueError, match="no 'previous'"):
        promote.rollback(NAME, settings.mlflow_tracking_uri)


def test_gate_allows_the_configured_tolerance_and_no_more() -> None:
    champion = {"fd": 10.0, "kid": 0.0, "kid_std": 0.001}
    bars = promote.thresholds(EVALUATE, champion)
    assert bars["copy_rate"] == (EVALUATE.max_copy_rate, False)
    assert bars["fd"] == pytest.approx((10.0 * (1 + EVALUATE.fd_tolerance), False))
    assert bars["kid"] == pytest.approx((EVALUATE.kid_std_slack * 0.001, False))
    assert promote.thresholds(EVALUATE, {"fd": 1.0, "kid": 0.1})["kid"][0] == pytest.approx(
        0.1 * (1 + EVALUATE.kid_tolerance)
    )
    ok = {"copy_rate": 0.0, "fd": 10.4, "kid": 0.0005}
    assert tracking.check_thresholds(ok, bars) is None
    assert "fd" in tracking.check_thresholds({**ok, "fd": 10.6}, bars)
    assert "kid" in tracking.check_thresholds({**ok, "kid": None}, bars)  # missing fails


@pytest.mark.slow
def test_a_memorizer_is_flagged_and_never_promoted(settings, dataset_uri, model_dir) -> None:
    from housegan.evaluate.evaluation import evaluate_model
    from housegan.gan.data import load_packed
    from housegan.testing.evaluation import Memorizer

    dataset = load_packed(dataset_uri)
    version = _register(settings, model_dir)
    copier = evaluate_model(
        Memorizer(dataset),
        dataset.vocab,
        dataset,
        settings.embed,
        settings.evaluate,
        model_uri=version.uri,
    )
    assert copier.metrics["copy_rate"] == pytest.approx(1.0)
    assert copier.key == _key(settings, dataset_uri)
    tracking.log_evaluation(copier, settings.mlflow_tracking_uri, "gate", version.run_id, version)

    result = promote.promote(version.uri, settings, dataset_uri=dataset_uri, evaluate=_refuse)
    assert result.decision == "challenger" and "copy_rate" in result.reason
    assert "champion" not in _aliases(settings)
    assert _aliases(settings) == {"challenger": version.version}


@pytest.mark.slow
def test_evaluate_cli_logs_a_nested_run_and_promote_cli_gates_it(
    settings, dataset_uri, model_dir, monkeypatch, capsys
) -> None:
    from mlflow import MlflowClient

    from housegan.cli import main
    from housegan.config import get_settings

    for key, value in {
        "STORE_URI": settings.store_uri,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_EXPERIMENT": "gate",
        "EMBED__INPUT_SIZE": "32",
        "EMBED__LAYER": "conv5",
        "EMBED__NUM_WORKERS": "0",
        **{
            f"EVALUATE__{k.upper()}": str(v)
            for k, v in EVALUATE.model_dump().items()
            if v is not None
        },
    }.items():
        monkeypatch.setenv(f"HOUSEGAN_{key}", value)
    get_settings.cache_clear()
    version = _register(settings, model_dir)

    code = main(["evaluate", "--model", version.uri, "--dataset", dataset_uri, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert set(summary) == {
        "copy_rate",
        "fd",
        "kid",
        "precision",
        "recall",
        "density",
        "coverage",
        "diversity",
        "diversity_min",
        "cond_acc_city",
        "cond_acc_type",
    }
    assert 0.0 <= summary["copy_rate"] <= 1.0 and summary["fd"] > 0
    tags = tracking.version_tags(NAME, version.version, settings.mlflow_tracking_uri)
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(tags[tracking.EVALUATION_RUN_TAG])
    assert run.data.tags["mlflow.parentRunId"] == version.run_id
    assert run.data.tags["embed_tag"].startswith("vgg16-none-conv5-32")
    artifacts = {
        a.path
        for a in MlflowClient(settings.mlflow_tracking_uri).list_artifacts(
            run.info.run_id, "novelty"
        )
    }
    assert "novelty/pairs-austin-exterior.png" in artifacts

    # the stored evaluation is reused: the untrained generator has no champion to beat
    code = main(["promote", "--model", version.uri, "--dataset", dataset_uri, "--json"])
    decision = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and decision["version"] == version.version
    expected = "champion" if summary["copy_rate"] <= EVALUATE.max_copy_rate else "challenger"
    assert decision["decision"] == expected

    code = main(["promote", "--model", f"models:/{NAME}", "--rollback"])
    assert code == 2  # nothing to roll back to
    assert "no 'previous'" in capsys.readouterr().err
