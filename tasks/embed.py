"""Prefect tasks around the embed steps (``housegan.steps.embed``): plan, embed each shard
(mappable, cached by its shard, model tag and settings), publish. ``flows.embed`` wires them.
"""

from __future__ import annotations

from typing import ParamSpec, TypeVar

from prefect import Task
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from housegan import storage
from housegan.config import EmbedSettings, get_settings
from housegan.embed import EmbedPlan, EmbedResult
from housegan.steps import embed as steps
from housegan.steps.embed import EmbedInput, PublishInput, ShardInput
from tasks.runtime import (
    ProgressArtifact,
    in_task_run,
    run_store_step,
    step_task,
    task_logger,
    with_retry_delay,
)

P = ParamSpec("P")
R = TypeVar("R")
_DELAY_S = EmbedSettings().task_retry_delay_s  # the default; ``configured`` applies the set one


def configured(task: Task[P, R]) -> Task[P, R]:
    """An embed task with the configured ``embed.task_retry_delay_s``."""
    return with_retry_delay(task, "embed")


@step_task(steps.plan_embeddings, cache=False, retries=2, retry_delay_seconds=_DELAY_S)
def plan_task(inputs: EmbedInput) -> EmbedPlan:
    planned = run_store_step(steps.plan_embeddings, inputs)
    task_logger(__name__).info(
        "embed plan %s: %d photos, %d already embedded, %d to embed in %d shards",
        planned.tag,
        planned.total,
        planned.reused,
        sum(len(shard) for shard in planned.todo),
        len(planned.todo),
    )
    return planned


@step_task(steps.embed_shard, retries=2, retry_delay_seconds=_DELAY_S)
def embed_shard_task(inputs: ShardInput) -> str:
    part_uri = run_store_step(steps.embed_shard, inputs)
    task_logger(__name__).info("embedded %d photos -> %s", len(inputs.shard), part_uri)
    return part_uri


@step_task(steps.publish_embeddings, cache=False, retries=2, retry_delay_seconds=_DELAY_S)
def publish_task(inputs: PublishInput) -> EmbedResult:
    embedded = run_store_step(steps.publish_embeddings, inputs)
    failed = embedded.failed
    task_logger(__name__).info(
        "embeddings %s: %d computed, %d reused, %d failed",
        embedded.tag,
        embedded.computed,
        embedded.reused,
        len(failed),
    )
    if failed and in_task_run():
        create_table_artifact(
            [{"sha256": sha256, "reason": reason} for sha256, reason in failed.items()],
            key="embed-failures",
            description=f"Photos not embedded under `{embedded.tag}` (unreadable ones are retried)",
        )
    return embedded


def map_embed_shards(shards: list[ShardInput]) -> list[str]:
    """Map ``embed_shard_task`` with the current flow's task runner; part URIs in shard order.
    A cached part that has since vanished from storage is computed again."""
    shard_task = configured(embed_shard_task)
    futures = shard_task.map(shards)
    part_uris = _results_with_progress(futures, [len(inputs.shard) for inputs in shards])
    options = get_settings().storage_options()
    again = shard_task.with_options(refresh_cache=True)
    return [
        part if storage.exists(part, options) else again(inputs)
        for inputs, part in zip(shards, part_uris, strict=True)
    ]


def _results_with_progress(futures: list[PrefectFuture], sizes: list[int]) -> list[str]:
    """Wait for every shard, moving a progress artifact as each one finishes."""
    progress = ProgressArtifact("embed-progress", "photos")
    position = {id(future): index for index, future in enumerate(futures)}
    done = 0
    for future in as_completed(list(futures)):
        done += sizes[position[id(future)]]
        progress.update(done, sum(sizes))
    return [future.result() for future in futures]


def embed_task_runner(cfg: EmbedSettings | None = None) -> TaskRunner:
    """A local Dask cluster of ``embed.dask_workers`` processes, or shards one at a time."""
    cfg = cfg or get_settings().embed
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
