"""The curate stage: an image manifest -> the curated manifest, as typed steps.

    (finetune) -> embed (``steps.embed``) | quality -> cluster -> types -> filter -> publish -> log

``run_curate`` runs them in this order in one process (``housegan curate``); ``flows.curate``
wires the same steps as Prefect tasks. The work itself is in ``housegan.curate`` (the funnel),
``cluster``, ``labels``, ``quality`` and ``finetune``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from housegan import cluster, curate, embed, labels, manifest, quality, storage
from housegan.cluster import ClusterResult
from housegan.config import ClusterSettings, CurateSettings, EmbedSettings, Settings
from housegan.curate import FilterResult
from housegan.embed import EmbedResult
from housegan.finetune import FinetuneResult
from housegan.quality import QualityResult
from housegan.steps import by_content, step, to_json
from housegan.steps.embed import EmbedInput, embedder, run_embed

Options = Mapping[str, Any] | None
# Labels are read by content: a labels folder grows under one URI (parts are appended).
LABELS = by_content(labels.labels_fingerprint)


@dataclass(frozen=True)
class ManifestInput:
    manifest_uri: str  # an image manifest version (a file, never a "latest")
    store_uri: str


@dataclass(frozen=True)
class CurateInput:
    """What a curation reads: one image manifest version, the store and the labels."""

    manifest_uri: str
    store_uri: str
    labels_uri: str = field(metadata=LABELS)  # a labels folder, or one CSV/Parquet file

    @classmethod
    def resolve(
        cls,
        manifest_uri: str | None,
        store_uri: str,
        labels_uri: str | None = None,
        storage_options: Options = None,
    ) -> CurateInput:
        """A given manifest file or collection (default: the store's image manifests) as the
        version file it means; labels default to ``<store>/labels``."""
        store = storage.normalize_uri(store_uri)
        source = manifest.resolve(manifest_uri or manifest.collection_uri(store), storage_options)
        return cls(
            source,
            store,
            storage.normalize_uri(labels_uri) if labels_uri else labels.labels_uri(store),
        )

    @property
    def photos(self) -> ManifestInput:
        return ManifestInput(self.manifest_uri, self.store_uri)

    def embedding(self, tuned: FinetuneResult | None) -> EmbedInput:
        """What to embed, and with which weights: the fine-tuned ones, if any."""
        return EmbedInput(self.manifest_uri, self.store_uri, tuned.weights_uri if tuned else None)


# --- finetune and quality ---------------------------------------------------------------------


def labelled_photos(inputs: CurateInput, storage_options: Options = None) -> pd.DataFrame:
    """``uri, sha256, label`` of the manifest's usable photos that carry a label."""
    photos = quality.scorable_rows(curate.read_images(inputs.manifest_uri, storage_options))
    table = labels.read_labels(inputs.labels_uri, storage_options)
    latest = labels.labels_by_content(table, photos)
    chosen = photos[photos["sha256"].isin(latest.index)]
    return chosen.assign(label=chosen["sha256"].map(latest))[["uri", "sha256", "label"]]


@step("embed", "curate", writes=lambda tuned: [tuned.weights_uri])
def finetune_embedder(
    inputs: CurateInput,
    embed_cfg: EmbedSettings,
    cfg: CurateSettings,
    *,
    storage_options: Options = None,
) -> FinetuneResult | None:
    """Fine-tuned VGG16 weights for the labels, or None when ``curate.finetune`` is off or the
    labels name fewer than two types (then the configured weights embed)."""
    if not cfg.finetune:
        return None
    from housegan import finetune  # trains: only when asked for

    labelled = labelled_photos(inputs, storage_options)
    if labelled["label"].nunique() < 2:
        return None
    return finetune.finetune(labelled, inputs.store_uri, embed_cfg, cfg, storage_options)


@step("curate", version=quality.QUALITY_VERSION, writes=lambda scored: [scored.uri])
def score_quality(
    inputs: ManifestInput,
    cfg: CurateSettings,
    *,
    storage_options: Options = None,
    progress: Callable[[int, int], None] | None = None,
) -> QualityResult:
    """Score every usable photo whose content was never scored (the rest are reused)."""
    return quality.compute_quality(
        inputs.manifest_uri, inputs.store_uri, cfg, storage_options, progress
    )


# --- clusters and types -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterInput:
    manifest_uri: str
    store_uri: str
    tag: str  # the model tag of the embeddings
    embeddings_uri: str  # the embedding index version read

    @classmethod
    def after(cls, source: CurateInput, embedded: EmbedResult) -> ClusterInput:
        return cls(source.manifest_uri, source.store_uri, embedded.tag, embedded.uri)


@step("cluster", writes=lambda clusters: [clusters.uri])
def cluster_photos(
    inputs: ClusterInput, cfg: ClusterSettings, *, storage_options: Options = None
) -> ClusterResult:
    """Project and cluster the embedded photos of the manifest (one row per content), with a
    gallery per cluster."""
    photos = quality.scorable_rows(curate.read_images(inputs.manifest_uri, storage_options))
    # float16 as stored: 200k x 4096 is 1.6 GB; the projection converts chunk by chunk.
    sha256s, vectors = embed.load_embeddings(
        inputs.store_uri, inputs.tag, photos["sha256"], storage_options, dtype=np.float16
    )
    if len(sha256s) <= cfg.k:
        raise ValueError(
            f"{len(sha256s)} embedded photos under {inputs.tag}: clustering into k={cfg.k} "
            "needs more"
        )
    uri_of = dict(zip(photos["sha256"], photos["uri"], strict=True))

    def thumbnail(uri: str) -> Any:
        return quality.load_image(uri, cfg.thumb_size, storage_options)

    return cluster.cluster_embeddings(
        sha256s, vectors, uri_of, inputs.store_uri, cfg, thumbnail, storage_options
    )


@dataclass(frozen=True)
class TypesInput:
    manifest_uri: str
    clusters_uri: str
    store_uri: str
    labels_uri: str = field(metadata=LABELS)

    @classmethod
    def after(cls, source: CurateInput, clusters: ClusterResult) -> TypesInput:
        return cls(source.manifest_uri, clusters.uri, source.store_uri, source.labels_uri)


@dataclass(frozen=True)
class TypesResult:
    uri: str
    labels_used: int
    classifier: dict[str, Any] | None  # labels.ClassifierReport.as_dict()
    type_counts: dict[str, int]


@step("cluster", "curate", writes=lambda types: [types.uri])
def assign_types(
    inputs: TypesInput,
    cluster_cfg: ClusterSettings,
    cfg: CurateSettings,
    *,
    storage_options: Options = None,
) -> TypesResult:
    """Give every embedded photo an image type: its label, else the classifier trained on the
    labels, else the cluster's named type, else unknown."""
    images = curate.read_images(inputs.manifest_uri, storage_options)
    cluster_frame, pca = cluster.read_clusters(inputs.clusters_uri, storage_options)
    label_table = labels.read_labels(inputs.labels_uri, storage_options)
    types, report, n_labels = labels.types_for_clusters(
        cluster_frame, pca, label_table, images, cluster_cfg, cfg
    )
    uri = labels.write_types(types, report, inputs.store_uri, storage_options)
    counts = {str(k): int(v) for k, v in types["image_type"].value_counts().items()}
    return TypesResult(uri, n_labels, report.as_dict() if report else None, counts)


# --- the funnel, publish ----------------------------------------------------------------------


@dataclass(frozen=True)
class FilterInput:
    manifest_uri: str
    clusters_uri: str
    types_uri: str
    quality_uri: str
    store_uri: str

    @classmethod
    def after(
        cls,
        source: CurateInput,
        clusters: ClusterResult,
        types: TypesResult,
        scored: QualityResult,
    ) -> FilterInput:
        return cls(source.manifest_uri, clusters.uri, types.uri, scored.uri, source.store_uri)


@step("curate", "cluster", version=quality.QUALITY_VERSION, writes=lambda f: [f.uri, f.run_uri])
def filter_photos(
    inputs: FilterInput,
    cfg: CurateSettings,
    cluster_cfg: ClusterSettings,
    *,
    storage_options: Options = None,
) -> FilterResult:
    """The funnel: stage the curated frame, the funnel table and galleries of dropped photos."""
    return curate.filter_manifest(
        inputs.manifest_uri,
        inputs.clusters_uri,
        inputs.types_uri,
        inputs.store_uri,
        cfg,
        storage_options,
        cluster_cfg.thumb_size,
    )


@dataclass(frozen=True)
class CurateResult:
    """The stage's result: every step's output; ``publish_curated`` fills in ``curated_uri``
    and ``log_curation`` the MLflow run."""

    source: CurateInput
    finetune: FinetuneResult | None
    embed: EmbedResult
    quality: QualityResult
    clusters: ClusterResult
    types: TypesResult
    filter: FilterResult
    curated_uri: str | None = None  # the published curated manifest version
    mlflow_run_id: str | None = None

    @property
    def manifest_uri(self) -> str:
        return self.source.manifest_uri

    def summary(self) -> dict[str, Any]:
        """What the CLI prints: the curated manifest, the funnel and what was recomputed."""
        return {
            "curated_manifest_uri": self.curated_uri,
            "manifest_uri": self.manifest_uri,
            "funnel": self.filter.funnel,
            "drop_counts": self.filter.drop_counts,
            "embedded": self.embed.computed,
            "embeddings_reused": self.embed.reused,
            "quality_scored": self.quality.computed,
            "near_duplicate_cosine": self.filter.near_duplicate_cosine,
            "near_duplicate_hamming": self.filter.near_duplicate_hamming,
            "type_accuracy_cv": self.type_accuracy,
            "finetune_holdout_accuracy": self.finetune and self.finetune.holdout_accuracy,
            "mlflow_run_id": self.mlflow_run_id,
        }

    @property
    def type_accuracy(self) -> float | None:
        return (self.types.classifier or {}).get("cv_accuracy")


@step(writes=lambda result: [result.curated_uri])
def publish_curated(inputs: CurateResult, *, storage_options: Options = None) -> CurateResult:
    """Make the staged frame the latest curated manifest (a new version, pointer written last)."""
    filtered = inputs.filter
    metadata = {
        "source_manifest": inputs.manifest_uri,
        "model_tag": inputs.embed.tag,
        "funnel": filtered.funnel,
        "near_duplicate_cosine": filtered.near_duplicate_cosine,
        "near_duplicate_calibrated": filtered.near_duplicate_calibrated,
        "near_duplicate_hamming": filtered.near_duplicate_hamming,
    }
    uri = curate.publish(filtered.uri, inputs.source.store_uri, metadata, storage_options)
    return replace(inputs, curated_uri=uri)


# --- tracking ---------------------------------------------------------------------------------


@step("mlflow_tracking_uri", "mlflow_experiment", "embed", "cluster", "curate")
def log_curation(
    inputs: CurateResult,
    tracking_uri: str,
    experiment: str,
    embed_cfg: EmbedSettings,
    cluster_cfg: ClusterSettings,
    cfg: CurateSettings,
    *,
    storage_options: Options = None,
    parent_run_id: str | None = None,
) -> CurateResult:
    """One MLflow run (nested under ``parent_run_id``, a refresh's run, when given): params,
    funnel metrics and table, classifier and fine-tune accuracy, confusion matrix, cluster and
    dropped-photo galleries, the curated training set as input."""
    from PIL import Image

    from housegan import images, tracking

    def image(uri: str) -> Image.Image:
        return images.decode_rgb(storage.read_bytes(uri, storage_options))

    weights = inputs.finetune.weights_uri if inputs.finetune else None
    with tracking.start_run(
        tracking_uri,
        experiment,
        run_name="curate",
        tags={tracking.STAGE_TAG: "curate"},
        parent_run_id=parent_run_id,
    ) as run:
        tracking.log_params(
            {
                "manifest_uri": inputs.manifest_uri,
                "curated_uri": inputs.curated_uri,
                "labels_uri": inputs.source.labels_uri,
                "model_tag": inputs.embed.tag,
                "embed": embedder(embed_cfg, weights).model_dump(),
                "cluster": cluster_cfg.model_dump(),
                "curate": cfg.model_dump(),
            }
        )
        tracking.log_metrics(_metrics(inputs))
        funnel = curate.read_funnel(inputs.filter.run_uri, storage_options)
        tracking.log_table(funnel, "funnel.json")
        report = inputs.types.classifier
        if report and report.get("confusion"):
            confusion = pd.DataFrame.from_dict(report["confusion"], orient="index")
            tracking.log_table(confusion.rename_axis("true").reset_index(), "confusion_matrix.json")
        summary = {"classifier": report, "clusters": to_json(inputs.clusters)}
        summary |= {"filter": to_json(inputs.filter), "finetune": to_json(inputs.finetune)}
        tracking.log_dict(summary, "curation_summary.json")
        for number, uri in inputs.clusters.galleries.items():
            tracking.log_image(image(uri), f"galleries/cluster-{number}.png")
        for reason, uri in inputs.filter.galleries.items():
            tracking.log_image(image(uri), f"galleries/dropped-{reason}.png")
        curated = manifest.read(inputs.curated_uri, storage_options)
        kept = curated.loc[
            curated["keep"], ["key", "sha256", "uri", "city", "image_type", "width", "height"]
        ]
        tracking.log_dataset_input(
            kept.reset_index(drop=True),
            name="curated",
            source=inputs.curated_uri,
            context="curation",
        )
        return replace(inputs, mlflow_run_id=run.info.run_id)


def _metrics(result: CurateResult) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {f"funnel.{k}": v for k, v in result.filter.funnel.items()}
    metrics |= {f"dropped.{k}": v for k, v in result.filter.drop_counts.items()}
    metrics |= {f"silhouette.k{k}": v for k, v in result.clusters.silhouette.items()}
    thresholds = result.filter.near_duplicate_cosine.items()
    metrics |= {f"near_duplicate_cosine.{group}": v for group, v in thresholds}
    hamming = result.filter.near_duplicate_hamming.items()
    metrics |= {f"near_duplicate_hamming.{group}": v for group, v in hamming}
    signals = result.filter.near_duplicate_signals.items()
    # MLflow metric names allow no "+": deep+hash -> deep-hash
    metrics |= {f"near_duplicate_signal.{name.replace('+', '-')}": v for name, v in signals}
    metrics |= {
        "embed.computed": result.embed.computed,
        "embed.reused": result.embed.reused,
        "quality.computed": result.quality.computed,
        "near_duplicate_groups": result.filter.near_duplicate_groups,
        "labels_used": result.types.labels_used,
        "type_accuracy_cv": result.type_accuracy,
        "finetune_holdout_accuracy": result.finetune and result.finetune.holdout_accuracy,
    }
    return metrics


# --- the whole stage, in one process ----------------------------------------------------------


def run_curate(
    source: CurateInput,
    settings: Settings,
    *,
    storage_options: Options = None,
    progress: bool = False,
    track: bool = True,
) -> CurateResult:
    """Every step in order (what ``housegan curate`` runs); ``track``: log the MLflow run."""
    from tqdm import tqdm

    options = {"storage_options": storage_options}
    tuned = finetune_embedder.run(source, settings, **options)
    with tqdm(desc="embed", unit="photo", disable=not progress) as bar:
        embedded = run_embed(
            source.embedding(tuned), settings.embed, progress=bar.update, **options
        )
    with tqdm(desc="quality", unit="photo", disable=not progress) as bar:
        scored = score_quality.run(source.photos, settings, progress=_moves(bar), **options)
    clusters = cluster_photos.run(ClusterInput.after(source, embedded), settings, **options)
    types = assign_types.run(TypesInput.after(source, clusters), settings, **options)
    filtered = filter_photos.run(
        FilterInput.after(source, clusters, types, scored), settings, **options
    )
    curated = CurateResult(source, tuned, embedded, scored, clusters, types, filtered)
    published = publish_curated(curated, **options)
    return log_curation.run(published, settings, **options) if track else published


def _moves(bar: Any) -> Callable[[int, int], None]:
    """(done, total) progress onto a tqdm bar."""

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update
