"""The source watcher announces new photos once, and stays quiet when nothing changed."""

from __future__ import annotations

import pytest

from housegan.config import get_settings
from housegan.ingest import ingest, pending_changes
from housegan.testing import photo_bytes


def put_photos(s3_server, bucket: str, names: list[str]) -> None:
    client = s3_server.client()
    for i, name in enumerate(names):
        body = photo_bytes(64, 48, seed=i + len(name))
        client.put_object(Bucket=bucket, Key=f"raw/austin/L1/{name}", Body=body)


def test_pending_changes_counts_new_and_changed_objects_without_fetching(
    settings, s3_server, bucket
):
    opts = settings.storage_options()
    put_photos(s3_server, bucket, ["a.jpg", "b.jpg"])
    before = pending_changes(settings.source_uri, settings.store_uri, settings.ingest, opts)
    assert (before.listed, before.to_fetch, before.manifest_uri) == (2, 2, None)
    ingest(
        settings.source_uri,
        settings.store_uri,
        key_pattern=settings.key_pattern,
        limits=settings.images,
        cfg=settings.ingest,
        storage_options=opts,
    )
    assert not pending_changes(
        settings.source_uri, settings.store_uri, settings.ingest, opts
    ).changed
    put_photos(s3_server, bucket, ["c.jpg"])
    after = pending_changes(settings.source_uri, settings.store_uri, settings.ingest, opts)
    assert (after.listed, after.to_fetch) == (3, 1) and after.manifest_uri is not None


@pytest.mark.integration
def test_watch_flow_emits_an_event_only_when_photos_landed(
    settings, s3_server, bucket, prefect_harness, monkeypatch
):
    from flows.ingest import ingest_flow
    from flows.watch import watch_source

    monkeypatch.setenv("HOUSEGAN_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    get_settings.cache_clear()
    try:
        put_photos(s3_server, bucket, ["a.jpg", "b.jpg", "c.jpg"])
        landed = watch_source(settings.source_uri, settings.store_uri)
        ingest_flow(settings.source_uri, settings.store_uri)
        quiet = watch_source(settings.source_uri, settings.store_uri)
    finally:
        get_settings.cache_clear()
    assert landed.changes.to_fetch == 3 and landed.event_id is not None
    assert quiet.changes.to_fetch == 0 and quiet.event_id is None
