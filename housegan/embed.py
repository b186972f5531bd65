"""VGG16 embeddings, content-addressed by sha256 under a model tag.

A model tag (``vgg16-<weights>-<layer>-<input size>-d<decoder>``) names exactly one feature
extractor and one decoding of its input, so vectors of different backbones or decoders never mix
and a photo's vector is computed once per tag, however
often it is renamed, re-uploaded or duplicated. Each tag is a parts collection keyed by sha256
(``housegan.collections.PartsCollection``); store layout, per tag:

    <store>/embeddings/<tag>/parts/<version>.parquet   immutable parts, one per embedded shard
    <store>/embeddings/<tag>/<version>.json            index versions: which parts make the set
    <store>/embeddings/<tag>/latest                    pointer to the current index, written last

A crash leaves at most an unpublished part behind, never a half-written index.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from housegan import images, manifest, storage
from housegan.collections import Index, PartsCollection
from housegan.config import EmbedSettings
from housegan.devices import DeviceSpec, fast_bf16, resolve_device

log = logging.getLogger(__name__)

LAYER_DIMS = {"fc7": 4096, "conv5": 512}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDINGS_FOLDER = "embeddings"

Progress = Callable[[int], None]  # called with the number of photos just finished (tqdm.update)


class EmbedStatus(StrEnum):
    """What happened to one photo of a shard."""

    OK = "ok"
    UNDECODABLE = "undecodable"  # its bytes match the sha256 but do not decode: final
    UNREADABLE = "unreadable"  # the object could not be read: retried by the next run
    CHANGED = "changed"  # the object's bytes no longer match the manifest's sha256: retried


# A sha256 in one of these states needs no more work under its tag.
SETTLED = (EmbedStatus.OK, EmbedStatus.UNDECODABLE)


def embedding_schema(dim: int) -> pa.Schema:
    """The Parquet schema of an embedding part whose vectors have ``dim`` components."""
    return pa.schema(
        [
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float16(), dim)),  # null unless status is ok
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("model_tag", pa.string(), nullable=False),
            pa.field("created_at", manifest.TIMESTAMP, nullable=False),
        ],
        metadata={"housegan.schema": "embeddings", "housegan.schema_version": "1"},
    )


@dataclass(frozen=True)
class Shard:
    """Photos embedded together and written as one part: one URI per distinct sha256."""

    uris: list[str]
    sha256s: list[str]

    def __len__(self) -> int:
        return len(self.sha256s)

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> Shard:
        return cls(list(data["uris"]), list(data["sha256s"]))


@dataclass(frozen=True)
class EmbedPlan:
    tag: str
    todo: list[Shard]
    reused: int  # distinct photos already settled under the tag
    total: int  # distinct photos (by sha256) with status ok in the manifest


@dataclass(frozen=True)
class EmbedResult:
    tag: str
    uri: str  # the published index version
    computed: int
    reused: int
    failed: dict[str, str] = field(default_factory=dict)  # sha256 -> reason


# --- the model --------------------------------------------------------------------------------


def _check_layer(layer: str) -> None:
    if layer not in LAYER_DIMS:
        raise ValueError(f"embed.layer is {layer!r}; allowed: {sorted(LAYER_DIMS)}")


@functools.lru_cache(maxsize=8)
def _file_sha256(uri: str, unique_key: str, options_json: str) -> str:
    del unique_key  # part of the cache key only: a changed file has a new one
    return hashlib.sha256(storage.read_bytes(uri, json.loads(options_json))).hexdigest()


def _options_json(storage_options: Mapping[str, Any] | None) -> str:
    return json.dumps(storage_options or {}, sort_keys=True, default=str)


def _weights_id(cfg: EmbedSettings, storage_options: Mapping[str, Any] | None) -> str:
    if cfg.weights == "imagenet":
        return "imagenet"
    if cfg.weights == "none":
        return "none" if cfg.seed == 0 else f"none_seed{cfg.seed}"
    uri = storage.normalize_uri(cfg.weights)
    fs, path = storage.get_fs(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"embed.weights names {cfg.weights}, which does not exist")
    return _file_sha256(uri, fs.ukey(path), _options_json(storage_options))[:12]


def model_tag(cfg: EmbedSettings, storage_options: Mapping[str, Any] | None = None) -> str:
    """The name of the feature extractor ``cfg`` describes, e.g. ``vgg16-none-fc7-224-d2``.

    A weights file is named by its content (sha256[:12]), random init by its seed; ``d<N>`` is
    ``images.DECODER_VERSION``, so vectors of photos decoded differently are computed afresh.
    Precision, batch size and device are not part of it: bf16 vectors match fp32 to cosine
    >= 0.999.
    """
    _check_layer(cfg.layer)
    weights = _weights_id(cfg, storage_options)
    return f"vgg16-{weights}-{cfg.layer}-{cfg.input_size}-d{images.DECODER_VERSION}"


def _read_state_dict(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    data = storage.read_bytes(storage.normalize_uri(uri), storage_options)
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{uri} holds a {type(state).__name__}, not a VGG16 state dict")
    return dict(state)


def _vgg16_from_state_dict(cfg: EmbedSettings, storage_options: Mapping[str, Any] | None):
    from torchvision.models import vgg16

    state = _read_state_dict(cfg.weights, storage_options)
    with torch.device("meta"):  # skip the random init the weights would overwrite
        model = vgg16(weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    # Only the layers the extractor keeps must be present (a fine-tuned head may differ).
    needed_prefixes = ("features.", "classifier.0.", "classifier.3.")
    if cfg.layer == "conv5":
        needed_prefixes = ("features.",)
    missing = [key for key in missing if key.startswith(needed_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"{cfg.weights} is not a torchvision VGG16 state dict: "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return model


def load_vgg16(cfg: EmbedSettings, storage_options: Mapping[str, Any] | None = None) -> nn.Module:
    """The whole torchvision VGG16 with the configured weights (`build_model` cuts it down)."""
    from torchvision.models import VGG16_Weights, vgg16

    if cfg.weights == "imagenet":
        return vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
    if cfg.weights == "none":
        # The tag names this model, so every run must draw the same weights; fork_rng keeps
        # the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return vgg16(weights=None)
    return _vgg16_from_state_dict(cfg, storage_options)


def build_model(
    cfg: EmbedSettings,
    device: DeviceSpec | torch.device = "cpu",
    storage_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """VGG16 as a feature extractor: fc7 (last prediction layer removed) or pooled conv5."""
    _check_layer(cfg.layer)
    vgg = load_vgg16(cfg, storage_options)
    if cfg.layer == "fc7":  # classifier up to the second ReLU: 4096-d
        head: list[nn.Module] = [vgg.avgpool, nn.Flatten(1), *list(vgg.classifier)[:5]]
    else:  # conv5 (after pool5), global-average-pooled: 512-d
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    model = nn.Sequential(vgg.features, *head).eval().requires_grad_(False)
    return model.to(device=resolve_device(device), memory_format=torch.channels_last)


@functools.lru_cache(maxsize=1)
def _cached_model(tag: str, cfg_json: str, device: str, options_json: str) -> nn.Module:
    del tag  # part of the cache key only: it changes with a weights file's content
    cfg = EmbedSettings.model_validate_json(cfg_json)
    return build_model(cfg, device, json.loads(options_json))


def _model_for(
    cfg: EmbedSettings, tag: str, device: str, storage_options: Mapping[str, Any] | None
) -> nn.Module:
    """One model per process and configuration: shards after the first skip building it."""
    model_fields = cfg.model_dump_json(include={"weights", "layer", "seed"})
    return _cached_model(tag, model_fields, device, _options_json(storage_options))


# --- photos -> tensors -> vectors ---------------------------------------------------------------


def load_photo(data: bytes, input_size: int) -> torch.Tensor:
    """Decode a photo (``images.decode_rgb``) to a uint8 [3, S, S] tensor: shorter side resized
    to S, centre-cropped."""
    upright = images.decode_rgb(data, draft_side=input_size)
    resized = TF.resize(upright, input_size, antialias=True)  # shorter side
    return TF.pil_to_tensor(TF.center_crop(resized, [input_size, input_size]))


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> ImageNet-normalized float, channels_last, on ``device``."""
    images = batch.to(device, non_blocking=True).float().div_(255)
    images = TF.normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    return images.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def embed_batch(model: nn.Module, images: torch.Tensor, bf16: bool = True) -> np.ndarray:
    """Vectors (float32 [N, dim]) of model-ready images; bf16 autocast when asked and native
    on the device (``devices.fast_bf16``)."""
    bf16 = bf16 and fast_bf16(images.device)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        features = model(images)
    return features.float().cpu().numpy()


