"""Manifest round trips and S3 URI parsing, over generated inputs."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.data.manifest import Manifest, ManifestEntry
from dogclf.data.s3 import parse_s3_uri
from dogclf.errors import ConfigError, DataNotFoundError, InvalidURIError
from dogclf.labels import BreedLabels

_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_name = st.text(alphabet=string.ascii_letters + string.digits + "_- .", min_size=1, max_size=20)
_entry = st.builds(ManifestEntry, split=st.sampled_from(["train", "valid", "test"]),
                   cls=st.sampled_from(["001.Affenpinscher", "002.Afghan_hound"]), relpath=_name,
                   size=st.integers(0, 2**40), sha256=_hex, md5=st.text(alphabet="0123456789abcdef", max_size=32))


@settings(max_examples=50, deadline=None)
@given(entries=st.lists(_entry, max_size=20), skipped=st.lists(_name, max_size=3))
def test_manifest_json_round_trip(entries, skipped):
    m = Manifest(name="dogImages", labels=BreedLabels(["Affenpinscher", "Afghan_hound"]),
                 files=Manifest.sorted_entries(entries), source={"uri": "s3://b/x", "fingerprint": "tree:abc"},
                 skipped=tuple(skipped), options={"splits": ["train", "valid", "test"]})
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.same_files(m)
    assert sum(back.split_counts().values()) == len(entries) == sum(sum(c.values()) for c in back.counts.values())
    assert back.total_bytes == sum(e.size for e in entries)


def test_manifest_save_load_and_bad_documents(tmp_path):
    m = Manifest(name="d", labels=BreedLabels(["A"]), files=(ManifestEntry("train", "001.A", "train/001.A/x.jpg",
                                                                               3, "0" * 64),))
    m.save(tmp_path / "m.json")
    assert Manifest.load(tmp_path / "m.json") == m
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left
    with pytest.raises(DataNotFoundError, match="nope.json"):
        Manifest.load(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Manifest.from_json("{")
    with pytest.raises(ConfigError, match="format"):
        Manifest.from_json('{"format": "something/else"}')


_bucket = st.from_regex(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", fullmatch=True)
_segment = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=10)


@settings(max_examples=100, deadline=None)
@given(bucket=_bucket, parts=st.lists(_segment, max_size=4), slashes=st.integers(1, 3))
def test_s3_uris_parse_and_normalise(bucket, parts, slashes):
    uri = "s3://" + bucket + ("/" * slashes).join([""] + parts) + ("/" if parts else "")
    loc = parse_s3_uri(uri)
    assert loc.bucket == bucket and loc.prefix == "/".join(parts)
    assert parse_s3_uri(loc.uri) == loc
    assert loc.key("x.jpg") == "/".join([*parts, "x.jpg"])


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30))
def test_anything_else_is_refused_with_the_uri_named(text):
    try:
        loc = parse_s3_uri(text)
    except InvalidURIError as exc:
        assert repr(text) in str(exc)
    else:
        assert text.startswith("s3://") and loc.bucket and parse_s3_uri(loc.uri) == loc
