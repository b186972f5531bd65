"""The embed subflow: plan -> embed every shard (mapped) -> publish.

Runs on ``embed_task_runner``: shards one after another in-process by default, or mapped over a
local Dask cluster when ``embed.dask_workers > 0``. ``run_embed_stage`` starts it from inside
another flow (the curate flow).
"""

from __future__ import annotations

from prefect import flow

from housegan.embed import EmbedResult
from housegan.steps.embed import EmbedInput, PublishInput, ShardInput
from tasks.embed import (
    configured,
    embed_task_runner,
    map_embed_shards,
    plan_task,
    publish_task,
)


@flow(name="embed")
def embed_subflow(inputs: EmbedInput) -> EmbedResult:
    planned = configured(plan_task)(inputs)
    part_uris = map_embed_shards(ShardInput.all_of(inputs, planned))
    return configured(publish_task)(PublishInput.after(inputs, planned, part_uris))


def run_embed_stage(inputs: EmbedInput) -> EmbedResult:
    """Run the ``embed`` subflow on the configured task runner."""
    return embed_subflow.with_options(task_runner=embed_task_runner())(inputs)
