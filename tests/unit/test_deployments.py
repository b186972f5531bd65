"""deployments/prefect.yaml names real flows and valid triggers."""

from __future__ import annotations

import importlib
import uuid
from datetime import timedelta
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_entrypoint_is_a_prefect_flow():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert len(names) == len(set(names)) and "full-refresh" in names
    for deployment in spec["deployments"]:
        path, attribute = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, attribute), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] in {"cpu", "gpu"}


def test_retrain_is_triggered_by_the_event_the_source_watcher_emits():
    from prefect.events import DeploymentEventTrigger

    from tasks.watch import SOURCE_RESOURCE_PREFIX, SOURCE_UPDATED_EVENT

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    triggers = [DeploymentEventTrigger(**t) for t in by_name["retrain"]["triggers"]]
    assert triggers[0].expect == {SOURCE_UPDATED_EVENT}
    pattern = triggers[0].match.model_dump()["prefect.resource.id"]
    assert pattern == f"{SOURCE_RESOURCE_PREFIX}*"
    assert by_name["retrain"]["entrypoint"] == by_name["full-refresh"]["entrypoint"]
    assert by_name["retrain"]["concurrency_limit"]["limit"] == 1


def test_retrain_trigger_debounces_a_burst_into_one_run():
    """Reactive, threshold 1, a window: the first event fires, the window's others are dropped;
    the run starts after a delay shorter than the window (the burst lands meanwhile)."""
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (raw,) = next(d for d in spec["deployments"] if d["name"] == "retrain")["triggers"]
    trigger = DeploymentEventTrigger(**raw)
    assert trigger.posture == Posture.Reactive and trigger.threshold == 1
    assert trigger.for_each == {"prefect.resource.id"}  # one window per source
    interval = timedelta(seconds=_watch_interval_s(spec))
    assert trigger.schedule_after >= interval  # a burst spanning one watcher run lands first
    assert trigger.within >= trigger.schedule_after + interval
    trigger.set_deployment_id(uuid.uuid4())  # what `prefect deploy` does before creating it
    (action,) = trigger.actions()
    assert action.schedule_after == trigger.schedule_after


def _watch_interval_s(spec: dict) -> float:
    (watch,) = [d for d in spec["deployments"] if d["name"] == "watch-source"]
    return float(watch["schedules"][0]["interval"])
