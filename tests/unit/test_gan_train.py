"""The training loop: budget, reporting, checkpoints, the NaN guard, sampling and augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from housegan.config import GanSettings
from housegan.gan import checkpoint, ddp, serving
from housegan.gan.augment import DiffAugment, cutout, translation
from housegan.gan.train import IndexSampler, TrainingDiverged, train
from housegan.testing.faults import NanLossOnce
from housegan.testing.gan import TINY_SETTINGS, ListReporter, prepared_dataset

TINY = TINY_SETTINGS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepared_dataset(tmp_path_factory.mktemp("gan-data"), image_size=32, per_class=4)


def test_kimg_budget_reports_losses_speed_and_grids_and_writes_a_loadable_model(
    dataset: str, tmp_path: Path
) -> None:
    cfg = GanSettings(**TINY, kimg=0.096, log_every=4, snapshot_every=6)
    reporter = ListReporter()
    result = train(dataset, str(tmp_path / "run"), cfg, reporter=reporter)

    assert result.step == math.ceil(96 / 8) == 12
    assert result.kimg == pytest.approx(0.096)
    assert [step for step, _ in reporter.series("loss/d")] == [4, 8, 12]
    last = reporter.rows[-1][1]
    for name in ("loss/g", "d/real", "d/fake", "grad_norm/d", "grad_norm/g", "speed/img_per_s"):
        assert math.isfinite(last[name]) and name in result.metrics
    assert last["lr/g"] == cfg.g_lr and last["lr/d"] == cfg.d_lr
    assert len(reporter.params_seen) == 1
    assert reporter.params_seen[0]["dataset_id"] == result.dataset_id
    # one grid per snapshot, a row per (city, type) class plus a label column
    assert [step for _, _, step in reporter.images] == [6, 12]
    grid = reporter.images[-1][1]
    assert grid.height == 4 * (32 + 2) + 2
    assert grid.width > cfg.grid_per_class * (32 + 2)

    loaded = serving.load_generator(tmp_path / "run")
    assert loaded.spec == result.spec and loaded.vocab == result.vocab
    images = serving.generate(loaded, "boston", "landscape", seed=3, n=2)
    assert images.shape == (2, 32, 32, 3)


def test_checkpoint_holds_full_state_loads_without_pickles_and_keeps_last_k(
    dataset: str, tmp_path: Path
) -> None:
    cfg = GanSettings(**TINY, steps=9, checkpoint_every_steps=2, checkpoint_keep=2, log_every=3)
    train(dataset, str(tmp_path / "run"), cfg)

    found = checkpoint.list_checkpoints(str(tmp_path / "run"))
    assert [step for step, _ in found] == [8, 9]
    state = checkpoint.load(found[-1][1])  # weights_only=True inside
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "scaler", "rng", "sampler", "augment"):
        assert key in state
    assert state["step"] == 9 and state["nimg"] == 72
    assert state["config"]["steps"] == 9 and state["vocab"]["city"] == ["austin", "boston"]
    assert state["opt_d"]["param_groups"][0]["betas"] == (0.0, 0.999)


def test_resume_with_a_larger_budget_continues_from_the_newest_checkpoint(
    dataset: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "run")
    train(dataset, out, GanSettings(**TINY, steps=4, log_every=2))
    result = train(dataset, out, GanSettings(**TINY, steps=6, log_every=2), resume=True)
    assert result.step == 6
    assert result.kimg == pytest.approx(6 * 8 / 1000)


def test_nan_loss_rolls_back_lowers_learning_rates_and_finishes_finite(
    dataset: str, tmp_path: Path
) -> None:
    cfg = GanSettings(**TINY, steps=12, log_every=4, guard_lr_factor=0.5)
    reporter = ListReporter()
    result = train(
        dataset, str(tmp_path / "run"), cfg, reporter=reporter, d_loss_hook=NanLossOnce(6)
    )

    assert result.rollbacks == 1 and result.step == 12
    assert reporter.series("guard/rollbacks")[-1] == (12, 1.0)
    # the interval holding the NaN (steps 5-8) was never reported: it was rolled back
    assert all(math.isfinite(v) for _, m in reporter.rows for v in m.values())
    assert reporter.series("lr/g")[-1][1] == pytest.approx(cfg.g_lr * 0.5)
    assert reporter.series("lr/d")[-1][1] == pytest.approx(cfg.d_lr * 0.5)
    weights = load_file(str(tmp_path / "run" / "g_ema.safetensors"))
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    state = checkpoint.load(checkpoint.latest(str(tmp_path / "run")))
    assert state["lr_scale"] == 0.5 and state["opt_g"]["param_groups"][0]["lr"] == cfg.g_lr / 2


def test_guard_gives_up_after_max_rollbacks(dataset: str, tmp_path: Path) -> None:
    cfg = GanSettings(**TINY, steps=6, log_every=2, guard_max_rollbacks=0)
    with pytest.raises(TrainingDiverged, match="guard_max_rollbacks=0"):
        train(dataset, str(tmp_path / "run"), cfg, d_loss_hook=NanLossOnce(3))


def test_dataset_prepared_at_another_size_is_refused(dataset: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prepare it at 64"):
        train(dataset, str(tmp_path / "run"), GanSettings(**{**TINY, "image_size": 64}))


def test_uniform_sampler_shards_each_epoch_disjointly_over_ranks() -> None:
    def shards(rank: int) -> list[int]:
        gen = torch.Generator().manual_seed(5)
        sampler = IndexSampler(12, 3, gen, ddp.DistInfo(rank=rank, world_size=2))
        return torch.cat([sampler.next() for _ in range(2)]).tolist()  # one epoch: 12 = 2*2*3

    rank0, rank1 = shards(0), shards(1)
    assert sorted(rank0 + rank1) == list(range(12))


def test_balanced_sampler_draws_rare_classes_as_often_as_common_ones() -> None:
    classes = torch.tensor([0] * 90 + [1] * 10)
    weights = 1.0 / torch.bincount(classes)[classes].double()
    sampler = IndexSampler(100, 500, torch.Generator().manual_seed(0), ddp.DistInfo(), weights)
    share_rare = (classes[sampler.next()] == 1).float().mean().item()
    assert 0.4 < share_rare < 0.6


def test_sampler_state_round_trip_replays_the_same_batches() -> None:
    sampler = IndexSampler(10, 4, torch.Generator().manual_seed(1), ddp.DistInfo())
    sampler.next()
    state = {k: v.clone() for k, v in sampler.state_dict().items()}
    expected = [sampler.next().tolist() for _ in range(3)]
    sampler.load_state_dict(state)
    assert [sampler.next().tolist() for _ in range(3)] == expected


def test_diffaugment_is_differentiable_and_replays_from_its_state() -> None:
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    augment = DiffAugment("translation,color,cutout", torch.Generator().manual_seed(0))
    state = augment.state_dict()
    first = augment(x)
    first.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    augment.load_state_dict(state)
    assert torch.equal(augment(x), first)
    assert not torch.equal(augment(x), first)  # the generator moved on


def test_translation_and_cutout_move_and_erase_pixels() -> None:
    ones = torch.ones(64, 1, 16, 16)
    gen = torch.Generator().manual_seed(0)
    erased = (cutout(ones, gen) == 0).float().mean(dim=(1, 2, 3))
    assert erased.max() == pytest.approx(0.25) and erased.min() > 0  # an 8x8 square, clipped
    shifted = translation(ones, gen)
    assert shifted.shape == ones.shape
    assert ((shifted == 0).sum(dim=(1, 2, 3)) > 0).float().mean() > 0.5  # most moved


def test_unknown_augment_policy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="color"):
        DiffAugment("translation,blur", torch.Generator())
