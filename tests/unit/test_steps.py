"""Typed stage steps: results round-trip through JSON, and the one cache key of every task is
derived from a step's inputs (labels by content) and the settings sections it declares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from housegan import labels
from housegan.cluster import ClusterResult
from housegan.config import get_settings
from housegan.curate import FilterResult
from housegan.embed import EmbedResult
from housegan.finetune import FinetuneResult
from housegan.quality import QualityResult
from housegan.steps import curate as steps
from housegan.steps import from_json, to_json
from housegan.steps.curate import ClusterInput, CurateInput, CurateResult, TypesInput, TypesResult


def curate_result() -> CurateResult:
    return CurateResult(
        source=CurateInput("file:///s/m.parquet", "file:///s", "file:///s/labels"),
        finetune=FinetuneResult(
            "file:///s/w.safetensors", ["exterior", "misc"], 8, 0.5, [1.2], False
        ),
        embed=EmbedResult("vgg16-none-fc7-32-d2", "file:///s/e.json", 3, 4, {"ab": "undecodable"}),
        quality=QualityResult("file:///s/quality", 3, 4),
        clusters=ClusterResult("file:///s/c.parquet", 3, {3: 0.25, 4: 0.2}, {0: 2}, {0: "g.png"}),
        types=TypesResult("file:///s/t.parquet", 5, {"cv_accuracy": 0.9}, {"exterior": 7}),
        filter=FilterResult("u", "r", {"objects": 7}, {"invalid": 1}, {"all": 0.95}, True, 0),
        curated_uri="file:///s/curated.parquet",
        mlflow_run_id="abc",
    )


def test_a_stage_result_survives_a_json_round_trip():
    result = curate_result()
    assert from_json(CurateResult, json.loads(json.dumps(to_json(result)))) == result


def cache_key(step, inputs) -> str:
    from tasks.runtime import step_cache_key

    return step_cache_key(step)(None, {"inputs": inputs})


def settle(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_cache_key_follows_the_steps_own_settings_section_and_no_other(monkeypatch):
    inputs = ClusterInput("file:///s/m.parquet", "file:///s", "tag", "file:///s/e.json")
    first = cache_key(steps.cluster_photos, inputs)
    settle(monkeypatch, HOUSEGAN_CURATE__KNN_K="9", HOUSEGAN_GAN__KIMG="1")  # not read by cluster
    assert cache_key(steps.cluster_photos, inputs) == first
    settle(monkeypatch, HOUSEGAN_CLUSTER__K="6")
    assert cache_key(steps.cluster_photos, inputs) != first
    other = ClusterInput("file:///s/m.parquet", "file:///s", "tag", "file:///s/e2.json")
    assert cache_key(steps.cluster_photos, other) != cache_key(steps.cluster_photos, inputs)


def test_cache_key_reads_a_labels_folder_by_content(tmp_path: Path):
    store = (tmp_path / "store").as_uri()
    inputs = TypesInput(
        "file:///s/m.parquet", "file:///s/c.parquet", store, labels.labels_uri(store)
    )
    label_file = tmp_path / "labels.csv"
    label_file.write_text("key,label\na/1/p.jpg,exterior\n")
    before = cache_key(steps.assign_types, inputs)
    labels.import_labels(label_file.as_uri(), store, labeller="test")
    assert cache_key(steps.assign_types, inputs) != before  # same URI, new labels
    assert steps.assign_types.determinants(inputs, get_settings())["step"] == "assign_types"


def test_retry_delays_stay_out_of_the_cache_keys_of_steps() -> None:
    """A retry delay changes how a step runs, not what it computes: same key; a real setting
    changes the key."""
    from housegan.config import Settings
    from housegan.steps import step

    @step("embed")
    def embed_like(inputs: str, cfg: object, *, storage_options: object = None) -> str:
        return inputs

    base = Settings()
    slower = base.model_copy(
        update={"embed": base.embed.model_copy(update={"task_retry_delay_s": 99.0})}
    )
    other = base.model_copy(update={"embed": base.embed.model_copy(update={"batch_size": 7})})
    key = embed_like.determinants("x", base)
    assert embed_like.determinants("x", slower) == key
    assert embed_like.determinants("x", other) != key
