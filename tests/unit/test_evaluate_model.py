"""evaluate_model end to end on tiny data: a memorizer is flagged as a copier, noise scores a
large FD and no precision, fresh photos of the training distribution look like a perfect
generator, and a briefly trained GAN lands between the memorizer and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from housegan.config import EvaluateSettings
from housegan.evaluate import sampling
from housegan.evaluate.evaluation import ModelEvaluation, evaluate_model, evaluation_key
from housegan.evaluate.sampling import Embedder
from housegan.testing.evaluation import TINY_EMBED, FreshPhotos, Memorizer, Noise, packed
from housegan.testing.gan import LEARNING_GAN

# Small samples: seconds, not minutes.
EMBED = TINY_EMBED
CFG = EvaluateSettings(
    samples_per_cell=16,
    device="cpu",
    holdout_fraction=0.25,
    kid_subsets=10,
    classifier_pca_dim=8,
    pairs_per_cell=4,
    figure_thumb=32,
)


@pytest.fixture(scope="module")
def dataset():
    return packed(16, image_size=32)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EMBED, "cpu")


def _evaluate(source, dataset, embedder, tmp: Path, **kwargs) -> ModelEvaluation:
    vocab = {"city": dataset.cities, "image_type": dataset.image_types}
    return evaluate_model(
        source, vocab, dataset, EMBED, CFG, embedder=embedder, figures_dir=tmp, **kwargs
    )


@pytest.fixture(scope="module")
def results(dataset, embedder, tmp_path_factory) -> dict[str, ModelEvaluation]:
    sources = {"memorizer": Memorizer(dataset), "fresh": FreshPhotos(32), "noise": Noise(32)}
    return {
        name: _evaluate(source, dataset, embedder, tmp_path_factory.mktemp(name))
        for name, source in sources.items()
    }


def test_a_memorizer_copies_everything_and_is_never_authentic(results) -> None:
    copier = results["memorizer"].metrics
    assert copier["copy_rate"] == pytest.approx(1.0)
    assert copier["authenticity"] == 0.0
    assert copier["nn_cosine_median"] == pytest.approx(1.0, abs=1e-5)
    assert (results["memorizer"].cells["copy_rate"] == 1.0).all()


def test_noise_gets_a_large_fd_and_no_precision(results) -> None:
    noise, fresh = results["noise"].metrics, results["fresh"].metrics
    assert noise["precision"] < 0.05 and noise["recall"] < 0.05
    assert noise["fd"] > 5 * fresh["fd"]
    assert noise["kid"] > 20 * abs(fresh["kid"])
    assert noise["copy_rate"] == 0.0


def test_fresh_photos_are_novel_faithful_and_on_label(results) -> None:
    fresh = results["fresh"].metrics
    assert fresh["copy_rate"] <= 0.1  # calibrated: ~1% of new real photos pass the 99th pct
    assert 0.2 < fresh["authenticity"] < 0.9
    assert fresh["precision"] > 0.8 and fresh["coverage"] > 0.7
    assert fresh["cond_acc_city"] == 1.0 and fresh["cond_acc_type"] == 1.0
    assert fresh["cas_city"] == 1.0  # a classifier trained on them recognizes real photos
    assert results["noise"].metrics["cas_city"] < 0.8


def test_result_has_one_row_per_cell_per_city_metrics_and_the_embedder_tag(results) -> None:
    evaluation = results["fresh"]
    assert list(zip(evaluation.cells["city"], evaluation.cells["image_type"], strict=True)) == [
        ("austin", "exterior"),
        ("austin", "landscape"),
        ("boston", "exterior"),
        ("boston", "landscape"),
    ]
    assert (evaluation.cells["n"] == CFG.samples_per_cell).all()
    assert list(evaluation.cities["city"]) == ["austin", "boston"]
    assert {"fd/austin", "kid/boston"} <= set(evaluation.metrics)
    assert evaluation.embed_tag == evaluation.params["embed_tag"]
    assert evaluation.embed_tag.startswith("vgg16-none-conv5-32")
    assert set(evaluation.summary()) == {
        "copy_rate",
        "fd",
        "kid",
        "precision",
        "recall",
        "density",
        "coverage",
        "diversity",
        "diversity_min",
        "cond_acc_city",
        "cond_acc_type",
    }
    assert evaluation.cells["diversity"].notna().all()
    assert evaluation.metrics["diversity_min"] == evaluation.cells["diversity"].min()
    assert evaluation.metrics["diversity_min"] <= evaluation.metrics["diversity"]


def test_pair_figures_show_k_pairs_per_cell(results) -> None:
    figures = results["memorizer"].figures
    assert sorted(figures) == [
        "novelty/pairs-austin-exterior.png",
        "novelty/pairs-austin-landscape.png",
        "novelty/pairs-boston-exterior.png",
        "novelty/pairs-boston-landscape.png",
    ]
    image = Image.open(figures["novelty/pairs-austin-exterior.png"])
    assert image.width >= CFG.pairs_per_cell * CFG.figure_thumb
    # a memorizer's pairs are identical: top and bottom tiles match
    pixels = np.asarray(image.convert("RGB")).astype(int)
    top = pixels[18 : 18 + 32, 4 : 4 + 32]
    bottom = pixels[18 + 32 + 4 : 18 + 64 + 4, 4 : 4 + 32]
    np.testing.assert_array_equal(top, bottom)


def test_key_names_the_draws_so_seed_or_sample_size_changes_it(dataset) -> None:
    base = evaluation_key(dataset.dataset_id, "vgg16-x", CFG)
    assert base == evaluation_key(dataset.dataset_id, "vgg16-x", CFG.model_copy())
    assert base != evaluation_key(dataset.dataset_id, "vgg16-x", CFG.model_copy(update={"seed": 1}))
    more = CFG.model_copy(update={"samples_per_cell": 17})
    assert base != evaluation_key(dataset.dataset_id, "vgg16-x", more)
    assert base != evaluation_key(dataset.dataset_id, "vgg16-y", CFG)
    # device and memory do not change the numbers, so they do not change the key
    elsewhere = CFG.model_copy(update={"device": "auto", "knn_memory_mb": 64.0})
    assert base == evaluation_key(dataset.dataset_id, "vgg16-x", elsewhere)


def test_real_features_are_cached_per_dataset_and_embedder(dataset, embedder, tmp_path) -> None:
    store = tmp_path.as_uri()
    first = sampling.real_sample(dataset, embedder, store)
    cached = Path(sampling.features_uri(store, embedder.tag, dataset.dataset_id)[len("file://") :])
    assert cached.is_file()

    class Refuses(Embedder):
        def __init__(self) -> None:
            self.tag, self.cfg = embedder.tag, embedder.cfg

        def __call__(self, images, progress=None):
            raise AssertionError("real photos embedded again despite the cache")

    again = sampling.real_sample(dataset, Refuses(), store)
    np.testing.assert_array_equal(again.features, first.features)


def test_a_source_returning_the_wrong_count_is_a_clear_error(dataset, embedder, tmp_path) -> None:
    def short(city, image_type, seed, n):
        return Noise(32)(city, image_type, seed, n - 1)

    with pytest.raises(ValueError, match="expected 16 RGB images"):
        _evaluate(short, dataset, embedder, tmp_path)


def test_cells_unknown_to_the_model_are_left_out_and_none_shared_is_an_error(dataset) -> None:
    vocab = {"city": ["boston", "paris"], "image_type": ["exterior"]}
    assert sampling.cells(vocab, dataset) == [("boston", "exterior")]
    with pytest.raises(ValueError, match="share no cell"):
        sampling.cells({"city": ["paris"], "image_type": ["exterior"]}, dataset)


@pytest.mark.slow
def test_a_briefly_trained_gan_lands_between_the_memorizer_and_noise(tmp_path, embedder) -> None:
    from housegan.config import GanSettings
    from housegan.gan import serving
    from housegan.gan.data import load_packed, prepare
    from housegan.gan.train import train
    from housegan.testing.gan import write_photos

    manifest = write_photos(tmp_path, per_class=32)
    dataset_uri = prepare(str(manifest), (tmp_path / "store").as_uri(), 32).uri
    cfg = GanSettings(**LEARNING_GAN, cpu_threads=2)
    train(dataset_uri, str(tmp_path / "run"), cfg)
    model = serving.load_generator(tmp_path / "run")
    dataset = load_packed(dataset_uri)
    sources = {
        "trained": sampling.generator_source(model),
        "memorizer": Memorizer(dataset),
        "noise": Noise(32),
    }
    m = {
        name: _evaluate(source, dataset, embedder, tmp_path / name).metrics
        for name, source in sources.items()
    }
    trained, copier, noise = m["trained"], m["memorizer"], m["noise"]
    assert copier["copy_rate"] == pytest.approx(1.0) and trained["copy_rate"] <= 0.2
    assert copier["fd"] < trained["fd"] < noise["fd"]
    assert copier["kid"] < trained["kid"] < noise["kid"]
    assert noise["precision"] < trained["precision"] < copier["precision"]
    assert noise["coverage"] < trained["coverage"] < copier["coverage"]
    assert trained["cond_acc_city"] > 0.8 > noise["cond_acc_city"]
