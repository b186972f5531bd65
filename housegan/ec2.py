"""The EC2 GPU worker: launch, list and terminate it, and watch for spot interruption notices.

Prefect 3 has no EC2 worker type. The GPU step runs on a Prefect *process* worker polling the
work pool ``gpu`` on an EC2 GPU instance; ``up`` launches that instance with user data rendered
from ``deployments/ec2/`` (install the project, run the worker under systemd, terminate after
``idle_minutes`` without a flow run). Instances are found again by their tags, so ``status`` and
``down`` need no local state.

Credentials: the instance gets AWS access from its instance profile only, with IMDSv2 required.
The rendered user data is checked for anything secret-looking before it is sent.

On the worker, ``SpotNoticeWatcher`` polls the instance metadata for a spot interruption notice
(two minutes' warning) and sets an event that the training loop checks each step: it writes its
checkpoint and stops, and ``resume`` continues on the next machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from housegan.config import Ec2Settings, Settings

EC2Client = Any  # a boto3 EC2 client (boto3 ships no static types)
log = logging.getLogger(__name__)

ROLE_TAG, ROLE = "housegan:role", "gpu-worker"
POOL_TAG = "housegan:pool"
TEMPLATE = "user-data.sh.tmpl"
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "deployments" / "ec2"
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
IMDS_URL = "http://169.254.169.254"  # the instance metadata service, seen from the instance
Market = Literal["spot", "on-demand"]

# Environment variables whose values must never reach user data (it is readable by anyone who
# can describe the instance, and from inside it by any process).
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PREFECT_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HOUSEGAN_STACK__SECRET_KEY",
)
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s'\"@]+@", re.IGNORECASE)
_TOKEN = re.compile(r"\{\{\s*([\w:.-]+)\s*\}\}")


@dataclass(frozen=True)
class WorkerInstance:
    """One tagged GPU worker instance, as ``status`` shows it."""

    instance_id: str
    state: str
    instance_type: str
    launch_time: datetime | None
    market: Market
    private_ip: str | None = None
    public_ip: str | None = None


@dataclass(frozen=True)
class UpResult:
    launched: list[WorkerInstance]
    existing: list[WorkerInstance]  # live workers of the pool found before launching


# ------------------------------------------------------------------------------- user data
def render_user_data(settings: Settings) -> str:
    """The cloud-init script of a worker: ``deployments/ec2/user-data.sh.tmpl`` filled in.

    Raises ValueError naming the setting when the worker could not work (no source, a loopback
    or local URL the machine cannot reach, credentials in a URL) or the result looks secret.
    """
    cfg = settings.ec2
    folder = cfg.template_dir or DEFAULT_TEMPLATE_DIR
    if not (folder / TEMPLATE).is_file():
        raise ValueError(
            f"no {TEMPLATE} in {folder}: run from a housegan checkout or set ec2.template_dir"
        )
    script = _fill((folder / TEMPLATE).read_text(), _template_values(settings), folder)
    check_no_secrets(script)
    return script


def _template_values(settings: Settings) -> dict[str, str]:
    cfg = settings.ec2
    if not cfg.source:
        raise ValueError(
            "ec2.source is not set: a git URL of the project (https://.../housegan.git) "
            "or a wheel URI (s3://.../housegan-*.whl)"
        )
    prefect_api_url = cfg.prefect_api_url or os.environ.get("PREFECT_API_URL")
    if not prefect_api_url:
        raise ValueError(
            "ec2.prefect_api_url is not set (nor PREFECT_API_URL): the worker's server"
        )
    values = {
        "pool": cfg.pool,
        "idle_minutes": str(cfg.idle_minutes),
        "python": cfg.python,
        "source_kind": _source_kind(cfg.source),
        "source": cfg.source,
        "source_ref": cfg.source_ref,
        "constraints_uri": cfg.constraints_uri or "",
        "prefect_api_url": _remote_url("ec2.prefect_api_url", prefect_api_url, ("http", "https")),
        "mlflow_tracking_uri": _remote_url(
            "mlflow_tracking_uri",
            cfg.mlflow_tracking_uri or settings.mlflow_tracking_uri,
            ("http", "https", "databricks"),
        ),
        "store_uri": _remote_url("store_uri", cfg.store_uri or settings.store_uri, ("s3",)),
        "region": cfg.region or "",
        # Spot machines poll their own metadata during training; on-demand ones get no notices.
        "spot_poll_url": IMDS_URL if cfg.market == "spot" else "",
    }
    for name, value in values.items():
        if any(c in value for c in "\n\r\"'\\") or (value != value.strip()):
            raise ValueError(f"ec2 user data: {name}={value!r} holds quotes or spaces")
        _no_userinfo(name, value)
    return values


def _source_kind(source: str) -> Literal["git", "wheel"]:
    path = urlsplit(source).path
    if path.endswith(".whl"):
        if not source.startswith(("s3://", "https://", "http://")):
            raise ValueError(f"ec2.source={source!r}: a wheel must be an s3:// or https:// URI")
        return "wheel"
    if source.startswith("https://"):
        return "git"  # public, or served to the instance without credentials
    raise ValueError(f"ec2.source={source!r} is neither an https:// git URL nor a wheel (.whl)")


def _remote_url(name: str, value: str, schemes: Sequence[str]) -> str:
    """A URL the GPU machine can reach: an allowed scheme, not a loopback host."""
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(
            f"{name}={value!r}: the GPU worker needs a {' or '.join(schemes)} URI it can reach "
            "(a local database or folder stays on this machine)"
        )
    if parts.hostname in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        raise ValueError(f"{name}={value!r} is a loopback address, not reachable from EC2")
    return value


def _no_userinfo(name: str, value: str) -> None:
    if _URL_USERINFO.search(value):
        raise ValueError(
            f"{name} holds credentials in its URL: user data is not secret; give the worker "
            "access through its instance profile instead"
        )


def _fill(template: str, values: Mapping[str, str], folder: Path) -> str:
    """``{{ name }}`` -> the shell-quoted value; ``{{ file:NAME }}`` -> that file, verbatim."""
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("file:"):
            return (folder / token.removeprefix("file:")).read_text().rstrip("\n")
        if token not in values:
            raise ValueError(f"{TEMPLATE} names {{{{ {token} }}}}, which has no value")
        used.add(token)
        return shlex.quote(values[token])

    script = _TOKEN.sub(replace, template)
    unused = sorted(set(values) - used)
    if unused:
        raise ValueError(f"{TEMPLATE} does not use {unused}: template and code disagree")
    return script


def check_no_secrets(text: str) -> None:
    """Refuse text holding an AWS access key id, a URL with credentials, or the value of a
    credential variable of this environment (AWS_SECRET_ACCESS_KEY, PREFECT_API_KEY, ...)."""
    if _ACCESS_KEY_ID.search(text):
        raise ValueError("user data holds an AWS access key id; the instance profile is the way")
    _no_userinfo("user data", text)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 8 and value in text:
            raise ValueError(f"user data holds the value of ${name}; it must not leave here")


# ------------------------------------------------------------------------------ the API calls
def client(cfg: Ec2Settings, service: str = "ec2") -> Any:
    """A boto3 client; credentials and region as boto3 finds them unless ``cfg`` names them."""
    import boto3

    return boto3.client(service, region_name=cfg.region, endpoint_url=cfg.endpoint_url)


def launch_request(cfg: Ec2Settings, user_data: str) -> dict[str, Any]:
    """The ``run_instances`` arguments of one worker (``up --dry-run`` prints them)."""
    if not (cfg.ami or cfg.launch_template):
        raise ValueError("set ec2.ami (an AMI id or resolve:ssm:...) or ec2.launch_template")
    if not (cfg.instance_profile or cfg.launch_template):
        raise ValueError(
            "set ec2.instance_profile: the worker's only AWS credentials (S3, MLflow artifacts)"
        )
    tags = {"Name": cfg.name, **cfg.tags, ROLE_TAG: ROLE, POOL_TAG: cfg.pool}
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    request: dict[str, Any] = {
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": cfg.instance_type,
        "UserData": user_data,  # boto3 base64-encodes it
        "InstanceInitiatedShutdownBehavior": "terminate",  # the idle timer's shutdown ends it
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list},
            {"ResourceType": "volume", "Tags": tag_list},
        ],
    }
    if cfg.ami:
        request["ImageId"] = cfg.ami
    if cfg.launch_template:
        key = "LaunchTemplateId" if cfg.launch_template.startswith("lt-") else "LaunchTemplateName"
        request["LaunchTemplate"] = {
            key: cfg.launch_template,
            "Version": cfg.launch_template_version,
        }
    if cfg.instance_profile:
        key = "Arn" if cfg.instance_profile.startswith("arn:") else "Name"
        request["IamInstanceProfile"] = {key: cfg.instance_profile}
    if cfg.market == "spot":
        spot: dict[str, Any] = {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        if cfg.spot_max_price:
            spot["MaxPrice"] = cfg.spot_max_price
        request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    if cfg.subnet_id:
        request["SubnetId"] = cfg.subnet_id
    if cfg.security_group_ids:
        request["SecurityGroupIds"] = list(cfg.security_group_ids)
    if cfg.key_name:
        request["KeyName"] = cfg.key_name
    return request


def up(settings: Settings, *, ec2: EC2Client | None = None, force: bool = False) -> UpResult:
    """Launch one worker for ``ec2.pool`` unless one is already live (``force``: launch anyway)."""
    cfg = settings.ec2
    request = launch_request(cfg, render_user_data(settings))  # fails before any API call
    ec2 = ec2 or client(cfg)
    existing = [w for w in status(settings, ec2=ec2) if w.state in ("pending", "running")]
    if existing and not force:
        return UpResult(launched=[], existing=existing)
    reply = ec2.run_instances(**request)
    return UpResult(launched=[_worker(i) for i in reply["Instances"]], existing=existing)


def status(
    settings: Settings, *, ec2: EC2Client | None = None, include_terminated: bool = False
) -> list[WorkerInstance]:
    """The pool's tagged workers, oldest first (terminated ones only when asked)."""
    cfg = settings.ec2
    ec2 = ec2 or client(cfg)
    states = [*LIVE_STATES, "terminated"] if include_terminated else list(LIVE_STATES)
    filters = [
        {"Name": f"tag:{ROLE_TAG}", "Values": [ROLE]},
        {"Name": f"tag:{POOL_TAG}", "Values": [cfg.pool]},
        {"Name": "instance-state-name", "Values": states},
    ]
    workers = [
        _worker(instance)
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]
    return sorted(workers, key=lambda w: (w.launch_time or datetime.min, w.instance_id))


