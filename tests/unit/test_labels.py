from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from housegan import curate, labels, manifest
from housegan.cli import main
from housegan.config import IMAGE_TYPES, ClusterSettings, CurateSettings, EmbedSettings
from housegan.testing.curation import collinear_blobs


def write_csv(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path.as_uri()


def images_frame(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": [f"c/l/{i}.jpg" for i in range(n)],
            "sha256": [f"sha{i}" for i in range(n)],
            "uri": [f"s3://b/raw/c/l/{i}.jpg" for i in range(n)],
            "status": "ok",
        }
    )


def test_unknown_label_is_rejected_listing_the_valid_ones(tmp_path):
    uri = write_csv(
        tmp_path / "l.csv", [{"key": "a", "label": "exterior"}, {"key": "b", "label": "house"}]
    )
    with pytest.raises(labels.LabelError) as error:
        labels.import_labels(uri, (tmp_path / "store").as_uri())
    message = str(error.value)
    assert "row 2: 'house'" in message
    assert all(kind in message for kind in IMAGE_TYPES)
    assert not (tmp_path / "store").exists()


def test_label_naming_no_photo_is_rejected(tmp_path):
    uri = write_csv(tmp_path / "l.csv", [{"key": "", "sha256": "", "label": "misc"}])
    with pytest.raises(labels.LabelError, match="name no photo"):
        labels.import_labels(uri, (tmp_path / "store").as_uri())


def test_labels_are_case_and_space_tolerant(tmp_path):
    frame = labels.validate_labels(pd.DataFrame({"key": ["a"], "label": [" Exterior "]}), "me")
    assert frame.loc[0, "label"] == "exterior"
    assert frame.loc[0, "labeller"] == "me"


def test_each_import_appends_a_part_and_the_latest_label_wins(tmp_path):
    store = (tmp_path / "store").as_uri()
    first = write_csv(
        tmp_path / "a.csv",
        [{"key": "c/l/0.jpg", "label": "interior"}, {"key": "c/l/1.jpg", "label": "misc"}],
    )
    second = tmp_path / "b.parquet"
    pd.DataFrame({"sha256": ["sha0"], "label": ["exterior"]}).to_parquet(second)
    labels.import_labels(first, store, labeller="ann")
    result = labels.import_labels(second.as_uri(), store, labeller="bob")
    assert result.rows == 1 and result.counts == {"exterior": 1}
    assert len(labels.label_parts(labels.labels_uri(store)).list_parts()) == 2
    merged = labels.read_labels(labels.labels_uri(store))
    assert len(merged) == 3  # nothing is overwritten
    latest = labels.labels_by_content(merged, images_frame())
    assert latest.to_dict() == {"sha0": "exterior", "sha1": "misc"}


def test_labels_for_photos_not_in_the_manifest_are_ignored():
    table = labels.validate_labels(
        pd.DataFrame({"key": ["nope", "c/l/2.jpg"], "label": ["misc", "landscape"]})
    )
    assert labels.labels_by_content(table, images_frame()).to_dict() == {"sha2": "landscape"}


def test_fingerprint_changes_when_labels_are_imported(tmp_path):
    store = (tmp_path / "store").as_uri()
    before = labels.labels_fingerprint(labels.labels_uri(store))
    labels.import_labels(write_csv(tmp_path / "a.csv", [{"key": "x", "label": "misc"}]), store)
    after = labels.labels_fingerprint(labels.labels_uri(store))
    assert before != after
    assert after == labels.labels_fingerprint(labels.labels_uri(store))


def test_classifier_reports_held_out_accuracy_and_confusion():
    vectors, truth = collinear_blobs(20, 3, dim=32)
    names = np.array(IMAGE_TYPES[:3])[truth]
    _, report = labels.train_classifier(vectors - vectors.mean(0), names, CurateSettings())
    assert report.cv_folds == 5
    assert report.cv_accuracy > 0.9
    assert report.confusion.to_numpy().sum() == 60
    assert np.trace(report.confusion.to_numpy()) == round(report.cv_accuracy * 60)


