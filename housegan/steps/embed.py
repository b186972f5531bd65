"""The embed stage: an image manifest's photos -> VGG16 vectors under a model tag.

plan (which photos are not embedded yet, in shards) -> embed each shard (one Parquet part
each) -> publish (a new index naming the new parts). ``run_embed`` runs them in one process
(the CLI's curate); ``flows.embed`` maps ``embed_shard`` over the shards as Prefect tasks.
``housegan.embed`` does the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from housegan import embed
from housegan.config import EmbedSettings
from housegan.embed import EmbedPlan, EmbedResult, Shard
from housegan.steps import step


@dataclass(frozen=True)
class EmbedInput:
    manifest_uri: str  # an image manifest version
    store_uri: str
    weights: str | None = None  # fine-tuned weights in place of ``embed.weights``; None: as set


def embedder(cfg: EmbedSettings, weights: str | None) -> EmbedSettings:
    """The embed settings with the fine-tuned weights, if any, in place of the configured ones."""
    return cfg if weights is None else cfg.model_copy(update={"weights": weights})


@step("embed")
def plan_embeddings(
    inputs: EmbedInput, cfg: EmbedSettings, *, storage_options: Mapping[str, Any] | None = None
) -> EmbedPlan:
    """The manifest's photos not yet embedded under the model tag, in shards (sha256 order)."""
    cfg = embedder(cfg, inputs.weights)
    return embed.plan(inputs.manifest_uri, inputs.store_uri, cfg, storage_options, cfg.shard_size)


@dataclass(frozen=True)
class ShardInput:
    shard: Shard
    store_uri: str
    tag: str  # the plan's model tag: it names a weights file by content, the settings do not
    weights: str | None = None

    @classmethod
    def all_of(cls, inputs: EmbedInput, planned: EmbedPlan) -> list[ShardInput]:
        return [cls(shard, inputs.store_uri, planned.tag, inputs.weights) for shard in planned.todo]


@step("embed", writes=lambda part_uri: [part_uri])
def embed_shard(
    inputs: ShardInput,
    cfg: EmbedSettings,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: embed.Progress | None = None,
) -> str:
    """Embed one shard into one unpublished Parquet part; returns the part's URI."""
    cfg = embedder(cfg, inputs.weights)
    return embed.embed_shard(
        inputs.shard, inputs.store_uri, cfg, storage_options, cfg.device, progress
    )


@dataclass(frozen=True)
class PublishInput:
    store_uri: str
    tag: str
    part_uris: tuple[str, ...]
    reused: int  # photos the plan found embedded already

    @classmethod
    def after(cls, inputs: EmbedInput, planned: EmbedPlan, part_uris: list[str]) -> PublishInput:
        return cls(inputs.store_uri, planned.tag, tuple(part_uris), planned.reused)


@step(writes=lambda result: [result.uri])
def publish_embeddings(
    inputs: PublishInput, *, storage_options: Mapping[str, Any] | None = None
) -> EmbedResult:
    """Publish a new index naming the new parts (or keep the latest); what was done."""
    uri = embed.publish_new(inputs.store_uri, inputs.tag, list(inputs.part_uris), storage_options)
    computed, failed = embed.part_failures(inputs.part_uris, storage_options)
    return EmbedResult(inputs.tag, uri, computed=computed, reused=inputs.reused, failed=failed)


def run_embed(
    inputs: EmbedInput,
    cfg: EmbedSettings,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: embed.Progress | None = None,
) -> EmbedResult:
    """The stage in one process: plan, every shard in turn, publish."""
    planned = plan_embeddings(inputs, cfg, storage_options=storage_options)
    parts = [
        embed_shard(shard, cfg, storage_options=storage_options, progress=progress)
        for shard in ShardInput.all_of(inputs, planned)
    ]
    return publish_embeddings(
        PublishInput.after(inputs, planned, parts), storage_options=storage_options
    )
