from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.metrics import adjusted_rand_score

from housegan import curate, manifest, quality, storage, synth
from housegan.cli import main
from housegan.config import CurateSettings, get_settings
from housegan.manifest import IMAGE_MANIFEST_SCHEMA
from housegan.steps.curate import CurateResult
from housegan.testing import encode
from housegan.testing.curation import World, build_world, manifest_frame


def photo(kind: str = "exterior", seed: int = 0, size: tuple[int, int] = (240, 180)) -> Image.Image:
    return synth.render(kind, synth.city_names(1)[0], np.random.default_rng(seed), size)


# --- quality ----------------------------------------------------------------------------------


def flags_of(image: Image.Image, cfg: CurateSettings | None = None) -> set[str]:
    cfg = cfg or CurateSettings()
    image = image.copy()
    image.thumbnail((cfg.quality_max_side, cfg.quality_max_side))
    scores = pd.DataFrame([quality.score_image(image)])
    w, h = pd.Series([image.width]), pd.Series([image.height])
    row = quality.flag_frame(scores, w, h, cfg).iloc[0]
    return {flag for flag in quality.QUALITY_FLAGS if row[flag]}


@pytest.mark.parametrize("seed", range(4))
def test_clean_exteriors_and_landscapes_raise_no_quality_flag(seed):
    assert flags_of(photo("exterior", seed)) == set()
    assert flags_of(photo("landscape", seed)) == set()


def test_each_quality_defect_raises_its_flag():
    clean = photo("exterior", 1)
    assert "dark" in flags_of(ImageEnhance.Brightness(clean).enhance(0.08))
    assert "overexposed" in flags_of(Image.new("RGB", clean.size, (252, 252, 250)))
    assert "blurry" in flags_of(clean.filter(ImageFilter.GaussianBlur(4)))
    assert "grayscale" in flags_of(clean.convert("L"))
    assert "low_information" in flags_of(Image.new("RGB", clean.size, (90, 120, 60)))
    assert flags_of(clean.resize((400, 100))) == {"odd_aspect_ratio"}


def test_quality_scores_are_computed_once_per_content(tmp_path: Path):
    folder = tmp_path / "raw"
    folder.mkdir()
    rows = []
    for i in range(3):
        path = folder / f"{i}.jpg"
        photo(seed=i).save(path)
        rows.append({"key": f"{i}.jpg", "uri": path.as_uri(), "sha256": f"sha{i}"})
    rows.append({"key": "copy.jpg", "uri": (folder / "0.jpg").as_uri(), "sha256": "sha0"})
    rows.append({"key": "bad.jpg", "uri": (folder / "x").as_uri(), "sha256": "shax"})
    store = (tmp_path / "store").as_uri()
    collection = manifest.collection_uri(store)
    first_uri = manifest.write_version(manifest_frame(rows[:3]), collection, IMAGE_MANIFEST_SCHEMA)
    first = quality.compute_quality(first_uri, store, CurateSettings())
    assert (first.computed, first.reused) == (3, 0)
    second_uri = manifest.write_version(manifest_frame(rows), collection, IMAGE_MANIFEST_SCHEMA)
    second = quality.compute_quality(second_uri, store, CurateSettings())
    assert (second.computed, second.reused) == (1, 3)  # only the new content; the copy is known
    scores = quality.load_scores(store).set_index("sha256")
    assert scores.loc["shax", "error"].startswith("FileNotFoundError")
    assert pd.isna(scores.loc["sha1", "error"]) and scores.loc["sha1", "entropy"] > 3


# --- near-duplicates and outliers -------------------------------------------------------------