@dataclass
class _Decoded:
    index: int
    pixels: torch.Tensor | None
    status: EmbedStatus
    error: str | None = None
    outage: storage.StoreUnreachable | None = None  # set: the store, not the photo, failed


class _ShardPhotos(Dataset):
    """Reads and decodes a shard's photos (in DataLoader workers): fsspec, sha256-checked."""

    def __init__(
        self, shard: Shard, input_size: int, storage_options: Mapping[str, Any] | None
    ) -> None:
        self.shard = shard
        self.input_size = input_size
        self.storage_options = dict(storage_options or {})

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, index: int) -> _Decoded:
        uri, sha256 = self.shard.uris[index], self.shard.sha256s[index]
        try:
            data = storage.read_reachable(uri, self.storage_options)
        except storage.StoreUnreachable as exc:
            # Carried, not raised: a DataLoader worker would re-raise it as a traceback text.
            return _Decoded(index, None, EmbedStatus.UNREADABLE, str(exc), outage=exc)
        except Exception as exc:
            return _Decoded(index, None, EmbedStatus.UNREADABLE, f"{uri}: {_describe(exc)}")
        if hashlib.sha256(data).hexdigest() != sha256:
            reason = f"{uri} no longer holds the bytes ingest hashed"
            return _Decoded(index, None, EmbedStatus.CHANGED, reason)
        try:
            return _Decoded(index, load_photo(data, self.input_size), EmbedStatus.OK)
        except Exception as exc:
            return _Decoded(index, None, EmbedStatus.UNDECODABLE, f"{uri}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _collate(items: list[_Decoded]) -> tuple[list[int], torch.Tensor | None, list[_Decoded]]:
    decoded = [item for item in items if item.pixels is not None]
    failed = [item for item in items if item.pixels is None]
    pixels = torch.stack([item.pixels for item in decoded]) if decoded else None
    return [item.index for item in decoded], pixels, failed


def _adopt_environment(environ: dict[str, str], worker_id: int) -> None:
    """A forkserver child starts with the server's environment, which may be older than ours
    (credentials exported since); take the loader's, as a spawned process would."""
    del worker_id
    os.environ.clear()
    os.environ.update(environ)


def _worker_context() -> multiprocessing.context.BaseContext:
    # Not "fork": a forked child inherits s3fs's event loop and, finalizing it, unregisters the
    # parent's sockets from their shared epoll, which hangs the parent's next S3 call.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # workers then start without importing torch
    return context


def _loader(dataset: _ShardPhotos, cfg: EmbedSettings, device: torch.device) -> DataLoader:
    workers = min(cfg.num_workers, len(dataset))
    if workers and multiprocessing.current_process().daemon:
        # Daemonic processes (e.g. Dask workers) may not start children; decode in-process.
        log.info("decoding in-process: %s is daemonic", multiprocessing.current_process().name)
        workers = 0
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        multiprocessing_context=_worker_context() if workers else None,
        worker_init_fn=functools.partial(_adopt_environment, dict(os.environ)) if workers else None,
    )


