"""What every task wrapper shares: the task decorator of a step (its one cache key), a check
that a cached result's files are still there, a logger and a throttled progress artifact."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

from housegan import storage
from housegan.config import get_settings
from housegan.steps import Step

P = ParamSpec("P")
R = TypeVar("R")
PROGRESS_EVERY_S = 2.0
S3_ANY = "s3://any"  # one endpoint serves every bucket the settings' storage options reach
_STEP_OF: dict[Callable[..., Any], Step] = {}  # task function -> the step it wraps


def step_cache_key(step: Step) -> Callable[[TaskRunContext | None, dict[str, Any]], str]:
    """The cache key of every cached task: a hash of the step's determinants, i.e. the task's
    ``inputs`` parameter (labels by content) and the settings sections the step reads."""

    def key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
        settings = get_settings()
        found = step.determinants(parameters["inputs"], settings, settings.storage_options())
        digest = hashlib.sha256(json.dumps(found, sort_keys=True, default=str).encode())
        return f"{step.name}-{digest.hexdigest()}"

    return key


def step_task(
    step: Step, *, cache: bool = True, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@task`` for the wrapper of ``step``: named after it and, with ``cache``, cached by
    ``step_cache_key`` (results persisted); otherwise never cached."""
    policy: dict[str, Any] = (
        {"cache_key_fn": step_cache_key(step), "persist_result": True}
        if cache
        else {"cache_policy": NO_CACHE}
    )

    name = options.pop("name", step.name.replace("_", "-"))

    def wrap(fn: Callable[P, R]) -> Task[P, R]:
        _STEP_OF[fn] = step
        return task(name=name, **policy, **options)(fn)

    return wrap


def run_step(step: Step[..., R], inputs: Any, **runtime: Any) -> R:
    """Run ``step`` on ``inputs`` with the configured settings and storage options."""
    settings = get_settings()
    return step.run(inputs, settings, storage_options=settings.storage_options(), **runtime)


def run_store_step(step: Step[..., R], inputs: Any, **runtime: Any) -> R:
    """``run_step``, where trouble reaching the store (refused, reset, timed out, 5xx) raises
    ``storage.StoreUnreachable``: the run then fails in one line naming the endpoint, whichever
    read of the step met the outage."""
    try:
        return run_step(step, inputs, **runtime)
    except Exception as exc:
        # The S3 endpoint: the store may be local while the photos it names are on S3.
        outage = storage.unreachable(exc, S3_ANY, get_settings().storage_options())
        if outage is None or outage is exc:
            raise
        raise outage from exc


def with_retry_delay(task: Task[P, R], section: Literal["embed", "curate"]) -> Task[P, R]:
    """``task`` waiting ``<section>.task_retry_delay_s`` before each retry: the decorator's delay
    is fixed at import, the configured one is read per run."""
    delay_s = getattr(get_settings(), section).task_retry_delay_s
    return task.with_options(retry_delay_seconds=delay_s)


def run_fresh(wrapper: Task[..., R], inputs: Any) -> R:
    """Run a cached step task; if the files its cached result names have vanished from the
    store, run it again."""
    result = wrapper(inputs)
    options = get_settings().storage_options()
    written = _STEP_OF[wrapper.fn].written(result)
    if not all(storage.exists(uri, options) for uri in written):
        result = wrapper.with_options(refresh_cache=True)(inputs)
    return result


def in_task_run() -> bool:
    return TaskRunContext.get() is not None


def task_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """The run's logger, or the module's when a task is called as ``.fn(...)`` outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


class ProgressArtifact:
    """A Prefect progress artifact fed with (done, total), updated at most every ``every_s``."""

    def __init__(self, key: str, description: str, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.artifact_id = create_progress_artifact(0.0, key=key, description=description)
        self.last = 0.0

    def update(self, done: float, total: float) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.every_s:
            update_progress_artifact(self.artifact_id, min(100.0, 100.0 * done / max(total, 1e-9)))
            self.last = now

    __call__ = update

    def finish(self) -> None:
        update_progress_artifact(self.artifact_id, 100.0)
