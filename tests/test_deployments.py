"""deployments/prefect.yaml names real flows and valid triggers."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_is_a_prefect_flow():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert len(names) == len(set(names)) and "full-refresh" in names
    for deployment in spec["deployments"]:
        path, attribute = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, attribute), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] in {"cpu", "gpu"}


def test_train_deployment_trigger_parses_as_a_prefect_event_trigger():
    from prefect.events import DeploymentEventTrigger

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    train = next(d for d in spec["deployments"] if d["name"] == "train")
    triggers = [DeploymentEventTrigger(**t) for t in train["triggers"]]
    assert triggers[0].expect == {"housegan.source.updated"}
