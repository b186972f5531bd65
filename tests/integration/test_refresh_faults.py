"""The full refresh when S3 goes down mid-stage: the ingest task retries, the flow run fails
with one clear line, and after recovery a re-run completes without fetching again what was
already fetched. Real SeaweedFS behind the fault proxy, a real Prefect server, MLflow on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pandas as pd
import pytest

from housegan import curate, embed, manifest, quality, storage
from housegan.config import Settings, get_settings
from housegan.testing import photo_bytes
from housegan.testing.faultproxy import FaultProxy

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

pytestmark = pytest.mark.integration

CITIES = ("austin", "boston")
PER_CITY = 4
TASK_RETRIES = 2  # Prefect retries of the ingest task: 3 attempts in all
CURATE_RETRIES = 2  # Prefect retries of the plan-embeddings, embed-shard and quality tasks
FETCHED_BEFORE_OUTAGE = 3  # object GETs answered before the endpoint goes down


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint) as running:
        yield running


@pytest.fixture
def photos(s3_server, bucket) -> dict[str, bytes]:
    """Raw listing photos (key under ``raw/`` -> bytes), written straight to S3."""
    keys = [f"{city}/{i}/p.jpg" for city in CITIES for i in range(PER_CITY)]
    bodies = {key: photo_bytes(seed=seed) for seed, key in enumerate(keys)}
    client = s3_server.client()
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=f"raw/{key}", Body=body)
    return bodies


@pytest.fixture
def configured(
    settings: Settings, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """get_settings() aimed at S3 through the proxy, with retries that cost no waiting and one
    fetch at a time (so the outage lands after a known number of fetched photos)."""
    env = {
        "HOUSEGAN_SOURCE_URI": settings.source_uri,
        "HOUSEGAN_STORE_URI": settings.store_uri,
        "HOUSEGAN_S3_ENDPOINT_URL": proxy.endpoint,
        "HOUSEGAN_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "HOUSEGAN_INGEST__CONCURRENCY": "1",
        "HOUSEGAN_INGEST__RETRIES": "1",
        "HOUSEGAN_INGEST__RETRY_BACKOFF_S": "0.01",
        "HOUSEGAN_INGEST__CONNECT_TIMEOUT_S": "1",
        "HOUSEGAN_INGEST__READ_TIMEOUT_S": "2",
        "HOUSEGAN_INGEST__FAIL_FAST_TIMEOUT_S": "2",
        "HOUSEGAN_INGEST__TASK_RETRIES": str(TASK_RETRIES),
        "HOUSEGAN_INGEST__TASK_RETRY_DELAY_S": "0",
        "HOUSEGAN_EMBED__INPUT_SIZE": "32",
        "HOUSEGAN_EMBED__NUM_WORKERS": "0",
        "HOUSEGAN_EMBED__TASK_RETRY_DELAY_S": "0",
        "HOUSEGAN_CURATE__TASK_RETRY_DELAY_S": "0",
        "AWS_MAX_ATTEMPTS": "2",  # s3fs's botocore: a refused connection fails in ~1 s, not ~9
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def object_gets(bucket: str) -> str:
    """Request lines of raw photo GETs (not listings: GET /bucket?list-type=2...)."""
    return rf"^GET /{bucket}/raw/[^? ]+ "


def raw_objects(s3_server, bucket: str) -> dict[str, bytes]:
    """The raw photos as S3 holds them now, read directly (not through the proxy)."""
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="raw/")["Contents"]
    return {
        obj["Key"].removeprefix("raw/"): client.get_object(Bucket=bucket, Key=obj["Key"])[
            "Body"
        ].read()
        for obj in listed
    }


async def task_attempts(flow_run_id: UUID, task_name: str) -> list[int]:
    """``run_count`` of each ``task_name`` task run under the refresh, in any nested subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    async with get_client() as client:
        flow_ids, parents = [], [flow_run_id]
        while parents:  # refresh -> curate -> embed: one level at a time
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)
                )
            )
            parents = [run.id for run in children]
            flow_ids += parents
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_ids))
        )
    return [run.run_count for run in runs if run.name.startswith(f"{task_name}-")]  # "ingest-685"


def ingest_attempts(flow_run_id: UUID) -> list[int]:
    return asyncio.run(task_attempts(flow_run_id, "ingest"))


def refresh(**parameters: Any) -> State:
    """``full_refresh`` without training; its final state (failed or not)."""
    from flows.refresh import full_refresh

    return full_refresh(train=False, return_state=True, **parameters)