def distinct_with_copies(n: int, copies: dict[int, int], dim: int = 32, seed: int = 0):
    """``n`` distinct unit vectors, plus near copies (small noise) of some of them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    extra = [
        base[i] + rng.normal(scale=0.05, size=dim) for i, c in copies.items() for _ in range(c)
    ]
    return np.vstack([base, *extra]).astype(np.float32)


def test_near_copies_are_grouped_and_the_first_key_kept():
    vectors = distinct_with_copies(60, {3: 2, 10: 1})
    keys = np.array([f"k{i:03d}" for i in range(len(vectors))], dtype=object)
    keys[3] = "z-last"  # the original sorts after its copies: a copy is kept instead
    near = curate.find_near_duplicates(keys, vectors, CurateSettings())
    assert near.calibrated
    assert near.groups == 2
    dropped = {keys[i]: near.near_dup_of[i] for i in np.flatnonzero(pd.notna(near.near_dup_of))}
    assert dropped == {"z-last": "k060", "k061": "k060", "k062": "k010"}
    distinct_cos = 1 - 0.25  # random 32-d vectors are nowhere near this similar
    assert distinct_cos < near.thresholds["all"] < 0.999


def test_near_duplicate_threshold_is_calibrated_per_cluster():
    """A tight cluster (floorplans look alike) needs a higher bar than a loose one."""
    rng = np.random.default_rng(2)
    loose = rng.normal(size=(40, 16))
    tight = rng.normal(scale=0.15, size=(40, 16)) + 3 * rng.normal(size=16)
    vectors = np.vstack([loose, tight, tight[0] + rng.normal(scale=0.01, size=16)])
    vectors -= vectors.mean(axis=0)
    clusters = np.array([0] * 40 + [1] * 41)
    keys = np.array([f"k{i:02d}" for i in range(81)], dtype=object)
    near = curate.find_near_duplicates(keys, vectors, CurateSettings(), clusters)
    assert near.thresholds["1"] > near.thresholds["0"]
    assert near.threshold[0] == near.thresholds["0"] and near.threshold[50] == near.thresholds["1"]
    grouped = set(keys[pd.notna(near.near_dup_of)])
    assert grouped == {"k80"}  # the copy; tight but distinct photos stay apart


def test_fixed_near_duplicate_threshold_is_used_as_given():
    vectors = distinct_with_copies(30, {0: 1})
    keys = np.array([f"k{i:02d}" for i in range(31)], dtype=object)
    near = curate.find_near_duplicates(keys, vectors, CurateSettings(near_duplicate_cosine=-1.0))
    assert not near.calibrated and (near.threshold == -1.0).all()
    assert near.groups == 1 and pd.notna(near.near_dup_of).sum() == 30


def test_knn_search_is_bounded_by_chunks_not_a_full_matrix(monkeypatch):
    """sklearn's brute search honours working_memory; a tiny budget still gives exact answers."""
    import sklearn

    vectors = distinct_with_copies(500, {1: 1})
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with sklearn.config_context(working_memory=0.01):  # 10 kB: forces many chunks
        cosine, index = curate.neighbours(unit, 3)
    exact = unit @ unit.T
    np.fill_diagonal(exact, -np.inf)
    np.testing.assert_array_equal(index[:, 0], exact.argmax(axis=1))
    np.testing.assert_allclose(cosine[:, 0], exact.max(axis=1), atol=1e-5)


def test_outliers_are_the_far_points_of_each_group():
    rng = np.random.default_rng(0)
    inliers = rng.normal(scale=0.1, size=(40, 8)) + 1.0
    far = np.full((1, 8), -1.0)
    small = rng.normal(size=(5, 8))
    reduced = np.vstack([inliers, far, small]).astype(np.float32)
    groups = pd.Series(["a/exterior"] * 41 + ["b/exterior"] * 5)
    cfg = CurateSettings(outlier_percentile=97.0, outlier_min_group=20)
    scores, is_outlier = curate.outlier_scores(reduced, groups, cfg)
    assert is_outlier[40] and scores[40] == np.nanmax(scores)
    assert is_outlier[:40].sum() <= 1
    assert not is_outlier[41:].any() and np.isnan(scores[41:]).all()


# --- the funnel -------------------------------------------------------------------------------


