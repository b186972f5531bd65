"""A class-conditional GAN for two categorical labels: city and image type.

Generator (BigGAN / SNGAN style): ``z`` -> linear -> 4x4 features -> one residual up-block per
doubling to R×R. Every block's batch norm is conditional: its per-channel gain and bias are
linear functions of the concatenated label embeddings (one shared table per label) and, with a
hierarchical ``z``, of that block's own chunk of ``z``.

Discriminator: residual down-blocks with spectral norm on every weight, a sum-pooled feature
vector ``h``, a linear score and one projection term per label, ``<embed(label), h>``
(cGAN projection, Miyato & Koyama 2018), plus one auxiliary classifier per label on ``h``
(AC-GAN, Odena et al. 2017), which the loss may weigh in (``gan.class_weight``), and optionally
their twins trained on generated images (TAC-GAN, Gong et al. 2019; ``gan.class_twin``).

Both networks scale their label terms by a ``label_scale`` buffer (1 but while training ramps
the labels in: ``gan.cond_ramp``).

Width and depth scale with R ∈ {32, 64, 128} (log2(R/4) blocks) and ``width`` (base channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from housegan.config import IMAGE_SIZES

SUPPORTED_SIZES = IMAGE_SIZES
MAX_WIDTH_MULT = 16  # channels never exceed 16 × width (BigGAN's widest stage)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild both networks; JSON-able with ``dataclasses.asdict``."""

    image_size: int
    n_cities: int
    n_types: int
    z_dim: int = 128
    width: int = 32
    embed_dim: int = 128
    hierarchical_z: bool = True

    def __post_init__(self) -> None:
        if self.image_size not in SUPPORTED_SIZES:
            raise ValueError(f"image_size {self.image_size} not in {SUPPORTED_SIZES}")
        if min(self.n_cities, self.n_types, self.width, self.embed_dim) < 1:
            raise ValueError(f"n_cities, n_types, width and embed_dim must be >= 1: {self}")
        if self.hierarchical_z and self.z_dim < self.n_blocks + 1:
            raise ValueError(f"z_dim {self.z_dim} too small to split over {self.n_blocks + 1}")

    @property
    def n_blocks(self) -> int:
        """Resolution doublings from 4×4 to R×R."""
        return int(math.log2(self.image_size // 4))

    def channels(self) -> list[int]:
        """Generator channels at 4×4, 8×8, ..., R×R; the discriminator mirrors them."""
        mults = [min(2 ** (self.n_blocks - i), MAX_WIDTH_MULT) for i in range(self.n_blocks + 1)]
        return [self.width * m for m in mults]

    def z_chunks(self) -> list[int]:
        """Sizes of ``z``'s parts: the stem's first, then one per block (hierarchical only)."""
        if not self.hierarchical_z:
            return [self.z_dim]
        parts = self.n_blocks + 1
        base = self.z_dim // parts
        return [base + self.z_dim - base * parts] + [base] * self.n_blocks


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain (1 + γ(c)) and bias β(c) are predicted from a condition vector."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = 1 + self.gain(cond)[:, :, None, None]
        return self.norm(x) * gain + self.bias(cond)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """CBN-ReLU-up-conv-CBN-ReLU-conv, plus an upsampled 1×1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_ch, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(out_ch, cond_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """``forward(z [N, z_dim], city [N], image_type [N]) -> images [N, 3, R, R] in [-1, 1]``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        ch = spec.channels()
        chunks = spec.z_chunks()
        block_z = chunks[1] if spec.hierarchical_z else spec.z_dim
        cond_dim = block_z + 2 * spec.embed_dim
        self.city_embed = nn.Embedding(spec.n_cities, spec.embed_dim)
        self.type_embed = nn.Embedding(spec.n_types, spec.embed_dim)
        self.stem = nn.Linear(chunks[0], ch[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GeneratorBlock(ch[i], ch[i + 1], cond_dim) for i in range(spec.n_blocks)
        )
        self.out = nn.Sequential(
            nn.BatchNorm2d(ch[-1]), nn.ReLU(), nn.Conv2d(ch[-1], 3, 3, padding=1), nn.Tanh()
        )
        _add_label_scale(self)
        init_weights(self)

    def forward(self, z: Tensor, city: Tensor, image_type: Tensor) -> Tensor:
        labels = torch.cat([self.city_embed(city), self.type_embed(image_type)], dim=1)
        labels = labels * self.label_scale.to(labels.dtype)
        if self.spec.hierarchical_z:
            stem_z, *block_zs = torch.split(z, self.spec.z_chunks(), dim=1)
        else:
            stem_z, block_zs = z, [z] * self.spec.n_blocks
        h = self.stem(stem_z).view(z.shape[0], -1, 4, 4)
        for block, block_z in zip(self.blocks, block_zs, strict=True):
            h = block(h, torch.cat([block_z, labels], dim=1))
        return self.out(h)


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-(avgpool), plus a 1×1 shortcut; spectral norm on every conv."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.first, self.downsample = first, downsample
        self.conv1 = spectral_norm(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        learn_shortcut = in_ch != out_ch or downsample
        self.shortcut = spectral_norm(nn.Conv2d(in_ch, out_ch, 1)) if learn_shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)  # no ReLU on raw pixels
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self._shortcut(x)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return x
        if self.first:  # pool first: cheaper on the full-resolution input
            return self.shortcut(F.avg_pool2d(x, 2))
        x = self.shortcut(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class Discriminator(nn.Module):
    """``forward(x [N, 3, R, R], city [N], image_type [N]) -> logits [N]``."""

    def __init__(
        self, spec: ModelSpec, twin_classifiers: bool = False, minibatch_std: int = 0
    ) -> None:
        super().__init__()
        self.spec = spec
        ch = spec.channels()[::-1]  # at R×R, R/2, ..., 4×4: mirrors the generator
        blocks = [DiscriminatorBlock(3, ch[1], downsample=True, first=True)]
        blocks += [DiscriminatorBlock(ch[i], ch[i + 1], True) for i in range(1, spec.n_blocks)]
        # ProGAN's minibatch standard deviation before the last block: D sees how alike the
        # images of a group are, so a G that draws one image per class is caught.
        self.minibatch_std = minibatch_std
        extra = 1 if minibatch_std > 1 else 0
        blocks.append(DiscriminatorBlock(ch[-1] + extra, ch[-1], downsample=False))
        self.blocks = nn.Sequential(*blocks)
        features = ch[-1]
        self.score = spectral_norm(nn.Linear(features, 1))
        self.city_embed = spectral_norm(nn.Embedding(spec.n_cities, features))
        self.type_embed = spectral_norm(nn.Embedding(spec.n_types, features))
        # Auxiliary classifiers (AC-GAN): trained on real images only, they teach G the labels
        # within a few kimg, where the projection term alone takes far longer.
        self.city_classifier = nn.Linear(features, spec.n_cities)
        self.type_classifier = nn.Linear(features, spec.n_types)
        # Twins trained on generated images only (TAC-GAN): G is pushed to be read as its label
        # by the real-image classifiers but not to be easy for the twins, which removes AC-GAN's
        # pull towards the most classifiable image of each class (its loss of diversity).
        self.twin_classifiers = twin_classifiers
        if twin_classifiers:
            self.city_twin = nn.Linear(features, spec.n_cities)
            self.type_twin = nn.Linear(features, spec.n_types)
        _add_label_scale(self)
        init_weights(self)

    def forward(
        self, x: Tensor, city: Tensor, image_type: Tensor, classes: bool = False
    ) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        """Logits; with ``classes``, also the classifiers' (city, type) logits, followed by the
        twins' (city, type) logits when the twins exist."""
        h = self.blocks[:-1](x)
        if self.minibatch_std > 1:
            h = torch.cat([h, _group_std(h, self.minibatch_std)], dim=1)
        h = F.relu(self.blocks[-1](h)).sum(dim=(2, 3))
        projection = (self.city_embed(city) * h).sum(1) + (self.type_embed(image_type) * h).sum(1)
        logits = self.score(h).squeeze(1) + self.label_scale.to(h.dtype) * projection
        if not classes:
            return logits
        heads = (self.city_classifier(h), self.type_classifier(h))
        if self.twin_classifiers:
            heads += (self.city_twin(h), self.type_twin(h))
        return logits, heads


def _add_label_scale(module: nn.Module) -> None:
    """The labels' weight in the network, 1 but while training ramps it up (transitional
    conditioning, ``gan.cond_ramp``): a tensor, so a compiled network does not recompile as it
    changes, and not persistent, so saved weights and old checkpoints are unaffected."""
    module.register_buffer("label_scale", torch.ones(()), persistent=False)


def _group_std(h: Tensor, group: int) -> Tensor:
    """One channel: per group of ``group`` consecutive images (consecutive, so a batch of reals
    then fakes never mixes them when its halves divide), each feature's standard deviation over
    the group, averaged over features."""
    n, _, height, width = h.shape
    group = math.gcd(group, n)
    grouped = h.float().reshape(n // group, group, *h.shape[1:])
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    return std.repeat_interleave(group).to(h.dtype).view(n, 1, 1, 1).expand(n, 1, height, width)


def init_weights(module: nn.Module) -> None:
    """Orthogonal weights and zero biases (BigGAN's choice), through spectral-norm wrappers."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear | nn.Embedding):
            weight = _raw_weight(layer)
            nn.init.orthogonal_(weight)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)


def _raw_weight(layer: nn.Module) -> Tensor:
    if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
        return layer.parametrizations.weight.original
    return layer.weight
