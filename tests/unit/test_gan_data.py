"""Packing manifest rows into a training set: filters, EXIF, crops, ids, bad photos, S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from housegan import storage
from housegan.gan import data
from housegan.gan.data import load_packed, prepare, select_rows
from housegan.testing import encode
from housegan.testing.gan import write_photos


def _manifest(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def test_select_rows_keeps_only_kept_ok_rows_with_labels() -> None:
    frame = pd.DataFrame(
        {
            "uri": ["a", "b", "c", "d", "e"],
            "city": ["x", "x", "y", "y", None],
            "image_type": ["exterior"] * 5,
            "keep": [True, False, True, True, True],
            "status": ["ok", "ok", "corrupt", "ok", "ok"],
        }
    )
    assert select_rows(frame)["uri"].tolist() == ["a", "d"]


def test_select_rows_names_missing_columns() -> None:
    with pytest.raises(ValueError, match="image_type"):
        select_rows(pd.DataFrame({"uri": ["a"], "city": ["x"]}))


def test_prepare_packs_images_codes_and_vocab(tmp_path: Path) -> None:
    manifest = write_photos(tmp_path, per_class=3, cities=("austin", "boston", "denver"))
    prepared = prepare(str(manifest), (tmp_path / "store").as_uri(), 32)
    packed = load_packed(prepared.uri)

    assert prepared.n == len(packed) == 3 * 2 * 3 and prepared.skipped == 0
    assert packed.images.shape == (18, 32, 32, 3) and packed.images.dtype == np.uint8
    assert packed.cities == prepared.cities == ["austin", "boston", "denver"]
    assert packed.image_types == ["exterior", "landscape"]
    assert np.bincount(packed.city).tolist() == [6, 6, 6]
    # labels travel with their images: austin's backgrounds are red, boston's blue
    corner = packed.images[:, 0, 0, :].astype(int)
    austin, boston = packed.city == 0, packed.city == 1
    assert (corner[austin, 0] > corner[austin, 2]).all()
    assert (corner[boston, 2] > corner[boston, 0]).all()


def test_prepare_is_idempotent_and_the_id_depends_on_size_and_labels(tmp_path: Path) -> None:
    manifest = write_photos(tmp_path, per_class=2)
    store = (tmp_path / "store").as_uri()
    first = prepare(str(manifest), store, 32)
    data_file = storage.local_path(storage.join(first.uri, data.DATA_FILE))
    written_at = data_file.stat().st_mtime_ns

    again = prepare(str(manifest), store, 32)
    assert again == first and data_file.stat().st_mtime_ns == written_at
    assert prepare(str(manifest), store, 64).dataset_id != first.dataset_id
    relabelled = pd.read_parquet(manifest).assign(city="elsewhere")
    relabelled.to_parquet(tmp_path / "relabelled.parquet")
    assert prepare(str(tmp_path / "relabelled.parquet"), store, 32).dataset_id != first.dataset_id


def test_undecodable_photos_are_recorded_not_fatal(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (40, 30), "red")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    rows = [
        {"uri": good.as_uri(), "city": "austin", "image_type": "exterior"},
        {"uri": bad.as_uri(), "city": "boston", "image_type": "exterior"},
    ]
    prepared = prepare(_manifest(tmp_path, rows), (tmp_path / "store").as_uri(), 32)

    assert prepared.n == 1 and prepared.skipped == 1
    assert prepared.cities == ["austin"]  # a label whose photos all failed is not in the vocab
    skipped = json.loads(storage.read_bytes(storage.join(prepared.uri, data.SKIPPED_FILE)))
    assert skipped[0]["uri"] == bad.as_uri() and "not an image" in skipped[0]["error"]


def test_exif_orientation_is_applied_before_the_center_crop(tmp_path: Path) -> None:
    # Stored 60x20, its centre square red on the left, blue on the right. EXIF 6 says
    # "display rotated 90 degrees clockwise": the left half becomes the top half.
    stored = Image.new("RGB", (60, 20), "blue")
    stored.paste(Image.new("RGB", (10, 20), "red"), (20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "rotated.jpg"
    photo.write_bytes(encode(stored, "JPEG", exif=exif, quality=95))

    pixels = data.load_image(photo.read_bytes(), 32).astype(int)
    assert pixels.shape == (32, 32, 3)
    top, bottom = pixels[:10], pixels[22:]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 60
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 60
    upright = data.load_image(encode(stored), 32).astype(int)  # no EXIF: red stays on the left
    assert upright[:, :10, 0].mean() > 200 and upright[:10, 22:, 0].mean() < 60


def test_empty_selection_is_a_clear_error(tmp_path: Path) -> None:
    rows = [{"uri": "file:///x.png", "city": "a", "image_type": "t", "keep": False}]
    with pytest.raises(ValueError, match="no trainable rows"):
        prepare(_manifest(tmp_path, rows), (tmp_path / "store").as_uri(), 32)