def _embed_photos(
    model: nn.Module,
    shard: Shard,
    cfg: EmbedSettings,
    device: torch.device,
    storage_options: Mapping[str, Any] | None,
    progress: Progress | None,
) -> tuple[list[np.ndarray | None], list[_Decoded]]:
    vectors: list[np.ndarray | None] = [None] * len(shard)
    failures: list[_Decoded] = []
    dataset = _ShardPhotos(shard, cfg.input_size, storage_options)
    for indices, pixels, failed in _loader(dataset, cfg, device):
        _raise_outage(failed)
        if pixels is not None:
            batch_vectors = embed_batch(model, to_model_input(pixels, device), cfg.bf16)
            for index, vector in zip(indices, batch_vectors, strict=True):
                vectors[index] = vector.astype(np.float16)
        failures.extend(failed)
        if progress is not None:
            progress(len(indices) + len(failed))
    return vectors, failures


def _raise_outage(failed: list[_Decoded]) -> None:
    """Stop the shard at the first photo the store did not serve: recording it as unreadable
    would blame the photo, and every other read would wait out the same outage."""
    for item in failed:
        if item.outage is not None:
            raise item.outage


def _part_table(
    shard: Shard,
    vectors: list[np.ndarray | None],
    failures: list[_Decoded],
    tag: str,
    dim: int,
) -> pa.Table:
    status = [EmbedStatus.OK.value] * len(shard)
    errors: list[str | None] = [None] * len(shard)
    for failure in failures:
        status[failure.index], errors[failure.index] = failure.status.value, failure.error
    flat = np.zeros((len(shard), dim), dtype=np.float16)
    for index, vector in enumerate(vectors):
        if vector is not None:
            flat[index] = vector
    is_null = pa.array([vector is None for vector in vectors], pa.bool_())
    vector_array = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim, mask=is_null)
    now = datetime.now(UTC)
    return pa.Table.from_arrays(
        [
            pa.array(shard.sha256s, pa.string()),
            vector_array,
            pa.array(status, pa.string()),
            pa.array(errors, pa.string()),
            pa.array([tag] * len(shard), pa.string()),
            pa.array([now] * len(shard), manifest.TIMESTAMP),
        ],
        schema=embedding_schema(dim),
    )


