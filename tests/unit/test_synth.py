from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from housegan import storage, synth
from housegan.cli import main
from housegan.devices import fast_bf16

SMALL = {"cities": 2, "per_city": 5}


def _objects(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory):
    """One small local dataset with every defect class, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synth") / "raw"
    result = synth.synthesize(root.as_uri(), seed=3, **SMALL)
    return root, result, synth.read_truth(result.truth_uri)


def test_same_seed_writes_identical_bytes_and_truth(tmp_path, small_dataset):
    root, _, truth = small_dataset
    again = synth.synthesize((tmp_path / "raw").as_uri(), seed=3, **SMALL)
    assert _objects(tmp_path / "raw") == _objects(root)
    again_truth = synth.read_truth(again.truth_uri)
    assert again_truth.drop(columns="uri").equals(truth.drop(columns="uri"))


def test_different_seed_draws_different_photos(tmp_path, small_dataset):
    root, _, _ = small_dataset
    synth.synthesize((tmp_path / "raw").as_uri(), seed=4, **SMALL)
    mine, other = _objects(root), _objects(tmp_path / "raw")
    shared = set(mine) & set(other)
    assert shared
    assert sum(mine[k] != other[k] for k in shared if mine[k]) > len(shared) // 2


def test_keys_never_name_the_kind(small_dataset):
    root, _, truth = small_dataset
    for key in [*_objects(root), *truth["key"]]:
        assert not any(kind in key.lower() for kind in synth.KINDS), key


def test_keys_follow_city_listing_photo_layout(small_dataset):
    _, _, truth = small_dataset
    photos = truth[truth["defect"].isna()]
    parts = photos["key"].str.split("/", expand=True)
    assert (parts[0] == photos["city"]).all()
    assert (parts[1] == photos["listing_id"]).all()
    assert parts[1].str.fullmatch(r"L\d{6}").all()
    assert parts[2].str.fullmatch(r"photo_\d{2}\.(jpg|png|webp)").all()
    assert set(photos["city"]) == set(synth.city_names(SMALL["cities"]))


def test_counts_account_for_every_object_once(small_dataset):
    root, result, truth = small_dataset
    assert sum(result.counts.values()) == result.objects == len(truth)
    # Local folders cannot hold a folder-marker object; everything else is a file.
    assert len(_objects(root)) == result.objects - result.counts["folder_marker"]
    assert set(synth.DEFECTS) <= set(result.counts)


def _truth_row(truth, defect: str):
    rows = truth[truth["defect"] == defect]
    assert len(rows) >= 1, defect
    return rows.iloc[0]


def _open(root: Path, key: str) -> Image.Image:
    img = Image.open(io.BytesIO((root / key).read_bytes()))
    img.load()
    return img


def test_truncated_jpeg_fails_to_decode(small_dataset):
    root, _, truth = small_dataset
    data = (root / _truth_row(truth, "truncated_jpeg")["key"]).read_bytes()
    assert data[:2] == b"\xff\xd8"  # still looks like a JPEG
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


def test_empty_and_non_image_objects_are_not_decodable(small_dataset):
    root, _, truth = small_dataset
    assert (root / _truth_row(truth, "zero_bytes")["key"]).read_bytes() == b""
    not_image = _truth_row(truth, "not_image")
    assert not_image["key"].endswith(".jpg") and pd_isna(not_image["kind"])
    with pytest.raises(Image.UnidentifiedImageError):
        _open(root, not_image["key"])


def pd_isna(value) -> bool:
    return value is None or value != value


def test_tiny_image_is_tiny(small_dataset):
    root, _, truth = small_dataset
    assert _open(root, _truth_row(truth, "tiny")["key"]).size == synth.TINY_SIZE


def test_exif_rotated_photo_swaps_displayed_sides(small_dataset):
    root, _, truth = small_dataset
    row = _truth_row(truth, "exif_rotated")
    img = _open(root, row["key"])
    assert img.getexif()[synth.EXIF_ORIENTATION_TAG] == 6
    upright = ImageOps.exif_transpose(img)
    assert upright.size == (row["width"], row["height"]) == img.size[::-1]
    assert row["width"] != row["height"]


@pytest.mark.parametrize(
    ("defect", "mode", "fmt"),
    [
        ("grayscale", "L", "JPEG"),
        ("rgba", "RGBA", "PNG"),
        ("cmyk", "CMYK", "JPEG"),
        ("palette", "P", "PNG"),
    ],
)
def test_odd_modes_decode_in_that_mode(small_dataset, defect, mode, fmt):
    root, _, truth = small_dataset
    img = _open(root, _truth_row(truth, defect)["key"])
    assert (img.mode, img.format) == (mode, fmt)


def test_duplicates_are_exact_copies_under_other_keys(small_dataset):
    root, _, truth = small_dataset
    dups = truth[truth["defect"] == "duplicate"]
    assert len(dups) == synth.DUPLICATES_PER_DATASET
    for row in dups.itertuples():
        assert row.key != row.dup_of
        assert (root / row.key).read_bytes() == (root / row.dup_of).read_bytes()
        original = truth.set_index("key").loc[row.dup_of]
        assert pd_isna(original["defect"]) and original["kind"] == row.kind


def test_dotfile_and_folder_marker_are_recorded(small_dataset):
    root, _, truth = small_dataset
    dotfile = _truth_row(truth, "dotfile")
    assert dotfile["key"].rsplit("/", 1)[1].startswith(".")
    assert (root / dotfile["key"]).is_file()
    assert _truth_row(truth, "folder_marker")["key"].endswith("/")


def test_clean_photos_decode_at_their_recorded_size(small_dataset):
    root, _, truth = small_dataset
    for row in truth[truth["defect"].isna()].itertuples():
        img = _open(root, row.key)
        assert (img.size, img.format, img.mode) == ((row.width, row.height), row.format, "RGB")
        assert min(img.size) >= synth.SIDE_RANGE[0] and max(img.size) <= synth.SIDE_RANGE[1]


def test_seed_in_truth_redraws_the_photo(small_dataset):
    root, _, truth = small_dataset
    row = truth[(truth["defect"].isna()) & (truth["format"] == "PNG")].iloc[0]
    redrawn = synth.render(
        row["kind"],
        row["city"],
        np.random.default_rng(int(row["seed"])),
        (int(row["width"]), int(row["height"])),
    )
    assert np.array_equal(np.asarray(redrawn), np.asarray(_open(root, row["key"])))


@pytest.mark.parametrize("size", [synth.TINY_SIZE, (640, 160), (160, 640)])
def test_every_kind_renders_at_extreme_sizes(size):
    for kind in synth.KINDS:
        for city in ("miami", "city12"):
            for seed in range(4):
                img = synth.render(kind, city, np.random.default_rng(seed), size)
                assert (img.size, img.mode) == (size, "RGB")


def test_kind_mix_resembles_a_real_bucket():
    plan = synth.plan_dataset(cities=4, per_city=150, seed=0, defects=False)
    kinds = np.array([p.kind for p in plan])
    for kind, weight in zip(synth.KINDS, synth.KIND_WEIGHTS, strict=True):
        assert abs((kinds == kind).mean() - weight) < 0.04, kind
    per_listing = np.unique([p.listing_id for p in plan], return_counts=True)[1]
    assert per_listing.min() >= 1 and per_listing.max() <= 5


def test_truth_labels_name_clean_photos_of_each_kind(small_dataset):
    _, result, truth = small_dataset
    uri = synth.write_truth_labels(result.truth_uri, per_type=2, seed=1)
    labels = pd.read_csv(io.BytesIO(storage.read_bytes(uri)))
    assert list(labels.columns) == ["key", "label"]
    assert labels["label"].value_counts().max() <= 2
    by_key = truth.set_index("key")
    assert (by_key.loc[labels["key"], "kind"].to_numpy() == labels["label"].to_numpy()).all()
    assert by_key.loc[labels["key"], "defect"].isna().all()
    assert synth.write_truth_labels(result.truth_uri, per_type=2, seed=1) == uri
    assert pd.read_csv(io.BytesIO(storage.read_bytes(uri))).equals(labels)


def test_truth_must_not_lie_under_the_photos(tmp_path):
    dest = (tmp_path / "raw").as_uri()
    assert not synth.default_truth_uri(dest).startswith(dest + "/")
    with pytest.raises(ValueError, match="must not lie under"):
        synth.synthesize(dest, seed=0, truth_uri=dest + "/truth.parquet", **SMALL)


def test_too_small_plan_for_defects_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="defects need at least"):
        synth.synthesize((tmp_path / "raw").as_uri(), cities=1, per_city=1, seed=0)
    result = synth.synthesize(
        (tmp_path / "raw").as_uri(), cities=1, per_city=1, seed=0, defects=False
    )
    assert set(result.counts) <= set(synth.KINDS)


def test_cli_prints_summary_and_json_last(tmp_path, capsys):
    dest = (tmp_path / "raw").as_uri()
    assert main(["synth", "--dest", dest, "--cities", "2", "--per-city", "5", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["objects"] == sum(summary["counts"].values())
    assert synth.read_truth(summary["truth_uri"])["key"].size == summary["objects"]


def test_cli_too_few_listings_exits_with_one_line(tmp_path, capsys):
    dest = (tmp_path / "raw").as_uri()
    assert main(["synth", "--dest", dest, "--cities", "1", "--per-city", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defects need at least" in err[0]


# --------------------------------------------------------------------------- separability


def _global_features(img: Image.Image) -> np.ndarray:
    """What a weak, generic embedding sees: colour histograms, layout, edges, flatness."""
    small = img.convert("RGB").resize((96, 96))
    hsv = np.asarray(small.convert("HSV"), np.float32) / 255
    hist = [np.histogram(hsv[..., c], bins=8, range=(0, 1))[0] / hsv[..., c].size for c in range(3)]
    layout = hsv.reshape(4, 24, 4, 24, 3).mean(axis=(1, 3)).ravel()  # a 4x4 colour thumbnail
    gray = hsv[..., 2]
    steps = np.abs(np.diff(gray, axis=0))
    texture = [steps.mean(), (steps > 0.1).mean(), (steps < 0.01).mean()]
    return np.concatenate([*hist, layout, texture])


def _render_set(kinds, cities, per_class: int, seed: int, max_side: int = 256):
    """Photos of each (kind, city), at small random sizes and aspects (features are 96 px)."""
    rng = np.random.default_rng(seed)
    images, kind_labels, city_labels = [], [], []
    for kind in kinds:
        for city in cities:
            for _ in range(per_class):
                size = tuple(int(v) for v in rng.integers(synth.SIDE_RANGE[0], max_side, 2))
                images.append(
                    synth.render(kind, city, np.random.default_rng(rng.integers(2**32)), size)
                )
                kind_labels.append(kind)
                city_labels.append(city)
    return images, np.array(kind_labels), np.array(city_labels)


def _accuracy_with_labels(features: np.ndarray, labels: np.ndarray, per_label: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        train[rng.choice(np.flatnonzero(labels == label), per_label, replace=False)] = True
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features[train], labels[train])
    return float((model.predict(features[~train]) == labels[~train]).mean())


def test_kinds_are_separable_from_global_features():
    images, kinds, _ = _render_set(synth.KINDS, synth.city_names(5), per_class=12, seed=11)
    features = np.stack([_global_features(img) for img in images])
    assert _accuracy_with_labels(features, kinds, per_label=30) >= 0.9


def test_city_is_predictable_from_exteriors():
    cities = synth.city_names(5)
    images, _, city_labels = _render_set(("exterior",), cities, per_class=40, seed=12)
    features = np.stack([_global_features(img) for img in images])
    chance = 1 / len(cities)
    assert _accuracy_with_labels(features, city_labels, per_label=20) >= 3 * chance


def _random_vgg_fc7(images, size: int = 112) -> np.ndarray:
    """Curation's embedding with weights=none: fc7 at 112 px, bf16, L2-normalised, mean-centred."""
    import torch
    import torchvision
    from torchvision.transforms import v2

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    model.classifier = model.classifier[:5]  # up to fc7's ReLU: the prediction layer removed
    model = model.to(memory_format=torch.channels_last)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    batches = []
    bf16 = fast_bf16("cpu")  # emulated bf16 (AVX2-only CPUs) is ~8x slower than float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), 32):
            batch = torch.stack([transform(img) for img in images[start : start + 32]])
            batches.append(model(batch.to(memory_format=torch.channels_last)).float())
    features = torch.cat(batches).numpy()
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    return features - features.mean(axis=0)


