"""Versioned and parts collections on S3, against the server the fixtures start."""

from __future__ import annotations

import pytest

from housegan.collections import PartsCollection, VersionedCollection
from housegan.config import Settings
from housegan.testing.parts import SCORE_SCHEMA, score_rows, scores_by_key


@pytest.mark.integration
def test_both_collections_on_s3(settings: Settings, bucket: str):
    options = settings.storage_options()
    versions = VersionedCollection(f"s3://{bucket}/store/m", storage_options=options)
    old = versions.put_table(score_rows(("a", 1, "ok")))
    versions.write_version(b"an unpublished version")
    assert versions.latest() == old and scores_by_key(versions.read_table()) == {"a": 1}

    parts = PartsCollection(f"s3://{bucket}/store/scores", "sha256", SCORE_SCHEMA, options)
    assert parts.index() is None
    parts.publish([parts.append(score_rows(("a", 1, "ok"), ("b", 2, "ok")))])
    parts.append(score_rows(("c", 3, "ok")))  # unpublished
    parts.publish([parts.append(score_rows(("b", 20, "ok")))])
    assert scores_by_key(parts.read(dedupe=True)) == {"a": 1, "b": 20}
    assert scores_by_key(parts.read(keys=["b"], dedupe=True)) == {"b": 20}
