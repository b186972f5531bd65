"""What a user does in the Prefect UI, on the real stack: pools ``cpu`` and ``gpu`` with a
process worker each, the deployments of ``deployments/prefect.yaml``, Prefect and MLflow on
PostgreSQL. Run on ``full-refresh`` (the REST call the button makes) trains on pool ``gpu``;
the retrain deployment warm-starts from the champion; MLflow holds one parent run per refresh."""

from __future__ import annotations

import json

import pytest

from housegan.config import get_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def on_stack(deployed_stack, monkeypatch):
    """This process talks to the deployed stack, with the workers' settings (Prefect's own
    setting too: a test server started earlier in the session would otherwise win)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for name, value in deployed_stack.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with temporary_settings({PREFECT_API_URL: deployed_stack.prefect_api_url}):
        yield deployed_stack
    get_settings.cache_clear()


def test_run_on_full_refresh_trains_on_the_gpu_pool_and_nests_every_stage_run(on_stack):
    from mlflow import MlflowClient

    from flows.demo import demo_data_flow, refresh_through_api
    from housegan import tracking
    from housegan.prefect_api import PrefectApi, call

    # The Run form: typed, described parameters (from the flow's signature and docstring).
    deployment = call(on_stack.prefect_api_url, "/deployments/name/full-refresh/full-refresh")
    form = deployment["parameter_openapi_schema"]["properties"]
    assert {"source_uri", "cities", "image_size", "kimg", "max_minutes", "promote"} <= set(form)
    assert all(field.get("description") for field in form.values())
    assert "array" in json.dumps(form["cities"]) and form["promote"]["type"] == "boolean"

    data = demo_data_flow(cities=2, per_city=12, seed=3, labels_per_type=3)
    parameters = {"labels_uri": data["labels"]["labels_uri"], "promote": True}
    final, refreshed = refresh_through_api(on_stack.prefect_api_url, parameters, timeout_s=900)

    assert final.state == "COMPLETED", final.message
    assert final.work_pool == "cpu" and final.flow_name == "full-refresh"
    api = PrefectApi(on_stack.prefect_api_url)
    stages = {run.flow_name: run for run in api.subflow_runs(final.id)}
    assert {"ingest", "curate", "train", "evaluate"} <= set(stages)
    # The training ran as the train deployment's run on pool gpu, linked under the refresh.
    assert stages["train"].work_pool == "gpu" and stages["train"].state == "COMPLETED"
    assert stages["train"].parameters["parent_run_id"] == refreshed["mlflow_run_id"]
    assert stages["ingest"].work_pool is None  # the other stages ran inside the refresh
    progress = {item.key: item.percent for item in api.progress([stages["train"].id])}
    assert progress["train-progress"] == 100.0  # what the demo shows while it follows

    uri = on_stack.mlflow_uri
    trained = refreshed["train"]
    version = tracking.registered_version(trained.model_uri, uri)
    assert version is not None and version.run_id == trained.run_id
    parent = MlflowClient(uri).get_run(refreshed["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == final.id
    assert parent.data.metrics["cost/gpu_minutes"] == 0.0  # the local gpu worker has no GPU
    nested = tracking.child_runs(refreshed["mlflow_run_id"], uri)
    assert [run.stage for run in nested] == ["ingest", "curate", "train"]
    evaluation = MlflowClient(uri).get_run(refreshed["evaluate"].run_id)
    assert evaluation.data.tags["mlflow.parentRunId"] == trained.run_id


def test_photos_landing_make_the_automation_start_a_warm_started_retrain(on_stack):
    """After the refresh above: 20+ photos land, the watcher runs once, the server's automation
    creates one retrain run (delayed by the trigger's schedule_after, started now here) that
    completes on the workers, starting from the champion's weights."""
    from flows.watch import watch_source
    from housegan import tracking
    from housegan.prefect_api import PrefectApi

    settings = get_settings()
    landed = land_new_listings(settings, cities=2, per_city=8, seed=11)
    assert landed >= settings.watch.min_new_photos
    champion = tracking.alias_version("housegan-cgan", "champion", on_stack.mlflow_uri)

    watched = watch_source()
    assert watched.pending == landed and watched.event_id is not None
    api = PrefectApi(on_stack.prefect_api_url)
    runs = wait_for(lambda: api.flow_runs_of("full-refresh/retrain"), timeout_s=60)
    assert len(runs) == 1 and runs[0].state == "SCHEDULED"  # the trigger's delay
    start_now(on_stack.prefect_api_url, runs[0].id)
    done = api.follow(runs[0].id, timeout_s=900)

    assert done.state == "COMPLETED", done.message
    assert done.parameters["source_uri"] == settings.source_uri and done.parameters["warm_start"]
    stages = {run.flow_name: run for run in api.subflow_runs(done.id)}
    assert stages["train"].work_pool == "gpu"
    started_from = stages["train"].parameters["warm_start_from"]
    if champion is not None:  # the first model passed the gate: the retrain continues it
        assert started_from and "/checkpoints/" in started_from
        assert stages["train"].parameters["kimg"] == settings.gan.warm_start_kimg
    else:
        assert started_from is None
    assert not watch_source().event_id  # the retrain ingested them: nothing pending now


def land_new_listings(settings, *, cities: int, per_city: int, seed: int) -> int:
    """New synthetic listings (ids of their own, no defects) copied into the source with boto3,
    as a listing site's uploads arrive; returns how many photos landed."""
    import boto3

    from housegan import synth

    staging = "s3://listings/staging"
    synth.synthesize(
        staging,
        cities=cities,
        per_city=per_city,
        seed=seed,
        defects=False,
        storage_options=settings.storage_options(),
    )
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    source_bucket, source_prefix = settings.source_uri.removeprefix("s3://").split("/", 1)
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket="listings", Prefix="staging/"
        )
        for item in page.get("Contents", [])
    ]
    for key in keys:
        city, listing, name = key.removeprefix("staging/").split("/")
        s3.copy_object(
            Bucket=source_bucket,
            Key=f"{source_prefix}/{city}/new-{listing}/{name}",
            CopySource={"Bucket": "listings", "Key": key},
        )
    return len(keys)


def wait_for(predicate, timeout_s: float, poll_s: float = 1.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not (found := predicate()) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return found


def start_now(api_url: str, run_id: str) -> None:
    """Move a scheduled run's start to now (the trigger delays retrains by minutes)."""
    from datetime import UTC, datetime

    from housegan.prefect_api import call

    state = {
        "type": "SCHEDULED",
        "name": "Scheduled",
        "state_details": {"scheduled_time": datetime.now(UTC).isoformat()},
    }
    call(api_url, f"/flow_runs/{run_id}/set_state", {"state": state, "force": True})
