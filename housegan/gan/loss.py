"""Hinge loss, by phase: ``d_main`` trains D, ``g_main`` trains G.

Each phase reports its statistics where they are computed, into a ``Stats`` collector that
keeps running sums on the device (no host sync per step); the training loop decides when to
read them and where they go.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Stats:
    """Running means of named scalars, accumulated on the device."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor) -> None:
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._counts[name] = self._counts.get(name, 0) + 1

    def names(self) -> list[str]:
        return sorted(self._sums)

    def means(self) -> Tensor:
        """The means in ``names()`` order, as one tensor (one transfer to read them all)."""
        return torch.stack([self._sums[n] / self._counts[n] for n in self.names()])

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()


def d_main(d_real: Tensor, d_fake: Tensor, stats: Stats | None = None) -> Tensor:
    """D's hinge loss: push real logits above +1 and fake logits below -1."""
    loss_real = F.relu(1 - d_real).mean()
    loss_fake = F.relu(1 + d_fake).mean()
    loss = loss_real + loss_fake
    if stats is not None:
        stats.add("loss/d", loss)
        stats.add("loss/d_real", loss_real)
        stats.add("loss/d_fake", loss_fake)
        stats.add("d/real", d_real.mean())
        stats.add("d/fake", d_fake.mean())
    return loss


def g_main(d_fake: Tensor, stats: Stats | None = None) -> Tensor:
    """G's hinge loss: raise D's logits on fakes."""
    loss = -d_fake.mean()
    if stats is not None:
        stats.add("loss/g", loss)
    return loss


def classes(
    city_logits: Tensor,
    type_logits: Tensor,
    city: Tensor,
    image_type: Tensor,
    name: str,
    stats: Stats | None = None,
) -> Tensor:
    """Cross-entropy of D's auxiliary classifiers against the labels (``name``: "real" when it
    trains D's classifiers, "fake" when it teaches G the labels); reports their accuracy."""
    loss = F.cross_entropy(city_logits, city) + F.cross_entropy(type_logits, image_type)
    if stats is not None:
        stats.add(f"loss/class_{name}", loss)
        hits = (city_logits.argmax(1) == city) & (type_logits.argmax(1) == image_type)
        stats.add(f"class_acc/{name}", hits.float().mean())
    return loss


def mode_seeking(
    images: Tensor, other_images: Tensor, z: Tensor, other_z: Tensor, stats: Stats | None = None
) -> Tensor:
    """MSGAN's regulariser (Mao et al. 2019) for pairs of images of the same labels: the
    inverse of how far apart two latents' images are per unit of latent distance, so that G
    cannot map different latents to one image."""
    image_gap = (images - other_images).abs().mean(dim=(1, 2, 3))
    latent_gap = (z - other_z).abs().mean(dim=1)
    ratio = (image_gap / latent_gap).mean()
    loss = 1 / (ratio + 1e-5)
    if stats is not None:
        stats.add("loss/mode_seeking", loss)
    return loss
