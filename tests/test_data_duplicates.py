"""Duplicate photos in DatasetStager: exact copies from the manifest's sha256, near copies from a perceptual hash.

The main scenario rebuilds the layout the dogs10 photos were published in (967 files: every photo four or five
times byte for byte), from the real sample in ``examples/data/dogs10``, with some copies resized or re-encoded and
some moved into another split.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf.data import DatasetStager, Manifest
from dogclf.data.duplicates import (NEAR_DUPLICATE_DISTANCE, DuplicateGroup, apply_policies, find_duplicates,
                                    hamming, hash_image_bytes)
from dogclf.data.manifest import ManifestEntry
from dogclf.errors import ConfigError, DataError, DuplicateImagesError

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "dogs10"
SPLITS = ("train", "valid", "test")


def _reencoded(data: bytes, scale: float, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1:
        image = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The 967-file layout: every sample photo 4 or 5 times; every 10th train photo has one copy resized or
    re-encoded instead; every 12th train photo has one byte copy moved to valid or test (same breed)."""
    root = tmp_path_factory.mktemp("published") / "dogs"
    photos = sorted(SAMPLE.glob("*/*/*.jpg"))
    assert len(photos) == 210, "the sample in examples/data/dogs10 is incomplete"
    moved, near, originals = [], [], {}
    train_index = 0
    for n, src in enumerate(photos):
        split, cls = src.parts[-3], src.parts[-2]
        data = src.read_bytes()
        originals[f"{split}/{cls}/{src.name}"] = hashlib.sha256(data).hexdigest()
        copies = 5 if n < 127 else 4
        dest = root / split / cls
        dest.mkdir(parents=True, exist_ok=True)
        (dest / src.name).write_bytes(data)
        for j in range(1, copies):
            (dest / f"{src.stem}_copy{j}.jpg").write_bytes(data)
        if split != "train":
            continue
        train_index += 1
        if train_index % 10 == 0:
            variant = _reencoded(data, (0.5, 0.75, 1.0, 1.5)[train_index // 10 % 4], 70)
            (dest / f"{src.stem}_copy1.jpg").write_bytes(variant)
            near.append(f"train/{cls}/{src.stem}_copy1.jpg")
        if train_index % 12 == 0:
            other = ("valid", "test")[train_index // 12 % 2]
            (root / other / cls).mkdir(parents=True, exist_ok=True)
            shutil.move(dest / f"{src.stem}_copy2.jpg", root / other / cls / f"{src.stem}_copy2.jpg")
            moved.append((f"train/{cls}/{src.name}", f"{other}/{cls}/{src.stem}_copy2.jpg"))
    assert sum(1 for _ in root.rglob("*.jpg")) == 967
    return {"root": root, "moved": moved, "near": near, "originals": originals}


def test_copies_across_splits_are_refused_by_default_with_their_paths(published, tmp_path):
    with pytest.raises(DuplicateImagesError) as err:
        DatasetStager(published["root"], tmp_path / "staged").run()
    message = str(err.value)
    assert f"{len(published['moved'])} photo(s)" in message and "across splits" in message
    failing = {tuple(g) for g in err.value.groups}
    assert len(failing) == len(published["moved"]) == 12
    for original, copy in published["moved"]:
        assert any(original in g and copy in g for g in failing), (original, copy)
    assert published["moved"][0][1] in message  # the paths are named
    assert not (tmp_path / "staged").exists()  # nothing staged


def test_keep_first_stages_each_photo_once_in_its_own_split(published, tmp_path):
    staged = DatasetStager(published["root"], tmp_path / "staged", on_duplicate="keep-first",
                           on_duplicate_in_split="keep-first", on_near_duplicate="keep-first").run()
    manifest = Manifest.load(tmp_path / "staged" / "manifest.json")
    assert staged.n_images == 210 and manifest.split_counts() == {"train": 150, "valid": 30, "test": 30}
    assert {e.relpath: e.sha256 for e in manifest.files} == published["originals"]
    assert sum(1 for _ in (tmp_path / "staged").rglob("*.jpg")) == 210
    cross = [g for g in staged.duplicates if g.kind == "exact" and g.crosses_splits]
    assert len(cross) == 12 and all(g.action == "kept-first" and g.splits[0] == "train" for g in cross)
    near = [g for g in staged.duplicates if g.kind == "near"]
    assert sorted(f for g in near for f in g.files[1:]) == sorted(published["near"])  # every resized copy, no more
    assert all(g.distance <= NEAR_DUPLICATE_DISTANCE for g in near)
    within = [g for g in staged.duplicates if g.kind == "exact" and not g.crosses_splits]
    assert len(within) + len(cross) == 210
    assert manifest.duplicates == staged.duplicates  # recorded in the manifest


def test_warn_keeps_every_copy_and_reports_the_groups(published, tmp_path, caplog):
    staged = DatasetStager(published["root"], tmp_path / "staged", on_duplicate="warn",
                           near_duplicate_distance=None).run()
    assert staged.n_images == 967
    assert all(g.action == "warned" and g.kind == "exact" for g in staged.duplicates)
    assert "12 group(s) of exact duplicate photos across splits" in caplog.text
    assert "198 group(s) of exact duplicate photos within a split" in caplog.text


def test_in_split_and_near_policies_can_fail(published, tmp_path):
    with pytest.raises(DuplicateImagesError, match="within a split"):
        DatasetStager(published["root"], tmp_path / "a", on_duplicate="keep-first", on_duplicate_in_split="fail").run()
    with pytest.raises(DuplicateImagesError, match="near-duplicate") as err:
        DatasetStager(published["root"], tmp_path / "b", on_duplicate="keep-first",
                      on_duplicate_in_split="keep-first", on_near_duplicate="fail").run()
    assert sorted(g[1] for g in err.value.groups) == sorted(published["near"])


def test_the_sample_itself_has_no_copies_across_splits(tmp_path):
    staged = DatasetStager(SAMPLE, tmp_path / "staged").run()
    assert staged.n_images == 210 and not [g for g in staged.duplicates if g.kind == "exact"]


def test_keep_first_in_place_is_refused(tmp_path):
    root = tmp_path / "d"
    for split in SPLITS:
        (root / split / "001.Beagle").mkdir(parents=True)
        shutil.copy(next(SAMPLE.glob(f"{split}/001.Beagle/*.jpg")), root / split / "001.Beagle" / "a.jpg")
    shutil.copy(root / "train" / "001.Beagle" / "a.jpg", root / "train" / "001.Beagle" / "b.jpg")
    with pytest.raises(DataError, match="in place"):
        DatasetStager(root, root, on_duplicate_in_split="keep-first").run()


@pytest.mark.parametrize("kw", [dict(on_duplicate="drop"), dict(on_near_duplicate=None),
                                dict(near_duplicate_distance=64), dict(near_duplicate_distance=True)])
def test_bad_policies(kw, tmp_path):
    with pytest.raises(ConfigError):
        DatasetStager(SAMPLE, tmp_path / "x", **kw)


# -- the hash and the grouping on their own --------------------------------------------------------------------------
@given(st.sampled_from(sorted(SAMPLE.glob("train/*/*.jpg"))), st.floats(0.5, 2.0), st.integers(60, 95))
@settings(max_examples=20, deadline=None)
def test_resized_and_reencoded_copies_stay_within_the_distance(photo, scale, quality):
    data = photo.read_bytes()
    copy = _reencoded(data, scale, quality)
    assert hamming(hash_image_bytes(data), hash_image_bytes(copy)) <= NEAR_DUPLICATE_DISTANCE


def test_distinct_sample_photos_are_not_near_duplicates():
    hashes = [hash_image_bytes(p.read_bytes()) for p in sorted(SAMPLE.glob("*/*/*.jpg"))]
    closest = min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > NEAR_DUPLICATE_DISTANCE


def _entry(split: str, name: str, sha: str, phash: str = "") -> ManifestEntry:
    return ManifestEntry(split, "001.Beagle", f"{split}/001.Beagle/{name}", 1, sha, "", phash)


def test_grouping_orders_by_split_then_path_and_never_calls_exact_copies_near():
    entries = [_entry("test", "z.jpg", "s1", "ffff000000000000"), _entry("train", "b.jpg", "s1", "ffff000000000000"),
               _entry("valid", "c.jpg", "s2", "ffff000000000001"), _entry("train", "d.jpg", "s3", "0000ffffffff0000")]
    exact, near = find_duplicates(entries, SPLITS, near_distance=2)
    assert exact == [DuplicateGroup("exact", ("train/001.Beagle/b.jpg", "test/001.Beagle/z.jpg"), ("train", "test"))]
    # z has b's bytes: an exact copy of b, so not near it (and c, near b, is already in b's group)
    assert [(g.files, g.distance) for g in near] == [(("train/001.Beagle/b.jpg", "valid/001.Beagle/c.jpg"), 1)]
    kept, report = apply_policies(entries, SPLITS, on_duplicate="keep-first", on_near_duplicate="keep-first",
                                  near_distance=2)
    assert sorted(e.relpath for e in kept) == ["train/001.Beagle/b.jpg", "train/001.Beagle/d.jpg"]
    assert [g.action for g in report] == ["kept-first", "kept-first"]
    assert DuplicateGroup.from_dict(report[0].to_dict()) == report[0]
