"""MLflow helpers: the only library module that imports mlflow.

Small and generic so every stage logs the same way: a run context, params (nested mappings
flattened with dots), metrics, tables, images, and datasets as run inputs.
All ``log_*`` functions act on the active run (``start_run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image

from housegan import storage
from housegan.config import GanSettings

if TYPE_CHECKING:
    from housegan.gan.serving import LoadedGenerator

# MLflow refuses param values longer than this.
_MAX_PARAM_CHARS = 6000
# Every run says which stage it records under this one tag (ingest, curate, train, evaluate,
# refresh); runs logged before it was unified carry "stage", which readers still accept.
STAGE_TAG = "housegan.stage"
_LEGACY_STAGE_TAG = "stage"
OUT_DIR_TAG = "housegan.out_dir"  # on a training run: its folder (checkpoints, model)


@contextmanager
def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open (or, given ``run_id``, resume) a run in ``experiment``, nested under
    ``parent_run_id`` when given (a refresh's run, perhaps logged by another process); ends it
    on exit."""
    mlflow.set_tracking_uri(tracking_uri)
    if run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(
        run_id=run_id,
        run_name=run_name,
        tags=dict(tags or {}),
        parent_run_id=None if run_id else parent_run_id,
    ) as run:
        yield run


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; sequences and other values become strings."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{key}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            flat[key] = value
        else:
            flat[key] = json.dumps(value, default=str)
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    flat = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_metrics(metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Log numeric metrics; ``None`` values (not measured) are skipped."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def log_table(frame: pd.DataFrame, artifact_file: str) -> None:
    """A table artifact MLflow's UI renders (``.json``); a CSV copy beside it for people."""
    mlflow.log_table(data=frame.reset_index(drop=True), artifact_file=artifact_file)
    csv_name = artifact_file.rsplit(".", 1)[0] + ".csv"
    mlflow.log_text(frame.to_csv(index=False), csv_name)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)


def log_image(image: Image.Image, artifact_file: str) -> None:
    mlflow.log_image(image, artifact_file=artifact_file)


def log_dataset_input(
    frame: pd.DataFrame,
    name: str,
    source: str,
    context: str = "training",
    digest: str | None = None,
    targets: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Record ``frame`` (e.g. a curated manifest) as an input of the active run; returns the
    digest, which by default hashes the content so equal data gets equal ids."""
    if digest is None:
        digest = content_digest(frame)
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that file:// is ambiguous.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(
            frame, source=source, name=name, digest=digest, targets=targets
        )
    mlflow.log_input(dataset, context=context, tags=dict(tags or {}) or None)
    return digest


def content_digest(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------ GAN: training runs, models
# The training loop reports through ``MlflowReporter``; the final G_ema is logged as a pyfunc
# model from code (no pickles) and registered. See housegan.gan.serving for the model folder.

RUN_FILE = "mlflow_run.json"  # in a training out_dir: the run a --resume continues
GENERATOR_MODEL_NAME = "generator"  # the model's name inside its run
_METRIC_KEY_BAD = re.compile(r"[^\w\-. :/]")


class MlflowReporter:
    """The training loop's ``Reporter``, writing to one run by id (no active run needed)."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(_METRIC_KEY_BAD.sub("_", key), float(value), now, step)
            for key, value in metrics.items()
            if value is not None
        ]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def image(self, name: str, image: Image.Image, step: int) -> None:
        self.client.log_image(self.run_id, image, key=name, step=step, synchronous=True)

    def params(self, params: Mapping[str, Any]) -> None:
        """Log params once; a resumed run logs only new keys and tags changed values."""
        logged = self.client.get_run(self.run_id).data.params
        flat = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(params).items()}
        new = [Param(k, v) for k, v in flat.items() if k not in logged]
        changed = [RunTag(f"resumed.{k}", v) for k, v in flat.items() if logged.get(k, v) != v]
        for start in range(0, max(len(new), len(changed)), 100):  # MLflow's batch limit
            self.client.log_batch(
                self.run_id,
                params=new[start : start + 100],
                tags=changed[start : start + 100],
                synchronous=True,
            )


