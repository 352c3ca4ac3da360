"""DatasetStager against S3 emulated by moto in server mode (a real HTTP endpoint on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json

import pytest

from dogclf.data import DatasetStager, make_synthetic_dataset
from dogclf.data.s3 import MIB, expected_etag, parse_s3_uri
from dogclf.errors import DataNotFoundError, InvalidURIError


@pytest.fixture
def s3(aws):
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="dogs")
    return client


@pytest.fixture
def src(tmp_path):
    return make_synthetic_dataset(tmp_path / "src", n_classes=3, per_class={"train": 4, "valid": 2, "test": 2},
                                  image_size=32, seed=5)


def _objects(s3, prefix):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="dogs", Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"]] = o
    return out


def test_parse_s3_uri():
    loc = parse_s3_uri("s3://dogs/a//b/")
    assert (loc.bucket, loc.prefix, loc.uri, loc.key("x.jpg")) == ("dogs", "a/b", "s3://dogs/a/b", "a/b/x.jpg")
    assert parse_s3_uri("s3://dogs").prefix == ""
    for bad in ("s3://", "s3:///x", "http://dogs/x", "s3://Dogs/x", "s3://d/x", "s3://dogs/../x"):
        with pytest.raises(InvalidURIError):
            parse_s3_uri(bad)


def test_stage_folder_to_s3_then_noop(s3, src):
    stager = DatasetStager(src, "s3://dogs/data/dogImages", workers=4)
    result = stager.run()
    assert result.is_s3 and result.uri == "s3://dogs/data/dogImages" and result.path is None
    assert result.channels == {s: f"s3://dogs/data/dogImages/{s}" for s in ("train", "valid", "test")}
    assert result.stats["uploaded"] == src.n_images() and result.stats["skipped_existing"] == 0
    objs = _objects(s3, "data/dogImages/")
    images = {k: v for k, v in objs.items() if k.endswith(".jpg")}
    assert len(images) == src.n_images()
    for entry in stager.manifest_.files:
        key = f"data/dogImages/{entry.relpath}"
        body = s3.get_object(Bucket="dogs", Key=key)
        data = body["Body"].read()
        assert data == (src.root / entry.relpath).read_bytes()
        assert body["Metadata"]["sha256"] == entry.sha256 == hashlib.sha256(data).hexdigest()
        assert body["ContentType"] == "image/jpeg"
    manifest = json.loads(s3.get_object(Bucket="dogs", Key="data/dogImages/manifest.json")["Body"].read())
    assert manifest["splits"]["train"] == {f: 4 for f in src.labels.folder_names}
    assert len(manifest["files"]) == src.n_images()
    labels = json.loads(s3.get_object(Bucket="dogs", Key="data/dogImages/labels.json")["Body"].read())
    assert labels["breeds"] == list(src.labels.names)

    again = DatasetStager(src, "s3://dogs/data/dogImages").run()
    assert again.noop and again.stats["uploaded"] == 0
    assert _objects(s3, "data/dogImages/")["data/dogImages/manifest.json"]["LastModified"] == \
        objs["data/dogImages/manifest.json"]["LastModified"]


def test_interrupted_upload_resumes_without_reuploading(s3, src):
    class Boom(Exception):
        pass

    def stop_after_five(phase, done, total):
        if phase == "upload" and done >= 5:
            raise Boom

    with pytest.raises(Boom):
        DatasetStager(src, "s3://dogs/ds", workers=2, progress=stop_after_five).run()
    keys = _objects(s3, "ds/")
    assert "ds/manifest.json" not in keys  # incomplete datasets carry no manifest
    finished = {k for k in keys if k.endswith(".jpg")}
    assert 5 <= len(finished) <= 5 + 4 * 2 < src.n_images()  # stops within the in-flight window (4 per worker)
    # finished objects keep their first upload: LastModified and all
    stamps = {k: keys[k]["LastModified"] for k in finished}
    result = DatasetStager(src, "s3://dogs/ds", workers=2).run()
    assert result.stats["skipped_existing"] == len(finished)
    assert result.stats["uploaded"] == src.n_images() - len(finished)
    after = _objects(s3, "ds/")
    assert {k: after[k]["LastModified"] for k in finished} == stamps
    assert "ds/manifest.json" in after


def test_changed_object_is_reuploaded(s3, src):
    DatasetStager(src, "s3://dogs/ds").run()
    victim = "ds/train/001.Affenpinscher/001.Affenpinscher_00000.jpg"
    original = s3.get_object(Bucket="dogs", Key=victim)["Body"].read()
    s3.put_object(Bucket="dogs", Key=victim, Body=bytes(reversed(original)))  # same size, other bytes
    s3.delete_object(Bucket="dogs", Key="ds/manifest.json")
    result = DatasetStager(src, "s3://dogs/ds").run()
    assert result.stats["uploaded"] == 1 and result.stats["skipped_existing"] == src.n_images() - 1
    assert s3.get_object(Bucket="dogs", Key=victim)["Body"].read() == original


def test_multipart_upload_of_large_files_and_etag_skip(s3, tmp_path):
    from PIL import Image
    import numpy as np

    src = make_synthetic_dataset(tmp_path / "src", 1, 1, 32)
    big = src.root / "train" / "001.Affenpinscher" / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1900, 1900, 3), dtype=np.uint8)).save(big, compress_level=0)
    size = big.stat().st_size
    assert size > 10 * MIB
    result = DatasetStager(src, "s3://dogs/big", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB).run()
    assert result.stats["uploaded"] == 4
    head = s3.head_object(Bucket="dogs", Key="big/train/001.Affenpinscher/big.png")
    n_parts = -(-size // (5 * MIB))
    assert head["ETag"].strip('"').endswith(f"-{n_parts}")  # it really went up in parts
    assert head["ETag"].strip('"') == expected_etag(big, size, "", 5 * MIB, 5 * MIB)
    s3.delete_object(Bucket="dogs", Key="big/manifest.json")
    again = DatasetStager(src, "s3://dogs/big", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB).run()
    assert again.stats["uploaded"] == 0 and again.stats["skipped_existing"] == 4


def test_s3_source_to_local_target(s3, src, tmp_path):
    DatasetStager(src, "s3://dogs/published/dogImages").run()
    result = DatasetStager("s3://dogs/published", tmp_path / "local").run()  # one folder deep: tolerated
    assert result.n_images == src.n_images()
    for p in src.root.rglob("*.jpg"):
        rel = p.relative_to(src.root)
        assert (tmp_path / "local" / rel).read_bytes() == p.read_bytes()
    assert DatasetStager("s3://dogs/published", tmp_path / "local").run().noop


def test_missing_bucket_and_empty_prefix(s3, src, tmp_path):
    with pytest.raises(DataNotFoundError, match="'no-such-bucket'"):
        DatasetStager(src, "s3://no-such-bucket/x").run()
    with pytest.raises(DataNotFoundError, match="s3://dogs/empty"):
        DatasetStager("s3://dogs/empty", tmp_path / "out").run()
    assert not (tmp_path / "out").exists()


def test_compact_cache_goes_up_beside_the_splits(s3, src):
    result = DatasetStager(src, "s3://dogs/cached", cache_short_side=16).run()
    assert result.cache_uri == "s3://dogs/cached/cache-16"
    assert result.channels_for("splits", cached=True)["valid"] == "s3://dogs/cached/cache-16/valid"
    cached = {k for k in _objects(s3, "cached/cache-16/")}
    assert len(cached) == src.n_images()
    from io import BytesIO

    from PIL import Image

    key = sorted(cached)[0]
    with Image.open(BytesIO(s3.get_object(Bucket="dogs", Key=key)["Body"].read())) as im:
        assert im.size == (16, 16)
    assert result.stats["uploaded"] == 2 * src.n_images()
    assert DatasetStager(src, "s3://dogs/cached", cache_short_side=16).run().noop
