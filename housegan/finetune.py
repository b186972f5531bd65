"""Fine-tune VGG16's last fully connected layers on the labelled photos (optional, off by default).

The original project found unsupervised clusters not good enough and fine-tuned the network on
a couple of thousand hand labels. Here the convolutional layers stay frozen, so their pool5
activations are computed once per photo; fc7 (and, with ``finetune_layers=2``, fc6) and a new
image-type head are then trained on them for a few epochs. The result is saved as a torchvision
VGG16 state dict (features, fc6, fc7; without the head) under ``<store>/models/``, named by the
base model, the labels and the settings, and can be given as ``embed.weights``: the embed stage
then computes fine-tuned vectors under their own model tag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from housegan import embed, storage
from housegan.config import CurateSettings, EmbedSettings
from housegan.devices import fast_bf16

MODELS_DIR = "models"


@dataclass(frozen=True)
class FinetuneResult:
    weights_uri: str
    classes: list[str]
    train_photos: int
    holdout_accuracy: float | None  # on a seeded held-out share of the labels
    losses: list[float]  # mean training loss per epoch
    reused: bool  # the same base, labels and settings were fine-tuned before


def weights_uri(
    store_uri: str,
    base_tag: str,
    labelled: pd.DataFrame,
    cfg: CurateSettings,
) -> str:
    """Where the fine-tuned weights for this base model, these labels and settings live."""
    key = {
        "base": base_tag,
        "labels": sorted(zip(labelled["sha256"], labelled["label"], strict=True)),
        "settings": [cfg.finetune_layers, cfg.finetune_epochs, cfg.finetune_lr, cfg.finetune_seed],
    }
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return storage.join(store_uri, MODELS_DIR, f"vgg16-finetuned-{digest}.safetensors")


def finetune(
    labelled: pd.DataFrame,
    store_uri: str,
    embed_cfg: EmbedSettings,
    cfg: CurateSettings,
    storage_options: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune on ``labelled`` (columns ``uri``, ``sha256``, ``label``; one row per photo)."""
    labelled = labelled.drop_duplicates("sha256").sort_values("sha256").reset_index(drop=True)
    classes = sorted(labelled["label"].unique())
    if len(classes) < 2:
        raise ValueError(f"fine-tuning needs labels of at least 2 types, got {classes}")
    target = weights_uri(store_uri, embed.model_tag(embed_cfg, storage_options), labelled, cfg)
    if storage.exists(target, storage_options):
        return FinetuneResult(target, classes, len(labelled), None, [], reused=True)
    torch.manual_seed(cfg.finetune_seed)
    vgg = embed.load_vgg16(embed_cfg, storage_options).eval()
    pool5, decoded = _pool5_features(vgg, labelled["uri"].tolist(), embed_cfg, storage_options)
    labelled = labelled.iloc[decoded].reset_index(drop=True)  # an unreadable photo is left out
    y = torch.tensor(labelled["label"].map(classes.index).to_numpy(dtype=np.int64))
    train, held_out = _split(len(labelled), cfg.finetune_holdout, cfg.finetune_seed)
    head = nn.Linear(vgg.classifier[3].out_features, len(classes))
    layers = nn.Sequential(*list(vgg.classifier)[:6], head)
    trainable = _unfreeze_last(layers, cfg.finetune_layers + 1)  # + the new head
    losses = _train(layers, trainable, pool5[train], y[train], cfg)
    accuracy = None
    if len(held_out):
        with torch.inference_mode():
            predicted = layers.eval()(pool5[held_out]).argmax(dim=1)
        accuracy = float((predicted == y[held_out]).float().mean())
    _save(vgg, target, storage_options, classes)
    return FinetuneResult(target, classes, len(train), accuracy, losses, reused=False)


def _pool5_features(
    vgg: nn.Module,
    uris: list[str],
    cfg: EmbedSettings,
    storage_options: Mapping[str, Any] | None,
) -> tuple[torch.Tensor, list[int]]:
    """Frozen conv features (flattened pool5), computed once, of the photos that decode; and
    which of ``uris`` those are. Photos are read and decoded a batch at a time, in threads."""

    def load(uri: str) -> torch.Tensor | None:
        try:
            return embed.load_photo(storage.read_reachable(uri, storage_options), cfg.input_size)
        except storage.StoreUnreachable:
            raise  # an outage would silently train on whatever photos it let through
        except Exception:  # one unreadable photo does not stop fine-tuning
            return None

    trunk = nn.Sequential(vgg.features, vgg.avgpool, nn.Flatten(1))
    bf16 = cfg.bf16 and fast_bf16("cpu")
    out, decoded = [], []
    with ThreadPoolExecutor(max(1, cfg.num_workers)) as pool, torch.inference_mode():
        for start in range(0, len(uris), cfg.batch_size):
            pixels = list(pool.map(load, uris[start : start + cfg.batch_size]))
            found = [start + i for i, photo in enumerate(pixels) if photo is not None]
            if not found:
                continue
            batch = torch.stack([photo for photo in pixels if photo is not None])
            images = embed.to_model_input(batch, torch.device("cpu"))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out.append(trunk(images).float())
            decoded.extend(found)
    if not out:
        raise ValueError(f"none of the {len(uris)} labelled photos could be read and decoded")
    return torch.cat(out), decoded


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * holdout) if n >= 10 else 0
    return np.sort(order[cut:]), np.sort(order[:cut])


def _unfreeze_last(layers: nn.Sequential, count: int) -> list[nn.Parameter]:
    """Freeze everything, then let the last ``count`` linear layers train."""
    layers.requires_grad_(False)
    linear = [m for m in layers if isinstance(m, nn.Linear)][-count:]
    for module in linear:
        module.requires_grad_(True)
    return [p for m in linear for p in m.parameters()]


def _train(
    layers: nn.Sequential,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: CurateSettings,
) -> list[float]:
    counts = torch.bincount(y, minlength=int(y.max()) + 1).float()
    weight = counts.sum() / (len(counts) * counts.clamp(min=1))  # balanced, like the classifier
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(params, lr=cfg.finetune_lr)
    generator = torch.Generator().manual_seed(cfg.finetune_seed)
    losses = []
    layers.train()
    for _ in range(cfg.finetune_epochs):
        total = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(cfg.finetune_batch_size):
            optimizer.zero_grad()
            loss = loss_fn(layers(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
    layers.eval()
    return losses


def _save(
    vgg: nn.Module,
    uri: str,
    storage_options: Mapping[str, Any] | None,
    classes: list[str],
) -> None:
    from safetensors.torch import save

    # The 1000-way ImageNet layer is left out: the extractor stops at fc7.
    state = {
        k: v.detach().contiguous()
        for k, v in vgg.state_dict().items()
        if not k.startswith("classifier.6.")
    }
    data = save(state, metadata={"housegan.finetuned_types": ",".join(classes)})
    storage.write_bytes_atomic(uri, data, storage_options)