def down(
    settings: Settings, *, ec2: EC2Client | None = None, instance_ids: Sequence[str] = ()
) -> list[str]:
    """Terminate the pool's live workers (or only ``instance_ids`` among them); returns ids."""
    ec2 = ec2 or client(settings.ec2)
    live = {w.instance_id for w in status(settings, ec2=ec2) if w.state != "shutting-down"}
    unknown = sorted(set(instance_ids) - live)
    if unknown:
        raise ValueError(f"not live workers of pool {settings.ec2.pool}: {unknown}")
    targets = sorted(set(instance_ids) or live)
    if targets:
        ec2.terminate_instances(InstanceIds=targets)
    return targets


def _worker(instance: Mapping[str, Any]) -> WorkerInstance:
    return WorkerInstance(
        instance_id=instance["InstanceId"],
        state=instance["State"]["Name"],
        instance_type=instance["InstanceType"],
        launch_time=instance.get("LaunchTime"),
        market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
        private_ip=instance.get("PrivateIpAddress"),
        public_ip=instance.get("PublicIpAddress"),
    )


# -------------------------------------------------------------------- spot interruption notices
@dataclass(frozen=True)
class SpotNotice:
    """``spot/instance-action``: what happens to the instance, and when (ISO 8601, UTC)."""

    action: str  # "terminate", "stop" or "hibernate"
    time: str


