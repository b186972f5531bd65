"""Fixtures that start real servers. Each server runs on a free loopback port and is stopped
by PID at the end of the session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from housegan import stack
from housegan.config import Settings, get_settings

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int

    def client(self, endpoint: str | None = None):
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A private SeaweedFS S3 server; its credentials are exported as the standard AWS vars."""
    access_key, secret_key = f"test{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    service = stack.start_seaweed(
        tmp_path_factory.mktemp("seaweed"), access_key=access_key, secret_key=secret_key
    )
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    try:
        yield S3Server(service.endpoint, access_key, secret_key, service.pid)
    finally:
        stack.stop_pid(service.pid)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(s3_server: S3Server, bucket: str, tmp_path: Path) -> Settings:
    """Settings pointing at the private S3 server: raw photos in ``bucket/raw``, a local store."""
    return Settings(
        source_uri=f"s3://{bucket}/raw",
        store_uri=(tmp_path / "store").as_uri(),
        s3_endpoint_url=s3_server.endpoint,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Tests never read the developer's housegan.yaml or HOUSEGAN_* variables, nor settings
    cached by another test."""
    for name in list(os.environ):
        if name.startswith("HOUSEGAN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for flow and task tests; ~13 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    saved = os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # Tasks called alone (outside a flow run) log locally instead of warning.
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in ``sys.modules``; the
    forkserver DataLoader workers of a later embed would then re-run that page (and die)."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main
