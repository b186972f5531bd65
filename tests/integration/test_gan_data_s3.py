"""Packing photos on S3 into a training set, against the server the fixtures start."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from housegan import storage
from housegan.gan.data import load_packed, prepare
from housegan.testing import encode


@pytest.mark.integration
def test_prepare_reads_photos_and_writes_the_dataset_on_s3(settings, s3_server, bucket) -> None:
    client = s3_server.client()
    rows = []
    for i, (city, color) in enumerate([("austin", "red"), ("boston", "blue")]):
        key = f"raw/{city}/l{i}/p.png"
        client.put_object(Bucket=bucket, Key=key, Body=encode(Image.new("RGB", (50, 40), color)))
        rows.append({"uri": f"s3://{bucket}/{key}", "city": city, "image_type": "exterior"})
    options = settings.storage_options()
    manifest_uri = f"s3://{bucket}/manifests/train.parquet"
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer)
    storage.write_bytes_atomic(manifest_uri, buffer.getvalue(), options)

    prepared = prepare(manifest_uri, f"s3://{bucket}/store", 32, storage_options=options)
    assert prepared.uri.startswith(f"s3://{bucket}/store/datasets/")
    packed = load_packed(prepared.uri, options)
    assert packed.images.shape == (2, 32, 32, 3)
    assert packed.images[packed.city == 0][0, 0, 0].tolist() == [255, 0, 0]
