"""What can go wrong for a user of the app, said in one sentence they can act on.

Helpers raise an ``AppProblem`` (or let a known library error through); ``explain`` turns
either into the message a page shows with ``st.info`` (nothing wrong, just nothing there yet)
or ``st.error`` (something to fix). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import socket
from typing import ClassVar, Literal
from urllib.parse import urlparse

from housegan.config import Settings

ProblemLevel = Literal["info", "error"]


class AppProblem(Exception):
    """A condition the user can act on; shown as a message, never as a traceback."""

    level: ClassVar[ProblemLevel] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoModelYet(AppProblem):
    level = "info"


class NothingThereYet(AppProblem):
    """No curated manifest, no clusters, no runs yet: a stage has not run."""

    level = "info"


class NothingToLabel(AppProblem):
    level = "info"


class TrackingUnreachable(AppProblem):
    pass


class StoreUnreachable(AppProblem):
    pass


def explain(exc: BaseException, settings: Settings) -> AppProblem | None:
    """The user-facing problem behind ``exc``; None when it is not one (a bug: re-raise it)."""
    if isinstance(exc, AppProblem):
        return exc
    store = settings.store_uri
    try:
        import botocore.exceptions as boto
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        boto = None
    if boto is not None and isinstance(exc, boto.NoCredentialsError):
        return StoreUnreachable(f"No S3 credentials for the store {store}: set AWS_* variables")
    if boto is not None and isinstance(exc, boto.BotoCoreError | boto.ClientError):
        return StoreUnreachable(f"The store {store} is unreachable: {exc}")
    if isinstance(exc, PermissionError):
        return StoreUnreachable(f"The store {store} refused access: {exc}")
    mlflow_problem = _explain_mlflow(exc, settings)
    if mlflow_problem is not None:
        return mlflow_problem
    if isinstance(exc, ConnectionError | TimeoutError):
        return StoreUnreachable(f"The store {store} is unreachable: {exc}")
    return None


def _explain_mlflow(exc: BaseException, settings: Settings) -> AppProblem | None:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    if not isinstance(exc, MlflowException):
        return None
    uri = settings.mlflow_tracking_uri
    text = str(exc.message)
    if is_missing(exc):
        return NothingThereYet(text)
    if "Max retries exceeded" in text or "Connection refused" in text:
        return TrackingUnreachable(f"MLflow at {uri} is unreachable: start it (`stack up`)")
    return TrackingUnreachable(f"MLflow at {uri} answered with an error: {text}")


def is_missing(exc: BaseException) -> bool:
    """Whether an MLflow error says the model, version, alias or run does not exist."""
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def check_tracking(settings: Settings) -> None:
    """Fail fast when the tracking server is down (MLflow's client retries it for minutes)."""
    from housegan import tracking

    uri = settings.mlflow_tracking_uri
    if not tracking.server_reachable(uri, settings.app.reachable_timeout_s):
        raise TrackingUnreachable(
            f"MLflow at {uri} is unreachable: start it (`housegan stack up`) or set "
            "HOUSEGAN_MLFLOW_TRACKING_URI"
        )


def check_store(settings: Settings) -> None:
    """Fail fast when the store's S3 endpoint does not accept connections (botocore and s3fs
    retry a dead endpoint for several seconds). AWS itself (no endpoint set) is not probed."""
    if not settings.store_uri.startswith("s3://"):
        return
    endpoint = (
        settings.s3_endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if not endpoint:
        return
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", port), settings.app.reachable_timeout_s
        ):
            return
    except OSError as exc:
        raise StoreUnreachable(
            f"The store {settings.store_uri} is unreachable: S3 endpoint {endpoint} ({exc}); "
            "start it (`housegan stack up`) or fix s3_endpoint_url"
        ) from exc
