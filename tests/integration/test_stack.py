from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from housegan import stack

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def test_credentials_are_generated_once_and_private(tmp_path):
    first = stack.credentials(tmp_path)
    assert stack.credentials(tmp_path) == first
    assert (tmp_path / stack.CREDENTIALS_FILE).stat().st_mode & 0o077 == 0
    assert stack.credentials(tmp_path, "k", "s") == ("k", "s")


@pytest.mark.slow
@pytest.mark.integration
def test_stack_up_serves_s3_mlflow_prefect_and_down_stops_them(tmp_path):
    key, secret = stack.credentials(tmp_path)
    services = stack.up(
        tmp_path,
        host="127.0.0.1",
        s3_port=stack.free_port(),
        access_key=key,
        secret_key=secret,
        buckets=("listings", "housegan"),
        timeout_s=60,
        mlflow_port=stack.free_port(),
        prefect_port=stack.free_port(),
    )
    try:
        assert set(services) == {"s3", "mlflow", "prefect"}
        assert _get(f"{services['mlflow'].endpoint}/health") == 200
        assert _get(f"{services['prefect'].endpoint}/api/health") == 200
        # A second `up` starts nothing new: same PIDs.
        again = stack.up(
            tmp_path,
            host="127.0.0.1",
            s3_port=stack.free_port(),
            access_key=key,
            secret_key=secret,
            buckets=(),
            timeout_s=60,
            mlflow_port=1,
            prefect_port=1,
        )
        assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in services.items()}
        # The MLflow server stores artifacts in the S3 store through its proxy.
        env = stack.stack_env(services, key, secret)
        script = (
            "import mlflow\n"
            "with mlflow.start_run() as run: mlflow.log_text('hi', 'a.txt')\n"
            "print(mlflow.artifacts.load_text(run.info.artifact_uri + '/a.txt'))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.strip().endswith("hi")
    finally:
        stopped = stack.down(tmp_path)
    assert sorted(stopped) == ["mlflow", "prefect", "s3"]
    assert not any(stack.pid_alive(s.pid) for s in services.values())
    assert json.loads((tmp_path / stack.STATE_FILE).read_text()) == {}


def test_down_stops_a_workers_flow_runs_in_their_own_session(tmp_path):
    """A process worker starts each flow run in a new session: `down` stops those too."""
    worker = subprocess.Popen(["bash", "-c", "setsid sleep 600 & wait"], start_new_session=True)
    deadline = 50
    while not stack.descendants(worker.pid) and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.1"], check=True)
    (flow_run,) = stack.descendants(worker.pid)
    assert os.getsid(flow_run) != os.getsid(worker.pid)
    stack.write_state(
        tmp_path, {"worker-cpu": stack.Service("worker-cpu", worker.pid, "http://x", "w.log")}
    )
    assert stack.down(tmp_path) == ["worker-cpu"]
    assert not stack.pid_alive(worker.pid) and not stack.pid_alive(flow_run)


@pytest.mark.slow
@pytest.mark.integration
def test_stack_up_db_postgres_keeps_mlflow_and_prefect_in_postgres(deployed_stack):
    import psycopg

    services = deployed_stack.services
    assert services["mlflow"].backend == services["prefect"].backend == "postgres"
    # An experiment created through MLflow's API is a row in PostgreSQL's mlflow database.
    name = "stack-test-postgres"
    request = urllib.request.Request(
        f"{deployed_stack.mlflow_uri}/api/2.0/mlflow/experiments/create",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    host_port = deployed_stack.postgres_endpoint.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    password = stack.postgres_password(deployed_stack.dir)

    def rows(database: str, query: str) -> list[tuple]:
        with psycopg.connect(
            host=host, port=int(port), user="postgres", password=password, dbname=database
        ) as conn:
            return conn.execute(query).fetchall()

    assert (name,) in rows("mlflow", "SELECT name FROM experiments")
    # Prefect's deployments live in its PostgreSQL database.
    assert ("full-refresh",) in rows("prefect", "SELECT name FROM deployment")
    # Loopback only, and a password is required.
    assert rows("postgres", "SHOW listen_addresses") == [("127.0.0.1",)]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=host, port=int(port), user="postgres", password="wrong").close()


@pytest.mark.slow
@pytest.mark.integration
def test_deployed_stack_has_an_online_worker_per_pool_and_every_deployment(deployed_stack):
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    declared = {d["name"]: d["work_pool"]["name"] for d in spec["deployments"]}
    pools = {p.name: p for p in stack.prefect_overview(deployed_stack.prefect_api_url)}
    assert set(pools) >= {"cpu", "gpu"}
    for name in ("cpu", "gpu"):
        assert pools[name].type == "process"
        assert "ONLINE" in pools[name].workers.values(), pools[name]
        assert stack.pid_alive(deployed_stack.services[f"worker-{name}"].pid)
    deployed = {d: p.name for p in pools.values() for d in p.deployments}
    assert deployed == declared
    assert {"full-refresh", "retrain", "train", "evaluate"} <= set(deployed)
    # `housegan stack status` shows the same.
    out = subprocess.run(
        [sys.executable, "-m", "housegan", "stack", "status"],
        env={**os.environ, "HOUSEGAN_STACK__DIR": str(deployed_stack.dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pool cpu (process): housegan-cpu ONLINE" in out.stdout
    assert "pool gpu (process): housegan-gpu ONLINE" in out.stdout
    assert "postgres: running" in out.stdout and "[postgres]" in out.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_up_refuses_to_switch_the_database_of_a_running_stack(deployed_stack):
    key, secret = stack.credentials(deployed_stack.dir)
    before = {n: s.pid for n, s in stack.read_state(deployed_stack.dir).items()}
    with pytest.raises(stack.StackError, match=r"stack down.*--db sqlite"):
        stack.up(
            deployed_stack.dir,
            host="127.0.0.1",
            s3_port=1,
            access_key=key,
            secret_key=secret,
            buckets=(),
            timeout_s=10,
            mlflow_port=1,
            prefect_port=1,
            db="sqlite",
        )
    assert {n: s.pid for n, s in stack.read_state(deployed_stack.dir).items()} == before
