"""The storage layer's two kinds of collection: versioned collections and parts collections."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from housegan import collections, storage
from housegan.collections import Index, PartsCollection, VersionedCollection
from housegan.testing.parts import SCORE_SCHEMA, score_rows, scores_by_key


@pytest.fixture
def parts(tmp_path: Path) -> PartsCollection:
    return PartsCollection((tmp_path / "scores").as_uri(), "sha256", SCORE_SCHEMA)


# --- versioned collections -------------------------------------------------------------------


def test_versions_are_immutable_and_latest_names_the_newest(tmp_path: Path):
    versions = VersionedCollection((tmp_path / "m").as_uri(), ".json")
    first = versions.put(b'{"n": 1}')
    first_bytes = storage.read_bytes(first)
    second = versions.put(b'{"n": 2}')
    assert first != second and versions.latest() == second
    assert storage.read_bytes(first) == first_bytes  # never overwritten
    assert versions.read() == b'{"n": 2}' and versions.read(first) == b'{"n": 1}'


def test_crash_before_the_pointer_leaves_the_old_latest_readable(tmp_path: Path, monkeypatch):
    versions = VersionedCollection((tmp_path / "m").as_uri())
    old = versions.put_table(score_rows(("a", 1, "ok")))

    def crash(*args, **kwargs):
        raise OSError("killed between the version and its pointer")

    monkeypatch.setattr(storage, "publish_pointer", crash)
    with pytest.raises(OSError, match="killed"):
        versions.put_table(score_rows(("b", 2, "ok")))
    monkeypatch.undo()
    assert versions.latest() == old
    assert scores_by_key(versions.read_table()) == {"a": 1}
    assert len(list((tmp_path / "m").glob("*.parquet"))) == 2  # the orphan is left, unnamed


def test_nothing_published_reads_as_none(tmp_path: Path):
    versions = VersionedCollection((tmp_path / "empty").as_uri())
    assert (versions.latest(), versions.read(), versions.read_table()) == (None, None, None)


def test_resolve_takes_a_file_or_a_folder_meaning_its_latest(tmp_path: Path):
    folder = (tmp_path / "m").as_uri()
    with pytest.raises(FileNotFoundError, match="neither"):
        collections.resolve(folder)
    version = VersionedCollection(folder).put_table(score_rows(("a", 1, "ok")))
    assert collections.resolve(folder) == version
    assert collections.resolve(version) == version


def test_a_version_from_another_collection_is_not_published(tmp_path: Path):
    here = VersionedCollection((tmp_path / "here").as_uri())
    elsewhere = VersionedCollection((tmp_path / "elsewhere").as_uri()).write_version(b"x")
    with pytest.raises(ValueError, match="not inside"):
        here.publish(elsewhere)


# --- parts collections: writing and publishing ------------------------------------------------


def test_reader_reads_exactly_the_published_parts(parts: PartsCollection):
    first = parts.append(score_rows(("a", 1, "ok"), ("b", 2, "ok")))
    second = parts.append(score_rows(("c", 3, "ok")))
    parts.append(score_rows(("d", 4, "ok")))  # written, never published (a crash, a lost task)
    assert parts.index() is None and parts.read().num_rows == 0
    parts.publish([first, second])
    assert scores_by_key(parts.read()) == {"a": 1, "b": 2, "c": 3}
    assert [part.rows for part in parts.list_parts()] == [2, 1]


def test_each_publish_is_a_new_index_naming_the_old_parts_and_the_new(parts: PartsCollection):
    first_index = parts.publish([parts.append(score_rows(("a", 1, "ok")))])
    second_index = parts.publish([parts.append(score_rows(("b", 2, "ok")))])
    old, new = (json.loads(storage.read_bytes(uri)) for uri in (first_index, second_index))
    assert (old["rows"], new["rows"]) == (1, 2)
    assert old["parts"] == new["parts"][:1]
    assert parts.versions.latest() == second_index


def test_publishing_a_part_twice_names_it_once(parts: PartsCollection):
    part = parts.append(score_rows(("a", 1, "ok")))
    parts.publish([part, part])
    parts.publish([part])
    assert len(parts.list_parts()) == 1 and parts.read().num_rows == 1


def test_publish_new_without_new_parts_keeps_the_latest_index(parts: PartsCollection):
    empty = parts.publish_new([])  # no index yet: an empty one, so readers can open something
    assert parts.index() == Index((), empty)
    assert parts.publish_new([]) == empty
    assert parts.publish_new([parts.append(score_rows(("a", 1, "ok")))]) != empty


def test_part_of_another_schema_or_folder_is_refused(parts: PartsCollection, tmp_path: Path):
    with pytest.raises(ValueError, match="schema"):
        parts.append(pa.table({"sha256": ["a"]}))
    elsewhere = storage.write_parquet(score_rows(("a", 1, "ok")), (tmp_path / "x.parquet").as_uri())
    with pytest.raises(ValueError, match="not inside"):
        parts.publish([elsewhere])


def test_publisher_whose_index_was_replaced_publishes_again_on_top(
    parts: PartsCollection, monkeypatch
):
    ours, theirs = (
        parts.append(score_rows(("a", 1, "ok"))),
        parts.append(score_rows(("b", 2, "ok"))),
    )
    real_publish = VersionedCollection.publish
    raced = []

    def racing_publish(self, version_uri, metadata=None):
        uri = real_publish(self, version_uri, metadata)
        if not raced:  # a concurrent publisher that read the index before ours points last
            raced.append(True)
            name = theirs.removeprefix(parts.uri + "/")
            body = {"rows": 1, "parts": [{"name": name, "rows": 1}]}
            real_publish(self, self.write_version(json.dumps(body).encode()))
        return uri

    monkeypatch.setattr(VersionedCollection, "publish", racing_publish)
    parts.publish([ours])
    assert scores_by_key(parts.read()) == {"a": 1, "b": 2}  # neither publisher's part is lost


# --- parts collections: the reader ------------------------------------------------------------


def test_key_filter_reads_only_the_wanted_rows_and_skips_other_parts(
    parts: PartsCollection, monkeypatch
):
    parts.publish(
        [
            parts.append(score_rows(("a", 1, "ok"), ("b", 2, "ok"))),
            parts.append(score_rows(("c", 3, "ok"), ("d", 4, "ok"))),
        ]
    )
    reads: list[list[str]] = []
    real_read = pq.ParquetFile.read

    def spy(self, columns=None, **kwargs):
        reads.append(list(columns))
        return real_read(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    assert scores_by_key(parts.read(keys=["b", "zz"])) == {"b": 2}
    # The second part holds no wanted key: only its key column was read.
    assert reads == [["sha256"], ["score", "status"], ["sha256"]]
    assert parts.read(keys=[]).num_rows == 0


def test_dedupe_keeps_the_last_written_row_of_each_key(parts: PartsCollection):
    parts.publish([parts.append(score_rows(("a", 1, "ok"), ("b", 2, "ok"), ("a", 3, "ok")))])
    parts.publish([parts.append(score_rows(("b", 20, "ok"), ("c", 30, "ok")))])
    assert parts.read().num_rows == 5  # nothing is merged unless asked
    assert scores_by_key(parts.read(dedupe=True)) == {"a": 3, "b": 20, "c": 30}
    assert scores_by_key(parts.read(keys=["a", "b"], dedupe=True)) == {"a": 3, "b": 20}


def test_where_filters_before_dedupe_so_a_later_failure_hides_no_success(
    parts: PartsCollection,
):
    parts.publish([parts.append(score_rows(("a", 1, "ok"), ("b", 2, "ok")))])
    parts.publish([parts.append(score_rows(("a", 0, "unreadable")))])
    ok = parts.read(["sha256", "score"], where={"status": ["ok"]}, dedupe=True)
    assert scores_by_key(ok) == {"a": 1, "b": 2} and ok.column_names == ["sha256", "score"]


def test_scan_streams_one_table_per_part_and_takes_a_fixed_part_list(parts: PartsCollection):
    parts.publish(
        [parts.append(score_rows(("a", 1, "ok"))), parts.append(score_rows(("b", 2, "ok")))]
    )
    fixed = parts.list_parts()
    parts.publish([parts.append(score_rows(("c", 3, "ok")))])  # published between two passes
    assert [scores_by_key(t) for t in parts.scan(parts=fixed)] == [{"a": 1}, {"b": 2}]
    assert len(list(parts.scan())) == 3


def test_empty_collection_reads_as_the_schemas_empty_table(parts: PartsCollection):
    assert parts.read().schema.names == SCORE_SCHEMA.names
    assert parts.read(["score"]).column_names == ["score"]


def test_collection_without_a_key_refuses_keys_and_dedupe(tmp_path: Path):
    keyless = PartsCollection((tmp_path / "labels").as_uri(), key=None)
    with pytest.raises(ValueError, match="no key"):
        keyless.read(dedupe=True)


def test_folder_of_parts_written_before_indexes_is_read_and_taken_over(
    parts: PartsCollection, tmp_path: Path
):
    storage.write_parquet(
        score_rows(("a", 1, "ok")), parts.part_uri("20260101T000000000000Z-0.parquet")
    )
    storage.write_parquet(
        score_rows(("a", 2, "ok")), parts.part_uri("20260102T000000000000Z-1.parquet")
    )
    assert scores_by_key(parts.read(dedupe=True)) == {"a": 2}
    parts.publish([parts.append(score_rows(("b", 3, "ok")))])
    assert [part.rows for part in parts.list_parts()] == [1, 1, 1]
    assert scores_by_key(parts.read(dedupe=True)) == {"a": 2, "b": 3}


# --- on S3 ------------------------------------------------------------------------------------
