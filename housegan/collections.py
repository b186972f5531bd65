"""The two kinds of collection housegan keeps on storage, each with one reader.

**Versioned collection** (``VersionedCollection``): a folder of immutable version files
``<UTC stamp>-<id><suffix>`` and a ``latest`` JSON pointer, written last, naming one of them::

    <collection>/<stamp>-<id>.parquet    immutable versions (or .json)
    <collection>/latest                  pointer to the current version

A version is never overwritten, and a crash between writing a version and its pointer leaves
the previous latest readable. The image and curated manifests are versioned collections of
Parquet files; the index of a parts collection is one of JSON files.

**Parts collection** (``PartsCollection``): append-only immutable Parquet parts, and a
versioned collection of JSON indexes, in the same folder, naming the parts that make the set::

    <collection>/parts/<stamp>-<id>.parquet   immutable parts (unpublished until indexed)
    <collection>/<stamp>-<id>.json            index versions: {"rows", "parts": [{"name", "rows"}]}
    <collection>/latest                       pointer to the current index

Appending writes a part nobody reads yet; publishing writes a new index naming the current
parts plus the new ones. ``scan`` (and ``read``, which concatenates it) is the one reader: the
columns asked for, of exactly the published parts, one part at a time, optionally only rows
whose key is among some keys, and deduplicated so that the last written row of a key wins.
Embeddings (one collection per model tag), quality scores and labels are parts collections.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from housegan import storage

log = logging.getLogger(__name__)

PARTS_FOLDER = "parts"
INDEX_SUFFIX = ".json"
# A publisher re-reads the index after pointing at its own and, if a concurrent publisher's
# pointer replaced it without its parts, publishes again on top; this many times at most.
PUBLISH_ATTEMPTS = 5


class PublishConflict(RuntimeError):
    """Concurrent publishers kept replacing each other's index; publishing again is safe."""


def _inside(collection_uri: str, uri: str) -> str:
    """The name of ``uri`` relative to the collection; ValueError if it lies elsewhere."""
    uri = storage.normalize_uri(uri)
    if not uri.startswith(collection_uri + "/"):
        raise ValueError(f"{uri} is not inside the collection {collection_uri}")
    return uri[len(collection_uri) + 1 :]


# --- versioned collections ------------------------------------------------------------------


@dataclass(frozen=True)
class VersionedCollection:
    """Immutable versions and a ``latest`` pointer written last (see the module docstring)."""

    uri: str
    suffix: str = ".parquet"
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", storage.normalize_uri(self.uri))

    def write_version(self, data: bytes) -> str:
        """Write ``data`` as a new immutable, not yet published version; returns its URI."""
        uri = storage.join(self.uri, storage.new_version_name(self.suffix))
        storage.write_bytes_atomic(uri, data, self.storage_options)
        return uri

    def publish(self, version_uri: str, metadata: Mapping[str, Any] | None = None) -> str:
        """Point ``latest`` at a version already written; returns the version's URI."""
        name = _inside(self.uri, version_uri)
        return storage.publish_pointer(self.uri, name, metadata, self.storage_options)

    def put(self, data: bytes, metadata: Mapping[str, Any] | None = None) -> str:
        """Write a new version, then publish it as latest; returns its URI."""
        return self.publish(self.write_version(data), metadata)

    def put_table(self, table: pa.Table, metadata: Mapping[str, Any] | None = None) -> str:
        """``put`` for a Parquet collection; the pointer records the row count."""
        return self.put(storage.parquet_bytes(table), {"rows": table.num_rows, **(metadata or {})})

    def pointer(self) -> dict[str, Any] | None:
        """The ``latest`` pointer's body, or None if nothing was published yet."""
        return storage.read_pointer(self.uri, self.storage_options)

    def latest(self) -> str | None:
        """The URI of the latest version, or None if nothing was published yet."""
        return storage.latest_uri(self.uri, self.storage_options)

    def read(self, version_uri: str | None = None) -> bytes | None:
        """The bytes of a version (default: the latest); None if nothing was published yet."""
        uri = self.latest() if version_uri is None else version_uri
        return None if uri is None else storage.read_bytes(uri, self.storage_options)

    def read_table(
        self, version_uri: str | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """A Parquet version (default: the latest); None if nothing was published yet."""
        uri = self.latest() if version_uri is None else version_uri
        return None if uri is None else storage.read_parquet(uri, columns, self.storage_options)


def resolve(
    uri: str, suffix: str = ".parquet", storage_options: Mapping[str, Any] | None = None
) -> str:
    """A version file as given, or a collection folder's latest version; its URI."""
    if uri.endswith(suffix):
        return storage.normalize_uri(uri)
    latest = VersionedCollection(uri, suffix, storage_options).latest()
    if latest is None:
        raise FileNotFoundError(f"{uri} is neither a {suffix} file nor a published collection")
    return latest


# --- parts collections ----------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One immutable Parquet part, named relative to its collection."""

    name: str
    rows: int


@dataclass(frozen=True)
class Index:
    """The parts that make a parts collection, in the order they were published."""

    parts: tuple[Part, ...]
    uri: str | None = None  # the index version; None for a folder written before indexes

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)