def funnel_case(cfg: CurateSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """A frame after ``assemble``: every drop reason occurs, in two cities."""
    rows, types, reduced = [], {}, []
    rng = np.random.default_rng(1)
    centre = {"exterior": 1.0, "landscape": -1.0, "floorplan": 3.0}
    for i in range(60):
        kind = ("exterior", "landscape", "floorplan")[i % 3]
        city = ("austin", "boise")[i % 2]
        rows.append({"key": f"{city}/L{i}/p.jpg", "city": city, "sha256": f"s{i}"})
        types[f"s{i}"] = kind
        reduced.append(rng.normal(scale=0.5, size=6) + centre[kind])
    reduced[1] = reduced[0] + 1e-4  # s1 nearly duplicates s0
    rows.append({"key": "austin/x/corrupt.jpg", "city": "austin", "status": "corrupt"})
    rows.append({"key": "boise/x/dup.jpg", "city": "boise", "status": "duplicate", "sha256": "s4"})
    images = manifest_frame(rows)
    clusters = pd.DataFrame(
        {"sha256": list(types), "cluster": np.arange(60) % 3, "cluster_distance": 1.0}
    )
    kinds = pd.DataFrame(
        {
            "sha256": list(types),
            "image_type": list(types.values()),
            "type_confidence": 0.9,
            "type_margin": 0.5,
            "type_source": "classifier",
        }
    )
    scores = pd.DataFrame(
        {
            "sha256": list(types),
            "brightness_p99": 0.8,
            "brightness_p05": 0.2,
            "sharpness": 0.5,
            "entropy": 6.0,
            "colorfulness": 0.2,
            "error": None,
        }
    )
    scores.loc[6, "brightness_p99"] = 0.01  # s6: dark
    frame = curate.assemble(images, clusters, kinds, scores, cfg)
    full = np.full((len(frame), 6), np.nan, dtype=np.float32)
    for row, sha in enumerate(frame["sha256"]):
        if sha in types:
            full[row] = reduced[int(sha[1:])]
    return frame, full


def test_funnel_counts_add_up_and_every_drop_has_one_reason():
    cfg = CurateSettings(outlier_min_group=5, outlier_percentile=90.0, near_duplicate_cosine=0.9999)
    frame, reduced = funnel_case(cfg)
    curate.decide(frame, reduced, cfg)
    table = curate.funnel_table(frame, cfg.wanted_types)
    totals = curate.funnel_totals(table)
    counts = [totals[s] for s in curate.STAGES]
    assert counts == sorted(counts, reverse=True)
    assert totals["objects"] == len(frame) == 62
    assert totals["objects"] - totals["training_set"] == frame["drop_reason"].notna().sum()
    assert totals["training_set"] == frame["keep"].sum()
    reasons = frame["drop_reason"].value_counts().to_dict()
    assert set(reasons) == set(curate.DROP_REASONS)
    assert reasons["invalid"] == 1 and reasons["duplicate"] == 1 and reasons["near_duplicate"] == 1
    assert reasons["unwanted_type"] == 20  # the floorplans
    assert frame.set_index("sha256").loc["s6", "drop_reason"] == "low_quality"
    per_group = table[table["city"] != "ALL"][list(curate.STAGES)].sum()
    assert per_group.to_dict() == totals
    assert (frame["keep"] == frame["drop_reason"].isna()).all()


def test_unknown_types_are_dropped_unless_wanted():
    cfg = CurateSettings(near_duplicate_cosine=0.9999)
    frame, reduced = funnel_case(cfg)
    frame["image_type"] = "unknown"
    curate.decide(frame, reduced, cfg)
    assert frame["keep"].sum() == 0
    wanting = CurateSettings(near_duplicate_cosine=0.9999, wanted_types=("unknown",))
    curate.decide(frame, reduced, wanting)
    assert frame["keep"].sum() > 0


def test_curated_frame_fits_the_curated_schema():
    cfg = CurateSettings(near_duplicate_cosine=0.9999)
    frame, reduced = funnel_case(cfg)
    curate.decide(frame, reduced, cfg)
    table = manifest.to_table(frame, curate.CURATED_SCHEMA)
    assert table.num_rows == 62
    assert set(IMAGE_MANIFEST_SCHEMA.names) < set(table.schema.names)


def test_wanted_types_must_be_known():
    with pytest.raises(ValueError, match="landscape"):
        CurateSettings(wanted_types=("exterior", "garden"))


# --- on synthetic listings, through the real S3 server ----------------------------------------


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory) -> World:
    return build_world(s3_server, tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def first_run(world: World) -> CurateResult:
    return world.curate(track=True)


def curated_frame(result: CurateResult) -> pd.DataFrame:
    return manifest.read(result.curated_uri)


@pytest.mark.slow
@pytest.mark.integration
def test_thirty_labels_per_type_type_ninety_percent_of_other_photos(world, first_run):
    frame = curated_frame(first_run)
    photos = frame[(frame["status"] == "ok") & (frame["type_source"] == "classifier")]
    truth = world.kind_of(photos["key"])
    accuracy = float((photos["image_type"] == truth).mean())
    ari = adjusted_rand_score(truth, photos["cluster"])
    print(
        f"\ntype accuracy on {len(photos)} unlabelled photos: {accuracy:.3f}; "
        f"k-means ARI vs truth: {ari:.3f}; held-out CV accuracy on labels: "
        f"{first_run.types.classifier['cv_accuracy']:.3f}"
    )
    assert len(photos) >= 100
    assert accuracy >= 0.9
    assert ari > 0.3  # k-means alone finds the kinds only roughly (0 would be chance)
    labelled = frame[frame["type_source"] == "label"]
    assert first_run.types.labels_used == labelled["sha256"].nunique() >= 5 * 25


@pytest.mark.slow
@pytest.mark.integration
def test_synth_funnel_accounts_for_every_object(world, first_run):
    frame = curated_frame(first_run)
    funnel = first_run.filter.funnel
    assert funnel["objects"] == len(frame) == len(manifest.read(world.manifest_uri))
    assert list(funnel.values()) == sorted(funnel.values(), reverse=True)
    invalid = (~frame["status"].isin(["ok", "duplicate"])).sum()
    assert first_run.filter.drop_counts["invalid"] == invalid > 0
    assert first_run.filter.drop_counts["duplicate"] == (frame["status"] == "duplicate").sum() > 0
    assert funnel["objects"] - funnel["training_set"] == sum(first_run.filter.drop_counts.values())
    kept = frame[frame["keep"]]
    assert len(kept) == funnel["training_set"] > 0
    assert set(kept["image_type"]) <= {"exterior", "landscape"}
    assert not kept[list(curate.FLAG_COLUMNS)].any(axis=None)
    truth_kinds = world.kind_of(kept["key"])
    assert (truth_kinds.isin(["exterior", "landscape"])).mean() > 0.9
    grayscale = world.truth.loc[world.truth["defect"] == "grayscale", "key"]
    assert (frame.set_index("key").loc[grayscale, "is_grayscale"]).all()


@pytest.mark.slow
@pytest.mark.integration
def test_synth_photos_are_not_near_duplicates_of_each_other(first_run):
    frame = curated_frame(first_run)
    assert first_run.filter.near_duplicate_calibrated
    assert frame["near_dup_of"].isna().all()


@pytest.mark.slow
@pytest.mark.integration
def test_curate_logs_funnel_galleries_classifier_and_dataset_to_mlflow(world, first_run):
    import mlflow

    client = mlflow.MlflowClient(world.settings.mlflow_tracking_uri)
    run = client.get_run(first_run.mlflow_run_id)
    assert run.data.metrics["funnel.training_set"] == first_run.filter.funnel["training_set"]
    assert run.data.metrics["type_accuracy_cv"] > 0.8
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"funnel.json", "confusion_matrix.json", "curation_summary.json"} <= artifacts
    galleries = {a.path for a in client.list_artifacts(run.info.run_id, "galleries")}
    assert "galleries/cluster-0.png" in galleries
    assert "galleries/dropped-unwanted_type.png" in galleries
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "curated"
    assert (
        json.loads(dataset_input.dataset.profile)["num_rows"]
        == (first_run.filter.funnel["training_set"])
    )


