"""Prefect tasks around the curation stage: quality, cluster, types, filter, publish, log.

Each task takes and returns URIs and small summaries. The computing tasks are cached by their
input URIs (immutable versions), content fingerprints (labels) and the settings they read,
never by DataFrames or clients; a cached result whose output has since vanished from the
store is computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from prefect import Task, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from housegan import cluster, curate, labels, manifest, quality, storage
from housegan.config import EmbedSettings, get_settings
from tasks.runtime import ProgressArtifact, in_task_run, task_logger


def _digest(kind: str, **inputs: Any) -> str:
    body = json.dumps(inputs, sort_keys=True, default=str)
    return f"curate-{kind}-" + hashlib.sha256(body.encode()).hexdigest()


def _settings_json(*sections: str) -> dict[str, Any]:
    settings = get_settings()
    return {name: getattr(settings, name).model_dump(mode="json") for name in sections}


@task(name="resolve-manifest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_manifest(manifest_uri: str | None, store_uri: str) -> str:
    """The image manifest version to curate: a given file, or a collection's latest."""
    uri = manifest_uri or manifest.collection_uri(store_uri)
    return manifest.resolve(uri, get_settings().storage_options())


def _labels_fingerprint(parameters: dict[str, Any], store: str) -> str:
    """The content fingerprint of the labels a task reads: the given folder or the store's."""
    uri = parameters.get("labels_uri") or labels.labels_uri(store)
    return labels.labels_fingerprint(uri, get_settings().storage_options())


def finetune_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    store = storage.normalize_uri(parameters["store_uri"])
    return _digest(
        "finetune",
        manifest=parameters["manifest_uri"],
        store=store,
        labels=_labels_fingerprint(parameters, store),
        settings=_settings_json("embed", "curate"),
    )


@task(
    name="finetune-vgg16",
    retries=1,
    retry_delay_seconds=10,
    cache_key_fn=finetune_cache_key,
    persist_result=True,
)
def finetune_task(
    manifest_uri: str, store_uri: str, labels_uri: str | None = None
) -> EmbedSettings:
    """The embed settings to use: fine-tuned weights when ``curate.finetune`` is on and the
    labels name two or more types, else the configured ones."""
    settings = get_settings()
    tuned = curate.finetune_step(
        manifest_uri, store_uri, labels_uri, settings, settings.storage_options()
    )
    if tuned is not None:
        task_logger(__name__).info(
            "fine-tuned VGG16 on %d photos (%s): held-out accuracy %s -> %s",
            tuned.train_photos,
            ", ".join(tuned.classes),
            tuned.holdout_accuracy,
            tuned.weights_uri,
        )
    return curate.embedder_settings(settings, tuned)


def quality_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    return _digest(
        "quality",
        manifest=parameters["manifest_uri"],
        store=storage.normalize_uri(parameters["store_uri"]),
        version=quality.QUALITY_VERSION,
        max_side=get_settings().curate.quality_max_side,
    )


@task(
    name="quality-scores",
    retries=2,
    retry_delay_seconds=10,
    cache_key_fn=quality_cache_key,
    persist_result=True,
)
def quality_task(manifest_uri: str, store_uri: str) -> dict[str, Any]:
    """Score every photo whose content was never scored; returns the score folder and counts."""
    settings = get_settings()
    progress = ProgressArtifact("quality-progress", "photos scored") if in_task_run() else None
    result = quality.compute_quality(
        manifest_uri, store_uri, settings.curate, settings.storage_options(), progress
    )
    task_logger(__name__).info("quality: %d scored, %d reused", result.computed, result.reused)
    return asdict(result)


def cluster_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    return _digest(
        "cluster",
        manifest=parameters["manifest_uri"],
        store=storage.normalize_uri(parameters["store_uri"]),
        embeddings=parameters["embeddings_uri"],  # the embedding index version read
        settings=_settings_json("cluster"),
    )


