"""VGG16 embeddings: the model, the content-addressed store and the incremental stage."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from housegan import embed, manifest, storage
from housegan.config import EmbedSettings, Settings
from housegan.devices import fast_bf16
from housegan.images import DECODER_VERSION
from housegan.manifest import IMAGE_MANIFEST_SCHEMA, Status

TINY = EmbedSettings(input_size=32, batch_size=4, num_workers=0)


# --- tiny photos and manifests ------------------------------------------------------------------


def photo_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> bytes:
    """A small photo of random blocks: distinct seeds give distinct pictures."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_photos(folder: Path, seeds: range | list[int]) -> dict[str, bytes]:
    """Photos under ``folder/city/listing/<seed>.jpg``; {uri: bytes}."""
    photos = {}
    for seed in seeds:
        path = folder / "austin" / f"l{seed % 3}" / f"{seed}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = photo_bytes(seed)
        path.write_bytes(data)
        photos[path.as_uri()] = data
    return photos


def manifest_frame(photos: dict[str, bytes], status: str = Status.OK) -> pd.DataFrame:
    now = datetime.now(UTC)
    rows = [
        {
            "key": "/".join(uri.rsplit("/", 3)[-3:]),  # city/listing/name
            "uri": uri,
            "city": "austin",
            "listing_id": "l",
            "etag": None,
            "size_bytes": len(data),
            "last_modified": now,
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": 48,
            "height": 40,
            "format": "JPEG",
            "mode": "RGB",
            "status": status,
            "error": None,
            "dup_of": None,
            "ingested_at": now,
        }
        for uri, data in photos.items()
    ]
    return pd.DataFrame(rows, columns=IMAGE_MANIFEST_SCHEMA.names)


def publish_manifest(store_uri: str, frame: pd.DataFrame, storage_options=None) -> str:
    collection = manifest.collection_uri(store_uri)
    return manifest.write_version(frame, collection, IMAGE_MANIFEST_SCHEMA, None, storage_options)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the model ------------------------------------------------------------------------------------


def test_model_tag_names_weights_layer_size_and_decoder_but_not_runtime_knobs():
    base = embed.model_tag(EmbedSettings())
    assert base == f"vgg16-none-fc7-224-d{DECODER_VERSION}"
    assert embed.model_tag(EmbedSettings(batch_size=7, bf16=False, num_workers=0)) == base
    tags = {
        embed.model_tag(EmbedSettings(layer="conv5")),
        embed.model_tag(EmbedSettings(input_size=112)),
        embed.model_tag(EmbedSettings(seed=1)),
        embed.model_tag(EmbedSettings(weights="imagenet")),
        base,
    }
    assert len(tags) == 5


def test_unknown_layer_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="conv5"):
        embed.model_tag(EmbedSettings(layer="fc8"))


def test_random_init_is_the_same_model_every_time_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = embed.build_model(EmbedSettings(layer="conv5", seed=3))
    assert torch.equal(torch.rand(1), expected_next)
    second = embed.build_model(EmbedSettings(layer="conv5", seed=3))
    other_seed = embed.build_model(EmbedSettings(layer="conv5", seed=4))
    first_weights, second_weights = first.state_dict(), second.state_dict()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert not torch.equal(first_weights["0.0.weight"], other_seed.state_dict()["0.0.weight"])


@pytest.mark.parametrize(("layer", "dim"), [("fc7", 4096), ("conv5", 512)])
def test_extractor_gives_layer_sized_vectors(layer: str, dim: int):
    model = embed.build_model(EmbedSettings(layer=layer))
    images = embed.to_model_input(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.device("cpu"))
    vectors = embed.embed_batch(model, images, bf16=False)
    assert vectors.shape == (2, dim)
    assert vectors.dtype == np.float32


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_loads_and_is_named_by_its_content(tmp_path: Path, suffix: str):
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(7)
    # conv5 needs only the convolutional layers: a smaller file, and a fine-tuned head may differ.
    state = {k: v for k, v in vgg16(weights=None).state_dict().items() if k.startswith("features")}
    path = tmp_path / f"vgg{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    cfg = EmbedSettings(weights=str(path), layer="conv5")
    weights_id = sha(path.read_bytes())[:12]
    assert embed.model_tag(cfg) == f"vgg16-{weights_id}-conv5-224-d{DECODER_VERSION}"
    loaded = embed.build_model(cfg).state_dict()
    assert torch.equal(loaded["0.28.weight"], state["features.28.weight"])


