"""URI-addressed storage through fsspec: ``s3://bucket/prefix`` and ``file:///path`` alike.

One object at a URI: bytes, one Parquet file (``write_parquet``/``read_parquet``, the only
single-file Parquet write and read) and the ``latest`` pointer of a collection. Collections made
of many such objects (versions, parts) are in ``housegan.collections``.

Publishing follows one rule: data is written under a fresh, never-reused name first, and only
then is a small pointer written that names it. S3 PUTs are atomic per object; local writes go
to a temporary file in the same folder and are renamed into place.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http.client import IncompleteRead
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

POINTER_NAME = "latest"
ONE_LINE_CHARS = 300  # an error quoted inside another message stays readable

_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}
# botocore/aiohttp/fsspec transport errors, by name so that file:// stores need none of them.
_TRANSIENT_TYPE_NAMES = {
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "EndpointConnectionError",
    "HTTPClientError",
    "ResponseStreamingError",
    "ProtocolError",
    "IncompleteReadError",
    "ClientPayloadError",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "FSTimeoutError",
}


class SizeMismatch(OSError):
    """Fewer (or more) bytes arrived than the listing announced: a cut connection."""


class StoreUnreachable(ConnectionError):
    """The store's endpoint did not answer (refused, reset, timed out, 5xx, throttled).

    A read that failed this way says nothing about the object, so callers must not record it
    as a verdict on the object (unreadable photo, failed score); trying again later may help.
    """

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot reach S3 endpoint {endpoint} ({reason})")
        self.endpoint = endpoint
        self.reason = reason

    def __reduce__(self) -> tuple[type[StoreUnreachable], tuple[str, str]]:
        return type(self), (self.endpoint, self.reason)  # crosses processes and result storage


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line, bounded; its type name when it has none."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:ONE_LINE_CHARS]


def is_transient(exc: BaseException) -> bool:
    """Timeouts, resets, refused connections, cut bodies, 5xx and throttling, anywhere in the
    cause chain: the endpoint's trouble, not the object's, and worth another attempt."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SizeMismatch | TimeoutError | ConnectionError | IncompleteRead):
            return True
        if type(seen).__name__ in _TRANSIENT_TYPE_NAMES:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or response.get("Error", {}).get("Code") in _THROTTLING_CODES:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def endpoint_of(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The endpoint serving ``uri``: the S3 client's endpoint URL, or the local folder."""
    if is_local(uri):
        return normalize_uri(uri)
    fs, _ = get_fs(uri, storage_options)
    return str(fs.s3.meta.endpoint_url)  # builds the client only: no request is sent


def unreachable(
    exc: BaseException, uri: str, storage_options: Mapping[str, Any] | None = None
) -> StoreUnreachable | None:
    """``exc`` as a ``StoreUnreachable`` naming the endpoint of ``uri`` when it is transient."""
    if isinstance(exc, StoreUnreachable):
        return exc
    if not is_transient(exc):
        return None
    return StoreUnreachable(endpoint_of(uri, storage_options), one_line(exc))


def read_reachable(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """``read_bytes``, but an endpoint in trouble raises ``StoreUnreachable``; other errors
    (a missing object, refused access) pass unchanged, as they concern the object."""
    try:
        return read_bytes(uri, storage_options)
    except Exception as exc:
        outage = unreachable(exc, uri, storage_options)
        if outage is None:
            raise
        raise outage from exc


def normalize_uri(uri: str) -> str:
    """Make a URI absolute: bare and ``file://`` relative paths become ``file:///abs/path``."""
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    scheme, rest = uri.split("://", 1)
    if scheme == "file" and not rest.startswith("/"):
        return Path(rest).resolve().as_uri()
    return uri.rstrip("/") if rest.strip("/") else uri


def get_fs(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``uri`` and the path inside it."""
    uri = normalize_uri(uri)
    protocol = uri.split("://", 1)[0]
    options = dict(storage_options or {}) if protocol in ("s3", "s3a") else {}
    return url_to_fs(uri, **options)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with forward slashes."""
    return posixpath.join(uri.rstrip("/"), *(p.strip("/") for p in parts))


def is_local(uri: str) -> bool:
    return normalize_uri(uri).startswith("file://")


def local_path(uri: str) -> Path:
    """The filesystem path of a ``file://`` URI."""
    uri = normalize_uri(uri)
    if not uri.startswith("file://"):
        raise ValueError(f"{uri} is not a local file URI")
    return Path(uri[len("file://") :])


def write_bytes_atomic(
    uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one."""
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = get_fs(uri, storage_options)
    fs.pipe_file(path, data)  # one PUT: atomic on S3


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = get_fs(uri, storage_options)
    return fs.cat_file(path)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one zstd-compressed Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_parquet(
    table: pa.Table, uri: str, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write one Parquet file (zstd) atomically; returns its URI. Every stage writes this way."""
    write_bytes_atomic(uri, parquet_bytes(table), storage_options)
    return uri


def read_parquet(
    uri: str,
    columns: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One Parquet file (all columns, or those named); FileNotFoundError if it is absent.

    Only the footer and the named columns' chunks are fetched, not the whole object.
    """
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=None if columns is None else list(columns))


def exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = get_fs(uri, storage_options)
    return fs.exists(path)


def new_version_name(suffix: str) -> str:
    """A sortable, never-reused file name: ``20261129T014500123456Z-1a2b3c4d<suffix>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}{suffix}"


def publish_pointer(
    collection_uri: str,
    version_name: str,
    metadata: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Point ``<collection>/latest`` at ``version_name`` (already written); returns its URI."""
    target = join(collection_uri, version_name)
    body = {
        "version": version_name,
        "uri": target,
        "published_at": datetime.now(UTC).isoformat(),
        **(metadata or {}),
    }
    write_bytes_atomic(
        join(collection_uri, POINTER_NAME),
        json.dumps(body, indent=2).encode(),
        storage_options,
    )
    return target


def read_pointer(
    collection_uri: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``latest`` pointer of a collection, or None if nothing was published yet."""
    pointer_uri = join(collection_uri, POINTER_NAME)
    try:
        raw = read_bytes(pointer_uri, storage_options)
    except FileNotFoundError:
        return None
    body = json.loads(raw)
    # The version may have been published from another mount of the same store: resolve
    # it against the collection we were asked about.
    body["uri"] = join(collection_uri, body["version"])
    return body


def latest_uri(collection_uri: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    pointer = read_pointer(collection_uri, storage_options)
    return pointer["uri"] if pointer else None
