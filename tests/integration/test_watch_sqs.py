"""The source watcher in SQS mode, against moto's server: its S3 sends real event notifications
(a test event, URL-encoded keys) to its SQS queue, as a bucket's notification configuration
does on AWS."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from housegan import notifications
from housegan.config import WatchSettings, get_settings
from housegan.testing import photo_bytes

REGION = "us-east-1"
VISIBILITY_S = 2  # short, so kept messages come back within a test


@dataclass(frozen=True)
class Queue:
    endpoint: str
    bucket: str
    url: str

    @property
    def source_uri(self) -> str:
        return f"s3://{self.bucket}/raw"

    def client(self, service: str) -> Any:
        return aws_client(self.endpoint, service)

    def watch(self, **overrides: Any) -> WatchSettings:
        return WatchSettings(
            sqs_queue_url=self.url,
            sqs_endpoint_url=self.endpoint,
            sqs_region=REGION,
            sqs_wait_s=1,
            sqs_visibility_timeout_s=VISIBILITY_S,
            **overrides,
        )

    def upload(self, keys: list[str]) -> None:
        s3 = self.client("s3")
        for i, key in enumerate(keys):
            s3.put_object(Bucket=self.bucket, Key=key, Body=photo_bytes(40, 32, seed=i))

    def visible(self) -> list[str]:
        """Bodies of every message receivable now (then made visible again)."""
        sqs = self.client("sqs")
        found: dict[str, dict[str, Any]] = {}
        for _ in range(5):
            for message in sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", []):
                found[message["MessageId"]] = message
        for message in found.values():
            sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return [message["Body"] for message in found.values()]


def aws_client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


@pytest.fixture
def queue(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Queue:
    """A bucket whose ObjectCreated events under raw/ go to a fresh queue (moto's S3 sends the
    s3:TestEvent on configuring), plus a message that is not a notification at all."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = f"listings-{uuid.uuid4().hex[:8]}"
    sqs, s3 = aws_client(moto_endpoint, "sqs"), aws_client(moto_endpoint, "s3")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    s3.create_bucket(Bucket=name)
    s3.put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    sqs.send_message(QueueUrl=url, MessageBody="not json {")
    return Queue(moto_endpoint, name, url)


def photo_keys(n: int, prefix: str = "raw/austin/L1") -> list[str]:
    return [f"{prefix}/my house ({i}).jpg" for i in range(n)]


def test_receive_counts_photos_under_the_source_and_keeps_their_messages(queue: Queue):
    queue.upload(photo_keys(3) + photo_keys(1) + ["raw/.tmp/x.jpg", "elsewhere/a/b/c.jpg"])
    cfg = queue.watch()
    client = notifications.sqs_client(cfg, None)

    batch = notifications.receive_batch(client, cfg, queue.source_uri)

    # 3 distinct keys (one uploaded twice); the test event, the dotfile and the other prefix
    # are ignored and deleted at once; the garbage message is counted as bad and stays.
    assert (batch.counts.photos, batch.counts.ignored, batch.counts.bad) == (3, 3, 1)
    assert batch.counts.messages == 8 and len(batch.receipts) == 4
    assert "not json" in batch.counts.bad_examples[0]
    time.sleep(VISIBILITY_S + 0.5)
    left = queue.visible()
    assert len(left) == 5 and "not json {" in left  # photo messages + garbage come back
    assert not any("s3:TestEvent" in body for body in left)


def test_parse_message_reads_url_encoded_keys_and_sns_envelopes():
    record = {
        "eventName": "ObjectCreated:CompleteMultipartUpload",
        "s3": {"bucket": {"name": "listings"}, "object": {"key": "raw/a/b/my+house%281%29.jpg"}},
    }
    body = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})
    parsed = notifications.parse_message(body, "s3://listings/raw")
    assert parsed.verdict == "photos" and parsed.keys == ("a/b/my house(1).jpg",)
    removed = json.dumps({"Records": [{**record, "eventName": "ObjectRemoved:Delete"}]})
    assert notifications.parse_message(removed, "s3://listings/raw").verdict == "nothing"
    for garbage in ("[]", '{"Records": [{"eventName": "ObjectCreated:Put"}]}', ""):
        assert notifications.parse_message(garbage, "s3://listings/raw").verdict == "bad"


@pytest.fixture
def sqs_watch_env(queue: Queue, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Queue:
    """The watcher flow's settings in SQS mode (HOUSEGAN_* as a deployment would set them)."""
    for key, value in {
        "SOURCE_URI": queue.source_uri,
        "STORE_URI": (tmp_path / "store").as_uri(),
        "WATCH__SQS_QUEUE_URL": queue.url,
        "WATCH__SQS_ENDPOINT_URL": queue.endpoint,
        "WATCH__SQS_REGION": REGION,
        "WATCH__SQS_WAIT_S": "1",
        "WATCH__SQS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "WATCH__MIN_NEW_PHOTOS": "5",
    }.items():
        monkeypatch.setenv(f"HOUSEGAN_{key}", value)
    get_settings.cache_clear()
    return queue


@pytest.mark.integration
def test_sqs_watcher_waits_for_the_threshold_then_announces_and_acknowledges(
    sqs_watch_env: Queue, prefect_harness
):
    from flows.watch import watch_source

    queue = sqs_watch_env
    queue.upload(photo_keys(3))
    below = watch_source()
    assert (below.mode, below.pending, below.event_id) == ("sqs", 3, None)
    assert below.notifications is not None and below.notifications.bad == 1

    time.sleep(VISIBILITY_S + 0.5)  # the kept messages come back and add up
    queue.upload(photo_keys(3, prefix="raw/boston/L2"))
    reached = watch_source()
    assert reached.pending == 6 and reached.event_id is not None
    assert reached.acknowledged == 6  # one message per upload

    time.sleep(VISIBILITY_S + 0.5)
    assert queue.visible() == ["not json {"]  # only the unreadable one is left
    assert watch_source().pending == 0


@pytest.mark.integration
def test_sqs_messages_survive_a_failed_announcement(
    sqs_watch_env: Queue, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    from prefect import task

    import flows.watch

    @task(name="announce-source-update")
    def refused(inputs, pending):
        raise ConnectionError("Prefect API unreachable")

    monkeypatch.setattr(flows.watch, "announce_task", refused)
    queue = sqs_watch_env
    queue.upload(photo_keys(5))
    with pytest.raises(ConnectionError):
        flows.watch.watch_source()

    time.sleep(VISIBILITY_S + 0.5)
    assert len(queue.visible()) == 6  # the five photo messages and the garbage
