"""What a user does in the Prefect UI, on the real stack: pools ``cpu`` and ``gpu`` with a
process worker each, the deployments of ``deployments/prefect.yaml``, Prefect and MLflow on
PostgreSQL. Run on ``full-refresh`` (the REST call the button makes) trains on pool ``gpu``;
the retrain deployment warm-starts from the champion; MLflow holds one parent run per refresh."""

from __future__ import annotations

import pytest

from housegan.config import get_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def on_stack(deployed_stack, monkeypatch):
    """This process talks to the deployed stack, with the workers' settings."""
    for name, value in deployed_stack.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield deployed_stack
    get_settings.cache_clear()


def test_run_on_full_refresh_trains_on_the_gpu_pool_and_nests_every_stage_run(on_stack):
    from mlflow import MlflowClient

    from flows.demo import demo_data_flow, refresh_through_api
    from housegan import tracking
    from housegan.prefect_api import PrefectApi

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

    # Run on retrain with its defaults (what its trigger does): a warm start from the champion.
    champion = tracking.alias_version("housegan-cgan", "champion", uri)
    again = api.create_flow_run("full-refresh/retrain", {})
    done = api.follow(again.id, timeout_s=900)
    assert done.state == "COMPLETED", done.message
    retrain = {run.flow_name: run for run in api.subflow_runs(done.id)}["train"]
    started_from = retrain.parameters["warm_start_from"]
    if champion is not None:
        assert started_from and "/checkpoints/" in started_from
        assert retrain.parameters["kimg"] == get_settings().gan.warm_start_kimg
    else:  # the gate refused the first model: nothing to start from
        assert started_from is None
