"""deployments/prefect.yaml names real flows and valid triggers."""

from __future__ import annotations

import importlib
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
    assert by_name["watch-source"]["schedules"][0]["interval"] > 0