class FanOutReporter:
    """Sends every report to several reporters (e.g. MLflow and a progress bar)."""

    def __init__(self, *reporters: Any) -> None:
        self.reporters = [r for r in reporters if r is not None]

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for reporter in self.reporters:
            reporter.metrics(metrics, step)

    def image(self, name: str, image: Image.Image, step: int) -> None:
        for reporter in self.reporters:
            reporter.image(name, image, step)

    def params(self, params: Mapping[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.params(params)


def generator_signature(image_size: int) -> ModelSignature:
    """Input (city, image_type, seed[, n]) rows; output uint8 images [sum(n), R, R, 3]."""
    inputs = Schema(
        [
            ColSpec("string", "city"),
            ColSpec("string", "image_type"),
            ColSpec("long", "seed"),
            ColSpec("long", "n", required=False),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_generator_model(
    model_dir: str,
    registered_model_name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log a model folder (g_ema.safetensors + model.json) to the active run as a pyfunc model
    from code, and register it under ``registered_model_name`` when given."""
    from housegan.gan import pyfunc_model, serving

    with _local_model_dir(model_dir, storage_options) as folder:
        spec, vocab = serving.read_model_config(folder / serving.CONFIG_FILE)
        return mlflow.pyfunc.log_model(
            name=GENERATOR_MODEL_NAME,
            python_model=pyfunc_model.__file__,
            artifacts={
                pyfunc_model.WEIGHTS_ARTIFACT: str(folder / serving.WEIGHTS_FILE),
                pyfunc_model.CONFIG_ARTIFACT: str(folder / serving.CONFIG_FILE),
            },
            signature=generator_signature(spec.image_size),
            input_example=pd.DataFrame(
                {
                    "city": vocab["city"][:1],
                    "image_type": vocab["image_type"][:1],
                    "seed": [0],
                    "n": [1],
                }
            ),
            registered_model_name=registered_model_name,
            pip_requirements=_generator_requirements(),
            model_config={"device": "cpu"},
            metadata={"image_size": spec.image_size, "vocab": vocab, **(metadata or {})},
        )


def set_alias(name: str, version: str | int, alias: str, tracking_uri: str | None = None) -> None:
    """Point ``models:/name@alias`` at ``version`` (e.g. ``champion``, by a promote step)."""
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, str(version))


def load_generator_model(
    model_uri: str, tracking_uri: str | None = None, device: str = "cpu"
) -> LoadedGenerator:
    """The generator of an MLflow model (``models:/NAME@ALIAS``, ``models:/NAME/V``, ``runs:/``);
    loaded from code + safetensors, never unpickled."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri, model_config={"device": device})
    return model.unwrap_python_model().loaded


@dataclass(frozen=True)
class TrackedTraining:
    run_id: str
    model_uri: str  # models:/NAME/VERSION when registered, else the logged model's URI
    model_version: str | None
    out_dir: str
    dataset_id: str
    samples_uri: str  # the folder of the run's sample grids, images/samples+step+<N>+...png
    run_url: str | None  # the run's page in the MLflow UI, when tracking goes to a server
    result: Any  # housegan.gan.train.TrainResult


def train_tracked(
    dataset_uri: str,
    out_dir: str,
    cfg: GanSettings,
    tracking_uri: str,
    experiment: str,
    *,
    resume: bool = False,
    warm_start_from: str | None = None,
    parent_run_id: str | None = None,
    reporter: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> TrackedTraining:
    """Train on a prepared dataset inside an MLflow run (nested under ``parent_run_id``, a
    refresh's run), then log and register G_ema.

    The run id is kept in ``<out_dir>/mlflow_run.json``: ``resume`` continues that run (and the
    newest checkpoint), so a spot interruption leaves one run per model, not one per segment.
    The run records the device minutes it cost (``cost/gpu_minutes`` on CUDA).
    """
    from housegan.gan.train import train

    info = _dataset_info(dataset_uri, storage_options)
    run_id = read_run_id(out_dir, storage_options) if resume else None
    run_name = f"cgan-{info['dataset_id']}-r{cfg.image_size}"
    _ensure_sqlite_folder(tracking_uri)
    with start_run(
        tracking_uri, experiment, run_name=run_name, run_id=run_id, parent_run_id=parent_run_id
    ) as run:
        run_id = run.info.run_id
        samples_uri = f"{run.info.artifact_uri}/images"
        url = run_url(tracking_uri, run.info.experiment_id, run_id)
        _write_run_id(out_dir, run_id, tracking_uri, storage_options)
        mlflow.set_tags(
            {STAGE_TAG: "train", "dataset_id": info["dataset_id"], OUT_DIR_TAG: out_dir}
            | ({"warm_start_from": warm_start_from} if warm_start_from else {})
        )
        if not _has_input(run_id, info["dataset_id"]):
            with warnings.catch_warnings():  # MLflow's hints about a one-row summary frame
                warnings.simplefilter("ignore", UserWarning)
                log_dataset_input(
                    _dataset_frame(info),
                    name=f"gan-{info['dataset_id']}",
                    source=storage.normalize_uri(dataset_uri),
                    digest=info["dataset_id"],
                )
        result = train(
            dataset_uri,
            out_dir,
            cfg,
            resume=resume,
            warm_start_from=warm_start_from,
            reporter=FanOutReporter(MlflowReporter(run_id), reporter),
            storage_options=storage_options,
        )
        log_metrics(device_minutes(cfg.device, result.seconds, _previous_minutes(run_id)))
        model = log_generator_model(
            result.out_dir,
            cfg.registered_model_name,
            storage_options,
            metadata={"dataset_id": result.dataset_id, "kimg": result.kimg},
        )
    version = model.registered_model_version
    name = cfg.registered_model_name
    model_uri = f"models:/{name}/{version}" if version is not None else model.model_uri
    return TrackedTraining(
        run_id=run_id,
        model_uri=model_uri,
        model_version=None if version is None else str(version),
        out_dir=result.out_dir,
        dataset_id=result.dataset_id,
        samples_uri=samples_uri,
        run_url=url,
        result=result,
    )


GPU_MINUTES, DEVICE_MINUTES = "cost/gpu_minutes", "cost/device_minutes"


def device_minutes(device: str, seconds: float, before: float = 0.0) -> dict[str, float]:
    """What a training cost, summed over resumed segments: wall minutes on its device, and the
    same as GPU minutes (x the processes' GPUs) when that device is CUDA."""
    from housegan.devices import resolve_device

    minutes = before + seconds / 60
    on_gpu = resolve_device(device).type == "cuda"
    gpus = max(1, int(os.environ.get("WORLD_SIZE", "1"))) if on_gpu else 0
    return {DEVICE_MINUTES: minutes, GPU_MINUTES: minutes * gpus}


def _previous_minutes(run_id: str) -> float:
    """Device minutes a resumed run logged in its earlier segments."""
    metrics = MlflowClient().get_run(run_id).data.metrics
    return float(metrics.get(DEVICE_MINUTES, 0.0))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run, or None when tracking has no server (SQLite, files)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def read_run_id(out_dir: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The MLflow run that trained into ``out_dir`` before, if any."""
    uri = storage.join(storage.normalize_uri(out_dir), RUN_FILE)
    if not storage.exists(uri, storage_options):
        return None
    return json.loads(storage.read_bytes(uri, storage_options))["run_id"]


def _write_run_id(
    out_dir: str, run_id: str, tracking_uri: str, storage_options: Mapping[str, Any] | None
) -> None:
    body = json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}, indent=2).encode()
    uri = storage.join(storage.normalize_uri(out_dir), RUN_FILE)
    storage.write_bytes_atomic(uri, body, storage_options)


def _ensure_sqlite_folder(tracking_uri: str) -> None:
    """SQLite creates its database file, not the folder it sits in."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def _dataset_info(dataset_uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    from housegan.gan.data import INFO_FILE

    uri = storage.join(storage.normalize_uri(dataset_uri), INFO_FILE)
    return json.loads(storage.read_bytes(uri, storage_options))


def _dataset_frame(info: Mapping[str, Any]) -> pd.DataFrame:
    """A one-row summary of a packed dataset: what the run input records."""
    return pd.DataFrame(
        [
            {
                "dataset_id": info["dataset_id"],
                "image_size": info["image_size"],
                "n": info["n"],
                "cities": json.dumps(info["vocab"]["city"]),
                "image_types": json.dumps(info["vocab"]["image_type"]),
            }
        ]
    )


def _has_input(run_id: str, digest: str) -> bool:
    inputs = MlflowClient().get_run(run_id).inputs
    return any(d.dataset.digest == digest for d in (inputs.dataset_inputs if inputs else []))


@contextmanager
def _local_model_dir(model_dir: str, storage_options: Mapping[str, Any] | None) -> Iterator[Path]:
    """A local folder with the model files (downloaded first when ``model_dir`` is remote)."""
    from housegan.gan import serving

    if storage.is_local(model_dir):
        yield storage.local_path(model_dir)
        return
    with tempfile.TemporaryDirectory(prefix="housegan-model-") as tmp:
        for name in (serving.WEIGHTS_FILE, serving.CONFIG_FILE):
            data = storage.read_bytes(storage.join(model_dir, name), storage_options)
            Path(tmp, name).write_bytes(data)
        yield Path(tmp)


def _generator_requirements() -> list[str]:
    """What the pyfunc needs, pinned as installed here (inferring them costs ~10 s).

    The model's code imports ``housegan.gan.serving``: the serving side installs ``housegan``
    too (it is not copied into the model with ``code_paths``, where a partial copy could
    shadow the installed package).
    """
    from importlib.metadata import version

    names = ("mlflow", "torch", "torchvision", "safetensors", "numpy", "pandas", "pillow", "fsspec")
    return [f"{name}=={version(name)}" for name in names]


# ------------------------------------------------------------------ reading back: registry, runs
# What the app shows: a registered version with its training run and evaluation, recent runs.

EVALUATION_RUN_TAG = "evaluation_run_id"  # on a model version: the run that evaluated it
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """A registry model URI's parts: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: str | None = None


def parse_registry_uri(model_uri: str) -> ModelRef | None:
    """The parts of a registry URI; None for anything else (a folder, ``runs:/``, ...)."""
    match = _REGISTRY_URI.match(model_uri.strip())
    if match is None:
        return None
    return ModelRef(match["name"], match["alias"], match["version"])


@dataclass(frozen=True)
class VersionSummary:
    """A registered model version, the run that trained it and its newest evaluation."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    experiment_id: str | None
    dataset_id: str | None
    metrics: dict[str, float]  # the training run's (latest value of each)
    evaluation: dict[str, float]  # the evaluation run's; empty when none was logged
    evaluation_run_id: str | None
    created_at: int | None  # ms since the epoch

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def describe_version(
    name: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
) -> VersionSummary:
    """The version ``alias`` points at (or ``version``); raises MlflowException when absent."""
    client = MlflowClient(tracking_uri)
    if alias is not None:
        model_version = client.get_model_version_by_alias(name, alias)
    else:
        model_version = client.get_model_version(name, str(version))
    run = client.get_run(model_version.run_id) if model_version.run_id else None
    evaluation = _evaluation_run(client, run, model_version.tags or {})
    return VersionSummary(
        name=name,
        version=str(model_version.version),
        aliases=tuple(model_version.aliases or ()),
        run_id=model_version.run_id,
        experiment_id=run.info.experiment_id if run else None,
        dataset_id=run.data.tags.get("dataset_id") if run else None,
        metrics=dict(run.data.metrics) if run else {},
        evaluation=dict(evaluation.data.metrics) if evaluation else {},
        evaluation_run_id=evaluation.info.run_id if evaluation else None,
        created_at=model_version.creation_timestamp,
    )


def _evaluation_run(client: MlflowClient, run: Any, version_tags: Mapping[str, str]) -> Any:
    """The run that evaluated a model: named by the version's tag, else the newest run nested
    under its training run that logged metrics."""
    if version_tags.get(EVALUATION_RUN_TAG):
        return client.get_run(version_tags[EVALUATION_RUN_TAG])
    if run is None:
        return None
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return next((child for child in children if child.data.metrics), None)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    stage: str | None  # STAGE_TAG: ingest, curate, train, evaluate, refresh
    status: str
    start_time: int | None  # ms since the epoch
    end_time: int | None
    experiment_id: str
    parent_run_id: str | None
    metrics: dict[str, float]
    tags: dict[str, str]


def recent_runs(experiment: str, limit: int, tracking_uri: str | None = None) -> list[RunSummary]:
    """The newest runs of ``experiment`` (none if it does not exist yet)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )
    return [_run_summary(run) for run in runs]


def run_location(run_id: str, tracking_uri: str) -> tuple[str, str | None]:
    """(artifact root, UI page or None) of an MLflow run."""
    info = MlflowClient(tracking_uri).get_run(run_id).info
    return info.artifact_uri, run_url(tracking_uri, info.experiment_id, run_id)


def run_summary(run_id: str, tracking_uri: str | None = None) -> RunSummary:
    return _run_summary(MlflowClient(tracking_uri).get_run(run_id))


def _run_summary(run: Any) -> RunSummary:
    tags = dict(run.data.tags)
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        stage=tags.get(STAGE_TAG) or tags.get(_LEGACY_STAGE_TAG),
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        experiment_id=run.info.experiment_id,
        parent_run_id=tags.get("mlflow.parentRunId"),
        metrics=dict(run.data.metrics),
        tags=tags,
    )


def load_run_table(
    run_id: str, artifact_file: str, tracking_uri: str | None = None
) -> pd.DataFrame:
    """A table a run logged with ``log_table`` (e.g. a curate run's ``funnel.json``)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.load_table(artifact_file, run_ids=[run_id])


def server_reachable(tracking_uri: str, timeout_s: float) -> bool:
    """Whether a tracking server answers its health check (always True for SQLite, files):
    MLflow's client retries a dead server for minutes before giving up."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ evaluation runs, promotion
# An evaluation is a run nested under the training run of the model it measured, tagged with its
# key (what its numbers depend on: dataset, embedder tag, seeds, sample sizes); promotion reads
# evaluations back by key, so a champion and a candidate are compared on the same draws.

EVALUATION_KEY_TAG = "evaluation_key"
PROMOTION_DECISION_TAG = "promotion.decision"  # on a model version: champion|challenger|...
PROMOTION_REASON_TAG = "promotion.reason"  # why, in MLflow's validation words


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None  # the run that trained it

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_version(model_uri: str, tracking_uri: str | None = None) -> RegisteredVersion | None:
    """The registry version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now (None for
    a folder or ``runs:/``); raises MlflowException when the name, alias or version is unknown."""
    ref = parse_registry_uri(model_uri)
    if ref is None:
        return None
    client = MlflowClient(tracking_uri)
    if ref.alias is not None:
        found = client.get_model_version_by_alias(ref.name, ref.alias)
    else:
        found = client.get_model_version(ref.name, str(ref.version))
    return RegisteredVersion(ref.name, str(found.version), found.run_id or None)


def alias_version(name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version ``alias`` points at, or None (no such alias, or no such model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def delete_alias(name: str, alias: str, tracking_uri: str | None = None) -> None:
    MlflowClient(tracking_uri).delete_registered_model_alias(name, alias)


def set_version_tags(
    name: str, version: str, tags: Mapping[str, str], tracking_uri: str | None = None
) -> None:
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value)[:_MAX_PARAM_CHARS])


def version_tags(name: str, version: str, tracking_uri: str | None = None) -> dict[str, str]:
    return dict(MlflowClient(tracking_uri).get_model_version(name, str(version)).tags or {})


def training_run_id(
    model_uri: str,
    tracking_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """The run that trained a model: a registry version's, ``runs:/ID/...``'s, or the one a
    ``train --out`` folder records (``mlflow_run.json``); None when nothing says."""
    version = registered_version(model_uri, tracking_uri)
    if version is not None:
        return version.run_id
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/", 1)[0] or None
    return read_run_id(model_uri, storage_options)


def training_dataset(run_id: str, tracking_uri: str | None = None) -> tuple[str, str] | None:
    """(dataset id, dataset URI) a training run logged as its input, or None."""
    inputs = MlflowClient(tracking_uri).get_run(run_id).inputs
    for item in inputs.dataset_inputs if inputs else []:
        try:
            source = json.loads(item.dataset.source)
        except (TypeError, ValueError):
            continue
        uri = source.get("uri") if isinstance(source, dict) else None
        if uri:
            return item.dataset.digest, uri
    return None


def log_evaluation(
    evaluation: Any,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    version: RegisteredVersion | None = None,
) -> str:
    """Record a ``housegan.evaluate.evaluation.ModelEvaluation`` as a run nested under
    ``parent_run_id`` (the training run; its experiment too): params, metrics, the per-cell and
    per-city tables, the figures, the embedder tag and the key. A registered ``version`` is
    tagged with the run. Returns the run id."""
    _ensure_sqlite_folder(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = None
    if parent_run_id is not None:
        experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = mlflow.set_experiment(experiment).experiment_id
    tags = {
        STAGE_TAG: "evaluate",
        EVALUATION_KEY_TAG: evaluation.key,
        "embed_tag": evaluation.embed_tag,
        "dataset_id": evaluation.dataset_id,
        "model_uri": version.uri if version else evaluation.model_uri,
    }
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"evaluate-{evaluation.key[:8]}",
        parent_run_id=parent_run_id,
        tags=tags,
    ) as run:
        log_params(evaluation.params)
        metrics = {_METRIC_KEY_BAD.sub("_", k): v for k, v in evaluation.metrics.items()}
        log_metrics({k: v for k, v in metrics.items() if v is None or np.isfinite(v)})
        log_table(evaluation.cells, "evaluation/cells.json")
        log_table(evaluation.cities, "evaluation/cities.json")
        for name, path in evaluation.figures.items():
            folder = name.rsplit("/", 1)[0] if "/" in name else None
            mlflow.log_artifact(str(path), artifact_path=folder)
        run_id = run.info.run_id
    if version is not None:
        set_version_tags(
            version.name,
            version.version,
            {EVALUATION_RUN_TAG: run_id, EVALUATION_KEY_TAG: evaluation.key},
            tracking_uri,
        )
    return run_id


def find_evaluation(
    parent_run_id: str, key: str, tracking_uri: str | None = None
) -> tuple[str, dict[str, float]] | None:
    """(run id, metrics) of the newest finished evaluation with ``key`` nested under
    ``parent_run_id``, or None."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and "
            f"tags.{EVALUATION_KEY_TAG} = '{key}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return (runs[0].info.run_id, dict(runs[0].data.metrics)) if runs else None


def check_thresholds(
    metrics: Mapping[str, float | None], thresholds: Mapping[str, tuple[float, bool]]
) -> str | None:
    """MLflow's model validation of ``metrics`` against ``{name: (threshold, greater_is_better)}``:
    None when all pass, else MLflow's message naming each failed metric (a missing one fails)."""
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    bars = {
        name: MetricThreshold(threshold=float(value), greater_is_better=bool(greater))
        for name, (value, greater) in thresholds.items()
    }
    present = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    candidate = EvaluationResult(metrics=present, artifacts={}, run_id="candidate")
    try:
        mlflow.validate_evaluation_results(validation_thresholds=bars, candidate_result=candidate)
    except ModelValidationFailedException as exc:
        return exc.message
    return None


# A refresh is one parent run; each stage's run (ingest, curate, train -> its evaluations) is
# nested under it, perhaps logged by another process (the GPU worker), so the parent is opened
# and closed by id rather than held as the active run.
RefreshStatus = Literal["FINISHED", "FAILED", "KILLED"]


def start_refresh_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a refresh's parent run (left running) and return its id."""
    _ensure_sqlite_folder(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={STAGE_TAG: "refresh", **(tags or {})}
    )
    flat = flatten({k: v for k, v in params.items() if v is not None})
    client.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flat.items()],
    )
    return run.info.run_id


def log_stage_run(
    parent_run_id: str,
    stage: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    tracking_uri: str,
) -> str:
    """A finished run nested under ``parent_run_id`` for a stage that keeps no run of its own
    (ingest's counts); returns its id."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run = client.create_run(
        experiment_id,
        run_name=stage,
        tags={STAGE_TAG: stage, "mlflow.parentRunId": parent_run_id},
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        params=[Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(params).items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def end_refresh_run(
    run_id: str,
    metrics: Mapping[str, float | None],
    status: RefreshStatus,
    tracking_uri: str,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Record a refresh's totals (GPU minutes, counts) and end its parent run."""
    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    client.set_terminated(run_id, status)


def child_runs(parent_run_id: str, tracking_uri: str | None = None) -> list[RunSummary]:
    """The runs nested directly under ``parent_run_id``, oldest first."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [_run_summary(run) for run in runs]


def run_metrics(run_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    return dict(MlflowClient(tracking_uri).get_run(run_id).data.metrics)


def log_dict_to_run(
    run_id: str, data: Mapping[str, Any], artifact_file: str, tracking_uri: str | None = None
) -> None:
    """``log_dict`` for a run that is not the active one (a refresh's parent)."""
    MlflowClient(tracking_uri).log_dict(run_id, dict(data), artifact_file)


def find_run_by_tag(
    experiment: str, key: str, value: str, tracking_uri: str | None = None
) -> str | None:
    """The newest run of ``experiment`` whose tag ``key`` is ``value``, or None."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{key}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def load_dict_artifact(run_id: str, artifact_file: str, tracking_uri: str) -> dict[str, Any]:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
