"""The source watcher announces new photos once they reach the threshold, stays quiet below
it, and a burst of announcements makes one retrain run."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from housegan.config import get_settings
from housegan.ingest import ingest, pending_changes
from housegan.testing import photo_bytes

ROOT = Path(__file__).resolve().parents[2]
MIN_NEW_PHOTOS = 20
EVENT_TIMEOUT_S = 30.0
POLL_S = 0.5
CLOCK_SLACK = timedelta(seconds=5)


def put_photos(s3_server, bucket: str, names: list[str]) -> None:
    client = s3_server.client()
    for i, name in enumerate(names):
        body = photo_bytes(64, 48, seed=i + len(name))
        client.put_object(Bucket=bucket, Key=f"raw/austin/L1/{name}", Body=body)


def photo_names(n: int) -> list[str]:
    return [f"p{i:03d}.jpg" for i in range(n)]


def test_pending_changes_counts_new_and_changed_objects_without_fetching(
    settings, s3_server, bucket
):
    opts = settings.storage_options()
    put_photos(s3_server, bucket, ["a.jpg", "b.jpg"])
    before = pending_changes(settings.source_uri, settings.store_uri, settings.ingest, opts)
    assert (before.listed, before.to_fetch, before.manifest_uri) == (2, 2, None)
    ingest(
        settings.source_uri,
        settings.store_uri,
        key_pattern=settings.key_pattern,
        limits=settings.images,
        cfg=settings.ingest,
        storage_options=opts,
    )
    assert not pending_changes(
        settings.source_uri, settings.store_uri, settings.ingest, opts
    ).changed
    put_photos(s3_server, bucket, ["c.jpg"])
    after = pending_changes(settings.source_uri, settings.store_uri, settings.ingest, opts)
    assert (after.listed, after.to_fetch) == (3, 1) and after.manifest_uri is not None


@pytest.fixture
def watch_env(settings, monkeypatch: pytest.MonkeyPatch):
    """The flow reads get_settings(): the private S3 server and an explicit threshold."""
    monkeypatch.setenv("HOUSEGAN_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    monkeypatch.setenv("HOUSEGAN_WATCH__MIN_NEW_PHOTOS", str(MIN_NEW_PHOTOS))
    get_settings.cache_clear()
    return settings


def announced(source_uri: str) -> list[dict]:
    """The ``housegan.source.updated`` events the Prefect server recorded for this source."""
    from prefect.client.orchestration import get_client

    from tasks.watch import SOURCE_RESOURCE_PREFIX, SOURCE_UPDATED_EVENT

    body = {
        "filter": {
            "event": {"name": [SOURCE_UPDATED_EVENT]},
            "resource": {"id": [f"{SOURCE_RESOURCE_PREFIX}{source_uri}"]},
        },
        "limit": 50,
    }
    with get_client(sync_client=True) as client:
        return client.request("POST", "/events/filter", json=body).json()["events"]


def wait_for(predicate: Callable[[], Any], timeout_s: float = EVENT_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return found


@pytest.mark.integration
def test_watch_flow_announces_once_enough_photos_landed(
    watch_env, s3_server, bucket, prefect_harness
):
    from flows.ingest import ingest_flow
    from flows.watch import watch_source

    settings = watch_env
    put_photos(s3_server, bucket, photo_names(MIN_NEW_PHOTOS))
    landed = watch_source(settings.source_uri, settings.store_uri)
    events = wait_for(lambda: announced(settings.source_uri))
    ingest_flow(settings.source_uri, settings.store_uri)
    quiet = watch_source(settings.source_uri, settings.store_uri)

    assert (landed.mode, landed.pending, landed.changes.to_fetch) == ("listing", 20, 20)
    assert [event["id"] for event in events] == [landed.event_id]
    assert events[0]["payload"]["pending"] == MIN_NEW_PHOTOS
    assert quiet.pending == 0 and quiet.event_id is None
    assert [event["id"] for event in announced(settings.source_uri)] == [landed.event_id]


@pytest.mark.integration
def test_watch_flow_below_the_threshold_announces_nothing(
    watch_env, s3_server, bucket, prefect_harness
):
    from flows.watch import watch_source

    settings = watch_env
    put_photos(s3_server, bucket, photo_names(MIN_NEW_PHOTOS - 1))
    result = watch_source(settings.source_uri, settings.store_uri)

    assert (result.pending, result.event_id) == (MIN_NEW_PHOTOS - 1, None)
    assert "threshold of 20 not reached" in result.summary()
    time.sleep(POLL_S * 4)  # an event, had one been sent, would be recorded by now
    assert announced(settings.source_uri) == []


@pytest.mark.integration
def test_a_burst_of_announcements_makes_one_retrain_run(
    watch_env, s3_server, bucket, prefect_harness
):
    """The retrain deployment and its trigger as deployments/prefect.yaml declares them (no
    worker: the runs the automation creates are counted, scheduled)."""
    from flows.watch import watch_source

    settings = watch_env
    deployment_id, trigger = deploy_retrain()
    put_photos(s3_server, bucket, photo_names(MIN_NEW_PHOTOS))
    started = datetime.now(UTC)
    burst = [watch_source(settings.source_uri, settings.store_uri) for _ in range(3)]
    assert all(result.event_id for result in burst)
    assert wait_for(lambda: len(announced(settings.source_uri)) == len(burst))

    runs = wait_for(lambda: retrain_runs(deployment_id, settings.source_uri))
    time.sleep(POLL_S * 10)  # the trigger service has had its chance at the other two events
    runs = retrain_runs(deployment_id, settings.source_uri)

    assert len(runs) == 1, [(run.name, run.state_name) for run in runs]
    assert runs[0].parameters["store_uri"] == settings.store_uri
    assert runs[0].state_name == "Scheduled"
    # The run is put off by schedule_after, so the burst's photos land before it lists.
    assert runs[0].expected_start_time >= started + trigger.schedule_after - CLOCK_SLACK


def deploy_retrain():
    """Deploy ``retrain`` from deployments/prefect.yaml: its flow, concurrency and triggers."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events import DeploymentEventTrigger

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (raw,) = [d for d in spec["deployments"] if d["name"] == "retrain"]
    path, attribute = raw["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attribute)
    triggers = [DeploymentEventTrigger(**trigger) for trigger in raw["triggers"]]
    deployment = flow.to_deployment(
        name=raw["name"],
        triggers=triggers,
        concurrency_limit=ConcurrencyLimitConfig(**raw["concurrency_limit"]),
    )
    return deployment.apply(), triggers[0]


def retrain_runs(deployment_id, source_uri: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return [run for run in runs if run.parameters.get("source_uri") == source_uri]
