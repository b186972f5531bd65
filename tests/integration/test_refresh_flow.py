"""The demo and full-refresh flows end to end: synth bucket -> ingest -> curate -> train ->
evaluate -> promote."""

from __future__ import annotations

from pathlib import Path

import pytest

from housegan import manifest
from housegan.config import get_settings


@pytest.mark.slow
@pytest.mark.integration
def test_demo_flow_runs_every_stage_promotes_its_model_and_a_refresh_redoes_nothing(
    settings, prefect_harness, tmp_path: Path, monkeypatch, capsys
):
    from mlflow import MlflowClient

    from flows.demo import demo_flow, print_summary
    from flows.refresh import full_refresh
    from housegan import tracking

    env = {
        "HOUSEGAN_SOURCE_URI": settings.source_uri,
        "HOUSEGAN_STORE_URI": settings.store_uri,
        "HOUSEGAN_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "HOUSEGAN_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "HOUSEGAN_EMBED__INPUT_SIZE": "32",
        "HOUSEGAN_EMBED__NUM_WORKERS": "0",
        "HOUSEGAN_GAN__IMAGE_SIZE": "32",
        "HOUSEGAN_GAN__WIDTH": "4",
        "HOUSEGAN_GAN__BATCH_SIZE": "8",
        "HOUSEGAN_GAN__STEPS": "4",
        "HOUSEGAN_GAN__CPU_THREADS": "1",
        "HOUSEGAN_EVALUATE__DEVICE": "cpu",
        "HOUSEGAN_EVALUATE__SAMPLES_PER_CELL": "4",
        "HOUSEGAN_EVALUATE__HOLDOUT_FRACTION": "0.25",
        "HOUSEGAN_EVALUATE__KID_SUBSETS": "2",
        "HOUSEGAN_EVALUATE__CLASSIFIER_PCA_DIM": "2",
        "HOUSEGAN_EVALUATE__PAIRS_PER_CELL": "1",
        "HOUSEGAN_EVALUATE__FIGURE_THUMB": "16",
        # 8 held-out photos calibrate little: a 4-step generator's blobs are ~0.97 (cosine,
        # random-init features) from their nearest photo, above the 0.94 those 8 give; so here
        # only a near-identical image counts as a copy.
        "HOUSEGAN_EVALUATE__COPY_THRESHOLD": "0.99",
        "HOUSEGAN_STACK__APP_PORT": "8765",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        first = demo_flow(cities=2, per_city=12, seed=3, labels_per_type=3)
        print_summary(first)
        again = full_refresh(labels_uri=first["labels"]["labels_uri"], train=False)
    finally:
        get_settings.cache_clear()

    # Every object is accounted for once; the broken ones are not ok.
    ingested = first["ingest"]
    assert sum(ingested.counts.values()) == ingested.listed
    assert ingested.counts["ok"] < ingested.listed
    curated = manifest.read(first["curate"].curated_uri)
    assert len(curated) == ingested.listed
    assert first["curate"].filter.funnel["training_set"] == int(curated["keep"].sum()) > 0
    assert first["train"].model_uri.startswith("models:/housegan-cgan/")
    # The refresh over an unchanged bucket downloads and embeds nothing, and trains nothing.
    assert again["ingest"].downloaded == 0
    assert again["curate"].embed.computed == 0
    assert again["train"] is None and again["evaluate"] is None and again["promote"] is None
    # The model was evaluated in a run nested under its training run, and the gate decided.
    evaluated, promoted = first["evaluate"], first["promote"]
    tracking_uri = settings.mlflow_tracking_uri
    run = MlflowClient(tracking_uri).get_run(evaluated.run_id)
    assert run.data.tags["mlflow.parentRunId"] == first["train"].run_id
    assert evaluated.model_uri == first["train"].model_uri
    assert evaluated.pairs_uri is not None and evaluated.pairs_uri.endswith("/novelty")
    printed = capsys.readouterr().out
    assert "where to look" in printed and first["train"].model_uri in printed
    assert "evaluation copy_rate=" in printed and " cond_acc_type=" in printed
    bar = settings.evaluate.max_copy_rate
    if evaluated.copy_rate <= bar:
        assert promoted.decision == "champion" and promoted.champion_before is None
        version = tracking.alias_version("housegan-cgan", "champion", tracking_uri)
        assert version == first["train"].model_version == promoted.version
        assert "-> models:/housegan-cgan@champion" in printed
    else:  # the gate refused it: challenger, with the reason recorded, and no champion
        assert promoted.decision == "challenger" and promoted.reason
        assert tracking.alias_version("housegan-cgan", "champion", tracking_uri) is None
    # Lineage: the refresh is one parent run; ingest, curate and train runs nest under it (the
    # evaluation under the training run), and the parent holds the refresh's totals.
    client = MlflowClient(tracking_uri)
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.STAGE_TAG] == "refresh"
    nested = tracking.child_runs(first["mlflow_run_id"], tracking_uri)
    assert [run.stage for run in nested] == ["ingest", "curate", "train"]
    assert nested[2].run_id == first["train"].run_id
    assert parent.data.metrics["photos/new"] == ingested.new
    assert parent.data.metrics["cost/gpu_minutes"] == 0.0  # trained on the CPU
    assert tracking.run_metrics(first["train"].run_id, tracking_uri)["cost/device_minutes"] > 0
    assert client.get_run(evaluated.run_id).data.tags[tracking.STAGE_TAG] == "evaluate"
