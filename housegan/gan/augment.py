"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees.

The same policy is applied to real and fake images, so D cannot tell them apart by the
augmentation, and gradients flow through it to G. All randomness comes from one
``torch.Generator`` whose state is part of the training checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TRANSLATION_RATIO = 0.125  # shift by up to 1/8 of the side
CUTOUT_RATIO = 0.5  # erase a square of half the side


def _uniform(x: Tensor, gen: torch.Generator) -> Tensor:
    """One U[0, 1) number per image, shaped to broadcast over [N, C, H, W]."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device, dtype=x.dtype)


def brightness(x: Tensor, gen: torch.Generator) -> Tensor:
    return x + (_uniform(x, gen) - 0.5)


def saturation(x: Tensor, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, gen) * 2) + mean


def contrast(x: Tensor, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, gen) + 0.5) + mean


def translation(x: Tensor, gen: torch.Generator, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by a random whole number of pixels; uncovered pixels become zero."""
    n, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (n, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(-shift_w, shift_w + 1, (n, 1, 1), generator=gen, device=x.device)
    batch, ys, xs = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a 1-pixel zero border: clamping lands every out-of-range pixel on it.
    ys = torch.clamp(ys + dy + 1, 0, h + 1)
    xs = torch.clamp(xs + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return padded[batch, ys, xs].permute(0, 3, 1, 2)


def cutout(x: Tensor, gen: torch.Generator, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero one random square per image (it may hang over the border)."""
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_h % 2), (n, 1, 1), generator=gen, device=x.device)
    left = torch.randint(0, w + (1 - size_w % 2), (n, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - (top - size_h // 2)
    xs = torch.arange(w, device=x.device).view(1, 1, w) - (left - size_w // 2)
    inside = (ys >= 0) & (ys < size_h) & (xs >= 0) & (xs < size_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def xflip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror half of the images left-right (data augmentation of reals, not DiffAugment)."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


Op = Callable[[Tensor, torch.Generator], Tensor]
POLICIES: dict[str, tuple[Op, ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


class DiffAugment:
    """``DiffAugment("translation,color,cutout", generator)(x)``; an empty policy is identity."""

    def __init__(self, policy: str, generator: torch.Generator) -> None:
        names = [name.strip() for name in policy.split(",") if name.strip()]
        unknown = [name for name in names if name not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown}; valid: {sorted(POLICIES)}")
        self.names = names
        self.generator = generator

    def __call__(self, x: Tensor) -> Tensor:
        for name in self.names:
            for op in POLICIES[name]:
                x = op(x, self.generator)
        return x

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