def embedding_collection(store_uri: str, tag: str) -> str:
    """``<store>/embeddings/<tag>``: every vector of one model."""
    return storage.join(storage.normalize_uri(store_uri), EMBEDDINGS_FOLDER, tag)


def embeddings(
    store_uri: str, tag: str, storage_options: Mapping[str, Any] | None = None
) -> PartsCollection:
    """The parts collection of one tag's vectors (columns as ``embedding_schema``)."""
    return PartsCollection(embedding_collection(store_uri, tag), "sha256", None, storage_options)


def embed_shard(
    shard: Shard,
    store_uri: str,
    cfg: EmbedSettings,
    storage_options: Mapping[str, Any] | None = None,
    device: DeviceSpec | torch.device = "cpu",
    progress: Progress | None = None,
) -> str:
    """Embed one shard and write it as one immutable Parquet part (unpublished); its URI.

    A photo that cannot be read or decoded gets a row with its status and reason, no vector.
    An unreachable store raises ``storage.StoreUnreachable`` and writes nothing.
    """
    tag = model_tag(cfg, storage_options)
    torch_device = resolve_device(device)
    model = _model_for(cfg, tag, str(torch_device), storage_options)
    vectors, failures = _embed_photos(model, shard, cfg, torch_device, storage_options, progress)
    table = _part_table(shard, vectors, failures, tag, LAYER_DIMS[cfg.layer])
    return embeddings(store_uri, tag, storage_options).append(table)


# --- the index: which parts make up a tag's embeddings ---------------------------------------


def settled_sha256s(
    store_uri: str, tag: str, storage_options: Mapping[str, Any] | None = None
) -> set[str]:
    """sha256s that need no more work under ``tag``: embedded, or found undecodable."""
    settled = embeddings(store_uri, tag, storage_options).read(
        ["sha256"], where={"status": [status.value for status in SETTLED]}
    )
    return set(settled["sha256"].to_pylist())


