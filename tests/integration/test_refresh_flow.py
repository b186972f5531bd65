"""The demo and full-refresh flows end to end: synth bucket -> ingest -> curate -> train."""

from __future__ import annotations

from pathlib import Path

import pytest

from housegan import manifest
from housegan.config import get_settings


@pytest.mark.slow
@pytest.mark.integration
def test_demo_flow_runs_every_stage_and_a_refresh_redoes_nothing(
    settings, prefect_harness, tmp_path: Path, monkeypatch, capsys
):
    from flows.demo import demo_flow, print_summary
    from flows.refresh import full_refresh

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
    assert again["train"] is None
    printed = capsys.readouterr().out
    assert "where to look" in printed and first["train"].model_uri in printed
