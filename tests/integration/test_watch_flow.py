"""The source watcher announces new photos once they reach the threshold, stays quiet below
it, and a burst of announcements makes one retrain run."""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
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
STACK_TIMEOUT_S = 60.0
REGION = "us-east-1"


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


@pytest.mark.slow
@pytest.mark.integration
def test_photos_landing_on_the_deployed_stack_make_one_retrain_run(deployed_stack, monkeypatch):
    """The stack's Prefect server (PostgreSQL) with `prefect deploy --all`: one announcement
    creates one retrain run (scheduled schedule_after out); a burst of three more inside the
    window creates none."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.watch import watch_source

    for name, value in deployed_stack.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOUSEGAN_WATCH__MIN_NEW_PHOTOS", str(MIN_NEW_PHOTOS))
    get_settings.cache_clear()
    tag = uuid.uuid4().hex[:8]  # a source of its own: its own debounce window
    source, store = f"s3://listings/watch-{tag}", f"s3://housegan/watch-{tag}"
    s3 = boto3.client("s3", endpoint_url=deployed_stack.s3_endpoint, region_name=REGION)
    for i, name in enumerate(photo_names(MIN_NEW_PHOTOS)):
        s3.put_object(
            Bucket="listings",
            Key=f"watch-{tag}/austin/L{i}/{name}",
            Body=photo_bytes(64, 48, seed=i),
        )

    with temporary_settings({PREFECT_API_URL: deployed_stack.prefect_api_url}):
        deployment_id = stack_deployment_id("full-refresh/retrain")
        first = watch_source(source, store)
        runs = wait_for(lambda: retrain_runs(deployment_id, source), STACK_TIMEOUT_S)
        burst = [watch_source(source, store) for _ in range(3)]
        assert wait_for(lambda: len(announced(source)) == 1 + len(burst), STACK_TIMEOUT_S)
        time.sleep(POLL_S * 10)
        after_burst = retrain_runs(deployment_id, source)
        cancel(after_burst)  # no full refresh of these 20 photos on the session's workers

    assert first.event_id and all(result.event_id for result in burst)
    assert len(runs) == 1 and runs[0].parameters["store_uri"] == store
    assert [run.id for run in after_burst] == [runs[0].id]


def stack_deployment_id(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name).id


def cancel(runs: list) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        for run in runs:
            client.set_flow_run_state(run.id, Cancelled(), force=True)