def test_types_come_from_labels_then_classifier():
    vectors, truth = collinear_blobs(30, 3, dim=32, seed=1)
    features = vectors - vectors.mean(0)
    sha = np.array([f"s{i}" for i in range(len(truth))], dtype=object)
    names = np.array(["exterior", "landscape", "floorplan"])[truth]
    labelled_rows = np.concatenate([np.flatnonzero(truth == t)[:8] for t in range(3)])
    labelled = pd.Series(names[labelled_rows], index=sha[labelled_rows])
    labelled.iloc[0] = "misc"  # a human disagreeing with the pattern still wins for that photo
    frame, report = labels.assign_types(
        sha, features, np.zeros(len(sha)), labelled, ClusterSettings(), CurateSettings()
    )
    by_label = frame.set_index("sha256").loc[labelled.index]
    assert (by_label["image_type"] == labelled).all()
    assert (by_label["type_source"] == "label").all()
    others = ~frame["sha256"].isin(labelled.index)
    accuracy = (frame.loc[others, "image_type"] == names[others]).mean()
    assert accuracy > 0.95
    assert frame.loc[others, "type_confidence"].between(0, 1).all()
    assert report.n_labelled == 24


def test_without_labels_types_come_from_the_cluster_mapping_or_are_unknown():
    sha = np.array(["a", "b", "c"], dtype=object)
    frame, report = labels.assign_types(
        sha,
        np.zeros((3, 2)),
        np.array([0, 1, 2]),
        pd.Series(dtype=object),
        ClusterSettings(cluster_to_type={0: "exterior", 1: "floorplan"}),
        CurateSettings(),
    )
    assert report is None
    assert list(frame["image_type"]) == ["exterior", "floorplan", "unknown"]
    assert list(frame["type_source"]) == ["cluster", "cluster", "none"]


def test_export_puts_the_least_certain_unlabelled_photos_first():
    curated = images_frame(5).assign(
        type_margin=[0.9, 0.1, 0.5, 0.05, 0.3],
        image_type="exterior",
        type_confidence=0.5,
        cluster_distance=1.0,
    )
    out = labels.export_candidates(curated, labelled_shas={"sha3"}, n=3)
    assert list(out["key"]) == ["c/l/1.jpg", "c/l/4.jpg", "c/l/2.jpg"]
    assert list(out.columns[:4]) == ["key", "uri", "sha256", "suggested_label"]


def test_export_without_classifier_puts_photos_far_from_centroids_first():
    curated = images_frame(3).assign(
        type_margin=np.nan, image_type="unknown", type_confidence=0.0, cluster_distance=[1, 3, 2]
    )
    out = labels.export_candidates(curated, set(), n=2)
    assert list(out["key"]) == ["c/l/1.jpg", "c/l/2.jpg"]


def test_rows_left_blank_in_an_exported_sheet_are_skipped(tmp_path):
    uri = write_csv(
        tmp_path / "sheet.csv",
        [{"key": "a", "label": ""}, {"key": "b", "label": "misc"}, {"key": "c", "label": "bad"}],
    )
    with pytest.raises(labels.LabelError, match="row 3: 'bad'"):
        labels.import_labels(uri, (tmp_path / "store").as_uri())
    uri = write_csv(tmp_path / "ok.csv", [{"key": "a", "label": ""}, {"key": "b", "label": "misc"}])
    result = labels.import_labels(uri, (tmp_path / "store").as_uri())
    assert (result.rows, result.skipped) == (1, 1)


def publish_curated(store: str, rows: int = 6) -> str:
    """A small curated manifest as ``housegan curate`` would leave it."""
    from housegan.testing.curation import manifest_frame

    frame = manifest_frame(
        [{"key": f"c/l/{i}.jpg", "sha256": f"sha{i}", "city": "c"} for i in range(rows)]
    )
    frame = frame.assign(
        image_type="exterior",
        type_confidence=0.6,
        type_margin=[0.05 * (i + 1) for i in range(rows)],
        type_source="classifier",
        cluster=0,
        cluster_distance=1.0,
        near_dup_of=None,
        keep=True,
        drop_reason=None,
    )
    for column in curate.CURATED_SCHEMA.names:
        if column not in frame.columns:
            field = curate.CURATED_SCHEMA.field(column)
            frame[column] = False if pa.types.is_boolean(field.type) else None
    collection = manifest.collection_uri(store, curate.CURATED_COLLECTION)
    return manifest.write_version(frame, collection, curate.CURATED_SCHEMA)


