"""S3 event notifications read from an SQS queue: the watcher's alternative to listing.

S3 sends one JSON message per event (``Records[].eventName`` / ``.s3.bucket.name`` /
``.s3.object.key``, the key URL-encoded with ``+`` for spaces); the first message of a new
notification configuration is an ``s3:TestEvent``; through SNS the same JSON sits in the
envelope's ``Message``. A batch counts the distinct photo keys created under the source prefix.

Delivery is at least once, and nothing is lost by a crash: messages are received with a
visibility timeout and deleted only by ``delete_batch``, which the watcher calls after its
announcement succeeded. Messages it keeps (below the threshold, a crash) come back to the next
run after the timeout. Messages that carry nothing (test events, other buckets or prefixes,
removals) are deleted at once; unreadable ones are counted and left for the queue's
dead-letter redrive policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

from housegan import storage
from housegan.config import WatchSettings

SQS_BATCH = 10  # most messages one ReceiveMessage/DeleteMessageBatch call handles
CREATED_PREFIX = "ObjectCreated:"
TEST_EVENT = "s3:TestEvent"
SNIPPET_CHARS = 200  # of a bad message's body, in its reason

Verdict = Literal["photos", "nothing", "bad"]


class BadMessage(ValueError):
    """A message that is neither an S3 event notification nor a test event."""


@dataclass(frozen=True)
class Parsed:
    verdict: Verdict
    keys: tuple[str, ...] = ()  # photo keys relative to the source prefix
    reason: str | None = None  # why a message is bad


@dataclass(frozen=True)
class NotificationCounts:
    """What one watcher run took off the queue."""

    messages: int  # received (distinct message ids)
    photos: int  # distinct new or overwritten keys under the source prefix
    ignored: int  # test events, other buckets or prefixes, removals (deleted at once)
    bad: int  # unreadable (left for the dead-letter queue)
    bad_examples: tuple[str, ...] = ()  # a few reasons, for the log


@dataclass(frozen=True)
class NotificationBatch:
    counts: NotificationCounts
    receipts: tuple[str, ...] = field(default=(), repr=False)  # photo messages, to delete


def sqs_client(cfg: WatchSettings, s3_region: str | None) -> Any:
    """A boto3 SQS client: ``watch.sqs_region`` (else ``s3_region``) and endpoint, credentials
    from botocore's own chain."""
    import boto3

    kwargs: dict[str, Any] = {}
    if cfg.sqs_region or s3_region:
        kwargs["region_name"] = cfg.sqs_region or s3_region
    if cfg.sqs_endpoint_url:
        kwargs["endpoint_url"] = cfg.sqs_endpoint_url
    return boto3.client("sqs", **kwargs)


def parse_message(body: str, source_uri: str, skip_prefixes: tuple[str, ...] = (".",)) -> Parsed:
    """The photo keys one message announces under ``source_uri`` (an ``s3://`` URI)."""
    try:
        data = _unwrap_sns(json.loads(body))
        if data.get("Event") == TEST_EVENT:
            return Parsed("nothing")
        records = data["Records"]
        keys = [key for record in records if (key := _photo_key(record, source_uri, skip_prefixes))]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Parsed("bad", reason=f"{type(exc).__name__}: {exc}; body {body[:SNIPPET_CHARS]!r}")
    return Parsed("photos", tuple(keys)) if keys else Parsed("nothing")


def _unwrap_sns(data: Any) -> Mapping[str, Any]:
    """S3 -> SNS -> SQS: the S3 JSON is the envelope's ``Message`` string."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a JSON {type(data).__name__}, not an object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        return _unwrap_sns(json.loads(data["Message"]))
    return data


def _photo_key(
    record: Mapping[str, Any], source_uri: str, skip_prefixes: tuple[str, ...]
) -> str | None:
    """The key relative to the source of an ObjectCreated record under it, else None."""
    if not str(record["eventName"]).startswith(CREATED_PREFIX):
        return None  # removals: ingest marks them missing on its next run anyway
    bucket = record["s3"]["bucket"]["name"]
    key = unquote_plus(record["s3"]["object"]["key"])
    source_bucket, _, prefix = (
        storage.normalize_uri(source_uri).removeprefix("s3://").partition("/")
    )
    prefix = prefix.strip("/")
    if bucket != source_bucket or (prefix and not key.startswith(prefix + "/")):
        return None
    relative = key[len(prefix) + 1 :] if prefix else key
    if not relative or relative.endswith("/"):
        return None  # folder markers
    if any(part.startswith(skip_prefixes) for part in relative.split("/")):
        return None  # dotfiles, as ingest skips them
    return relative


def receive_batch(
    client: Any,
    cfg: WatchSettings,
    source_uri: str,
    skip_prefixes: tuple[str, ...] = (".",),
) -> NotificationBatch:
    """Take up to ``sqs_max_messages`` messages off the queue: long-poll once, then drain what
    is there without waiting. Messages carrying nothing are deleted now; photo messages stay
    hidden until ``delete_batch`` (or come back after the visibility timeout)."""
    seen: set[str] = set()
    keys: set[str] = set()
    receipts: list[str] = []
    nothing: list[str] = []
    bad: list[str] = []
    wait_s = cfg.sqs_wait_s
    while len(seen) < cfg.sqs_max_messages:
        messages = client.receive_message(
            QueueUrl=cfg.sqs_queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, cfg.sqs_max_messages - len(seen)),
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=cfg.sqs_visibility_timeout_s,
        ).get("Messages", [])
        if not messages:
            break
        wait_s = 0  # the burst is here: drain it without another long wait
        for message in messages:
            if message["MessageId"] in seen:
                continue  # at-least-once delivery may hand a message out twice
            seen.add(message["MessageId"])
            parsed = parse_message(message.get("Body", ""), source_uri, skip_prefixes)
            if parsed.verdict == "photos":
                keys.update(parsed.keys)
                receipts.append(message["ReceiptHandle"])
            elif parsed.verdict == "nothing":
                nothing.append(message["ReceiptHandle"])
            else:
                bad.append(parsed.reason or "unreadable")
    delete_batch(client, cfg, nothing)
    counts = NotificationCounts(len(seen), len(keys), len(nothing), len(bad), tuple(bad[:3]))
    return NotificationBatch(counts, tuple(receipts))


def delete_batch(client: Any, cfg: WatchSettings, receipts: Iterable[str]) -> int:
    """Delete received messages by receipt handle, ten per call; returns how many went."""
    handles = list(receipts)
    deleted = 0
    for start in range(0, len(handles), SQS_BATCH):
        chunk = handles[start : start + SQS_BATCH]
        response = client.delete_message_batch(
            QueueUrl=cfg.sqs_queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(chunk)],
        )
        deleted += len(response.get("Successful", []))
    return deleted
