from __future__ import annotations

import pandas as pd
import pytest

from housegan import manifest, storage
from housegan.config import Settings


def test_local_atomic_write_replaces_whole_file(tmp_path):
    uri = (tmp_path / "a" / "b.bin").as_uri()
    storage.write_bytes_atomic(uri, b"one")
    storage.write_bytes_atomic(uri, b"two")
    assert storage.read_bytes(uri) == b"two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_relative_file_uri_is_made_absolute(tmp_path):
    assert storage.normalize_uri("file://./x") == (tmp_path / "x").as_uri()
    assert storage.normalize_uri("rel/y") == (tmp_path / "rel" / "y").as_uri()


def test_pointer_names_latest_version_and_old_versions_stay(tmp_path):
    collection = (tmp_path / "m").as_uri()
    frame = manifest.empty_frame(manifest.IMAGE_MANIFEST_SCHEMA)
    first = manifest.write_version(frame, collection, manifest.IMAGE_MANIFEST_SCHEMA)
    second = manifest.write_version(frame, collection, manifest.IMAGE_MANIFEST_SCHEMA)
    assert first != second
    assert storage.latest_uri(collection) == second
    assert storage.exists(first)


def test_manifest_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="missing columns"):
        manifest.to_table(pd.DataFrame({"key": ["a"]}), manifest.IMAGE_MANIFEST_SCHEMA)


def test_settings_env_overrides_yaml(tmp_path, monkeypatch):
    (tmp_path / "housegan.yaml").write_text(
        "store_uri: s3://from-yaml/store\nimages:\n  min_side: 10\n"
    )
    monkeypatch.setenv("HOUSEGAN_IMAGES__MIN_SIDE", "64")
    settings = Settings()
    assert settings.store_uri == "s3://from-yaml/store"
    assert settings.images.min_side == 64


def test_key_pattern_without_city_is_rejected():
    with pytest.raises(ValueError, match="city"):
        Settings(key_pattern=r"(?P<listing_id>[^/]+)/x")
