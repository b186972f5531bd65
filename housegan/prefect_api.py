"""The Prefect server's REST API, as the UI uses it: start a deployment's run (the Run button is
``POST /api/deployments/{id}/create_flow_run``) and follow it and its subflow runs to the end.

Plain HTTP (urllib), so ``make demo`` and tests drive the server exactly as a person in the UI
does, and the library stays free of Prefect imports.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
REQUEST_TIMEOUT_S = 30.0


class PrefectApiError(RuntimeError):
    """The Prefect server answered an error; ``status`` is its HTTP status."""

    def __init__(self, path: str, status: int, detail: str) -> None:
        super().__init__(f"Prefect API {path}: {status} {detail}")
        self.status = status


def call(
    api_url: str, path: str, body: Mapping[str, Any] | None = None, timeout_s: float = 10.0
) -> Any:
    """One call to the Prefect REST API: POST ``body`` (JSON) when given, else GET; an error
    answer raises PrefectApiError with the status and the server's words."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{api_url.rstrip('/')}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise PrefectApiError(path, error.code, detail) from error


@dataclass(frozen=True)
class RunState:
    """One flow run as the API shows it."""

    id: str
    name: str
    flow_name: str | None
    deployment_id: str | None
    work_pool: str | None
    state: str  # the state type: SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, ...
    message: str | None
    parameters: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Progress:
    """A progress artifact of a run: ``key`` (e.g. ``train-progress``) at ``percent``."""

    run_id: str
    key: str
    percent: float
    description: str | None


class PrefectApi:
    """A client of one Prefect server; ``api_url`` ends in ``/api`` (PREFECT_API_URL)."""

    def __init__(self, api_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self._flow_names: dict[str, str] = {}

    def _json(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return call(self.api_url, path, body, self.timeout_s)

    def deployment_id(self, name: str) -> str:
        """The id of deployment ``FLOW/DEPLOYMENT``."""
        flow, deployment = name.split("/", 1)
        return self._json(f"/deployments/name/{flow}/{deployment}")["id"]

    def create_flow_run(self, deployment: str, parameters: Mapping[str, Any]) -> RunState:
        """What the UI's Run button does: a run of ``deployment`` with these parameters."""
        path = f"/deployments/{self.deployment_id(deployment)}/create_flow_run"
        return self._state(self._json(path, {"parameters": dict(parameters)}))

    def flow_run(self, run_id: str) -> RunState:
        return self._state(self._json(f"/flow_runs/{run_id}"))

    def subflow_runs(self, run_id: str) -> list[RunState]:
        """The runs started under ``run_id`` (its stages), oldest first."""
        body = {
            "flow_runs": {"parent_flow_run_id": {"operator": "and_", "any_": [run_id]}},
            "sort": "START_TIME_ASC",
        }
        return [self._state(raw) for raw in self._json("/flow_runs/filter", body)]

    def flow_runs_of(self, deployment: str) -> list[RunState]:
        """Every run of ``deployment``, newest first."""
        body = {
            "deployments": {"id": {"any_": [self.deployment_id(deployment)]}},
            "sort": "EXPECTED_START_TIME_DESC",
        }
        return [self._state(raw) for raw in self._json("/flow_runs/filter", body)]

    def progress(self, run_ids: list[str]) -> list[Progress]:
        """The progress artifacts of these runs (training kimg, images packed, ...)."""
        if not run_ids:
            return []
        body = {
            "artifacts": {"flow_run_id": {"any_": run_ids}, "type": {"any_": ["progress"]}},
        }
        return [
            Progress(
                run_id=str(raw["flow_run_id"]),
                key=raw.get("key") or "",
                percent=float(raw["data"] or 0.0),
                description=raw.get("description"),
            )
            for raw in self._json("/artifacts/filter", body)
        ]

    def follow(
        self,
        run_id: str,
        timeout_s: float,
        on_change: Callable[[RunState], None] | None = None,
        poll_s: float = 2.0,
        on_progress: Callable[[RunState, Progress], None] | None = None,
        progress_step: float = 10.0,
    ) -> RunState:
        """Poll the run and its subflow runs until the run is final; ``on_change`` sees each
        run whenever its state changes, ``on_progress`` each progress artifact of a running one
        whenever it has moved by ``progress_step`` points. Raises TimeoutError after
        ``timeout_s``."""
        seen: dict[str, str] = {}
        shown: dict[tuple[str, str], float] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.flow_run(run_id)
            runs = {item.id: item for item in (run, *self.subflow_runs(run_id))}
            for item in runs.values():
                if seen.get(item.id) != item.state and on_change is not None:
                    on_change(item)
                seen[item.id] = item.state
            running = [item.id for item in runs.values() if item.state == "RUNNING"]
            for moved in self.progress(running) if on_progress else []:
                mark = (moved.run_id, moved.key)
                if moved.percent - shown.get(mark, 0.0) >= progress_step:
                    shown[mark] = moved.percent
                    on_progress(runs[moved.run_id], moved)
            if run.final:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name} still {run.state} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def _flow_name(self, flow_id: str) -> str:
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = self._json(f"/flows/{flow_id}")["name"]
        return self._flow_names[flow_id]

    def _state(self, raw: Mapping[str, Any]) -> RunState:
        state = raw.get("state") or {}
        return RunState(
            id=str(raw["id"]),
            name=raw["name"],
            flow_name=self._flow_name(raw["flow_id"]) if raw.get("flow_id") else None,
            deployment_id=raw.get("deployment_id"),
            work_pool=raw.get("work_pool_name"),
            state=state.get("type", "SCHEDULED"),
            message=state.get("message"),
            parameters=dict(raw.get("parameters") or {}),
        )