@task(
    name="cluster",
    retries=1,
    retry_delay_seconds=10,
    cache_key_fn=cluster_cache_key,
    persist_result=True,
)
def cluster_task(
    manifest_uri: str, store_uri: str, tag: str, embeddings_uri: str
) -> dict[str, Any]:
    """Project and cluster the manifest's embeddings; returns the run URI and galleries."""
    settings = get_settings()
    result = curate.cluster_step(
        manifest_uri, store_uri, tag, settings.cluster, settings.storage_options()
    )
    task_logger(__name__).info(
        "clusters: k=%d sizes %s silhouette %s", result.k, result.sizes, result.silhouette
    )
    if in_task_run():
        rows = [
            {"cluster": c, "photos": result.sizes.get(c, 0), "gallery": uri}
            for c, uri in result.galleries.items()
        ]
        create_table_artifact(rows, key="cluster-galleries", description="Name clusters here")
    return asdict(result)


def types_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    store = storage.normalize_uri(parameters["store_uri"])
    return _digest(
        "types",
        manifest=parameters["manifest_uri"],
        clusters=parameters["clusters_uri"],
        store=store,
        labels=_labels_fingerprint(parameters, store),
        settings=_settings_json("cluster", "curate"),
    )


@task(
    name="image-types",
    retries=1,
    retry_delay_seconds=10,
    cache_key_fn=types_cache_key,
    persist_result=True,
)
def types_task(
    manifest_uri: str, clusters_uri: str, store_uri: str, labels_uri: str | None = None
) -> dict[str, Any]:
    """Labels -> classifier (or the cluster mapping) -> an image type for every photo."""
    settings = get_settings()
    result = curate.types_step(
        manifest_uri,
        clusters_uri,
        store_uri,
        labels_uri,
        settings.cluster,
        settings.curate,
        settings.storage_options(),
    )
    report = result.classifier
    task_logger(__name__).info(
        "types: %s from %d labels; held-out accuracy %s",
        result.type_counts,
        result.labels_used,
        report and report["cv_accuracy"],
    )
    if in_task_run():
        create_markdown_artifact(_classifier_markdown(result), key="image-types")
    return asdict(result)


def filter_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    return _digest(
        "filter",
        manifest=parameters["manifest_uri"],
        clusters=parameters["clusters_uri"],
        types=parameters["types_uri"],
        quality=parameters["quality_uri"],
        store=storage.normalize_uri(parameters["store_uri"]),
        version=quality.QUALITY_VERSION,
        settings=_settings_json("curate", "cluster"),
    )


@task(
    name="filter",
    retries=1,
    retry_delay_seconds=10,
    cache_key_fn=filter_cache_key,
    persist_result=True,
)
def filter_task(
    manifest_uri: str, clusters_uri: str, types_uri: str, quality_uri: str, store_uri: str
) -> dict[str, Any]:
    """The funnel: stage the curated frame, funnel table and galleries of dropped photos."""
    settings = get_settings()
    result = curate.filter_manifest(
        manifest_uri,
        clusters_uri,
        types_uri,
        store_uri,
        settings.curate,
        settings.storage_options(),
        settings.cluster.thumb_size,
    )
    task_logger(__name__).info("funnel %s; dropped %s", result.funnel, result.drop_counts)
    return result.as_dict()


