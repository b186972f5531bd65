"""Ingest through the fault proxy: stalled and cut connections are retried, rows stay exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from housegan import manifest
from housegan.config import Settings
from housegan.ingest import IngestResult, ingest
from housegan.testing import photo_bytes
from housegan.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

N_OBJECTS = 6


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint) as running:
        yield running


@pytest.fixture
def objects(s3_server, bucket) -> dict[str, bytes]:
    """Photos big enough (~10 KB) that a cut after 1,500 bytes lands inside the body."""
    bodies = {f"city/{i}/p.jpg": photo_bytes(160, 120, seed=i) for i in range(N_OBJECTS)}
    client = s3_server.client()
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=f"raw/{key}", Body=body)
    return bodies


def through(settings: Settings, proxy: FaultProxy, **ingest_overrides) -> Settings:
    """Settings aimed at the proxy, with short timeouts so a stall costs about a second."""
    cfg = settings.ingest.model_copy(
        update={"read_timeout_s": 1.0, "connect_timeout_s": 1.0, "retry_backoff_s": 0.05}
        | ingest_overrides
    )
    return settings.model_copy(update={"s3_endpoint_url": proxy.endpoint, "ingest": cfg})


def run(settings: Settings) -> IngestResult:
    return ingest(
        settings.source_uri,
        settings.store_uri,
        key_pattern=settings.key_pattern,
        limits=settings.images,
        cfg=settings.ingest,
        storage_options=settings.storage_options(),
    )


def assert_one_ok_row_per_object(result: IngestResult, objects: dict[str, bytes]) -> None:
    frame = manifest.read(result.manifest_uri)
    assert sorted(frame["key"]) == sorted(objects)  # no row lost, none duplicated
    assert set(frame["status"]) == {"ok"}
    assert frame["size_bytes"].tolist() == [len(objects[key]) for key in frame["key"]]
    assert result.failed == {}


def object_get(bucket: str) -> str:
    """Request lines of object GETs (not listings, which are GET /bucket?list-type=2...)."""
    return rf"^GET /{bucket}/raw/"


def test_stalled_object_response_times_out_and_is_retried(settings, proxy, objects, bucket):
    proxy.stall_next(2, match=object_get(bucket))
    result = run(through(settings, proxy))
    assert proxy.fired["stall"] == 2
    assert_one_ok_row_per_object(result, objects)


@pytest.mark.parametrize("after_bytes", [0, 1500], ids=["before-headers", "mid-body"])
def test_cut_connection_is_retried(settings, proxy, objects, bucket, after_bytes):
    proxy.cut_next(3, after_bytes=after_bytes, match=object_get(bucket))
    result = run(through(settings, proxy))
    assert proxy.fired["cut"] == 3
    assert_one_ok_row_per_object(result, objects)


def test_stalled_listing_is_retried(settings, proxy, objects):
    proxy.stall_next(1, match=r"max-keys=1&")  # the reachability probe
    proxy.stall_next(1, match=r"list-type=2(?!.*max-keys=1&)")  # the listing itself
    result = run(through(settings, proxy))
    assert proxy.fired["stall"] == 2
    assert_one_ok_row_per_object(result, objects)


def test_object_failing_every_attempt_is_reported_and_fetched_next_run(
    settings, proxy, objects, bucket
):
    proxy.stall_next(2, match=rf"^GET /{bucket}/raw/city/3/p\.jpg")
    first = run(through(settings, proxy, retries=1))  # both attempts stall
    assert list(first.failed) == ["city/3/p.jpg"]
    published = manifest.read(first.manifest_uri)
    assert "city/3/p.jpg" not in set(published["key"])
    assert len(published) == N_OBJECTS - 1
    second = run(through(settings, proxy))
    assert (second.new, second.downloaded) == (1, 1)
    assert_one_ok_row_per_object(second, objects)
