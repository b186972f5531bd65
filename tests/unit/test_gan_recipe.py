"""The training recipe's parts: adaptive augmentation strength, D's auxiliary classifiers and
their twins, the minibatch standard deviation, mode seeking, G_ema's standing statistics,
transitional conditioning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from housegan.config import GanSettings
from housegan.gan import checkpoint, serving
from housegan.gan import loss as losses
from housegan.gan.augment import AdaptiveStrength, DiffAugment
from housegan.gan.models import Discriminator, Generator, ModelSpec, _group_std
from housegan.gan.train import train
from housegan.testing.gan import TINY_SETTINGS, ListReporter, prepared_dataset


def _ada(target: float = 0.6, speed_kimg: float = 1.0) -> AdaptiveStrength:
    augment = DiffAugment("translation,cutout", torch.Generator().manual_seed(0))
    return AdaptiveStrength(augment, target, speed_kimg)


def test_ada_starts_at_zero_and_raises_p_while_d_is_sure_of_the_reals() -> None:
    ada = _ada()
    assert float(ada.augment.p) == 0.0
    for _ in range(5):
        ada.observe(torch.full((64,), 3.0))  # every real scored positive: r_t = 1 > 0.6
        ada.adjust(images=100)
    assert float(ada.augment.p) == pytest.approx(0.5)  # 5 x 100 images at 1 kimg per unit
    assert float(ada.last_rt) == 1.0


def test_ada_lowers_p_when_d_doubts_the_reals_and_keeps_it_within_0_and_1() -> None:
    ada = _ada()
    for _ in range(30):
        ada.observe(torch.full((64,), 2.0))
        ada.adjust(images=100)
    assert float(ada.augment.p) == 1.0  # clamped
    for _ in range(3):
        ada.observe(torch.tensor([1.0, -1.0, -1.0, -1.0]))  # r_t = -0.5 < 0.6
        ada.adjust(images=100)
    assert float(ada.augment.p) == pytest.approx(0.7)
    for _ in range(30):
        ada.observe(torch.full((8,), -1.0))
        ada.adjust(images=100)
    assert float(ada.augment.p) == 0.0


def test_ada_strength_is_the_share_of_images_augmented() -> None:
    ones = torch.ones(2000, 1, 16, 16)
    ada = _ada()
    assert torch.equal(ada.augment(ones), ones)  # p = 0: D sees the images as they are
    ada.augment.p = torch.tensor(0.5)
    touched = (ada.augment(ones) != 1).flatten(1).any(1).float().mean()
    assert 0.65 < float(touched) < 0.85  # either of two ops at 0.5: 1 - 0.5^2 = 0.75
    ada.augment.p = torch.tensor(1.0)
    assert (ada.augment(ones) != 1).flatten(1).any(1).all()  # cutout hits every image


def test_ada_state_round_trips_mid_interval() -> None:
    ada = _ada()
    ada.observe(torch.tensor([1.0, 1.0, -1.0]))
    state = ada.state_dict()
    other = _ada()
    other.load_state_dict(state)
    ada.adjust(images=100)
    other.adjust(images=100)
    assert float(other.last_rt) == pytest.approx(1 / 3) == float(ada.last_rt)


def test_discriminator_classifiers_score_every_city_and_type() -> None:
    spec = ModelSpec(32, n_cities=3, n_types=2, z_dim=16, width=4, embed_dim=8)
    d = Discriminator(spec).eval()  # eval: no spectral-norm power iteration between the calls
    x = torch.randn(5, 3, 32, 32)
    city, image_type = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 0, 1, 0])
    logits, (city_logits, type_logits) = d(x, city, image_type, classes=True)
    assert logits.shape == (5,) and city_logits.shape == (5, 3) and type_logits.shape == (5, 2)
    assert torch.equal(logits, d(x, city, image_type))


def test_class_loss_falls_as_the_classifier_gets_the_labels_right() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    types = torch.tensor([1, 0, 1, 0])
    right = losses.classes(
        torch.eye(3)[labels] * 10, torch.eye(2)[types] * 10, labels, types, "real"
    )
    wrong = losses.classes(
        torch.eye(3)[(labels + 1) % 3] * 10, torch.eye(2)[1 - types] * 10, labels, types, "real"
    )
    assert right < 0.01 < 10 < wrong
    stats = losses.Stats()
    losses.classes(torch.eye(3)[labels], torch.eye(2)[types], labels, types, "fake", stats)
    assert stats.names() == ["class_acc/fake", "loss/class_fake"]
    assert float(stats.means()[0]) == 1.0


def test_minibatch_std_sees_a_group_of_one_image_and_never_mixes_reals_with_fakes() -> None:
    spec = ModelSpec(32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    d = Discriminator(spec, minibatch_std=4)
    real, fake = torch.randn(8, 3, 32, 32), torch.randn(1, 3, 32, 32).repeat(8, 1, 1, 1)
    features = d.blocks[:-1](torch.cat([real, fake]))
    std = _group_std(features, 4)[:, 0, 0, 0]
    assert std.shape == (16,) and (std[:8] > 0.01).all()
    assert torch.allclose(std[8:], torch.full((8,), 1e-4), atol=1e-4)  # sqrt(0 + 1e-8)
    assert d.blocks[-1].conv1.in_channels == spec.channels()[0] + 1
    assert _group_std(features[:6], 4).shape == (6, 1, 4, 4)  # a group of 2 when 4 won't divide


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepared_dataset(tmp_path_factory.mktemp("recipe-data"), image_size=32, per_class=4)


def test_mode_seeking_penalises_latents_that_draw_the_same_image() -> None:
    z, other_z = torch.randn(4, 8), torch.randn(4, 8)
    image = torch.zeros(4, 3, 8, 8)
    collapsed = losses.mode_seeking(image, image, z, other_z)
    apart = losses.mode_seeking(image, image + 0.5, z, other_z)
    assert collapsed > 1e4 > 10 > apart


def test_twin_classifiers_and_mode_seeking_are_trained_reported_and_checkpointed(
    dataset: str, tmp_path
) -> None:
    cfg = GanSettings(**TINY_SETTINGS, steps=4, log_every=4, class_twin=True, mode_seeking=0.1)
    reporter = ListReporter()
    train(dataset, str(tmp_path / "run"), cfg, reporter=reporter)
    last = reporter.rows[-1][1]
    names = ("loss/class_real", "loss/class_twin", "loss/class_fake", "loss/class_fake_twin")
    for name in (*names, "loss/mode_seeking"):
        assert math.isfinite(last[name]), name
    state = checkpoint.load(checkpoint.list_checkpoints(str(tmp_path / "run"))[-1][1])
    assert {"city_twin.weight", "type_twin.weight"} <= set(state["D"])


def _bn_input_error(model_dir: Path, n: int = 512) -> float:
    """Largest gap, over G_ema's batch norms, between the running mean used in eval mode and
    the mean of what that norm is fed when G_ema draws fresh samples, in units of its std."""
    g = serving.load_generator(model_dir).generator
    seen: dict[torch.nn.Module, torch.Tensor] = {}
    norms = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0])) for m in norms]
    labels = torch.arange(n)
    g(
        torch.randn(n, g.spec.z_dim, generator=torch.Generator().manual_seed(5)),
        labels % 2,
        labels % 2,
    )
    for hook in hooks:
        hook.remove()
    gaps = []
    for norm, x in seen.items():
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        gaps.append(((norm.running_mean - mean).abs() / std.clamp_min(1e-6)).max())
    return float(torch.stack(gaps).max())


def test_standing_statistics_describe_g_emas_own_activations(dataset: str, tmp_path) -> None:
    errors = {}
    for images in (0, 512):
        cfg = GanSettings(**TINY_SETTINGS, steps=12, ema_standing_images=images, ema_kimg=0.05)
        train(dataset, str(tmp_path / str(images)), cfg)
        errors[images] = _bn_input_error(tmp_path / str(images))
    assert errors[512] < 0.25 < errors[0]


def test_at_label_scale_zero_both_networks_ignore_the_labels() -> None:
    spec = ModelSpec(32, n_cities=3, n_types=2, z_dim=16, width=4, embed_dim=8)
    g, d = Generator(spec).eval(), Discriminator(spec).eval()
    z, x = torch.randn(4, 16), torch.randn(4, 3, 32, 32)
    some = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 0, 1])
    other = torch.tensor([2, 2, 1, 1]), torch.tensor([1, 0, 1, 0])
    assert not torch.allclose(g(z, *some), g(z, *other))  # conditional by default
    assert not torch.allclose(d(x, *some), d(x, *other))
    for net in (g, d):
        net.label_scale.fill_(0.0)
    assert torch.equal(g(z, *some), g(z, *other))
    assert torch.equal(d(x, *some), d(x, *other))
    assert "label_scale" not in g.state_dict() and "label_scale" not in d.state_dict()


def test_cond_ramp_brings_the_labels_in_over_its_share_of_the_budget(
    dataset: str, tmp_path
) -> None:
    cfg = GanSettings(**TINY_SETTINGS, steps=8, log_every=1, cond_ramp=(0.25, 0.75))
    reporter = ListReporter()
    train(dataset, str(tmp_path / "run"), cfg, reporter=reporter)
    # set before each step, from the images shown before it: 0/8, 1/8, ... of the budget
    scales = [value for _, value in reporter.series("cond/label_scale")]
    assert scales == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    model = serving.load_generator(tmp_path / "run")
    assert float(model.generator.label_scale) == 1.0  # the served model is conditional


def test_cond_ramp_must_lie_within_the_budget() -> None:
    with pytest.raises(ValueError, match="cond_ramp"):
        GanSettings(cond_ramp=(0.6, 0.2))
    with pytest.raises(ValueError, match="cond_ramp"):
        GanSettings(cond_ramp=(0.1, 1.5))