@task(name="publish-curated", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_task(filtered: dict[str, Any], store_uri: str, manifest_uri: str, tag: str) -> str:
    """Make the staged frame the latest curated manifest (new version, pointer written last)."""
    result = curate.FilterResult(**filtered)
    metadata = curate.publish_metadata(manifest_uri, tag, result)
    uri = curate.publish(result.uri, store_uri, metadata, get_settings().storage_options())
    task_logger(__name__).info("curated manifest -> %s", uri)
    return uri


@task(name="log-curation", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_task(
    curated_uri: str,
    manifest_uri: str,
    embedded: dict[str, Any],
    scored: dict[str, Any],
    clusters: dict[str, Any],
    types: dict[str, Any],
    filtered: dict[str, Any],
    labels_uri: str | None = None,
) -> str:
    """One MLflow run with the funnel, galleries, classifier report and the dataset; plus the
    Prefect artifacts a person reads first. Returns the MLflow run id."""
    settings = get_settings()
    result = curate.CurateResult(
        curated_uri=curated_uri,
        manifest_uri=manifest_uri,
        embed={k: embedded[k] for k in ("tag", "computed", "reused")}
        | {"failed": len(embedded.get("failed") or {})},
        quality={"computed": scored["computed"], "reused": scored["reused"]},
        clusters=cluster.ClusterResult(**clusters),
        types=curate.TypesResult(**types),
        filter=curate.FilterResult(**filtered),
    )
    run_id = curate.log_curation(result, settings, labels_uri, settings.storage_options())
    if in_task_run():
        funnel = curate.read_funnel(result.filter.run_uri, settings.storage_options())
        create_table_artifact(
            funnel.to_dict(orient="records"),
            key="curate-funnel",
            description="Photos reaching each stage, per (city, image type)",
        )
        create_markdown_artifact(_summary_markdown(result, run_id), key="curate-summary")
    task_logger(__name__).info("curation logged to MLflow run %s", run_id)
    return run_id


# --- artifacts --------------------------------------------------------------------------------


def _summary_markdown(result: curate.CurateResult, run_id: str) -> str:
    funnel = result.filter.funnel
    lines = [
        f"# Curated manifest\n\n`{result.curated_uri}` (from `{result.manifest_uri}`)\n",
        f"MLflow run `{run_id}`; embeddings `{result.embed['tag']}`: "
        f"{result.embed['computed']} computed, {result.embed['reused']} reused.\n",
        "| stage | photos |",
        "| --- | ---: |",
        *(f"| {stage} | {count} |" for stage, count in funnel.items()),
        "",
        "| dropped because | photos | gallery |",
        "| --- | ---: | --- |",
        *(
            f"| {reason} | {n} | {result.filter.galleries.get(reason, '')} |"
            for reason, n in result.filter.drop_counts.items()
        ),
        "",
        "Near-duplicate cosine thresholds (calibrated per cluster): "
        + ", ".join(f"{g}: {v:.4f}" for g, v in result.filter.near_duplicate_cosine.items()),
        "",
        "| cluster | photos | gallery |",
        "| --- | ---: | --- |",
        *(
            f"| {c} | {result.clusters.sizes.get(c, 0)} | {uri} |"
            for c, uri in result.clusters.galleries.items()
        ),
    ]
    return "\n".join(lines)


def _classifier_markdown(result: curate.TypesResult) -> str:
    lines = [f"# Image types\n\n{result.type_counts}\n", f"Labels used: {result.labels_used}\n"]
    report = result.classifier
    if report is None:
        lines.append("No labels: types come from `cluster.cluster_to_type` (else `unknown`).")
        return "\n".join(lines)
    lines.append(f"Held-out accuracy ({report['cv_folds']}-fold CV): {report['cv_accuracy']}\n")
    confusion = report.get("confusion")
    if confusion:
        classes = list(confusion)
        lines += [
            "| true \\ predicted | " + " | ".join(classes) + " |",
            "| --- |" + " ---: |" * len(classes),
            *(
                f"| {t} | " + " | ".join(str(confusion[t][p]) for p in classes) + " |"
                for t in classes
            ),
        ]
    return "\n".join(lines)


def run_fresh(step: Task, output_key: str, *args: Any) -> dict[str, Any]:
    """Run a cached task; if its cached output has vanished from the store, run it again."""
    result = step(*args)
    if not storage.exists(result[output_key], get_settings().storage_options()):
        result = step.with_options(refresh_cache=True)(*args)
    return result
