"""The train stage: a (curated) manifest -> a packed dataset -> a trained, registered generator.

    prepare (pack the trainable rows at R x R, content-addressed) -> train (MLflow run, model)

``run_train`` runs both in order (``housegan train``); ``flows.train`` wires the same steps as
Prefect tasks. The work is in ``housegan.gan.data``, ``housegan.gan.train`` and ``tracking``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from housegan import manifest, storage
from housegan.config import GanSettings, Settings
from housegan.curate import CURATED_COLLECTION
from housegan.gan.data import PreparedDataset
from housegan.steps import from_json, step, to_json

Options = Mapping[str, Any] | None
TRAINING_DIR = "training"


@dataclass(frozen=True)
class PrepareInput:
    manifest_uri: str  # a manifest version or collection (its latest)
    store_uri: str
    image_size: int
    cities: tuple[str, ...] | None = None  # train on these cities only; None: all

    @classmethod
    def of(
        cls,
        manifest_uri: str | None,
        store_uri: str,
        image_size: int,
        cities: Sequence[str] | None = None,
    ) -> PrepareInput:
        """Default manifest: the store's latest curated one."""
        store = storage.normalize_uri(store_uri)
        manifest_uri = manifest_uri or manifest.collection_uri(store, CURATED_COLLECTION)
        return cls(manifest_uri, store, image_size, tuple(sorted(cities)) if cities else None)


