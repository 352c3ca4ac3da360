"""DatasetStager with local sources and targets: folders, zips, URLs; validation; manifest; no-op reruns."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dogclf.data import DatasetStager, make_synthetic_dataset
from dogclf.data.manifest import Manifest
from dogclf.data.stager import DEFAULT_URL, StagerConfig
from dogclf.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptImageError,
    DataError,
    DataNotFoundError,
    DatasetLayoutError,
    InvalidURIError,
    LabelMismatchError,
    NotFittedError,
    UnsafeArchiveError,
)
from dogclf.labels import BreedLabels, get_labels, normalize_breed, parse_folder_name


@pytest.fixture
def src(tmp_path):
    return make_synthetic_dataset(tmp_path / "src", n_classes=3, per_class={"train": 3, "valid": 1, "test": 1},
                                  image_size=32, seed=3)


def _zip_dir(folder: Path, archive: Path, arc_prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, arc_prefix + p.relative_to(folder).as_posix())
    return archive


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_config_validated_on_creation_and_init_touches_nothing(tmp_path):
    stager = DatasetStager(tmp_path / "nowhere", tmp_path / "out", labels="dogimages-133")
    assert not (tmp_path / "out").exists()
    assert stager.config.labels == get_labels("dogimages-133")
    with pytest.raises(NotFittedError, match="run"):
        stager.result_
    assert StagerConfig().source == DEFAULT_URL and StagerConfig().source_kind == "url"
    with pytest.raises(InvalidURIError, match="no bucket"):
        DatasetStager("s3:///dogImages", tmp_path)
    with pytest.raises(InvalidURIError, match="no bucket"):
        DatasetStager(tmp_path, "s3://")
    with pytest.raises(InvalidURIError, match="ftp"):
        DatasetStager("ftp://host/x.zip", tmp_path)
    with pytest.raises(ConfigError, match="on_corrupt.*'ignore'"):
        DatasetStager(tmp_path, tmp_path, on_corrupt="ignore")
    with pytest.raises(ConfigError, match="workers"):
        DatasetStager(tmp_path, tmp_path, workers=0)
    with pytest.raises(ConfigError, match="sha256"):
        DatasetStager(tmp_path, tmp_path, sha256="xyz")
    with pytest.raises(TypeError):
        DatasetStager(tmp_path, tmp_path, no_such_option=1)


def test_folder_to_local_target_copies_validates_and_writes_manifest(src, tmp_path):
    events = []
    stager = DatasetStager(src, tmp_path / "staged", labels=src.labels, progress=lambda *a: events.append(a))
    result = stager.run()
    root = tmp_path / "staged"
    assert result.uri == str(root) and result.path == root and not result.is_s3
    assert result.channels == {s: str(root / s) for s in ("train", "valid", "test")}
    assert result.channels_for("root") == {"training": str(root)}
    assert result.counts == {"train": {f: 3 for f in src.labels.folder_names},
                             "valid": {f: 1 for f in src.labels.folder_names},
                             "test": {f: 1 for f in src.labels.folder_names}}
    assert stager.labels_.names == src.labels.names and stager.counts_ == result.counts
    # same files, byte for byte, plus manifest and labels
    staged = _tree(root)
    original = _tree(src.root)
    assert {k: v for k, v in staged.items() if k not in ("manifest.json", "labels.json")} == original
    manifest = Manifest.load(root / "manifest.json")
    assert manifest.same_files(stager.manifest_)
    assert {e.relpath: e.sha256 for e in manifest.files} == original
    assert all(e.size == (src.root / e.relpath).stat().st_size for e in manifest.files)
    assert {(e.split, e.cls) for e in manifest.files} == {(s, f) for s in ("train", "valid", "test")
                                                           for f in src.labels.folder_names}
    assert BreedLabels.load(root / "labels.json").names == src.labels.names
    assert {e[0] for e in events} >= {"validate", "copy"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_second_run_is_a_noop_and_a_change_restages(src, tmp_path):
    first = DatasetStager(src, tmp_path / "staged").run()
    assert not first.noop
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "staged").rglob("*")}
    again = DatasetStager(src, tmp_path / "staged").run()
    assert again.noop and again.counts == first.counts
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "staged").rglob("*")} == before
    # a new file in the source: staged again, and the new file is there
    extra = src.root / "train" / "001.Affenpinscher" / "new.jpg"
    import numpy as np
    from PIL import Image

    from dogclf.data import synthetic_image

    # a new photo (a copy of a valid one would be refused as a duplicate across splits)
    Image.fromarray(synthetic_image(0, 64, np.random.default_rng(123))).save(extra)
    third = DatasetStager(src, tmp_path / "staged").run()
    assert not third.noop and third.counts["train"]["001.Affenpinscher"] == 4
    assert (tmp_path / "staged" / "train" / "001.Affenpinscher" / "new.jpg").is_file()
    # a staged file deleted behind our back: not a no-op any more
    (tmp_path / "staged" / "train" / "001.Affenpinscher" / "new.jpg").unlink()
    assert not DatasetStager(src, tmp_path / "staged").run().noop
    # force restages even when nothing changed
    assert not DatasetStager(src, tmp_path / "staged", force=True).run().noop


def test_zip_one_folder_deep_with_sha256(src, tmp_path):
    archive = _zip_dir(src.root, tmp_path / "dogImages.zip", "dogImages/")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = DatasetStager(archive, tmp_path / "staged", sha256=sha).run()
    assert result.n_images == src.n_images()
    assert {k: v for k, v in _tree(tmp_path / "staged").items() if "/" in k} == _tree(src.root)
    assert DatasetStager(archive, tmp_path / "staged", sha256=sha).run().noop
    with pytest.raises(ChecksumMismatchError, match="dogImages.zip"):  # a wrong sha256 is never "already staged"
        DatasetStager(archive, tmp_path / "staged", sha256="1" * 64).run()
    assert DatasetStager(archive, tmp_path / "staged", sha256=sha).run().noop
    with pytest.raises(ChecksumMismatchError, match="dogImages.zip"):
        DatasetStager(archive, tmp_path / "other", sha256="0" * 64).run()
    assert not (tmp_path / "other").exists()


def test_unsafe_zip_is_refused_and_target_untouched(src, tmp_path):
    archive = _zip_dir(src.root, tmp_path / "bad.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../escape.jpg", b"x")
    good = DatasetStager(src, tmp_path / "staged").run()
    before = _tree(tmp_path / "staged")
    with pytest.raises(UnsafeArchiveError, match="escape"):
        DatasetStager(archive, tmp_path / "staged").run()
    assert _tree(tmp_path / "staged") == before and good.n_images == src.n_images()
    assert not (tmp_path / "escape.jpg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_layout_errors_name_the_path(src, tmp_path):
    shutil.rmtree(src.root / "valid")
    with pytest.raises(DatasetLayoutError, match=r"missing split folder\(s\) \['valid'\]") as err:
        DatasetStager(src, tmp_path / "a").run()
    assert str(src.root) in str(err.value)
    shutil.copytree(src.root / "test", src.root / "valid")
    shutil.rmtree(src.root / "test" / "002.Afghan_hound")
    shutil.copytree(src.root / "test" / "001.Affenpinscher", src.root / "test" / "002.Beagle")
    with pytest.raises(DatasetLayoutError, match="different classes.*002.Afghan_hound.*002.Beagle") as err:
        DatasetStager(src, tmp_path / "a").run()
    assert str(src.root / "test") in str(err.value)
    shutil.rmtree(src.root / "test" / "002.Beagle")
    shutil.copytree(src.root / "train" / "002.Afghan_hound", src.root / "test" / "002.Afghan_hound")
    for split in ("train", "valid", "test"):
        os.rename(src.root / split / "003.Airedale_terrier", src.root / split / "Airedale")
    with pytest.raises(DatasetLayoutError, match="do not parse.*Airedale"):
        DatasetStager(src, tmp_path / "a").run()
    with pytest.raises(DataNotFoundError, match="no-such-dir"):
        DatasetStager(tmp_path / "no-such-dir", tmp_path / "a").run()
    assert not (tmp_path / "a").exists()


def test_expected_labels_must_match(src, tmp_path):
    with pytest.raises(LabelMismatchError, match=r"missing \['Akita'") as err:
        DatasetStager(src, tmp_path / "a", labels=get_labels("dogimages-133").names[:4]).run()
    assert "extra []" in str(err.value)
    with pytest.raises(LabelMismatchError, match="different order"):
        DatasetStager(src, tmp_path / "a", labels=list(reversed(src.labels.names))).run()
    result = DatasetStager(src, tmp_path / "a", labels=["affenpinscher", "Afghan hound", "airedale-terrier"]).run()
    assert result.labels.names == src.labels.names


def _corrupt(src):
    victims = sorted((src.root / "train" / "002.Afghan_hound").glob("*.jpg"))
    truncated, garbage = victims[0], victims[1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"this is not a jpeg")
    return {truncated, garbage}


def test_corrupt_images_fail_listing_every_path(src, tmp_path):
    bad = _corrupt(src)
    with pytest.raises(CorruptImageError, match="2 image") as err:
        DatasetStager(src, tmp_path / "a").run()
    assert set(map(Path, err.value.paths)) == bad
    assert all(str(p) in str(err.value) for p in bad)
    assert not (tmp_path / "a").exists()


def test_corrupt_images_skipped_by_policy(src, tmp_path):
    bad = _corrupt(src)
    stager = DatasetStager(src, tmp_path / "a", on_corrupt="skip")
    result = stager.run()
    rel = sorted(p.relative_to(src.root).as_posix() for p in bad)
    assert list(result.skipped) == rel == list(stager.skipped_)
    assert result.counts["train"]["002.Afghan_hound"] == 1
    assert not any((tmp_path / "a" / r).exists() for r in rel)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["skipped"] == rel


def test_url_source_downloads_once_then_noop(src, tmp_path):
    archive = _zip_dir(src.root, tmp_path / "dogImages.zip", "dogImages/")
    body = archive.read_bytes()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/dogImages.zip"
        sha = hashlib.sha256(body).hexdigest()
        events = []
        stager = DatasetStager(url, tmp_path / "staged", sha256=sha, download_dir=tmp_path / "dl",
                               progress=lambda *a: events.append(a))
        result = stager.run()
        assert result.n_images == src.n_images() and hits == ["/dogImages.zip"]
        assert ("download", len(body), len(body)) in events
        assert (tmp_path / "dl" / "dogImages.zip").read_bytes() == body
        assert DatasetStager(url, tmp_path / "staged", sha256=sha, download_dir=tmp_path / "dl").run().noop
        assert hits == ["/dogImages.zip"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_compact_cache_downscales_to_short_side(tmp_path):
    from PIL import Image

    src = make_synthetic_dataset(tmp_path / "src", 2, 1, 96, seed=1)
    big = src.root / "train" / "001.Affenpinscher" / "big.png"
    Image.new("RGB", (300, 150), (10, 200, 30)).save(big)
    result = DatasetStager(src, tmp_path / "staged", cache_short_side=64).run()
    cache = Path(result.cache_uri)
    assert result.channels_for("splits", cached=True)["train"] == str(cache / "train")
    with Image.open(cache / "train" / "001.Affenpinscher" / "big.jpg") as im:
        assert im.size == (128, 64) and im.format == "JPEG"
    with Image.open(cache / "valid" / "002.Afghan_hound" / "002.Afghan_hound_00000.jpg") as im:
        assert im.size == (64, 64)
    assert result.stats["cache_bytes"] > 0
    assert DatasetStager(src, tmp_path / "staged", cache_short_side=64).run().noop
    shutil.rmtree(cache / "test")
    assert not DatasetStager(src, tmp_path / "staged", cache_short_side=64).run().noop
    assert (cache / "test").is_dir()


def test_refuses_to_replace_a_foreign_folder(src, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a staged dataset"):
        DatasetStager(src, tmp_path / "mine").run()
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_in_place_staging_writes_only_the_manifest(src):
    before = _tree(src.root)
    result = DatasetStager(src, src.root).run()
    after = _tree(src.root)
    assert set(after) - set(before) == {"manifest.json", "labels.json"}
    assert {k: after[k] for k in before} == before and result.n_images == src.n_images()
    assert DatasetStager(src, src.root).run().noop


_breed = st.text(alphabet=st.sampled_from("abcdefghij_ -"), min_size=1, max_size=10).map(str.strip).filter(
    lambda s: s and any(c.isalpha() for c in s))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(breeds=st.lists(_breed, min_size=1, max_size=4, unique_by=normalize_breed),  # distinct breeds, by lookup
       counts=st.lists(st.integers(1, 2), min_size=3, max_size=3))
def test_any_label_set_round_trips_through_staging(tmp_path_factory, breeds, counts):
    labels = BreedLabels(breeds)  # any error here is a failure: the strategy makes only valid label sets
    base = tmp_path_factory.mktemp("rt")
    src = make_synthetic_dataset(base / "src", len(labels), dict(zip(("train", "valid", "test"), counts)), 16,
                                 labels=labels)
    result = DatasetStager(src, base / "out", labels=labels).run()
    # the staged names are the folder spellings (whitespace runs become one "_"), the same breeds by lookup
    assert list(result.labels.names) == [parse_folder_name(f)[1] for f in labels.folder_names]
    assert [normalize_breed(n) for n in result.labels.names] == [normalize_breed(n) for n in labels.names]
    assert result.n_images == len(labels) * sum(counts)
    assert Manifest.load(base / "out" / "manifest.json").split_counts() == dict(zip(("train", "valid", "test"),
                                                                                     [c * len(labels)
                                                                                      for c in counts]))


@pytest.mark.shared
def test_real_photos_stage_validate_and_cache(pet_images, tmp_path):
    """The shared real photos, arranged as a 3-breed dogImages dataset: they decode, and the cache shrinks them."""
    from PIL import Image

    by_breed = {}
    for p in sorted(pet_images.glob("*.jpg")):
        by_breed.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
    breeds = ["Beagle", "Boston_terrier", "Dalmatian"]  # three photos each
    root = tmp_path / "dogImages"
    for i, breed in enumerate(breeds):
        for split, photo in zip(("train", "valid", "test"), by_breed[breed]):
            dest = root / split / f"{i + 1:03d}.{breed}" / photo.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, dest)
    result = DatasetStager(root, tmp_path / "staged", labels=["beagle", "boston terrier", "dalmatian"],
                           cache_short_side=128).run()
    assert result.labels.names == tuple(breeds) and result.n_images == 9 and not result.skipped
    cache = Path(result.cache_uri)
    for entry in Manifest.load(tmp_path / "staged" / "manifest.json").files:
        with Image.open(tmp_path / "staged" / entry.relpath) as orig, Image.open(cache / entry.relpath) as small:
            assert min(small.size) == min(128, min(orig.size))
            assert abs(small.size[0] / small.size[1] - orig.size[0] / orig.size[1]) < 0.05
    assert result.stats["cache_bytes"] < result.stats["bytes"]


def test_default_target_is_the_local_backend_store(src, tmp_path, monkeypatch):
    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path / "home"))
    stager = DatasetStager(src, name="tiny-dogs")
    assert not (tmp_path / "home").exists()  # nothing touched before run()
    result = stager.run()
    assert result.uri == str(tmp_path / "home" / "data" / "tiny-dogs")
    assert (tmp_path / "home" / "data" / "tiny-dogs" / "manifest.json").is_file()
    assert json.loads((tmp_path / "home" / "data" / "tiny-dogs" / "manifest.json").read_text())["name"] == "tiny-dogs"
