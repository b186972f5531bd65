"""Ingest throughput: ``housegan.ingest`` vs. a plain sequential boto3 GET + decode loop.

Uploads N small JPEGs (~5-20 KB) to a private SeaweedFS, then measures objects/s of both, first
through a TCP proxy that adds S3-like latency per request (in its own process, so it does not
compete with the measured code for the GIL), then on plain loopback. Prints figures; asserts
only that every photo ingested ok.

    .venv/bin/python benchmarks/bench_ingest.py [--n 2000] [--latency-ms 20] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import boto3
from PIL import Image

from housegan import stack
from housegan.config import Settings
from housegan.ingest import ingest
from housegan.testing import photo_bytes

BUCKET = "bench"
PREFIX = "raw/"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="photos to upload and ingest")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="proxy delay per request")
    parser.add_argument("--concurrency", type=int, default=None, help="ingest.concurrency")
    return parser.parse_args()


@contextmanager
def seaweed(workdir: Path) -> Iterator[stack.Service]:
    access_key, secret_key = f"bench{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    os.environ.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION="us-east-1",
    )
    service = stack.start_seaweed(
        workdir / "s3", access_key=access_key, secret_key=secret_key, buckets=(BUCKET,)
    )
    try:
        yield service
    finally:
        stack.stop_pid(service.pid)


@contextmanager
def latency_proxy(upstream: str, latency_ms: float) -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "housegan.testing.faultproxy",
            upstream,
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process.stdout.readline().strip()
    finally:
        stack.stop_pid(process.pid)


def upload(endpoint: str, n: int) -> int:
    """N distinct photos of 128-200 px (about 5-20 KB); returns the total bytes."""
    client = boto3.client("s3", endpoint_url=endpoint)

    def put(i: int) -> int:
        side = 128 + (i * 7) % 73
        body = photo_bytes(side, side * 3 // 4, seed=i, quality=90)
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}city{i % 5}/{i}/photo.jpg", Body=body)
        return len(body)

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(put, range(n)))


def sequential_loop(endpoint: str) -> int:
    """The baseline: list, then GET and fully decode one object after another."""
    client = boto3.client("s3", endpoint_url=endpoint)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            with Image.open(io.BytesIO(body)) as image:
                image.load()
            count += 1
    return count


def ingest_into_fresh_store(endpoint: str, concurrency: int | None) -> int:
    settings = Settings(
        source_uri=f"s3://{BUCKET}/{PREFIX}",
        store_uri=Path(tempfile.mkdtemp(prefix="bench-store-")).as_uri(),
        s3_endpoint_url=endpoint,
    )
    cfg = settings.ingest
    if concurrency:
        cfg = cfg.model_copy(update={"concurrency": concurrency})
    result = ingest(
        settings.source_uri,
        settings.store_uri,
        key_pattern=settings.key_pattern,
        limits=settings.images,
        cfg=cfg,
        storage_options=settings.storage_options(),
    )
    assert result.counts == {"ok": result.listed}, result.counts  # every photo is valid
    return result.downloaded


def objects_per_s(run: Callable[[], int]) -> float:
    started = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, seaweed(Path(tmp)) as s3:
        started = time.perf_counter()
        total = upload(s3.endpoint, args.n)
        print(
            f"uploaded {args.n} photos ({total / args.n / 1024:.1f} KB mean) "
            f"in {time.perf_counter() - started:.1f}s"
        )
        figures: dict[str, tuple[float, float]] = {}
        with latency_proxy(s3.endpoint, args.latency_ms) as proxied:
            figures[f"proxy {args.latency_ms:g} ms/request"] = (
                objects_per_s(lambda: sequential_loop(proxied)),
                objects_per_s(lambda: ingest_into_fresh_store(proxied, args.concurrency)),
            )
        figures["loopback"] = (
            objects_per_s(lambda: sequential_loop(s3.endpoint)),
            objects_per_s(lambda: ingest_into_fresh_store(s3.endpoint, args.concurrency)),
        )
    concurrency = args.concurrency or Settings().ingest.concurrency
    print(f"\n{'path':<24}{'sequential obj/s':>18}{'ingest obj/s':>14}{'ratio':>8}")
    for path, (sequential, ingested) in figures.items():
        print(f"{path:<24}{sequential:>18.1f}{ingested:>14.1f}{ingested / sequential:>7.1f}x")
    print(f"(n={args.n}, ingest.concurrency={concurrency}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
