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
from housegan.prefect_api import call as call_api

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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server, for the AWS APIs SeaweedFS does not have (EC2, IAM, SQS, S3 events), on
    a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = stack.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


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


@dataclass(frozen=True)
class DeployedStack:
    """The whole local stack, as `housegan stack up --db postgres` starts it."""

    dir: Path
    settings_path: Path  # HOUSEGAN_CONFIG of the workers' flow runs
    env: dict[str, str]  # the stack's env (AWS_*, MLFLOW_TRACKING_URI, PREFECT_API_URL, ...)
    services: dict[str, stack.Service]
    s3_endpoint: str
    mlflow_uri: str
    prefect_api_url: str
    postgres_endpoint: str  # postgresql://postgres@host:port; password: stack.postgres_password


@pytest.fixture(scope="session")
def deployed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedStack]:
    """S3, PostgreSQL, MLflow and Prefect (both on PostgreSQL), the `cpu` and `gpu` pools, the
    deployments of deployments/prefect.yaml and a worker per pool, on free loopback ports. The
    workers' flow runs read a tiny-settings YAML (the stack's buckets, a tiny GAN at 32 px).
    watch-source's schedule is paused: no retrain starts behind a test's back. ~1-2 minutes."""
    import yaml

    from housegan.testing.gan import TINY_GAN

    root = tmp_path_factory.mktemp("stack")
    key, secret = stack.credentials(root)
    ports = {name: stack.free_port() for name in ("s3", "mlflow", "prefect")}
    endpoints = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    settings_path = root / "housegan.yaml"
    settings_path.write_text(yaml.safe_dump(_tiny_stack_settings(endpoints, TINY_GAN)))
    worker_env = {"HOUSEGAN_CONFIG": str(settings_path)}
    try:
        with pytest.MonkeyPatch.context() as patch:
            # The servers and workers inherit this process's environment: none of the
            # developer's HOUSEGAN_* settings.
            for name in [n for n in os.environ if n.startswith("HOUSEGAN_")]:
                patch.delenv(name)
            services = stack.up(
                root,
                host="127.0.0.1",
                s3_port=ports["s3"],
                access_key=key,
                secret_key=secret,
                buckets=("listings", "housegan"),
                timeout_s=120,
                mlflow_port=ports["mlflow"],
                prefect_port=ports["prefect"],
                db="postgres",
                pools=("cpu", "gpu"),
                repo_dir=Path(__file__).resolve().parents[1],
                worker_env=worker_env,
            )
        api = f"{endpoints['prefect']}/api"
        _pause_deployment(api, "watch-source")
        env = {**stack.stack_env(services, key, secret), **worker_env}
        env["HOUSEGAN_REPO_DIR"] = str(Path(__file__).resolve().parents[1])
        yield DeployedStack(
            dir=root,
            settings_path=settings_path,
            env=env,
            services=services,
            s3_endpoint=endpoints["s3"],
            mlflow_uri=endpoints["mlflow"],
            prefect_api_url=api,
            postgres_endpoint=services["postgres"].endpoint,
        )
    finally:
        _down_and_check(root)


def _tiny_stack_settings(endpoints: dict[str, str], tiny_gan: dict[str, str]) -> dict:
    import yaml

    gan = {k.lower(): yaml.safe_load(v) for k, v in tiny_gan.items()}
    return {
        "source_uri": "s3://listings/raw",
        "store_uri": "s3://housegan/store",
        "s3_endpoint_url": endpoints["s3"],
        "mlflow_tracking_uri": endpoints["mlflow"],
        "embed": {"input_size": 32, "num_workers": 0},
        "gan": {**gan, "image_size": 32, "batch_size": 8, "steps": 4, "cpu_threads": 1},
        "evaluate": {
            "device": "cpu",
            "samples_per_cell": 4,
            "holdout_fraction": 0.25,
            "kid_subsets": 2,
            "classifier_pca_dim": 2,
            "pairs_per_cell": 1,
            "figure_thumb": 16,
            "copy_threshold": 0.99,  # a 4-step generator's blobs are not copies
        },
    }


def _pause_deployment(api_url: str, name: str) -> None:
    body = {"deployments": {"name": {"any_": [name]}}}
    for deployment in call_api(api_url, "/deployments/filter", body):
        call_api(api_url, f"/deployments/{deployment['id']}/pause_deployment", {})


def _down_and_check(root: Path) -> None:
    """`stack down`, then every PID of the stack (workers' flow runs included) is gone."""
    services = stack.read_state(root)
    pids = [s.pid for s in services.values()]
    for name, service in services.items():
        if name.startswith(stack.WORKER_PREFIX) and service.alive():
            pids += stack.descendants(service.pid)
    stack.down(root)
    alive = [pid for pid in pids if stack.pid_alive(pid)]
    assert not alive, f"still running after stack.down: {alive}"
