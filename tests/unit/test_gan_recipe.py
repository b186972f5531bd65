"""The training recipe's parts: adaptive augmentation strength, D's auxiliary classifiers."""

from __future__ import annotations

import pytest
import torch

from housegan.gan import loss as losses
from housegan.gan.augment import AdaptiveStrength, DiffAugment
from housegan.gan.models import Discriminator, ModelSpec


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
    logits, city_logits, type_logits = d(x, city, image_type, classes=True)
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
