"""A retrain starts from the champion's weights when the labels match, and packs only the
cities asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from housegan.config import GanSettings
from housegan.gan import checkpoint
from housegan.gan.data import prepare
from housegan.gan.train import Trainer, train
from housegan.testing.gan import TINY_SETTINGS, ListReporter, prepared_dataset, write_photos

TINY = TINY_SETTINGS


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(dataset, newest checkpoint of a short run on it)."""
    root = tmp_path_factory.mktemp("warm")
    dataset = prepared_dataset(root, image_size=32, per_class=4)
    train(dataset, str(root / "champion"), GanSettings(**TINY, steps=3))
    return dataset, checkpoint.latest(str(root / "champion"))


def test_warm_start_takes_the_weights_but_a_fresh_schedule(
    champion: tuple[str, str], tmp_path: Path
) -> None:
    dataset, latest = champion
    saved = checkpoint.load(latest)
    trainer = Trainer(dataset, str(tmp_path / "retrain"), GanSettings(**TINY, steps=2))
    trainer.warm_start(latest)
    for name in ("G", "D", "G_ema"):
        for key, value in getattr(trainer, name).state_dict().items():
            assert torch.equal(value, saved[name][key]), (name, key)
    assert trainer.step == 0 and trainer.nimg == 0
    assert trainer.opt_g.state_dict()["state"] == {}  # fresh optimizer moments

    result = train(
        dataset, str(tmp_path / "run"), GanSettings(**TINY, steps=2), warm_start_from=latest
    )
    assert result.step == 2  # its own budget, counted from zero


def test_a_warm_start_keeps_the_labels_on_whatever_the_cond_ramp(
    champion: tuple[str, str], tmp_path: Path
) -> None:
    """The champion is conditional already: ramping its labels in again would unlearn them."""
    dataset, latest = champion
    cfg = GanSettings(**TINY, steps=4, log_every=1, cond_ramp=(0.5, 1.0))
    reporter = ListReporter()
    train(dataset, str(tmp_path / "run"), cfg, warm_start_from=latest, reporter=reporter)
    assert [value for _, value in reporter.series("cond/label_scale")] == [1.0] * 4
    resumed = Trainer(dataset, str(tmp_path / "run"), cfg)
    assert resumed.resume() and resumed.warm_started  # and so does a resume of it


def test_a_champion_of_an_older_recipe_warm_starts_with_fresh_twins_and_minibatch_std(
    champion: tuple[str, str], tmp_path: Path
) -> None:
    dataset, _ = champion
    old_recipe = GanSettings(**TINY, steps=3, class_twin=False, minibatch_std=0)
    train(dataset, str(tmp_path / "old"), old_recipe)
    latest = checkpoint.latest(str(tmp_path / "old"))
    saved = checkpoint.load(latest)
    new_recipe = GanSettings(**TINY, steps=2, class_twin=True, minibatch_std=4)
    trainer = Trainer(dataset, str(tmp_path / "retrain"), new_recipe)
    fresh = trainer.warm_start(latest)
    assert {"city_twin.weight", "type_twin.weight"} <= set(fresh)
    last_conv = f"blocks.{len(trainer.D.blocks) - 1}.conv1.parametrizations.weight.original"
    assert last_conv in fresh  # one input channel more
    assert all(key.startswith(("city_twin", "type_twin", "blocks.")) for key in fresh)
    for key, value in trainer.D.state_dict().items():
        if key not in fresh:
            assert torch.equal(value, saved["D"][key]), key
    for key, value in trainer.G_ema.state_dict().items():
        assert torch.equal(value, saved["G_ema"][key]), key


def test_warm_start_refuses_a_checkpoint_with_other_labels(
    champion: tuple[str, str], tmp_path: Path
) -> None:
    _, latest = champion
    other = prepared_dataset(tmp_path, image_size=32, per_class=2, cities=("austin", "denver"))
    trainer = Trainer(other, str(tmp_path / "retrain"), GanSettings(**TINY, steps=2))
    with pytest.raises(ValueError, match=r"cannot warm-start.*denver"):
        trainer.warm_start(latest)


def test_prepare_packs_only_the_cities_asked_for(tmp_path: Path) -> None:
    manifest = write_photos(tmp_path, 2, cities=("austin", "boston", "miami"))
    store = (tmp_path / "store").as_uri()
    everything = prepare(str(manifest), store, 32)
    two = prepare(str(manifest), store, 32, cities=["miami", "austin"])
    assert everything.cities == ["austin", "boston", "miami"]
    assert two.cities == ["austin", "miami"] and two.n == everything.n * 2 // 3
    assert two.dataset_id != everything.dataset_id
    with pytest.raises(ValueError, match="no trainable rows of cities"):
        prepare(str(manifest), store, 32, cities=["paris"])
