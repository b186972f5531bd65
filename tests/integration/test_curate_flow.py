from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from housegan import curate, manifest, storage
from housegan.config import get_settings
from housegan.testing.curation import build_world


def clusters_runs(store: str) -> list[str]:
    fs, root = storage.get_fs(storage.join(store, "clusters"))
    return sorted(fs.ls(root)) if fs.exists(root) else []


async def artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in artifacts if a.key}


@pytest.mark.slow
@pytest.mark.integration
def test_curate_flow_publishes_and_reuses_cached_steps(
    s3_server, prefect_harness, tmp_path: Path, monkeypatch
):
    from flows.curate import curate_flow

    world = build_world(
        s3_server, tmp_path, cities=2, per_city=10, labels_per_type=4, input_size=64
    )
    env = {
        "HOUSEGAN_STORE_URI": world.store,
        "HOUSEGAN_SOURCE_URI": world.settings.source_uri,
        "HOUSEGAN_S3_ENDPOINT_URL": world.settings.s3_endpoint_url,
        "HOUSEGAN_MLFLOW_TRACKING_URI": world.settings.mlflow_tracking_uri,
        "HOUSEGAN_EMBED__INPUT_SIZE": "64",
        "HOUSEGAN_EMBED__NUM_WORKERS": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        state = curate_flow(world.manifest_uri, world.store, world.labels_uri, return_state=True)
        first = state.result()
        again = curate_flow(None, world.store, world.labels_uri)  # None: the latest manifest
    finally:
        get_settings.cache_clear()

    curated = manifest.read(first.curated_uri)
    funnel = first.filter.funnel
    assert funnel["objects"] == len(curated) == len(manifest.read(world.manifest_uri))
    assert funnel["training_set"] == curated["keep"].sum() > 0
    assert first.embed.computed > 0 and again.embed.computed == 0
    collection = manifest.collection_uri(world.store, curate.CURATED_COLLECTION)
    assert storage.latest_uri(collection) == again.curated_uri != first.curated_uri
    assert len(clusters_runs(world.store)) == 1  # the second run's cluster step was cached
    assert again.filter.funnel == funnel
    assert first.mlflow_run_id and again.mlflow_run_id != first.mlflow_run_id
    keys = asyncio.run(artifact_keys(state.state_details.flow_run_id))
    assert {"curate-funnel", "curate-summary", "image-types", "cluster-galleries"} <= keys
