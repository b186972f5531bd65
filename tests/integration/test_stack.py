from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from housegan import stack


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
