"""Ingest against the real local S3 server: statuses, incrementality, missing objects, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import pandas as pd
import pytest

from housegan import manifest, storage
from housegan.config import Settings, get_settings
from housegan.images import ImageRejected, decode_rgb
from housegan.ingest import (
    IngestError,
    IngestResult,
    ingest,
    is_transient,
    list_source,
    object_reader,
)
from housegan.manifest import IMAGE_MANIFEST_SCHEMA, Status
from housegan.stack import free_port
from housegan.testing import photo_bytes
from housegan.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose pixel data is one junk byte:
    decoding it would fail, so a too_large status proves the header was judged first."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + chunk(b"IEND", b"")
    )


FRONT = photo_bytes(64, 48, seed=1)
DEFECTS: dict[str, tuple[bytes, Status]] = {
    "boston/1/front.jpg": (FRONT, Status.OK),
    "boston/1/truncated.jpg": (photo_bytes(96, 64, seed=2)[:900], Status.CORRUPT),
    "boston/2/empty.jpg": (b"", Status.NOT_IMAGE),
    "boston/2/notes.jpg": (b"<html><body>not a photo</body></html>", Status.NOT_IMAGE),
    "boston/3/tiny.jpg": (photo_bytes(8, 8, seed=3), Status.TOO_SMALL),
    "nyc/9/copy.jpg": (FRONT, Status.DUPLICATE),
    "nyc/4/rotated.jpg": (photo_bytes(80, 40, seed=4, exif_orientation=6), Status.OK),
    "nyc/5/gray.png": (photo_bytes(fmt="PNG", mode="L", seed=5), Status.OK),
    "nyc/5/alpha.png": (photo_bytes(fmt="PNG", mode="RGBA", seed=6), Status.OK),
    "nyc/5/cmyk.jpg": (photo_bytes(mode="CMYK", seed=7), Status.OK),
    "nyc/5/palette.png": (photo_bytes(fmt="PNG", mode="P", seed=8), Status.OK),
    # 64 Mpx: above max_pixels (40 M) but below Pillow's own bomb limits.
    "nyc/6/bomb.png": (png_header_only(8000, 8000), Status.TOO_LARGE),
    # 400 Mpx: Pillow itself refuses it while opening.
    "nyc/6/huge.png": (png_header_only(20000, 20000), Status.TOO_LARGE),
}
SKIPPED_KEYS = ["boston/", "boston/1/.DS_Store", ".trash/nyc/1/old.jpg"]


def put(s3_server, bucket: str, objects: dict[str, bytes], prefix: str = "raw/") -> None:
    client = s3_server.client()
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=prefix + key, Body=body)


def run_ingest(settings: Settings, **overrides) -> IngestResult:
    return ingest(
        overrides.pop("source_uri", settings.source_uri),
        settings.store_uri,
        key_pattern=settings.key_pattern,
        limits=overrides.pop("limits", settings.images),
        cfg=overrides.pop("cfg", settings.ingest),
        storage_options=settings.storage_options(),
        **overrides,
    )


def rows_by_key(result: IngestResult) -> dict[str, dict]:
    frame = manifest.read(result.manifest_uri)
    return {row["key"]: row for row in frame.to_dict("records")}


def photos(n: int, start: int = 0) -> dict[str, bytes]:
    return {
        f"city{i % 3}/{i}/photo.jpg": photo_bytes(48, 40, seed=100 + i) for i in range(start, n)
    }


# ---- statuses ------------------------------------------------------------------------------


@pytest.fixture
def defect_manifest(s3_server, bucket, settings) -> tuple[IngestResult, dict[str, dict]]:
    put(s3_server, bucket, {key: body for key, (body, _) in DEFECTS.items()})
    put(s3_server, bucket, {key: b"" if key.endswith("/") else FRONT for key in SKIPPED_KEYS})
    result = run_ingest(settings)
    return result, rows_by_key(result)


def test_each_defect_class_gets_its_status(defect_manifest):
    _, rows = defect_manifest
    assert {key: row["status"] for key, row in rows.items()} == {
        key: str(status) for key, (_, status) in DEFECTS.items()
    }


def test_folder_markers_and_dotfiles_are_skipped(defect_manifest):
    result, rows = defect_manifest
    assert not set(SKIPPED_KEYS) & set(rows)
    assert result.listed == len(DEFECTS)


def test_duplicate_names_the_first_key_with_identical_bytes(defect_manifest):
    _, rows = defect_manifest
    assert rows["nyc/9/copy.jpg"]["dup_of"] == "boston/1/front.jpg"
    assert rows["nyc/9/copy.jpg"]["sha256"] == rows["boston/1/front.jpg"]["sha256"]
    assert pd.isna(rows["boston/1/front.jpg"]["dup_of"])


def test_exif_rotated_photo_reports_displayed_size(defect_manifest):
    _, rows = defect_manifest
    assert (rows["nyc/4/rotated.jpg"]["width"], rows["nyc/4/rotated.jpg"]["height"]) == (40, 80)


def test_colour_modes_are_recorded(defect_manifest):
    _, rows = defect_manifest
    modes = {key: rows[key]["mode"] for key in rows if key.startswith("nyc/5/")}
    assert modes == {
        "nyc/5/gray.png": "L",
        "nyc/5/alpha.png": "RGBA",
        "nyc/5/cmyk.jpg": "CMYK",
        "nyc/5/palette.png": "P",
    }


def test_bomb_is_refused_from_its_header(defect_manifest):
    _, rows = defect_manifest
    bomb = rows["nyc/6/bomb.png"]
    assert (bomb["width"], bomb["height"]) == (8000, 8000)
    assert "max_pixels" in bomb["error"]


def test_rows_carry_listing_facts_and_content_hash(defect_manifest, bucket):
    _, rows = defect_manifest
    row = rows["boston/1/front.jpg"]
    assert row["uri"] == f"s3://{bucket}/raw/boston/1/front.jpg"
    assert (row["city"], row["listing_id"]) == ("boston", "1")
    assert row["size_bytes"] == len(FRONT)
    assert row["sha256"] == hashlib.sha256(FRONT).hexdigest()
    assert row["etag"] == hashlib.md5(FRONT).hexdigest()  # single-part upload
    assert (row["format"], row["mode"]) == ("JPEG", "RGB")
    assert row["last_modified"].tzinfo is not None


def test_manifest_file_matches_the_schema(defect_manifest):
    result, _ = defect_manifest
    import pyarrow.parquet as pq

    table = pq.read_table(storage.local_path(result.manifest_uri))
    assert table.schema.equals(IMAGE_MANIFEST_SCHEMA, check_metadata=False)


def test_decode_rgb_gives_displayed_rgb_and_rejects_unusable_bytes():
    limits = Settings().images
    rotated = decode_rgb(photo_bytes(80, 40, seed=4, exif_orientation=6), limits=limits)
    assert (rotated.size, rotated.mode) == ((40, 80), "RGB")
    assert decode_rgb(photo_bytes(mode="CMYK", seed=7), limits=limits).mode == "RGB"
    with pytest.raises(ImageRejected) as rejected:
        decode_rgb(photo_bytes(96, 64, seed=2)[:900], limits=limits)
    assert rejected.value.check.status == Status.CORRUPT


def test_object_over_max_bytes_is_too_large_and_not_fetched(s3_server, bucket, settings):
    put(s3_server, bucket, {"boston/1/big.jpg": photo_bytes(200, 200, seed=9)})
    limits = settings.images.model_copy(update={"max_bytes": 1000})
    result = run_ingest(settings, limits=limits)
    assert result.downloaded == 0
    assert rows_by_key(result)["boston/1/big.jpg"]["status"] == Status.TOO_LARGE


def test_local_folder_source_works_like_s3(tmp_path, settings):
    source = tmp_path / "raw"
    for key, (body, _) in DEFECTS.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(body)
    result = run_ingest(settings, source_uri=source.as_uri())
    statuses = {key: row["status"] for key, row in rows_by_key(result).items()}
    assert statuses == {key: str(status) for key, (_, status) in DEFECTS.items()}
    assert run_ingest(settings, source_uri=source.as_uri()).downloaded == 0


# ---- incrementality ------------------------------------------------------------------------


def test_second_ingest_downloads_nothing_and_adds_no_rows(s3_server, bucket, settings):
    put(s3_server, bucket, photos(6))
    first = run_ingest(settings)
    second = run_ingest(settings)
    assert (first.downloaded, second.downloaded, second.new) == (6, 0, 0)
    assert not second.published and second.manifest_uri == first.manifest_uri
    assert storage.latest_uri(manifest.collection_uri(settings.store_uri)) == first.manifest_uri
    assert len(manifest.read(second.manifest_uri)) == 6


def test_ten_new_objects_are_exactly_ten_new_rows_downloaded(s3_server, bucket, settings):
    put(s3_server, bucket, photos(5))
    first = run_ingest(settings)
    put(s3_server, bucket, photos(15, start=5))
    second = run_ingest(settings)
    assert (second.new, second.downloaded, second.listed) == (10, 10, 15)
    before, after = rows_by_key(first), rows_by_key(second)
    assert len(after) == 15
    for key, row in before.items():  # carried rows are untouched, including when ingested
        assert after[key]["ingested_at"] == row["ingested_at"]
    assert manifest.read(first.manifest_uri).shape[0] == 5  # old version never overwritten


def test_changed_object_is_fetched_again(s3_server, bucket, settings):
    put(s3_server, bucket, photos(3))
    run_ingest(settings)
    new_body = photo_bytes(48, 40, seed=999)
    put(s3_server, bucket, {"city0/0/photo.jpg": new_body})
    result = run_ingest(settings)
    assert (result.new, result.downloaded) == (0, 1)
    assert (
        rows_by_key(result)["city0/0/photo.jpg"]["sha256"] == hashlib.sha256(new_body).hexdigest()
    )


def test_deleted_object_stays_in_manifest_marked_missing(s3_server, bucket, settings):
    put(s3_server, bucket, photos(3))
    first = rows_by_key(run_ingest(settings))
    s3_server.client().delete_object(Bucket=bucket, Key="raw/city1/1/photo.jpg")
    result = run_ingest(settings)
    rows = rows_by_key(result)
    assert len(rows) == 3
    assert rows["city1/1/photo.jpg"]["status"] == Status.MISSING
    assert rows["city1/1/photo.jpg"]["sha256"] == first["city1/1/photo.jpg"]["sha256"]
    assert result.counts == {"missing": 1, "ok": 2}
    assert run_ingest(settings).published is False  # still missing: nothing new to say


def test_duplicate_choice_follows_key_order_not_arrival(s3_server, bucket, settings):
    put(s3_server, bucket, {"zurich/1/a.jpg": FRONT})
    assert rows_by_key(run_ingest(settings))["zurich/1/a.jpg"]["status"] == Status.OK
    put(s3_server, bucket, {"austin/1/a.jpg": FRONT})  # arrives later, sorts first
    rows = rows_by_key(run_ingest(settings))
    assert rows["austin/1/a.jpg"]["status"] == Status.OK
    assert (rows["zurich/1/a.jpg"]["status"], rows["zurich/1/a.jpg"]["dup_of"]) == (
        "duplicate",
        "austin/1/a.jpg",
    )


def test_object_replaced_after_listing_is_not_read_under_the_old_etag(s3_server, bucket, settings):
    put(s3_server, bucket, {"boston/1/a.jpg": photo_bytes(seed=1)})
    (listed,) = list_source(settings.source_uri, settings.ingest, settings.storage_options())
    put(s3_server, bucket, {"boston/1/a.jpg": photo_bytes(seed=2)})  # new bytes, new etag
    read = object_reader(settings.source_uri, settings.ingest, settings.storage_options())
    with pytest.raises(Exception, match="PreconditionFailed") as raised:
        read(listed)
    assert not is_transient(raised.value)  # reported as failed; the next run lists it again


def test_missing_bucket_raises_ingest_error_naming_it(s3_server, settings):
    with pytest.raises(IngestError, match="no-such-bucket"):
        run_ingest(settings, source_uri="s3://no-such-bucket/raw")


# ---- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings, s3_server) -> dict[str, str]:
    return {
        **os.environ,
        "HOUSEGAN_SOURCE_URI": settings.source_uri,
        "HOUSEGAN_STORE_URI": settings.store_uri,
        "HOUSEGAN_S3_ENDPOINT_URL": s3_server.endpoint,
    }


def housegan(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "housegan", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_prints_json_summary_as_last_line(s3_server, bucket, settings, monkeypatch, capsys):
    from housegan.cli import main

    put(s3_server, bucket, photos(4))
    monkeypatch.setenv("HOUSEGAN_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    get_settings.cache_clear()
    try:
        code = main(
            ["ingest", "--source", settings.source_uri, "--store", settings.store_uri, "--json"]
        )
    finally:
        get_settings.cache_clear()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert summary["counts"] == {"ok": 4}
    assert (summary["new"], summary["downloaded"]) == (4, 4)
    assert summary["manifest_uri"] == storage.latest_uri(
        manifest.collection_uri(settings.store_uri)
    )


@pytest.mark.parametrize("failure", ["unreachable endpoint", "missing bucket", "bad credentials"])
def test_cli_source_failure_is_one_line_and_publishes_nothing(failure, cli_env, settings, bucket):
    env = dict(cli_env)
    if failure == "unreachable endpoint":
        env["HOUSEGAN_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    elif failure == "missing bucket":
        env["HOUSEGAN_SOURCE_URI"] = "s3://no-such-bucket/raw"
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    started = time.monotonic()
    process = housegan("ingest", "--json", env=env)
    out, err = process.communicate(timeout=90)
    assert time.monotonic() - started < 60
    assert process.returncode != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    expected = {"unreachable endpoint": "127.0.0.1", "missing bucket": "no-such-bucket"}
    assert expected.get(failure, bucket) in err
    assert storage.latest_uri(manifest.collection_uri(settings.store_uri)) is None


@pytest.mark.slow
def test_sigkilled_ingest_leaves_latest_readable_and_rerun_completes(
    s3_server, bucket, settings, cli_env
):
    put(s3_server, bucket, photos(5))
    before = run_ingest(settings)
    put(s3_server, bucket, photos(40, start=5))
    with FaultProxy(s3_server.endpoint, latency_s=0.25) as proxy:
        env = {
            **cli_env,
            "HOUSEGAN_S3_ENDPOINT_URL": proxy.endpoint,
            "HOUSEGAN_INGEST__CONCURRENCY": "2",
        }
        process = housegan("ingest", env=env)
        deadline = time.monotonic() + 60
        while proxy.requests < 8 and time.monotonic() < deadline:  # listing + a few objects
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    collection = manifest.collection_uri(settings.store_uri)
    assert storage.latest_uri(collection) == before.manifest_uri
    assert len(manifest.read_latest(collection, IMAGE_MANIFEST_SCHEMA)[1]) == 5
    rerun = run_ingest(settings)
    assert (rerun.new, rerun.downloaded, rerun.counts) == (35, 35, {"ok": 40})
    assert storage.latest_uri(collection) == rerun.manifest_uri
    assert storage.local_path(before.manifest_uri).exists()