@pytest.mark.slow
def test_kinds_are_separable_with_random_init_vgg16():
    """30 labels per type -> >= 90% type accuracy on the rest (~1-2 min)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, kinds, _ = _render_set(synth.KINDS, synth.city_names(5), per_class=16, seed=13)
    features = _random_vgg_fc7(images)
    rng = np.random.default_rng(0)
    train = np.zeros(len(kinds), bool)
    for kind in synth.KINDS:
        train[rng.choice(np.flatnonzero(kinds == kind), 30, replace=False)] = True
    # Standardised: on the raw centred vectors (norm ~0.17) the default C=1 under-fits.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features[train], kinds[train])
    accuracy = float((model.predict(features[~train]) == kinds[~train]).mean())
    print(f"random-init VGG16 fc7 type accuracy with 30 labels per type: {accuracy:.3f}")
    assert accuracy >= 0.9


def test_existing_recognises_the_same_recipe_only(tmp_path):
    dest = (tmp_path / "raw").as_uri()
    assert synth.existing(dest, cities=2, per_city=3, seed=5, defects=False) is None
    written = synth.synthesize(dest, cities=2, per_city=3, seed=5, defects=False)
    found = synth.existing(dest, cities=2, per_city=3, seed=5, defects=False)
    assert found == written
    assert synth.existing(dest, cities=2, per_city=3, seed=6, defects=False) is None
    assert synth.existing(dest, cities=2, per_city=4, seed=5, defects=False) is None
