"""Pointers on S3, against the server the fixtures start."""

from __future__ import annotations

from housegan import storage
from housegan.config import Settings


def test_pointer_on_s3_round_trips(settings: Settings):
    collection = storage.join(settings.source_uri.replace("/raw", "/store"), "m")
    opts = settings.storage_options()
    assert storage.read_pointer(collection, opts) is None
    storage.write_bytes_atomic(storage.join(collection, "v1.bin"), b"x", opts)
    storage.publish_pointer(collection, "v1.bin", {"rows": 1}, opts)
    pointer = storage.read_pointer(collection, opts)
    assert pointer["version"] == "v1.bin" and pointer["rows"] == 1