def test_cli_export_then_import_round_trip(tmp_path, capsys):
    store = (tmp_path / "store").as_uri()
    publish_curated(store)
    main(
        [
            "label",
            "import",
            write_csv(tmp_path / "a.csv", [{"key": "c/l/0.jpg", "label": "misc"}]),
            "--store",
            store,
        ]
    )
    sheet = tmp_path / "todo.csv"
    assert main(["label", "export", "--n", "3", "--out", str(sheet), "--store", store]) == 0
    todo = pd.read_csv(sheet, keep_default_na=False)
    assert list(todo["key"]) == ["c/l/1.jpg", "c/l/2.jpg", "c/l/3.jpg"]  # c/l/0 is labelled
    assert {"uri", "suggested_label", "label"} <= set(todo.columns)
    todo.loc[0, "label"] = "landscape"  # the labeller fills in one row and leaves the rest
    todo.to_csv(sheet, index=False)
    capsys.readouterr()
    assert (
        main(["label", "import", str(sheet), "--store", store, "--labeller", "ann", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 1 and summary["counts"] == {"landscape": 1}
    merged = labels.read_labels(labels.labels_uri(store))
    assert set(merged["label"]) == {"misc", "landscape"}
    assert merged.loc[merged["label"] == "landscape", "labeller"].item() == "ann"


def test_cli_import_of_bad_labels_is_one_line_error(tmp_path, capsys):
    sheet = write_csv(tmp_path / "bad.csv", [{"key": "a", "label": "garage"}])
    assert main(["label", "import", sheet, "--store", (tmp_path / "s").as_uri()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "garage" in err[0] and "exterior" in err[0]


def test_cli_export_before_any_curation_says_what_to_run(tmp_path, capsys):
    assert main(["label", "export", "--store", (tmp_path / "s").as_uri()]) == 2
    assert "housegan curate" in capsys.readouterr().err


def test_finetuning_trains_only_the_last_layers_and_feeds_the_embedder(tmp_path):
    import torch

    from housegan import embed, finetune, synth

    rows = []
    for kind in ("exterior", "floorplan"):
        for i in range(6):
            path = tmp_path / f"{kind}{i}.png"
            synth.render(kind, "austin", np.random.default_rng(i), (64, 48)).save(path)
            rows.append({"uri": path.as_uri(), "sha256": f"{kind}{i}", "label": kind})
    base = EmbedSettings(input_size=32, batch_size=8, num_workers=0)
    cfg = CurateSettings(finetune=True, finetune_epochs=4, finetune_lr=1e-3, finetune_batch_size=4)
    store = (tmp_path / "store").as_uri()
    result = finetune.finetune(pd.DataFrame(rows), store, base, cfg)
    assert result.classes == ["exterior", "floorplan"] and not result.reused
    assert result.losses[-1] < result.losses[0]
    assert result.holdout_accuracy is not None  # 12 photos: 2 or 3 held out

    tuned_cfg = base.model_copy(update={"weights": result.weights_uri})
    assert embed.model_tag(tuned_cfg) != embed.model_tag(base)
    tuned, original = embed.build_model(tuned_cfg), embed.build_model(base)
    tuned_state, original_state = tuned.state_dict(), original.state_dict()
    changed = {k for k in tuned_state if not torch.equal(tuned_state[k], original_state[k])}
    assert changed and all(k.startswith("6.") for k in changed)  # only fc7 of [features..fc7]
    again = finetune.finetune(pd.DataFrame(rows), store, base, cfg)
    assert again.reused and again.weights_uri == result.weights_uri
