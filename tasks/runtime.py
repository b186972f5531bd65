"""What every task wrapper shares: a logger that works inside and outside a run, and a
throttled Prefect progress artifact."""

from __future__ import annotations

import logging
import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

PROGRESS_EVERY_S = 2.0


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
