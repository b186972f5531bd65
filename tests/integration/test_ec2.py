"""The EC2 GPU worker: user data, launch/status/terminate against moto's server, the idle
shutdown script, and spot interruption notices stopping a running training at a checkpoint."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from housegan import ec2
from housegan.cli import main
from housegan.config import GanSettings, Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
IDLE_CHECK = REPO / "deployments" / "ec2" / "idle-check.sh"
REGION = "us-east-1"
# Looks like a real secret on purpose: it must never show up in user data.
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(pool: str, **ec2_fields: object) -> Settings:
    return Settings(
        store_uri="s3://housegan/store",
        mlflow_tracking_uri="http://10.0.0.5:5000",
        ec2={
            "pool": pool,
            "source": "https://github.com/example/housegan.git",
            "source_ref": "v1.2.3",
            "prefect_api_url": "http://10.0.0.5:4200/api",
            "instance_profile": "housegan-gpu-worker",
            "idle_minutes": 17,
            **ec2_fields,
        },
    )


# ------------------------------------------------------------------------------ user data
def test_user_data_names_the_pool_units_and_urls_and_runs_the_worker_on_cuda() -> None:
    script = ec2.render_user_data(_settings("gpu"))
    assert "POOL=gpu" in script
    assert "IDLE_MINUTES=17" in script
    assert "prefect worker start --pool" in script
    for unit in ("housegan-worker.service", "housegan-idle.service", "housegan-idle.timer"):
        assert f"/etc/systemd/system/{unit}" in script
    assert "HOUSEGAN_GAN__DEVICE=cuda" in script
    assert "PREFECT_API_URL=http://10.0.0.5:4200/api" in script
    assert "HOUSEGAN_STORE_URI=$STORE_URI" in script and "STORE_URI=s3://housegan/store" in script
    assert "pgrep -f" in script  # the idle check travels inside
    assert "SPOT_POLL_URL=''" in script  # on-demand: no spot notices to poll
    assert "{{" not in script


def test_spot_user_data_turns_the_notice_poller_on() -> None:
    script = ec2.render_user_data(_settings("gpu", market="spot"))
    assert f"SPOT_POLL_URL={ec2.IMDS_URL}" in script
    assert "HOUSEGAN_EC2__SPOT_POLL_URL=" in script


def test_user_data_holds_no_secret_even_with_aws_keys_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLEsessiontoken")
    script = ec2.render_user_data(_settings("gpu", market="spot"))
    assert FAKE_SECRET not in script
    assert "AKIA" not in script and "FwoGZXIvYXdz" not in script
    assert "AWS_SECRET_ACCESS_KEY" not in script and "AWS_ACCESS_KEY_ID" not in script
    assert "aws_secret" not in script.lower()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("ec2.prefect_api_url", "http://127.0.0.1:4200/api", "loopback"),
        ("mlflow_tracking_uri", "sqlite:///.housegan/mlflow.db", "mlflow_tracking_uri"),
        ("store_uri", "file://./.housegan/store", "store_uri"),
        ("ec2.prefect_api_url", "https://user:hunter22@prefect.example.com/api", "credentials"),
        ("ec2.source", "https://ghp_token123@github.com/example/housegan.git", "credentials"),
        ("ec2.source", "/home/me/housegan", "ec2.source"),
    ],
)
def test_user_data_refuses_what_the_worker_cannot_use_or_must_not_carry(
    field: str, value: str, named: str
) -> None:
    settings = _settings("gpu")
    if field.startswith("ec2."):
        cfg = settings.ec2.model_copy(update={field.removeprefix("ec2."): value})
        settings = settings.model_copy(update={"ec2": cfg})
    else:
        settings = settings.model_copy(update={field: value})
    with pytest.raises(ValueError, match=named):
        ec2.render_user_data(settings)


def test_user_data_refuses_a_value_of_a_credential_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_notreallyakey1234")
    settings = _settings("gpu", source_ref="pnu_notreallyakey1234")
    with pytest.raises(ValueError, match="PREFECT_API_KEY"):
        ec2.render_user_data(settings)


def test_a_wheel_source_is_installed_from_its_uri() -> None:
    script = ec2.render_user_data(
        _settings("gpu", source="s3://b/dist/housegan-0.1-py3-none-any.whl")
    )
    assert "SOURCE_KIND=wheel" in script
    assert "SOURCE=s3://b/dist/housegan-0.1-py3-none-any.whl" in script


def test_rendered_user_data_is_valid_bash() -> None:
    script = ec2.render_user_data(_settings("gpu", market="spot"))
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- idle shutdown
def _idle_check(tmp_path: Path, pattern: str, last_busy: float | None) -> tuple[str, bool]:
    state, marker = tmp_path / "last-busy", tmp_path / "shut-down"
    if last_busy is not None:
        state.write_text(f"{int(last_busy)}\n")
    env = {
        **os.environ,
        "HOUSEGAN_IDLE_MINUTES": "5",
        "HOUSEGAN_IDLE_STATE": str(state),
        "HOUSEGAN_BUSY_PATTERN": pattern,
        "HOUSEGAN_SHUTDOWN_CMD": f"touch {marker}",
    }
    done = subprocess.run(["bash", str(IDLE_CHECK)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout, marker.exists()


def test_idle_check_shuts_down_a_machine_idle_past_the_limit(tmp_path: Path) -> None:
    out, shut_down = _idle_check(tmp_path, f"no-such-process-{uuid.uuid4().hex}", time.time() - 600)
    assert shut_down, out
    assert "shutting down" in out


def test_idle_check_keeps_a_machine_idle_for_less_than_the_limit(tmp_path: Path) -> None:
    out, shut_down = _idle_check(tmp_path, f"no-such-process-{uuid.uuid4().hex}", time.time() - 60)
    assert not shut_down, out


def test_idle_check_starts_counting_on_its_first_run(tmp_path: Path) -> None:
    out, shut_down = _idle_check(tmp_path, f"no-such-process-{uuid.uuid4().hex}", None)
    assert not shut_down, out
    assert (tmp_path / "last-busy").read_text().strip()


def test_idle_check_keeps_a_busy_machine_running_and_records_it(tmp_path: Path) -> None:
    tag = f"housegan-fake-flow-run-{uuid.uuid4().hex}"
    busy = subprocess.Popen(["bash", "-c", f"exec -a {tag} sleep 30"])
    try:
        out, shut_down = _idle_check(tmp_path, tag, time.time() - 3600)
    finally:
        busy.kill()
        busy.wait()
    assert not shut_down, out
    assert "busy" in out
    assert int((tmp_path / "last-busy").read_text()) >= time.time() - 60


# ------------------------------------------------------------------------------ moto's EC2
@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials in the environment (moto's), an instance profile and an AMI."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    kwargs = {"endpoint_url": moto_endpoint, "region_name": REGION}
    profile = f"housegan-gpu-{uuid.uuid4().hex[:8]}"
    boto3.client("iam", **kwargs).create_instance_profile(InstanceProfileName=profile)
    images = boto3.client("ec2", **kwargs).describe_images(Owners=["amazon"])["Images"]
    return {"endpoint": moto_endpoint, "profile": profile, "ami": images[0]["ImageId"]}


def _aws_settings(aws: dict[str, str], **ec2_fields: object) -> Settings:
    return _settings(
        f"gpu-{uuid.uuid4().hex[:8]}",  # a pool of its own: tests share the moto server
        endpoint_url=aws["endpoint"],
        region=REGION,
        ami=aws["ami"],
        instance_profile=aws["profile"],
        **ec2_fields,
    )


def _described(aws: dict[str, str], instance_id: str) -> tuple[dict, str, str]:
    import boto3

    client = boto3.client("ec2", endpoint_url=aws["endpoint"], region_name=REGION)
    instance = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][
        0
    ]
    user_data = client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    behaviour = client.describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    return (
        instance,
        base64.b64decode(user_data["UserData"]["Value"]).decode(),
        behaviour["InstanceInitiatedShutdownBehavior"]["Value"],
    )


@pytest.mark.integration
@pytest.mark.parametrize("market", ["on-demand", "spot"])
def test_up_launches_a_tagged_imdsv2_worker_with_its_instance_profile(
    aws: dict[str, str], market: str
) -> None:
    settings = _aws_settings(aws, market=market)
    result = ec2.up(settings)
    assert len(result.launched) == 1 and not result.existing
    instance, user_data, shutdown = _described(aws, result.launched[0].instance_id)
    assert instance["InstanceType"] == "g5.xlarge"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[ec2.ROLE_TAG] == "gpu-worker"
    assert tags[ec2.POOL_TAG] == settings.ec2.pool
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{aws['profile']}")
    assert shutdown == "terminate"
    assert (instance.get("InstanceLifecycle") == "spot") == (market == "spot")
    assert result.launched[0].market == market
    assert f"POOL={settings.ec2.pool}" in user_data
    assert "housegan-worker.service" in user_data and "housegan-idle.timer" in user_data
    assert FAKE_SECRET not in user_data and "AKIA" not in user_data


@pytest.mark.integration
def test_second_up_launches_nothing_while_a_worker_is_live(aws: dict[str, str]) -> None:
    settings = _aws_settings(aws)
    first = ec2.up(settings)
    second = ec2.up(settings)
    assert second.launched == []
    assert [w.instance_id for w in second.existing] == [first.launched[0].instance_id]
    assert len(ec2.up(settings, force=True).launched) == 1


@pytest.mark.integration
def test_status_lists_the_pools_workers_and_down_terminates_them(aws: dict[str, str]) -> None:
    settings, other = _aws_settings(aws, market="spot"), _aws_settings(aws)
    launched = ec2.up(settings).launched[0]
    other_worker = ec2.up(other).launched[0]
    workers = ec2.status(settings)
    assert [w.instance_id for w in workers] == [launched.instance_id]
    worker = workers[0]
    assert (worker.state, worker.instance_type, worker.market) == ("running", "g5.xlarge", "spot")
    assert worker.launch_time is not None

    assert ec2.down(settings) == [launched.instance_id]
    assert ec2.status(settings) == [] or ec2.status(settings)[0].state == "shutting-down"
    assert {w.state for w in ec2.status(settings, include_terminated=True)} <= {
        "shutting-down",
        "terminated",
    }
    assert [w.instance_id for w in ec2.status(other)] == [other_worker.instance_id]  # untouched
    assert ec2.down(settings) == []


@pytest.mark.integration
def test_down_refuses_an_instance_that_is_not_a_worker_of_the_pool(aws: dict[str, str]) -> None:
    settings = _aws_settings(aws)
    with pytest.raises(ValueError, match="not live workers"):
        ec2.down(settings, instance_ids=["i-0123456789abcdef0"])


@pytest.mark.integration
def test_ec2_cli_up_status_down(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = f"gpu-{uuid.uuid4().hex[:8]}"
    env = {
        "HOUSEGAN_STORE_URI": "s3://housegan/store",
        "HOUSEGAN_MLFLOW_TRACKING_URI": "http://10.0.0.5:5000",
        "HOUSEGAN_EC2__ENDPOINT_URL": aws["endpoint"],
        "HOUSEGAN_EC2__REGION": REGION,
        "HOUSEGAN_EC2__PREFECT_API_URL": "http://10.0.0.5:4200/api",
        "HOUSEGAN_EC2__SOURCE": "https://github.com/example/housegan.git",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    common = ["--pool", pool]
    up_flags = ["--ami", aws["ami"], "--instance-profile", aws["profile"], "--spot"]
    assert main(["ec2", "up", *common, *up_flags, "--instance-type", "g4dn.xlarge"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("launched: i-") and "g4dn.xlarge" in out and "spot" in out
    instance_id = out.split()[1]

    assert main(["ec2", "status", *common]) == 0
    assert instance_id in capsys.readouterr().out
    assert main(["ec2", "down", *common]) == 0
    assert f"terminating: {instance_id}" in capsys.readouterr().out
    assert main(["ec2", "up", *common, "--idle-minutes", "0"]) == 2  # refused by validation


# -------------------------------------------------------------------- spot interruption notices
class FakeMetadata:
    """IMDSv2 on loopback: a token from PUT /latest/api/token; instance-action 404 until
    ``notice`` is set, then 200 with the notice; requests without a valid token get 401."""

    TOKEN = "fake-imds-token"

    def __init__(self) -> None:
        self.notice: dict[str, str] | None = None
        self.tokens_issued = 0
        self.polls = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    return self._reply(400, b"")
                fake.tokens_issued += 1
                self._reply(200, fake.TOKEN.encode())

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != fake.TOKEN:
                    return self._reply(401, b"")
                if self.path != "/latest/meta-data/spot/instance-action":
                    return self._reply(404, b"")
                fake.polls += 1
                if fake.notice is None:
                    return self._reply(404, b"Not Found")
                self._reply(200, json.dumps(fake.notice).encode())

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMetadata:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


NOTICE = {"action": "terminate", "time": "2026-12-02T18:42:00Z"}


@pytest.mark.integration
def test_poller_reports_no_notice_on_404_and_the_notice_once_given() -> None:
    with FakeMetadata() as imds:
        watcher = ec2.SpotNoticeWatcher(imds.url)
        assert watcher.poll_once() is None
        assert not watcher.event.is_set()
        imds.notice = NOTICE
        assert watcher.poll_once() == ec2.SpotNotice("terminate", "2026-12-02T18:42:00Z")
        assert watcher.event.is_set()
        assert imds.tokens_issued == 1  # the session token is reused between polls


@pytest.mark.integration
def test_poller_thread_sets_the_event_when_a_notice_appears() -> None:
    event = threading.Event()
    with FakeMetadata() as imds, ec2.SpotNoticeWatcher(imds.url, event, interval_s=0.02):
        while imds.polls < 2:  # it polls, and 404s do not stop it
            time.sleep(0.01)
        assert not event.is_set()
        imds.notice = NOTICE
        assert event.wait(timeout=30)


@pytest.mark.integration
def test_poller_survives_an_unreachable_metadata_service() -> None:
    watcher = ec2.SpotNoticeWatcher(f"http://127.0.0.1:{_free_port()}", interval_s=0.01)
    with watcher:
        time.sleep(0.1)
        assert watcher._thread is not None and watcher._thread.is_alive()
    assert not watcher.event.is_set()


def _tiny_dataset(root: Path) -> str:
    """Two cities x two types of flat-coloured 32 px photos, packed for training."""
    from housegan.gan.data import prepare

    rng = np.random.default_rng(0)
    rows = []
    for city in ("austin", "boston"):
        for image_type in ("exterior", "landscape"):
            for i in range(4):
                path = root / "photos" / city / f"{image_type}-{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path)
                rows.append({"uri": path.as_uri(), "city": city, "image_type": image_type})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return prepare(str(root / "manifest.parquet"), (root / "store").as_uri(), 32).uri


TINY = {
    "image_size": 32,
    "batch_size": 4,
    "width": 4,
    "z_dim": 16,
    "embed_dim": 8,
    "log_every": 1000,
    "snapshot_every": 100_000,
    "grid_per_class": 1,
    "cpu_threads": 1,
    "device": "cpu",
    "checkpoint_every_minutes": 600,
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_spot_notice_checkpoints_a_running_training_which_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from housegan.gan import checkpoint
    from housegan.gan.train import TrainingInterrupted, train

    dataset = _tiny_dataset(tmp_path)
    out_dir = str(tmp_path / "run")
    budget = 1_000_000  # far more than it runs: only the notice stops it
    with FakeMetadata() as imds:
        # Enabled the way the worker enables it: the ec2 section, through the environment.
        monkeypatch.setenv("HOUSEGAN_EC2__SPOT_POLL_URL", imds.url)
        monkeypatch.setenv("HOUSEGAN_EC2__SPOT_POLL_INTERVAL_S", "0.02")
        get_settings.cache_clear()

        def notice_at_step_3(step: int, loss):
            if step == 3:
                imds.notice = NOTICE  # the spot notice arrives mid-run
            return loss

        cfg = GanSettings(**TINY, steps=budget)
        with pytest.raises(TrainingInterrupted) as stopped:
            train(dataset, out_dir, cfg, d_loss_hook=notice_at_step_3)
        assert imds.polls >= 2

    step = stopped.value.step
    assert 3 < step < budget
    assert [s for s, _ in checkpoint.list_checkpoints(out_dir)] == [step]
    assert stopped.value.checkpoint_uri.endswith(checkpoint.checkpoint_name(step))

    # The next machine (no notice) resumes from that checkpoint and finishes its budget.
    monkeypatch.delenv("HOUSEGAN_EC2__SPOT_POLL_URL")
    get_settings.cache_clear()
    result = train(dataset, out_dir, GanSettings(**TINY, steps=step + 2), resume=True)
    assert result.step == step + 2
    assert [s for s, _ in checkpoint.list_checkpoints(out_dir)][-1] == step + 2


@pytest.mark.slow
def test_training_without_a_poll_url_polls_nothing_and_runs_its_budget(tmp_path: Path) -> None:
    from housegan.gan.train import train

    threads_seen: set[str] = set()

    def look(step: int, loss):
        threads_seen.update(t.name for t in threading.enumerate())
        return loss

    cfg = GanSettings(**TINY, steps=3)
    result = train(_tiny_dataset(tmp_path), str(tmp_path / "run"), cfg, d_loss_hook=look)
    assert result.step == 3
    assert "spot-notice" not in threads_seen
