"""make_synthetic_dataset: layout, determinism, class structure, atomicity."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf.data import SPLITS, make_synthetic_dataset, synthetic_image
from dogclf.errors import ConfigError, DataError
from dogclf.labels import BreedLabels, get_labels


def _digest_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.startswith("."):
                continue  # the hidden record of the arguments
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_layout_parses_back_and_images_decode(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "dogs", n_classes=4, per_class={"train": 3, "valid": 1, "test": 2},
                                image_size=32, seed=7)
    assert os.fspath(ds) == str(tmp_path / "dogs")
    assert sorted(p.name for p in (tmp_path / "dogs").iterdir()) == sorted([*SPLITS, ".dogclf-synthetic.json"])
    for split, n in {"train": 3, "valid": 1, "test": 2}.items():
        labels = BreedLabels.from_directory(tmp_path / "dogs" / split, strict=True)
        assert labels.names == get_labels("dogimages-133").names[:4] == ds.labels.names
        for folder in labels.folder_names:
            files = sorted((tmp_path / "dogs" / split / folder).glob("*.jpg"))
            assert len(files) == n == ds.counts[split][folder]
            for f in files:
                with Image.open(f) as im:
                    assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    assert ds.n_images() == 4 * 6 and ds.n_images("train") == 12
    # no temporary folders left beside the dataset
    assert [p.name for p in tmp_path.iterdir()] == ["dogs"]


def test_deterministic_by_seed_and_independent_of_class_count(tmp_path):
    a = _digest_tree(make_synthetic_dataset(tmp_path / "a", 3, 2, 32, seed=1).root)
    b = _digest_tree(make_synthetic_dataset(tmp_path / "b", 3, 2, 32, seed=1).root)
    c = _digest_tree(make_synthetic_dataset(tmp_path / "c", 3, 2, 32, seed=2).root)
    d = _digest_tree(make_synthetic_dataset(tmp_path / "d", 5, 2, 32, seed=1).root)
    assert a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)
    assert {k: v for k, v in d.items() if k in a} == a


def test_classes_not_separable_by_mean_colour_but_by_structure():
    # Mean colour: nearest-class-centroid on per-image mean RGB is near chance. Orientation: the dominant gradient
    # direction recovers the class's stripe angle.
    n_classes, per = 6, 30
    means, angles, ys = [], [], []
    for k in range(n_classes):
        rng = np.random.default_rng(k)
        for _ in range(per):
            rgb = synthetic_image(k, 48, rng).astype(np.float32)
            img = rgb.mean(axis=2)
            means.append(rgb.reshape(-1, 3).mean(0))
            gy, gx = np.gradient(img)
            # structure tensor orientation (doubled angle) of the stripe normal
            angles.append(0.5 * np.arctan2(2 * (gx * gy).sum(), ((gx**2) - (gy**2)).sum()))
            ys.append(k)
    means, angles, ys = np.array(means), np.array(angles), np.array(ys)
    half = np.arange(len(ys)) % 2 == 0
    centroids = np.stack([means[half & (ys == k)].mean(0) for k in range(n_classes)])
    pred = np.argmin(((means[~half, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    colour_acc = (pred == ys[~half]).mean()
    assert colour_acc < 0.4  # chance is 1/6
    expected = np.pi * np.arange(n_classes) / n_classes
    diff = np.abs(((angles[:, None] - expected[None]) + np.pi / 2) % np.pi - np.pi / 2)
    orient_acc = (diff.argmin(1) == ys).mean()
    assert orient_acc > 0.9


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 300), size=st.integers(8, 40), seed=st.integers(0, 2**32 - 1))
def test_synthetic_image_shape_and_dtype(k, size, seed):
    img = synthetic_image(k, size, np.random.default_rng(seed))
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert img.std() > 5  # never a flat image


def test_custom_labels_and_bad_arguments(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "x", 2, 1, 16, labels=["Beagle", "Pug", "Boxer"], splits=("train",))
    assert ds.splits == ("train",) and ds.labels.names == ("Beagle", "Pug")
    assert sorted(p.name for p in (tmp_path / "x" / "train").iterdir()) == ["001.Beagle", "002.Pug"]
    with pytest.raises(DataError, match="not empty"):
        make_synthetic_dataset(tmp_path / "x", 2, 1, 16)
    make_synthetic_dataset(tmp_path / "x", 2, 1, 16, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "x").iterdir() if p.is_dir()) == sorted(SPLITS)
    with pytest.raises(ConfigError, match="n_classes"):
        make_synthetic_dataset(tmp_path / "y", 134, 1, 16)
    with pytest.raises(ConfigError, match="image_size"):
        make_synthetic_dataset(tmp_path / "y", 2, 1, 4)
    with pytest.raises(ConfigError, match="'valid'"):
        make_synthetic_dataset(tmp_path / "y", 2, {"train": 1}, 16)
    assert not (tmp_path / "y").exists()


def test_same_arguments_again_rewrite_nothing(tmp_path):
    first = make_synthetic_dataset(tmp_path / "d", 2, 2, 16, seed=4)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("*.jpg")}
    again = make_synthetic_dataset(tmp_path / "d", 2, 2, 16, seed=4, overwrite=True)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("*.jpg")} == stamps
    victim = next(iter(stamps))
    victim.unlink()  # incomplete: written again
    make_synthetic_dataset(tmp_path / "d", 2, 2, 16, seed=4, overwrite=True)
    assert victim.is_file() and len(list((tmp_path / "d").rglob("*.jpg"))) == len(stamps)
    with pytest.raises(DataError, match="not empty"):
        make_synthetic_dataset(tmp_path / "d", 2, 2, 16, seed=5)
