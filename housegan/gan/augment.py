"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees.

The same policy is applied to real and fake images, so D cannot tell them apart by the
augmentation, and gradients flow through it to G. Each op is applied to an image with
probability ``p``; ``p`` is fixed at 1 (plain DiffAugment) or adapted to D's overfitting as in
StyleGAN2-ADA (Karras et al. 2020, ``AdaptiveStrength``): raised while the share of real images
D scores positive, ``E[sign(D(real))]``, is above a target, lowered while it is below. All
randomness comes from one ``torch.Generator``; the trainer checkpoints it and ``p``.
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
    """``DiffAugment("translation,color,cutout", generator)(x)``; an empty policy is identity.

    With ``adaptive`` set (by ``AdaptiveStrength``), each op is applied to each image with
    probability ``p``, a 0-d tensor on the images' device, so adapting it never syncs with the
    host; otherwise every op is applied to every image.
    """

    def __init__(self, policy: str, generator: torch.Generator) -> None:
        names = [name.strip() for name in policy.split(",") if name.strip()]
        unknown = [name for name in names if name not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown}; valid: {sorted(POLICIES)}")
        self.names = names
        self.generator = generator
        self.adaptive = False
        self.p = torch.ones((), device=generator.device)

    def __call__(self, x: Tensor) -> Tensor:
        for name in self.names:
            for op in POLICIES[name]:
                x = self._maybe(op, x)
        return x

    def _maybe(self, op: Op, x: Tensor) -> Tensor:
        if not self.adaptive:
            return op(x, self.generator)
        applied = _uniform(x, self.generator) < self.p.to(x.dtype)
        return torch.where(applied, op(x, self.generator), x)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class AdaptiveStrength:
    """StyleGAN2-ADA's controller of ``DiffAugment.p``.

    ``observe`` accumulates ``sign(D(real))`` on the device; every ``interval`` steps ``adjust``
    moves ``p`` by ``sign(r_t - target) * images / (speed_kimg * 1000)``: from 0 to 1 in
    ``speed_kimg`` thousand images at most. ``r_t`` near 1 means D is sure of every real image,
    i.e. it is memorising the training set.
    """

    def __init__(self, augment: DiffAugment, target: float, speed_kimg: float) -> None:
        self.augment, self.target, self.speed_kimg = augment, target, speed_kimg
        augment.adaptive, augment.p = True, torch.zeros_like(augment.p)  # ADA starts at p = 0
        device = augment.p.device
        self.sign_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.last_rt = torch.zeros((), device=device)

    def observe(self, d_real: Tensor) -> None:
        self.sign_sum += d_real.detach().float().sign().sum()
        self.count += d_real.numel()

    def adjust(self, images: int, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """``images``: real images shown since the last adjustment (all ranks); ``reduce`` sums
        the two accumulators over ranks under DDP."""
        totals = torch.stack([self.sign_sum, self.count])
        if reduce is not None:
            totals = reduce(totals)
        self.last_rt = totals[0] / totals[1].clamp(min=1)
        step = torch.sign(self.last_rt - self.target) * images / (self.speed_kimg * 1000)
        self.augment.p = (self.augment.p + step).clamp(0, 1)
        self.sign_sum.zero_()
        self.count.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        """The accumulators of the current interval (a resume mid-interval stays exact)."""
        return {"totals": torch.stack([self.sign_sum, self.count, self.last_rt]).cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        totals = state["totals"].to(self.sign_sum)
        self.sign_sum, self.count, self.last_rt = (
            totals[0].clone(),
            totals[1].clone(),
            totals[2].clone(),
        )