@pytest.mark.slow
@pytest.mark.integration
def test_curating_an_unchanged_manifest_embeds_and_scores_nothing(world, first_run):
    again = world.curate()
    assert again.embed.computed == 0 and again.quality.computed == 0
    assert again.embed.reused == first_run.embed.computed + first_run.embed.reused
    assert again.filter.funnel == first_run.filter.funnel
    assert storage.latest_uri(manifest.collection_uri(world.store, curate.CURATED_COLLECTION)) == (
        again.curated_uri
    )


def copies_of(image: Image.Image) -> dict[str, tuple[bytes, str]]:
    """Resized, re-encoded and slightly cropped (2% a side) copies: bytes and extension."""
    w, h = image.size

    cropped = image.crop((w // 50, h // 50, w - w // 50, h - h // 50))
    return {
        "resized": (encode(image.resize((w * 2 // 3, h * 2 // 3)), "PNG"), "png"),
        "reencoded": (encode(image, "JPEG", quality=40), "jpg"),
        "cropped": (encode(cropped, "JPEG", quality=85), "jpg"),
    }


@pytest.mark.slow
@pytest.mark.integration
def test_ten_new_photos_embed_ten_and_copies_group_with_their_originals(world, first_run):
    s3 = world.settings
    client = boto3.client("s3", endpoint_url=s3.s3_endpoint_url)
    frame = curated_frame(first_run)
    ok = frame[(frame["status"] == "ok") & frame["keep"]].sort_values("key")
    originals = pd.concat(
        [ok[world.kind_of(ok["key"]) == kind].head(2) for kind in ("exterior", "landscape")]
    ).head(3)
    copies: dict[str, str] = {}
    for n, row in enumerate(originals.itertuples()):
        picture = Image.open(io.BytesIO(storage.read_bytes(row.uri, s3.storage_options())))
        for variant, (data, ext) in copies_of(picture.convert("RGB")).items():
            key = f"{row.city}/NEW{n}/{variant}.{ext}"
            client.put_object(Bucket=world.bucket, Key=f"raw/{key}", Body=data)
            copies[key] = row.key
    fresh = synth.render("exterior", "austin", np.random.default_rng(12345), (320, 240))
    buffer = io.BytesIO()
    fresh.save(buffer, format="JPEG")
    client.put_object(Bucket=world.bucket, Key="raw/austin/NEW9/fresh.jpg", Body=buffer.getvalue())
    assert len(copies) + 1 == 10

    result = world.curate(world.ingest())
    assert result.embed.computed == 10

    after = curated_frame(result).set_index("key")
    group = after["near_dup_of"].fillna(pd.Series(after.index, index=after.index))
    for copy_key, original_key in copies.items():
        assert group[copy_key] == group[original_key], (copy_key, after.loc[copy_key])
    assert pd.isna(after.loc["austin/NEW9/fresh.jpg", "near_dup_of"])
    old = after[after.index.isin(frame["key"]) & (after["status"] == "ok")]
    assert group[old.index].is_unique  # distinct photos never share a group
    print(f"\nnear-duplicate thresholds: {result.filter.near_duplicate_cosine}")


@pytest.fixture
def world_env(world: World, monkeypatch) -> World:
    """The world's settings as HOUSEGAN_* variables, for the CLI."""
    for name, value in {
        "HOUSEGAN_STORE_URI": world.store,
        "HOUSEGAN_SOURCE_URI": world.settings.source_uri,
        "HOUSEGAN_S3_ENDPOINT_URL": world.settings.s3_endpoint_url,
        "HOUSEGAN_MLFLOW_TRACKING_URI": world.settings.mlflow_tracking_uri,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield world
    get_settings.cache_clear()


@pytest.mark.slow
@pytest.mark.integration
def test_cli_curate_prints_the_curated_manifest_and_funnel_as_last_json_line(
    world_env, first_run, capsys
):
    code = main(["curate", "--store", world_env.store, "--no-mlflow", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    latest = storage.latest_uri(manifest.collection_uri(world_env.store, curate.CURATED_COLLECTION))
    assert summary["curated_manifest_uri"] == latest
    images = manifest.read(storage.latest_uri(manifest.collection_uri(world_env.store)))
    assert summary["funnel"]["objects"] == len(images)
    assert summary["embedded"] == 0


def test_cli_curate_without_a_manifest_is_one_line_error(tmp_path, capsys):
    code = main(["curate", "--store", (tmp_path / "empty").as_uri(), "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "manifests/images" in err[0]


@pytest.mark.slow
@pytest.mark.integration
def test_finetuning_switches_curation_to_the_finetuned_embedder(s3_server, tmp_path):
    from housegan import embed

    small = build_world(s3_server, tmp_path, cities=2, per_city=8, labels_per_type=3, input_size=32)
    small.settings = small.settings.model_copy(
        update={"curate": CurateSettings(finetune=True, finetune_epochs=2)}
    )
    result = small.curate()
    assert result.finetune is not None and not result.finetune.reused
    assert result.embed.tag != embed.model_tag(small.settings.embed)
    assert result.embed.tag == embed.model_tag(
        small.settings.embed.model_copy(update={"weights": result.finetune.weights_uri})
    )
    assert result.types.classifier is not None