def assert_one_clear_line(state: State, endpoint: str) -> None:
    """The failed run's message: one line naming the endpoint it could not reach."""
    assert state.is_failed()
    message = state.message or ""
    assert "\n" not in message and "Traceback" not in message
    assert f"cannot reach S3 endpoint {endpoint}" in message, message


def test_s3_down_before_any_photo_is_fetched_publishes_no_manifest(
    prefect_harness, configured, proxy, photos, bucket, s3_server
):
    proxy.down_at(1, match=object_gets(bucket))  # the listing succeeds, every fetch fails

    failed = refresh()

    assert_one_clear_line(failed, proxy.endpoint)
    assert ingest_attempts(failed.state_details.flow_run_id) == [TASK_RETRIES + 1]
    assert storage.latest_uri(manifest.collection_uri(configured.store_uri)) is None
    assert raw_objects(s3_server, bucket) == photos


def test_s3_down_during_ingest_retries_fails_in_one_line_and_recovers(
    prefect_harness, configured, proxy, photos, bucket, s3_server
):
    collection = manifest.collection_uri(configured.store_uri)
    proxy.down_at(FETCHED_BEFORE_OUTAGE + 1, match=object_gets(bucket))

    failed = refresh()

    # The ingest task retried, then the flow run failed with one line naming the endpoint.
    assert_one_clear_line(failed, proxy.endpoint)
    assert ingest_attempts(failed.state_details.flow_run_id) == [TASK_RETRIES + 1]
    # What the first attempt fetched before the outage is published, and nothing downstream
    # ran on it; the raw photos are untouched.
    kept = manifest.read(storage.latest_uri(collection))
    assert sorted(kept["key"]) == sorted(photos)[:FETCHED_BEFORE_OUTAGE]
    assert set(kept["status"]) == {"ok"}
    curated = manifest.collection_uri(configured.store_uri, curate.CURATED_COLLECTION)
    assert storage.latest_uri(curated) is None
    assert raw_objects(s3_server, bucket) == photos

    proxy.up()
    done = refresh()

    assert done.is_completed(), done.message
    result = done.result()
    ingested = result["ingest"]
    assert ingested.counts == {"ok": len(photos)}
    # Ingest fetches only what the outage kept from it: the photos published before are carried.
    assert (ingested.new, ingested.downloaded) == (len(photos) - FETCHED_BEFORE_OUTAGE,) * 2
    assert proxy.fired["down"] == 1
    assert result["curate"].filter.funnel["objects"] == len(photos)
    assert raw_objects(s3_server, bucket) == photos


def outage_verdicts(store_uri: str, tag: str) -> tuple[list[str], list[str | None]]:
    """Statuses of every embedding row under ``tag`` and errors of every quality score."""
    statuses = embed.embeddings(store_uri, tag).read(["status"])["status"].to_pylist()
    errors = quality.load_scores(store_uri)["error"]
    return statuses, [None if pd.isna(error) else error for error in errors]


def test_s3_down_during_curate_fails_in_one_line_and_rerun_skips_ingest(
    prefect_harness, configured, proxy, photos, bucket
):
    # Ingest GETs every photo once; the first photo read of curate (quality or embed) finds S3
    # down, and so does everything after it.
    proxy.down_at(len(photos) + 1, match=object_gets(bucket))

    failed = refresh()

    # Not "0 embedded photos ...: clustering needs more": the outage, in one line, after the
    # curate stage's photo tasks retried.
    assert_one_clear_line(failed, proxy.endpoint)
    run_id = failed.state_details.flow_run_id
    attempts = {
        name: asyncio.run(task_attempts(run_id, name))
        for name in ("score-quality", "plan-embeddings", "embed-shard", "cluster-photos")
    }
    assert attempts["score-quality"] == [CURATE_RETRIES + 1]
    # Whichever embed task met the outage (the plan reads the store, the shard the photos).
    assert max(attempts["plan-embeddings"] + attempts["embed-shard"]) == CURATE_RETRIES + 1
    assert attempts["cluster-photos"] == []
    published = storage.latest_uri(manifest.collection_uri(configured.store_uri))
    assert published is not None  # ingest finished before the outage

    proxy.up()
    done = refresh()

    assert done.is_completed(), done.message
    result = done.result()
    # The finished stage is not redone: nothing downloaded, the same manifest version.
    assert (result["ingest"].downloaded, result["ingest"].manifest_uri) == (0, published)
    assert result["curate"].filter.funnel["objects"] == len(photos)
    # No photo was written down as unreadable (or unscorable) because of the outage.
    statuses, errors = outage_verdicts(configured.store_uri, result["curate"].embed.tag)
    assert statuses == [embed.EmbedStatus.OK.value] * len(photos)
    assert errors == [None] * len(photos)
    assert proxy.fired["down"] == 1
