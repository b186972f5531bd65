"""Generator and discriminator: shapes, scaling, conditioning paths, spectral norm."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

from housegan.gan.models import Discriminator, Generator, ModelSpec


def _labels(n: int, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n) % spec.n_cities, torch.arange(n) % spec.n_types


@pytest.mark.parametrize("size", [32, 64, 128])
def test_networks_produce_images_in_range_and_one_logit_each(size: int) -> None:
    spec = ModelSpec(image_size=size, n_cities=3, n_types=2, z_dim=24, width=4, embed_dim=8)
    g, d = Generator(spec), Discriminator(spec)
    city, image_type = _labels(4, spec)
    images = g(torch.randn(4, spec.z_dim), city, image_type)
    assert images.shape == (4, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    logits = d(images, city, image_type)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    assert len(g.blocks) == spec.n_blocks == {32: 3, 64: 4, 128: 5}[size]


def test_width_and_resolution_scale_channels_up_to_sixteen_times_width() -> None:
    assert ModelSpec(64, 1, 1, width=8).channels() == [128, 64, 32, 16, 8]
    assert ModelSpec(128, 1, 1, width=8).channels() == [128, 128, 64, 32, 16, 8]
    small, wide = ModelSpec(64, 1, 1, width=4), ModelSpec(64, 1, 1, width=8)
    assert _count(Generator(wide)) > 2 * _count(Generator(small))
    assert _count(Discriminator(wide)) > 3 * _count(Discriminator(small))


def test_each_label_changes_the_generated_image_for_the_same_latent() -> None:
    spec = ModelSpec(32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    g = Generator(spec).eval()
    z = torch.randn(1, spec.z_dim).repeat(3, 1)
    images = g(z, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
    assert not torch.allclose(images[0], images[1])  # city alone
    assert not torch.allclose(images[0], images[2])  # type alone


@pytest.mark.parametrize("hierarchical", [True, False])
def test_latent_reaches_every_block_through_conditional_batch_norm(hierarchical: bool) -> None:
    spec = ModelSpec(32, 2, 2, z_dim=16, width=4, embed_dim=8, hierarchical_z=hierarchical)
    g = Generator(spec).eval()
    z = torch.randn(2, spec.z_dim, requires_grad=True)
    g(z, torch.tensor([0, 1]), torch.tensor([1, 0])).sum().backward()
    for block in g.blocks:
        assert block.bn1.gain.weight.grad is not None
    chunks = spec.z_chunks()
    assert sum(chunks) == spec.z_dim and len(chunks) == (spec.n_blocks + 1 if hierarchical else 1)
    # the last block's chunk (hierarchical) or all of z still gets gradient
    assert z.grad[:, -chunks[-1] :].abs().sum() > 0


def test_discriminator_projects_both_labels() -> None:
    spec = ModelSpec(32, n_cities=2, n_types=3, z_dim=16, width=4, embed_dim=8)
    d = Discriminator(spec)
    x = torch.randn(1, 3, 32, 32).repeat(3, 1, 1, 1)
    logits = d(x, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 2]))
    assert logits[0] != logits[1] and logits[0] != logits[2]


def test_every_discriminator_weight_is_spectrally_normalised() -> None:
    """All but the auxiliary classifiers: they only score labels, and spectral norm bounded their
    logits so that they learned the labels too slowly to teach G in a CPU budget."""
    d = Discriminator(ModelSpec(32, 2, 2, width=4))
    heads = {d.city_classifier, d.type_classifier}
    layers = [
        m
        for m in d.modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding) and m not in heads
    ]
    assert layers and all("weight" in getattr(m, "parametrizations", {}) for m in layers)
    assert not any(hasattr(m, "parametrizations") for m in heads)
    d.train()
    x = torch.randn(2, 3, 32, 32)
    for _ in range(20):  # power iterations converge
        d(x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    conv = d.blocks[1].conv1
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma == pytest.approx(1.0, abs=0.05)


def test_spec_round_trips_through_json_and_rejects_unsupported_sizes() -> None:
    spec = ModelSpec(64, 10, 5, width=16)
    assert ModelSpec(**json.loads(json.dumps(asdict(spec)))) == spec
    with pytest.raises(ValueError, match="image_size 100"):
        ModelSpec(100, 1, 1)
    with pytest.raises(ValueError, match="n_cities"):
        ModelSpec(64, 0, 1)


def test_generator_state_has_no_shared_tensors_so_safetensors_can_store_it() -> None:
    from safetensors.torch import load, save

    g = Generator(ModelSpec(32, 2, 2, width=4))
    restored = Generator(ModelSpec(32, 2, 2, width=4))
    restored.load_state_dict(load(save(g.state_dict())))
    for name, tensor in g.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name])


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