@step(writes=lambda dataset: [dataset.uri])
def prepare_dataset(
    inputs: PrepareInput,
    *,
    storage_options: Options = None,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedDataset:
    """Pack the manifest's trainable rows at R x R under ``<store>/datasets/<dataset id>/``; a
    dataset packed before is found by its id and only its rows are read."""
    from housegan.gan.data import prepare

    return prepare(
        inputs.manifest_uri,
        inputs.store_uri,
        inputs.image_size,
        storage_options,
        progress=progress,
        cities=inputs.cities,
    )


@dataclass(frozen=True)
class GanOverrides:
    """Training options given for one run (CLI flags, flow parameters); None: as configured."""

    image_size: int | None = None
    kimg: float | None = None
    max_minutes: float | None = None
    batch_size: int | None = None
    device: str | None = None
    seed: int | None = None

    def apply(self, cfg: GanSettings) -> GanSettings:
        """``cfg`` with these applied, validated (a bad value raises pydantic's error)."""
        return cfg.with_overrides(asdict(self))


@dataclass(frozen=True)
class TrainInput:
    dataset_uri: str  # a prepared dataset folder
    out_dir: str  # the run folder: checkpoints/, the model `generate` loads
    overrides: GanOverrides = GanOverrides()
    resume: bool = False  # continue out_dir's newest checkpoint and MLflow run
    warm_start_from: str | None = None  # a checkpoint with the same labels: starting weights
    parent_run_id: str | None = None  # the refresh's MLflow run, which this run nests under


def run_folder(store_uri: str, dataset_id: str, image_size: int) -> str:
    """A fresh training folder ``<store>/training/<dataset>-r<R>/<stamp>``."""
    name = storage.new_version_name("")
    return storage.join(
        storage.normalize_uri(store_uri), TRAINING_DIR, f"{dataset_id}-r{image_size}", name
    )


@dataclass(frozen=True)
class Trained:
    run_id: str
    model_uri: str  # models:/NAME/VERSION when registered
    model_version: str | None
    out_dir: str
    dataset_id: str
    samples_uri: str  # the run's sample grids
    run_url: str | None  # the run's page in the MLflow UI, when tracking goes to a server
    step: int
    kimg: float
    images_per_second: float
    rollbacks: int
    gpu_minutes: float = 0.0  # summed over resumed segments; 0 on CPU
    warm_start_from: str | None = None


TRAINED_FILE = "trained.json"  # the record in the run folder: what a remote caller reads back


@step("gan", "mlflow_tracking_uri", "mlflow_experiment", writes=lambda t: [t.out_dir])
def train_model(
    inputs: TrainInput,
    cfg: GanSettings,
    tracking_uri: str,
    experiment: str,
    *,
    storage_options: Options = None,
    reporter: Any = None,
) -> Trained:
    """Train inside an MLflow run (losses, grids, the dataset as input), log and register G_ema.

    ``reporter`` (params/metrics/image, like ``tracking.MlflowReporter``) also receives every
    report: a progress bar or a Prefect artifact."""
    from housegan import tracking

    tracked = tracking.train_tracked(
        inputs.dataset_uri,
        inputs.out_dir,
        inputs.overrides.apply(cfg),
        tracking_uri,
        experiment,
        resume=inputs.resume,
        warm_start_from=inputs.warm_start_from,
        parent_run_id=inputs.parent_run_id,
        reporter=reporter,
        storage_options=storage_options,
    )
    result = tracked.result
    trained = Trained(
        run_id=tracked.run_id,
        model_uri=tracked.model_uri,
        model_version=tracked.model_version,
        out_dir=tracked.out_dir,
        dataset_id=tracked.dataset_id,
        samples_uri=tracked.samples_uri,
        run_url=tracked.run_url,
        step=result.step,
        kimg=result.kimg,
        images_per_second=result.images_per_second,
        rollbacks=result.rollbacks,
        gpu_minutes=tracking.run_metrics(tracked.run_id, tracking_uri).get(
            tracking.GPU_MINUTES, 0.0
        ),
        warm_start_from=inputs.warm_start_from,
    )
    record = json.dumps(to_json(trained), indent=2).encode()
    storage.write_bytes_atomic(storage.join(trained.out_dir, TRAINED_FILE), record, storage_options)
    return trained


def read_trained(out_dir: str, storage_options: Options = None) -> Trained:
    """The record ``train_model`` left in ``out_dir`` (a run that trained on another worker)."""
    data = storage.read_bytes(storage.join(out_dir, TRAINED_FILE), storage_options)
    return from_json(Trained, json.loads(data))


def champion_checkpoint(
    name: str, tracking_uri: str, storage_options: Options = None
) -> tuple[str, dict[str, list[str]]] | None:
    """(newest checkpoint, its labels) of the version ``champion`` names, or None when there is
    no champion or its run folder is gone."""
    from housegan import tracking
    from housegan.evaluate.promote import CHAMPION
    from housegan.gan import checkpoint

    version = tracking.alias_version(name, CHAMPION, tracking_uri)
    if version is None:
        return None
    run_id = tracking.registered_version(f"models:/{name}/{version}", tracking_uri).run_id
    tags = tracking.run_summary(run_id, tracking_uri).tags if run_id else {}
    out_dir = tags.get(tracking.OUT_DIR_TAG)  # absent on runs logged before it was tagged
    latest = checkpoint.latest(out_dir, storage_options) if out_dir else None
    if latest is None:
        return None
    state = checkpoint.load(latest, storage_options, map_location="cpu")
    return latest, state["vocab"]


def warm_start_from(
    dataset: PreparedDataset, settings: Settings, storage_options: Options = None
) -> str | None:
    """The champion's checkpoint when its labels are exactly this dataset's, else None (a
    cold start: new cities or types need new embedding rows)."""
    found = champion_checkpoint(
        settings.gan.registered_model_name, settings.mlflow_tracking_uri, storage_options
    )
    if found is None:
        return None
    uri, vocab = found
    same = vocab == {"city": dataset.cities, "image_type": dataset.image_types}
    return uri if same else None


@dataclass(frozen=True)
class TrainStage:
    dataset: PreparedDataset
    model: Trained


def run_train(
    manifest_uri: str | None,
    settings: Settings,
    *,
    overrides: GanOverrides = GanOverrides(),
    out_dir: str | None = None,
    resume: bool = False,
    storage_options: Options = None,
    progress: bool = False,
    reporter: Callable[[Any], Any] | None = None,
) -> TrainStage:
    """Both steps in order (what ``housegan train`` runs); ``out_dir`` defaults to a fresh
    folder under ``<store>/training/``. ``reporter(bar)`` makes the training reporter that
    moves a tqdm bar of ``total_kimg`` (with ``progress``)."""
    from tqdm import tqdm

    from housegan.gan.train import total_kimg

    cfg = overrides.apply(settings.gan)  # fails before any work on a bad option
    source = PrepareInput.of(manifest_uri, settings.store_uri, cfg.image_size)
    with tqdm(unit="img", desc="prepare", disable=not progress) as bar:
        dataset = prepare_dataset(source, storage_options=storage_options, progress=_moves(bar))
    folder = out_dir or run_folder(settings.store_uri, dataset.dataset_id, cfg.image_size)
    inputs = TrainInput(dataset.uri, storage.normalize_uri(folder), overrides, resume)
    total = round(total_kimg(cfg), 3)
    with tqdm(total=total, unit="kimg", desc="train", disable=not progress) as bar:
        trained = train_model.run(
            inputs,
            settings,
            storage_options=storage_options,
            reporter=reporter(bar) if reporter else None,
        )
    return TrainStage(dataset, trained)


def _moves(bar: Any) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update
