"""Versioned and parts collections on S3, against the server the fixtures start."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from housegan.collections import PartsCollection, VersionedCollection
from housegan.config import Settings

SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("score", pa.int64()),
        pa.field("status", pa.string()),
    ]
)


def rows(*triples: tuple[str, int, str]) -> pa.Table:
    sha256s, scores, statuses = zip(*triples, strict=True)
    return pa.table(
        {"sha256": list(sha256s), "score": list(scores), "status": list(statuses)}, schema=SCHEMA
    )


def as_dict(table: pa.Table) -> dict[str, int]:
    return dict(zip(table["sha256"].to_pylist(), table["score"].to_pylist(), strict=True))


@pytest.fixture
def parts(tmp_path: Path) -> PartsCollection:
    return PartsCollection((tmp_path / "scores").as_uri(), "sha256", SCHEMA)


@pytest.mark.integration
def test_both_collections_on_s3(settings: Settings, bucket: str):
    options = settings.storage_options()
    versions = VersionedCollection(f"s3://{bucket}/store/m", storage_options=options)
    old = versions.put_table(rows(("a", 1, "ok")))
    versions.write_version(b"an unpublished version")
    assert versions.latest() == old and as_dict(versions.read_table()) == {"a": 1}

    parts = PartsCollection(f"s3://{bucket}/store/scores", "sha256", SCHEMA, options)
    assert parts.index() is None
    parts.publish([parts.append(rows(("a", 1, "ok"), ("b", 2, "ok")))])
    parts.append(rows(("c", 3, "ok")))  # unpublished
    parts.publish([parts.append(rows(("b", 20, "ok")))])
    assert as_dict(parts.read(dedupe=True)) == {"a": 1, "b": 20}
    assert as_dict(parts.read(keys=["b"], dedupe=True)) == {"b": 20}