def test_weights_file_of_another_architecture_is_refused(tmp_path: Path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16 state dict"):
        embed.build_model(EmbedSettings(weights=str(path)))


def test_weights_file_without_the_fc7_layers_is_refused_for_fc7(tmp_path: Path):
    from torchvision.models import vgg16

    path = tmp_path / "features_only.pt"
    features = {k: v for k, v in vgg16(weights=None).state_dict().items() if "features" in k}
    torch.save(features, path)
    embed.build_model(EmbedSettings(weights=str(path), layer="conv5"))
    with pytest.raises(ValueError, match=r"missing \['classifier.0"):
        embed.build_model(EmbedSettings(weights=str(path), layer="fc7"))


def test_bf16_vectors_match_fp32_and_bf16_is_used_only_where_native():
    model = embed.build_model(EmbedSettings())
    pixels = torch.stack([embed.load_photo(photo_bytes(seed), 64) for seed in range(6)])
    images = embed.to_model_input(pixels, torch.device("cpu"))
    fp32 = embed.embed_batch(model, images, bf16=False)
    bf16 = embed.embed_batch(model, images, bf16=True)
    assert np.all(_cosine(fp32, bf16) >= 0.999)
    # Random-init vectors share a large common direction; the photo-specific rest must agree too.
    centre = fp32.mean(axis=0)
    assert np.all(_cosine(fp32 - centre, bf16 - centre) >= 0.9)
    # An AVX2-only CPU emulates bf16 ~8x slower than fp32: the embedder must not use it there.
    assert np.array_equal(fp32, bf16) != fast_bf16("cpu")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_photo_is_turned_upright_by_its_exif_orientation():
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    upright, stored = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(upright, format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored rotated the other way
    Image.fromarray(np.rot90(pixels, k=1)).save(stored, format="PNG", exif=exif)
    expected = embed.load_photo(upright.getvalue(), 32)
    assert torch.equal(embed.load_photo(stored.getvalue(), 32), expected)
    assert expected.shape == (3, 32, 32) and expected.dtype == torch.uint8


# --- the store and the incremental stage ----------------------------------------------------------


def test_embeddings_are_stored_as_float16_keyed_by_sha256(tmp_path: Path, store: str):
    photos = write_photos(tmp_path / "raw", range(5))
    result = embed.embed_manifest(publish_manifest(store, manifest_frame(photos)), store, TINY)
    assert (result.computed, result.reused, result.failed) == (5, 0, {})
    shas, vectors = embed.load_embeddings(store, result.tag)
    assert sorted(shas) == sorted(sha(data) for data in photos.values())
    assert vectors.shape == (5, 4096) and vectors.dtype == np.float32
    part = next((storage.local_path(store) / "embeddings" / result.tag / "parts").iterdir())
    assert pq.read_schema(part).field("vector").type == pa.list_(pa.float16(), 4096)


def test_rerun_on_unchanged_manifest_computes_nothing(tmp_path: Path, store: str):
    manifest_uri = publish_manifest(store, manifest_frame(write_photos(tmp_path / "raw", range(4))))
    first = embed.embed_manifest(manifest_uri, store, TINY)
    again = embed.embed_manifest(manifest_uri, store, TINY)
    assert (first.computed, again.computed, again.reused) == (4, 0, 4)
    assert embed.plan(manifest_uri, store, TINY).todo == []
    assert again.uri == first.uri  # nothing new was published


def test_ten_new_photos_are_exactly_ten_embedded(tmp_path: Path, store: str):
    old = write_photos(tmp_path / "raw", range(6))
    embed.embed_manifest(publish_manifest(store, manifest_frame(old)), store, TINY)
    grown = {**old, **write_photos(tmp_path / "raw", range(100, 110))}
    result = embed.embed_manifest(publish_manifest(store, manifest_frame(grown)), store, TINY)
    assert (result.computed, result.reused) == (10, 6)
    shas, _ = embed.load_embeddings(store, result.tag)
    assert len(shas) == 16


def test_duplicate_photos_are_embedded_once(tmp_path: Path, store: str):
    photos = write_photos(tmp_path / "raw", range(3))
    copy = tmp_path / "raw" / "dallas" / "l9" / "renamed.jpg"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(next(iter(photos.values())))
    frame = manifest_frame({**photos, copy.as_uri(): copy.read_bytes()})
    planned = embed.plan(publish_manifest(store, frame), store, TINY)
    assert (planned.total, sum(len(shard) for shard in planned.todo)) == (3, 3)
    result = embed.embed_manifest(manifest.collection_uri(store), store, TINY)
    assert result.computed == 3


def test_only_ok_rows_are_embedded(tmp_path: Path, store: str):
    good = manifest_frame(write_photos(tmp_path / "raw", range(2)))
    bad = manifest_frame(write_photos(tmp_path / "raw", [50]), status=Status.TOO_SMALL)
    result = embed.embed_manifest(publish_manifest(store, pd.concat([good, bad])), store, TINY)
    assert result.computed == 2


def test_shards_split_the_work_and_vectors_do_not_depend_on_batching(tmp_path: Path, store: str):
    photos = write_photos(tmp_path / "raw", range(7))
    manifest_uri = publish_manifest(store, manifest_frame(photos))
    planned = embed.plan(manifest_uri, store, TINY, shard_size=3)
    assert [len(shard) for shard in planned.todo] == [3, 3, 1]
    parts = [embed.embed_shard(shard, store, TINY) for shard in planned.todo]
    embed.publish(store, planned.tag, parts)
    shas, sharded = embed.load_embeddings(store, planned.tag)
    other_store = (tmp_path / "other").as_uri()
    single = EmbedSettings(input_size=32, batch_size=7, num_workers=2, shard_size=100)
    embed.embed_manifest(manifest_uri, other_store, single)
    same_shas, whole = embed.load_embeddings(other_store, planned.tag)
    assert list(shas) == list(same_shas)
    assert np.allclose(sharded, whole, rtol=0.02, atol=1e-3)


def test_load_embeddings_returns_asked_sha256s_in_asked_order(tmp_path: Path, store: str):
    photos = write_photos(tmp_path / "raw", range(5))
    result = embed.embed_manifest(publish_manifest(store, manifest_frame(photos)), store, TINY)
    all_shas, all_vectors = embed.load_embeddings(store, result.tag)
    asked = [all_shas[3], "0" * 64, all_shas[0], all_shas[3]]
    shas, vectors = embed.load_embeddings(store, result.tag, asked)
    assert list(shas) == [all_shas[3], all_shas[0]]
    assert np.array_equal(vectors, all_vectors[[3, 0]])


def test_load_embeddings_of_an_unknown_tag_says_what_to_run(store: str):
    with pytest.raises(FileNotFoundError, match="run the embed stage"):
        embed.load_embeddings(store, "vgg16-none-fc7-999")


def test_every_publish_is_a_new_index_version_and_old_ones_stay(tmp_path: Path, store: str):
    first_photos = write_photos(tmp_path / "raw", range(2))
    first = embed.embed_manifest(publish_manifest(store, manifest_frame(first_photos)), store, TINY)
    more = {**first_photos, **write_photos(tmp_path / "raw", range(10, 12))}
    second = embed.embed_manifest(publish_manifest(store, manifest_frame(more)), store, TINY)
    assert first.uri != second.uri
    old_index = json.loads(storage.read_bytes(first.uri))
    new_index = json.loads(storage.read_bytes(second.uri))
    assert (old_index["rows"], new_index["rows"]) == (2, 4)
    assert old_index["parts"] == new_index["parts"][:1]


def test_part_outside_the_collection_is_refused(tmp_path: Path, store: str):
    with pytest.raises(ValueError, match="not inside"):
        embed.publish(store, "vgg16-none-fc7-32", [(tmp_path / "elsewhere.parquet").as_uri()])


def test_unreadable_photos_are_recorded_and_do_not_stop_the_others(tmp_path: Path, store: str):
    photos = write_photos(tmp_path / "raw", range(3))
    corrupt = tmp_path / "raw" / "austin" / "l0" / "corrupt.jpg"
    corrupt.write_bytes(photo_bytes(99)[:200])  # truncated: a JPEG header, no image
    changed_uri, changed_bytes = next(iter(photos.items()))
    frame = manifest_frame(
        {
            **photos,
            corrupt.as_uri(): corrupt.read_bytes(),
            (tmp_path / "gone.jpg").as_uri(): b"was here at ingest",
        }
    )
    storage.local_path(changed_uri).write_bytes(photo_bytes(1234))  # replaced after ingest
    manifest_uri = publish_manifest(store, frame)
    result = embed.embed_manifest(manifest_uri, store, EmbedSettings(input_size=32, num_workers=1))
    assert result.computed == 2
    reasons = result.failed
    assert reasons[sha(corrupt.read_bytes())].startswith("undecodable")
    assert reasons[sha(b"was here at ingest")].startswith("unreadable")
    assert reasons[sha(changed_bytes)].startswith("changed")
    # Undecodable bytes stay undecodable; a missing or replaced object may come back.
    retried = embed.plan(manifest_uri, store, TINY)
    assert sorted(retried.todo[0].sha256s) == sorted(
        [sha(b"was here at ingest"), sha(changed_bytes)]
    )


@pytest.mark.integration
def test_photos_and_store_on_s3(settings: Settings, s3_server, bucket: str):
    options = settings.storage_options()
    client = s3_server.client()
    photos = {}
    for seed in range(3):
        data = photo_bytes(seed)
        client.put_object(Bucket=bucket, Key=f"raw/austin/l1/{seed}.jpg", Body=data)
        photos[f"s3://{bucket}/raw/austin/l1/{seed}.jpg"] = data
    store_uri = f"s3://{bucket}/store"
    manifest_uri = publish_manifest(store_uri, manifest_frame(photos), options)
    cfg = EmbedSettings(input_size=32, num_workers=1)
    result = embed.embed_manifest(manifest_uri, store_uri, cfg, options)
    assert (result.computed, result.failed) == (3, {})
    assert result.uri.startswith(f"s3://{bucket}/store/embeddings/{result.tag}/")
    shas, vectors = embed.load_embeddings(store_uri, result.tag, storage_options=options)
    assert sorted(shas) == sorted(sha(data) for data in photos.values())
    assert vectors.shape == (3, 4096)
    assert embed.embed_manifest(manifest_uri, store_uri, cfg, options).computed == 0


# --- Prefect tasks ------------------------------------------------------------------------------


def embed_env(monkeypatch: pytest.MonkeyPatch, **embed_settings: str) -> EmbedSettings:
    """The embed settings the tasks read (``get_settings``), set as a deployment sets them."""
    from housegan.config import get_settings

    for name, value in embed_settings.items():
        monkeypatch.setenv(f"HOUSEGAN_EMBED__{name.upper()}", value)
    get_settings.cache_clear()
    return get_settings().embed


@pytest.mark.slow
def test_shard_task_is_cached_by_shard_and_tag_and_a_vanished_part_is_redone(
    prefect_harness, tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
):
    from prefect import flow

    from housegan.steps.embed import EmbedInput, ShardInput
    from tasks.embed import embed_shard_task, map_embed_shards

    cfg = embed_env(monkeypatch, input_size="32", layer="conv5", num_workers="0", shard_size="2")
    photos = write_photos(tmp_path / "raw", range(4))
    inputs = EmbedInput(publish_manifest(store, manifest_frame(photos)), store)
    planned = embed.plan(inputs.manifest_uri, store, cfg, shard_size=2)
    shards = ShardInput.all_of(inputs, planned)

    @flow
    def embed_twice() -> tuple[list[str], list[str], str]:
        first = map_embed_shards(shards)
        storage.local_path(first[0]).unlink()
        again = map_embed_shards(shards)
        bigger = embed_env(monkeypatch, input_size="48")
        other = ShardInput(shards[1].shard, store, embed.model_tag(bigger))
        return first, again, embed_shard_task(other)

    first, again, other_tag = embed_twice()
    assert again[1] == first[1]  # cached: not computed again
    assert again[0] != first[0] and storage.exists(again[0])
    assert other_tag not in first
    parts = (storage.local_path(store) / "embeddings" / planned.tag / "parts").iterdir()
    assert sorted(part.as_uri() for part in parts) == sorted(again)  # nothing else was written


@pytest.mark.slow
def test_embed_stage_maps_shards_on_a_two_worker_dask_cluster(
    prefect_harness, tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
):
    from prefect import flow

    from flows.embed import run_embed_stage
    from housegan.steps.embed import EmbedInput
    from tasks.embed import embed_task_runner

    cfg = embed_env(monkeypatch, input_size="32", layer="conv5", shard_size="2", dask_workers="2")
    assert type(embed_task_runner()).__name__ == "DaskTaskRunner"
    photos = write_photos(tmp_path / "raw", range(6))
    manifest_uri = publish_manifest(store, manifest_frame(photos))

    @flow
    def stage() -> embed.EmbedResult:
        return run_embed_stage(EmbedInput(manifest_uri, store))

    result = stage()
    assert (result.computed, result.reused, result.failed) == (6, 0, {})
    shas, vectors = embed.load_embeddings(store, result.tag)
    assert sorted(shas) == sorted(sha(data) for data in photos.values())
    assert vectors.shape == (6, 512)
    assert embed.plan(manifest_uri, store, cfg).todo == []
