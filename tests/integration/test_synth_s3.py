"""Synthetic listings written to an S3 bucket, against the server the fixtures start."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from housegan import synth

SMALL = {"cities": 2, "per_city": 5}


@pytest.mark.integration
def test_synth_writes_to_s3_bucket(settings, s3_server):
    options = settings.storage_options()
    result = synth.synthesize(settings.source_uri, seed=5, storage_options=options, **SMALL)
    assert result.truth_uri.startswith("s3://")
    bucket, prefix = settings.source_uri.removeprefix("s3://").split("/", 1)
    listed = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = {o["Key"] for page in listed for o in page.get("Contents", [])}
    truth = synth.read_truth(result.truth_uri, options)
    assert {f"{prefix}/{k}" for k in truth["key"]} <= keys
    assert f"{prefix}/{truth.loc[truth['defect'] == 'folder_marker', 'key'].iloc[0]}" in keys
    row = truth[truth["defect"].isna()].iloc[0]
    body = s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/{row['key']}")["Body"]
    assert Image.open(io.BytesIO(body.read())).size == (row["width"], row["height"])