class SpotNoticeWatcher:
    """Polls IMDSv2 for a spot interruption notice in a daemon thread; sets ``event`` on one.

    IMDSv2: a session token from ``PUT /latest/api/token``, then ``GET
    /latest/meta-data/spot/instance-action`` with it; 404 means no notice. Network errors are
    logged and polling goes on: a metadata hiccup must not stop a training run.
    """

    TOKEN_TTL_S = 21_600

    def __init__(
        self,
        base_url: str,
        event: threading.Event | None = None,
        *,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.event = event if event is not None else threading.Event()
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.notice: SpotNotice | None = None
        self._token: str | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        # The metadata service is link-local: never through an HTTP(S)_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def poll_once(self) -> SpotNotice | None:
        """One check; on a notice, records it and sets the event."""
        for attempt in range(2):  # a second try with a fresh token if the old one expired
            self._token = self._token or self._new_token()
            request = urllib.request.Request(
                f"{self.base_url}/latest/meta-data/spot/instance-action",
                headers={"X-aws-ec2-metadata-token": self._token},
            )
            try:
                with self._opener.open(request, timeout=self.timeout_s) as reply:
                    body = json.loads(reply.read() or b"{}")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 0:
                    self._token = None
                    continue
                raise
            self.notice = SpotNotice(str(body.get("action", "")), str(body.get("time", "")))
            self.event.set()
            return self.notice
        return None

    def _new_token(self) -> str:
        request = urllib.request.Request(
            f"{self.base_url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_S)},
        )
        with self._opener.open(request, timeout=self.timeout_s) as reply:
            return reply.read().decode().strip()

    def _run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                notice = self.poll_once()
                if notice is not None:
                    log.warning("spot interruption notice: %s at %s", notice.action, notice.time)
                    return
                failing = False
            except (OSError, ValueError) as exc:  # URLError, timeouts, a garbled body
                if not failing:
                    log.warning("spot notice poll of %s failed (%s); retrying", self.base_url, exc)
                failing = True
            self._stopped.wait(self.interval_s)

    def start(self) -> SpotNoticeWatcher:
        self._thread = threading.Thread(target=self._run, name="spot-notice", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)

    def __enter__(self) -> SpotNoticeWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spot_watch(
    event: threading.Event, cfg: Ec2Settings | None = None
) -> AbstractContextManager[Any]:
    """While in the block, poll for spot notices if ``ec2.spot_poll_url`` is set (the worker's
    environment sets it on spot machines); ``event`` is set on a notice. Off: does nothing."""
    if cfg is None:
        from housegan.config import get_settings

        cfg = get_settings().ec2
    if not cfg.spot_poll_url:
        return nullcontext()
    return SpotNoticeWatcher(
        cfg.spot_poll_url,
        event,
        interval_s=cfg.spot_poll_interval_s,
        timeout_s=cfg.spot_poll_timeout_s,
    )