def publish(
    store_uri: str,
    tag: str,
    part_uris: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Publish a new index version: the current parts plus ``part_uris``; returns its URI.

    Concurrent publishers of one tag publish on top of each other (see
    ``PartsCollection.publish``); a part whose index is lost anyway stays on storage and its
    photos are embedded again by the next run.
    """
    return embeddings(store_uri, tag, storage_options).publish(part_uris, {"tag": tag})


def publish_new(
    store_uri: str,
    tag: str,
    part_uris: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """The index URI after adding ``part_uris``: a new version when there are new parts (or no
    index yet: an empty first index still gives readers something to open), else the latest."""
    return embeddings(store_uri, tag, storage_options).publish_new(part_uris, {"tag": tag})


def part_failures(
    part_uris: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[int, dict[str, str]]:
    """(photos embedded, {sha256: reason} of those that failed) over some parts."""
    embedded, failed = 0, {}
    for part_uri in part_uris:
        table = storage.read_parquet(part_uri, ["sha256", "status", "error"], storage_options)
        for row in table.to_pylist():
            if row["status"] == EmbedStatus.OK:
                embedded += 1
            else:
                failed[row["sha256"]] = f"{row['status']}: {row['error']}"
    return embedded, failed


# --- the stage ----------------------------------------------------------------------------------


def plan(
    manifest_uri: str,
    store_uri: str,
    cfg: EmbedSettings,
    storage_options: Mapping[str, Any] | None = None,
    shard_size: int = 256,
) -> EmbedPlan:
    """What embedding a manifest needs: its ok photos whose sha256 is not settled, in shards.

    Shards are cut from the sha256-sorted list, so an unchanged manifest yields the same shards
    (which makes a task cache keyed by them useful after a crash before publishing).
    """
    tag = model_tag(cfg, storage_options)
    frame = manifest.read(manifest.resolve(manifest_uri, storage_options), storage_options)
    photos = frame[(frame["status"] == manifest.Status.OK) & frame["sha256"].notna()]
    distinct = photos.drop_duplicates("sha256").sort_values("sha256")
    settled = settled_sha256s(store_uri, tag, storage_options)
    todo = distinct[~distinct["sha256"].isin(settled)]
    uris, sha256s = todo["uri"].tolist(), todo["sha256"].tolist()
    shards = [
        Shard(uris[start : start + shard_size], sha256s[start : start + shard_size])
        for start in range(0, len(todo), shard_size)
    ]
    return EmbedPlan(tag=tag, todo=shards, reused=len(distinct) - len(todo), total=len(distinct))


def embed_manifest(
    manifest_uri: str,
    store_uri: str,
    cfg: EmbedSettings,
    storage_options: Mapping[str, Any] | None = None,
    device: DeviceSpec | torch.device = "cpu",
    progress: Progress | None = None,
) -> EmbedResult:
    """Plan, embed every shard, publish: the whole stage in one process."""
    todo = plan(manifest_uri, store_uri, cfg, storage_options, cfg.shard_size)
    parts = [
        embed_shard(shard, store_uri, cfg, storage_options, device, progress) for shard in todo.todo
    ]
    uri = publish_new(store_uri, todo.tag, parts, storage_options)
    computed, failed = part_failures(parts, storage_options)
    return EmbedResult(todo.tag, uri, computed=computed, reused=todo.reused, failed=failed)


def _vectors(table: pa.Table) -> np.ndarray:
    column = table["vector"].combine_chunks()
    dim = table.schema.field("vector").type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def load_embeddings(
    store_uri: str,
    tag: str,
    sha256s: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """(sha256s, vectors [n, dim]) of a tag's embedded photos.

    With ``sha256s``: those of them that have a vector, in the order asked (first occurrence);
    without: all, sorted by sha256. A photo in two parts (racing runs) gets the later vector.
    Two passes over the same parts, one part at a time: the small sha256 and status columns to
    size and order the result, then the vectors straight into it. Memory: the result plus one
    part's vectors.
    """
    collection = embeddings(store_uri, tag, storage_options)
    index = collection.index()
    if index is None:
        raise FileNotFoundError(
            f"no embeddings published for {tag} under {store_uri}; run the embed stage first"
        )
    wanted = None if sha256s is None else list(dict.fromkeys(sha256s))

    def scan(columns: list[str]) -> Iterator[pa.Table]:
        ok = {"status": [EmbedStatus.OK.value]}
        return collection.scan(columns, keys=wanted, where=ok, dedupe=True, parts=index.parts)

    found = {sha for table in scan(["sha256"]) for sha in table["sha256"].to_pylist()}
    order = sorted(found) if wanted is None else [sha for sha in wanted if sha in found]
    position = pd.Index(order)
    dim = _vector_dim(collection, index) if index.parts else 0
    vectors = np.empty((len(order), dim), dtype=dtype)
    for table in scan(["sha256", "vector"]):
        vectors[position.get_indexer(table["sha256"].to_pylist())] = _vectors(table)
    return np.asarray(order, dtype=object), vectors


def _vector_dim(collection: PartsCollection, index: Index) -> int:
    return collection.part_schema(index.parts[0]).field("vector").type.list_size
