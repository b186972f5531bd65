"""Prefect tasks around ``housegan.embed``: plan, embed each shard (mappable, cached), publish.

``run_embed_stage`` runs the ``embed`` subflow on the configured task runner: shards one after
another in-process by default, or mapped over a local Dask cluster when
``embed.dask_workers > 0``. Call it from inside a flow.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from housegan import embed, storage
from housegan.config import EmbedSettings, get_settings
from tasks.runtime import ProgressArtifact, in_task_run, task_logger


def _embed_settings(cfg: EmbedSettings | None) -> EmbedSettings:
    return cfg if cfg is not None else get_settings().embed


@task(name="plan-embeddings", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def plan_embeddings(
    manifest_uri: str, store_uri: str, cfg: EmbedSettings | None = None
) -> dict[str, Any]:
    """The manifest's photos not yet embedded under the model tag, as shards of URIs + sha256s."""
    cfg = _embed_settings(cfg)
    planned = embed.plan(
        manifest_uri, store_uri, cfg, get_settings().storage_options(), cfg.shard_size
    )
    todo = sum(len(shard) for shard in planned.todo)
    task_logger(__name__).info(
        "embed plan %s: %d photos, %d already embedded, %d to embed in %d shards",
        planned.tag,
        planned.total,
        planned.reused,
        todo,
        len(planned.todo),
    )
    return {
        "tag": planned.tag,
        "total": planned.total,
        "reused": planned.reused,
        "shards": [shard.to_dict() for shard in planned.todo],
    }


def shard_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    """Same photos, same model, same store: same part. Lets retries and re-runs skip work."""
    cfg = _embed_settings(parameters.get("cfg"))
    key = {
        "store": storage.normalize_uri(parameters["store_uri"]),
        "tag": embed.model_tag(cfg, get_settings().storage_options()),
        "sha256s": list(parameters["shard"]["sha256s"]),
    }
    return "embed-shard-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()


@task(
    name="embed-shard",
    retries=2,
    retry_delay_seconds=10,
    cache_key_fn=shard_cache_key,
    persist_result=True,
)
def embed_shard_task(
    shard: dict[str, list[str]], store_uri: str, cfg: EmbedSettings | None = None
) -> str:
    """Embed one shard into one unpublished Parquet part; returns the part's URI."""
    cfg = _embed_settings(cfg)
    part_uri = embed.embed_shard(
        embed.Shard.from_dict(shard),
        store_uri,
        cfg,
        get_settings().storage_options(),
        device=cfg.device,
    )
    task_logger(__name__).info("embedded %d photos -> %s", len(shard["sha256s"]), part_uri)
    return part_uri


@task(name="publish-embeddings", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_embeddings(
    store_uri: str, tag: str, part_uris: list[str], reused: int = 0
) -> dict[str, Any]:
    """Publish a new index naming the new parts; returns the index URI and what was done."""
    options = get_settings().storage_options()
    uri = embed.publish_new(store_uri, tag, part_uris, options)
    computed, failed = embed.part_failures(part_uris, options)
    task_logger(__name__).info(
        "embeddings %s: %d computed, %d reused, %d failed", tag, computed, reused, len(failed)
    )
    if failed and in_task_run():
        create_table_artifact(
            [{"sha256": sha256, "reason": reason} for sha256, reason in failed.items()],
            key="embed-failures",
            description=f"Photos not embedded under `{tag}` (unreadable ones are retried)",
        )
    return {"tag": tag, "uri": uri, "computed": computed, "reused": reused, "failed": failed}


def map_embed_shards(
    shards: list[dict[str, list[str]]], store_uri: str, cfg: EmbedSettings | None = None
) -> list[str]:
    """Map ``embed_shard_task`` over shards with the current flow's task runner; part URIs in
    shard order. A cached part that has since vanished from storage is computed again."""
    futures = embed_shard_task.map(shards, unmapped(store_uri), unmapped(cfg))
    part_uris = _results_with_progress(futures, [len(shard["sha256s"]) for shard in shards])
    options = get_settings().storage_options()
    for position, part_uri in enumerate(part_uris):
        if not storage.exists(part_uri, options):
            refreshed = embed_shard_task.with_options(refresh_cache=True)
            part_uris[position] = refreshed(shards[position], store_uri, cfg)
    return part_uris


def _results_with_progress(futures: list[PrefectFuture], sizes: list[int]) -> list[str]:
    """Wait for every shard, moving a progress artifact as each one finishes."""
    progress = ProgressArtifact("embed-progress", "photos")
    position = {id(future): index for index, future in enumerate(futures)}
    done = 0
    for future in as_completed(list(futures)):
        done += sizes[position[id(future)]]
        progress.update(done, sum(sizes))
    return [future.result() for future in futures]


@flow(name="embed")
def embed_subflow(
    manifest_uri: str, store_uri: str, cfg: EmbedSettings | None = None
) -> dict[str, Any]:
    """Plan -> embed every shard (mapped) -> publish."""
    planned = plan_embeddings(manifest_uri, store_uri, cfg)
    part_uris = map_embed_shards(planned["shards"], store_uri, cfg)
    return publish_embeddings(store_uri, planned["tag"], part_uris, planned["reused"])


def embed_task_runner(cfg: EmbedSettings | None = None) -> TaskRunner:
    """A local Dask cluster of ``embed.dask_workers`` processes, or shards one at a time."""
    cfg = _embed_settings(cfg)
    if cfg.dask_workers > 0:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": cfg.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    # One shard at a time: each already keeps every core busy (torch threads + decoders).
    return ThreadPoolTaskRunner(max_workers=1)


def run_embed_stage(
    manifest_uri: str, store_uri: str, cfg: EmbedSettings | None = None
) -> dict[str, Any]:
    """Run the ``embed`` subflow on ``embed_task_runner(cfg)``; returns publish's summary."""
    runner = embed_task_runner(cfg)
    return embed_subflow.with_options(task_runner=runner)(manifest_uri, store_uri, cfg)