@dataclass(frozen=True)
class PartsCollection:
    """Append-only Parquet parts and a published index naming them (see the module docstring).

    ``key`` names the column rows are keyed by (what ``keys`` filters and ``dedupe`` merges on);
    None for a collection whose rows have no single key. ``schema``, when given, is what every
    appended part must have and what an empty read returns.
    """

    uri: str
    key: str | None = "sha256"
    schema: pa.Schema | None = field(default=None, compare=False)
    storage_options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", storage.normalize_uri(self.uri))

    @property
    def versions(self) -> VersionedCollection:
        """The index versions: a versioned collection of JSON files in the same folder."""
        return VersionedCollection(self.uri, INDEX_SUFFIX, self.storage_options)

    def part_uri(self, part: Part | str) -> str:
        return storage.join(self.uri, part.name if isinstance(part, Part) else part)

    # writing

    def append(self, table: pa.Table) -> str:
        """Write ``table`` as a new immutable part, not yet published; returns its URI."""
        if self.schema is not None and not table.schema.equals(self.schema):
            raise ValueError(
                f"a part of {self.uri} has the schema {self.schema}; got {table.schema}"
            )
        name = posixpath.join(PARTS_FOLDER, storage.new_version_name(".parquet"))
        return storage.write_parquet(table, self.part_uri(name), self.storage_options)

    def publish(self, part_uris: Sequence[str], metadata: Mapping[str, Any] | None = None) -> str:
        """Publish a new index: the current parts plus ``part_uris``; returns its URI.

        Publishers that race re-check after pointing and publish again on top of the winner, so
        a part is dropped only if ``PUBLISH_ATTEMPTS`` rounds in a row are lost (then
        ``PublishConflict``; the parts stay on storage and publishing them again is safe).
        """
        new = self._new_parts(part_uris)
        for _ in range(PUBLISH_ATTEMPTS):
            uri = self._publish_once(new, metadata or {})
            published = {part.name for part in (self.index() or Index(())).parts}
            if all(part.name in published for part in new):
                return uri
            log.warning("%s: a concurrent publisher replaced our index; publishing again", self.uri)
        raise PublishConflict(f"{self.uri}: lost {PUBLISH_ATTEMPTS} publishing races in a row")

    def publish_new(
        self, part_uris: Sequence[str], metadata: Mapping[str, Any] | None = None
    ) -> str:
        """The index URI after adding ``part_uris``: a new index when there are new parts (or no
        index yet: an empty first index still gives readers something to open), else the latest."""
        uri = self.versions.latest()
        if part_uris or uri is None:
            uri = self.publish(part_uris, metadata)
        return uri

    def _new_parts(self, part_uris: Sequence[str]) -> list[Part]:
        names = dict.fromkeys(_inside(self.uri, uri) for uri in part_uris)
        return [Part(name, self._footer(name).num_rows) for name in names]

    def _publish_once(self, new: list[Part], metadata: Mapping[str, Any]) -> str:
        current = list((self.index() or Index(())).parts)
        known = {part.name for part in current}
        parts = current + [part for part in new if part.name not in known]
        rows = sum(part.rows for part in parts)
        body = {**metadata, "rows": rows, "parts": [asdict(part) for part in parts]}
        version = self.versions.write_version(json.dumps(body, indent=1).encode())
        return self.versions.publish(version, {**metadata, "rows": rows, "parts": len(parts)})

    # listing

    def index(self) -> Index | None:
        """The published index; None if nothing was ever published.

        A folder of parts written before indexes existed (Parquet files directly in it, no
        ``latest``) reads as an index of those parts in name (= write) order; the first publish
        takes them over.
        """
        uri = self.versions.latest()
        if uri is None:
            return self._unindexed()
        body = json.loads(storage.read_bytes(uri, self.storage_options))
        return Index(tuple(Part(p["name"], int(p["rows"])) for p in body.get("parts", [])), uri)

    def list_parts(self) -> list[Part]:
        """The published parts, in publish order; empty if nothing was published."""
        index = self.index()
        return [] if index is None else list(index.parts)

    def part_schema(self, part: Part | str) -> pa.Schema:
        """A part's Arrow schema (its footer only)."""
        return self._footer(part).schema.to_arrow_schema()

    def _footer(self, part: Part | str) -> pq.FileMetaData:
        fs, path = storage.get_fs(self.part_uri(part), self.storage_options)
        with fs.open(path, "rb") as handle:
            return pq.read_metadata(handle)

    def _unindexed(self) -> Index | None:
        fs, root = storage.get_fs(self.uri, self.storage_options)
        fs.invalidate_cache(root)  # another process may have written since this fs last listed
        if not fs.exists(root):
            return None
        names = sorted(posixpath.basename(p) for p in fs.glob(f"{root}/*.parquet"))
        if not names:
            return None
        return Index(tuple(Part(name, self._footer(name).num_rows) for name in names))

    # the reader

    def scan(
        self,
        columns: Sequence[str] | None = None,
        *,
        keys: Collection[str] | None = None,
        where: Mapping[str, Collection[Any]] | None = None,
        dedupe: bool = False,
        parts: Sequence[Part] | None = None,
    ) -> Iterator[pa.Table]:
        """The ``columns`` (default: all) of the published parts, one table per part.

        ``keys``: only rows whose key is one of them. ``where``: only rows whose value in each
        named column is one of the given values. ``dedupe``: of the rows left, one per key, the
        last written (later part, later row) wins; parts then come newest first. ``parts``: these
        parts instead of the published ones (e.g. the same list for two passes).

        Memory is bounded by one part: a part is read in two steps, the key and ``where``
        columns first, and the rest only if a row survives.
        """
        if (keys is not None or dedupe) and self.key is None:
            raise ValueError(f"{self.uri} has no key column: keys and dedupe do not apply")
        wanted = None if keys is None else pa.array(list(dict.fromkeys(keys)), pa.string())
        if wanted is not None and len(wanted) == 0:
            return
        chosen = self.list_parts() if parts is None else list(parts)
        seen: set[str] | None = set() if dedupe else None
        for part in reversed(chosen) if dedupe else chosen:
            table = self._read_part(part, columns, wanted, where or {}, seen)
            if table is not None:
                yield table

    def read(
        self,
        columns: Sequence[str] | None = None,
        *,
        keys: Collection[str] | None = None,
        where: Mapping[str, Collection[Any]] | None = None,
        dedupe: bool = False,
        parts: Sequence[Part] | None = None,
    ) -> pa.Table:
        """``scan`` concatenated into one table (for collections that fit in memory)."""
        tables = list(self.scan(columns, keys=keys, where=where, dedupe=dedupe, parts=parts))
        if tables:
            return pa.concat_tables(tables, promote_options="default")
        if self.schema is None:
            return pa.table({name: pa.array([], pa.null()) for name in columns or []})
        empty = self.schema.empty_table()
        return empty if columns is None else empty.select(list(columns))

    def _read_part(
        self,
        part: Part,
        columns: Sequence[str] | None,
        wanted: pa.Array | None,
        where: Mapping[str, Collection[Any]],
        seen: set[str] | None,
    ) -> pa.Table | None:
        fs, path = storage.get_fs(self.part_uri(part), self.storage_options)
        with fs.open(path, "rb") as handle:
            file = pq.ParquetFile(handle)
            names = file.schema_arrow.names if columns is None else list(columns)
            tests = list(dict.fromkeys([*self._key_columns(wanted, seen), *where]))
            if not tests:
                return file.read(columns=names)
            head = file.read(columns=tests)
            keep = self._keep(head, wanted, where, seen)
            if not keep.any():
                return None
            rest = [name for name in names if name not in tests]
            body = file.read(columns=rest) if rest else head
        table = pa.table({name: (head if name in tests else body)[name] for name in names})
        return table.filter(pa.array(keep))

    def _key_columns(self, wanted: pa.Array | None, seen: set[str] | None) -> list[str]:
        needed = self.key is not None and (wanted is not None or seen is not None)
        return [self.key] if needed else []

    def _keep(
        self,
        head: pa.Table,
        wanted: pa.Array | None,
        where: Mapping[str, Collection[Any]],
        seen: set[str] | None,
    ) -> np.ndarray:
        keep = np.ones(head.num_rows, dtype=bool)
        if wanted is not None:
            keep &= _is_in(head[self.key], wanted)
        for name, values in where.items():
            keep &= _is_in(head[name], pa.array(list(values), head.schema.field(name).type))
        if seen is not None:  # last write wins: walk this (newer) part from its end
            for row, key in reversed(list(enumerate(head[self.key].to_pylist()))):
                if keep[row]:
                    keep[row] = key not in seen
                    seen.add(key)
        return keep


def _is_in(column: pa.ChunkedArray, values: pa.Array) -> np.ndarray:
    mask = pc.fill_null(pc.is_in(column, value_set=values), False)
    return np.array(mask.to_numpy(zero_copy_only=False), dtype=bool)
