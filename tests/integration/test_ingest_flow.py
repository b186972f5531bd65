"""The ingest task and flow under the Prefect test harness, against the real local S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from housegan import manifest, storage
from housegan.config import Settings, get_settings
from housegan.ingest import IngestError
from housegan.testing import photo_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def configured(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """get_settings() answers with the test's source, store and endpoint (as a deployment would
    configure it through the environment)."""
    monkeypatch.setenv("HOUSEGAN_SOURCE_URI", settings.source_uri)
    monkeypatch.setenv("HOUSEGAN_STORE_URI", settings.store_uri)
    monkeypatch.setenv("HOUSEGAN_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    monkeypatch.setenv("HOUSEGAN_INGEST__TASK_RETRY_DELAY_S", "0")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def three_photos(s3_server, bucket) -> None:
    client = s3_server.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"raw/austin/{i}/p.jpg", Body=photo_bytes(seed=i))


def test_ingest_flow_runs_and_publishes_manifest(prefect_harness, configured, three_photos):
    from prefect.artifacts import Artifact

    from flows.ingest import ingest_flow

    result = ingest_flow()
    assert result.counts == {"ok": 3}
    assert (result.new, result.downloaded) == (3, 3)
    collection = manifest.collection_uri(configured.store_uri)
    assert storage.latest_uri(collection) == result.manifest_uri
    counts_artifact = Artifact.get("ingest-counts")
    assert counts_artifact is not None and "ok" in str(counts_artifact.data)
    assert Artifact.get("ingest-progress") is not None


def test_ingest_task_can_be_called_alone(prefect_harness, configured, three_photos):
    from housegan.steps.ingest import IngestInput
    from tasks.ingest import ingest_task

    inputs = IngestInput(configured.source_uri, configured.store_uri)
    first = ingest_task(inputs)  # a standalone task run
    again = ingest_task.fn(inputs)  # the plain function
    assert first.downloaded == 3
    assert (again.downloaded, again.manifest_uri) == (0, first.manifest_uri)


def test_missing_bucket_fails_without_retrying(prefect_harness, configured, monkeypatch):
    import housegan.ingest
    from flows.ingest import ingest_flow

    calls = []
    real_ingest = housegan.ingest.ingest

    def counting_ingest(*args, **kwargs):
        calls.append(args[0])
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(housegan.ingest, "ingest", counting_ingest)
    with pytest.raises(IngestError, match="no-such-bucket"):
        ingest_flow(source_uri="s3://no-such-bucket/raw")
    assert calls == ["s3://no-such-bucket/raw"]  # task_retries=2, but retrying cannot help
