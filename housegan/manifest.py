"""Manifest data contracts: explicit pyarrow schemas, versioned Parquet files, atomic publish.

A manifest collection is a folder ``<store>/manifests/<name>/`` holding immutable version files
``<timestamp>-<id>.parquet`` and a ``latest`` pointer written last: a versioned collection (see
``housegan.collections``). The functions here are its DataFrame face.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import pandas as pd
import pyarrow as pa

from housegan import collections, storage

IMAGES_COLLECTION = "manifests/images"


class Status(StrEnum):
    """What ingest concluded about one source object."""

    OK = "ok"
    CORRUPT = "corrupt"
    NOT_IMAGE = "not_image"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    DUPLICATE = "duplicate"
    MISSING = "missing"  # was listed before, gone from the source now


TIMESTAMP = pa.timestamp("us", tz="UTC")

IMAGE_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("city", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("etag", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("last_modified", TIMESTAMP),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("dup_of", pa.string()),
        pa.field("ingested_at", TIMESTAMP, nullable=False),
    ],
    metadata={"housegan.manifest": "images", "housegan.schema_version": "1"},
)


def collection_uri(store_uri: str, name: str = IMAGES_COLLECTION) -> str:
    return storage.join(store_uri, name)


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Conform a DataFrame to ``schema`` (column order and types); fails on missing columns."""
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}; schema needs {schema.names}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def write_version(
    frame: pd.DataFrame,
    collection: str,
    schema: pa.Schema,
    metadata: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``frame`` as a new immutable version, then publish it as latest; returns its URI."""
    versions = collections.VersionedCollection(collection, storage_options=storage_options)
    return versions.put_table(to_table(frame, schema), metadata)


def read(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read one manifest version (a Parquet file URI) into a DataFrame."""
    return storage.read_parquet(uri, storage_options=storage_options).to_pandas()


def read_latest(
    collection: str, schema: pa.Schema, storage_options: Mapping[str, Any] | None = None
) -> tuple[str | None, pd.DataFrame]:
    """The latest published version of a collection (URI, frame); empty if none yet."""
    uri = collections.VersionedCollection(collection, storage_options=storage_options).latest()
    if uri is None:
        return None, empty_frame(schema)
    return uri, read(uri, storage_options)


def resolve(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Accept a version file or a collection folder (meaning its latest) and return a file."""
    return collections.resolve(uri, ".parquet", storage_options)
