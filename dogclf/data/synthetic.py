"""Synthetic dogImages-shaped datasets: real JPEG files with class-distinct procedural content.

The tests, the benchmarks and the local demo need a dataset laid out exactly like Udacity's dogImages
(``train|valid|test/NNN.Breed/*.jpg``) without downloading 1.1 GB. :func:`make_synthetic_dataset` writes one.

Each class is a combination of three visual factors a convolutional network can learn: the **orientation** of a
stripe pattern, its **spatial frequency**, and an overlaid **shape** (none, disc, square, triangle, ring, cross).
Every image draws its own random foreground, background and shape colours, stripe phase, small orientation jitter,
shape position/size and pixel noise, so the mean colour of an image carries no information about its class: a
classifier has to look at structure, as it would for real photos.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dogclf._io import atomic_path
from dogclf.errors import ConfigError, DataError
from dogclf.labels import DOGIMAGES_133, BreedLabels, get_labels

__all__ = ["SyntheticDataset", "make_synthetic_dataset", "synthetic_image", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
"""The split folder names of the dogImages layout, in order."""

_N_ORIENT = 6
_FREQS = (2.0, 3.5, 5.5, 8.0)
_SHAPES = ("none", "disc", "square", "triangle", "ring", "cross")
_MAX_CLASSES = _N_ORIENT * len(_FREQS) * len(_SHAPES)  # 144 distinct classes


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote.

    It is path-like (``os.fspath(ds) == str(ds.root)``), so it can be passed wherever a dataset folder is expected.

    Attributes:
        root: The dataset folder holding one sub-folder per split.
        labels: The classes, in label order; folder ``i`` of every split is ``labels.folder_name(i)``.
        counts: Images written per split and class folder: ``counts["train"]["001.Affenpinscher"]``.
        image_size: Side of the square images, in pixels.
        seed: The seed the images were drawn from.
    """

    root: Path
    labels: BreedLabels
    counts: Mapping[str, Mapping[str, int]] = field(repr=False)
    image_size: int = 64
    seed: int = 0

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def splits(self) -> tuple[str, ...]:
        """The split folders written, in order."""
        return tuple(self.counts)

    def split_dir(self, split: str) -> Path:
        """The folder of one split (``ds.split_dir("train")``).

        Raises:
            ConfigError: ``split`` was not written.
        """
        if split not in self.counts:
            raise ConfigError(f"unknown split {split!r}; this dataset has {list(self.counts)}")
        return self.root / split

    def n_images(self, split: str | None = None) -> int:
        """The number of images in one split, or in all of them when ``split`` is None."""
        splits = [split] if split is not None else list(self.counts)
        return sum(sum(self.counts[s].values()) for s in splits)


def _class_factors(index: int) -> tuple[float, float, str]:
    """(orientation in radians, frequency in cycles per image, shape) of class ``index``: all combinations differ."""
    orient = index % _N_ORIENT
    freq = (index // _N_ORIENT) % len(_FREQS)
    shape = (index // (_N_ORIENT * len(_FREQS))) % len(_SHAPES)
    return math.pi * orient / _N_ORIENT, _FREQS[freq], _SHAPES[shape]


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        # upward triangle: below the apex, inside the two slanted edges
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        w = r * 0.3
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    return np.zeros_like(dy, dtype=bool)


def synthetic_image(class_index: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic image of class ``class_index`` as an ``(image_size, image_size, 3)`` uint8 array.

    Args:
        class_index: Zero-based class; classes ``0..143`` have distinct (orientation, frequency, shape) triples,
            larger indices wrap around.
        image_size: Side of the square image in pixels (at least 8).
        rng: Source of the per-image randomness (colours, phase, jitter, shape placement, noise).

    Raises:
        ConfigError: ``class_index`` is negative or ``image_size`` is below 8.
    """
    if class_index < 0:
        raise ConfigError(f"class_index must be >= 0, got {class_index}")
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8 pixels, got {image_size}")
    theta, freq, shape = _class_factors(class_index)
    theta += rng.uniform(-0.08, 0.08)  # about +-4.5 degrees; classes are 30 degrees apart
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    wave = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + rng.uniform(0, 2 * math.pi))
    stripes = (wave > 0)[..., None]
    fg, bg, sc = rng.uniform(0, 255, size=(3, 3))
    img = np.where(stripes, fg, bg).astype(np.float32)
    if shape != "none":
        r = rng.uniform(0.22, 0.32)
        cy, cx = rng.uniform(r, 1 - r, size=2)
        mask = _shape_mask(shape, yy, xx, cy, cx, r)[..., None]
        img = np.where(mask, sc, img)
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


_MARKER = ".dogclf-synthetic.json"
_MARKER_FORMAT = "dogclf.synthetic/1"


def _existing(root: Path, params: dict, labels: BreedLabels) -> SyntheticDataset | None:
    """The dataset already at ``root`` if it was written with ``params`` and all its files are still there."""
    try:
        if json.loads((root / _MARKER).read_text()) != params:
            return None
    except (OSError, ValueError):
        return None
    counts: dict[str, dict[str, int]] = {}
    for split, n in params["per_class"].items():
        counts[split] = {}
        for folder in labels.folder_names:
            names = {f"{folder}_{i:05d}.jpg" for i in range(n)}
            try:
                present = {e.name for e in os.scandir(root / split / folder)}
            except OSError:
                return None
            if not names <= present:
                return None
            counts[split][folder] = n
    return SyntheticDataset(root=root, labels=labels, counts=counts, image_size=params["image_size"],
                            seed=params["seed"])


def _resolve_labels(labels: BreedLabels | str | Sequence[str] | None, n_classes: int) -> BreedLabels:
    if labels is None:
        labels = get_labels(DOGIMAGES_133)
    elif isinstance(labels, str):
        labels = get_labels(labels)
    elif not isinstance(labels, BreedLabels):
        labels = BreedLabels(labels)
    if not 1 <= n_classes <= len(labels):
        raise ConfigError(f"n_classes must be between 1 and {len(labels)} (the size of {labels!r}), got {n_classes}")
    if n_classes == len(labels):
        return labels
    return BreedLabels(labels.names[:n_classes], name=f"{labels.name}[:{n_classes}]" if labels.name else None)


def _per_split(per_class: int | Mapping[str, int], splits: Sequence[str]) -> dict[str, int]:
    if isinstance(per_class, Mapping):
        missing = [s for s in splits if s not in per_class]
        if missing:
            raise ConfigError(f"per_class has no count for split(s) {missing}; got {dict(per_class)}")
        counts = {s: per_class[s] for s in splits}
    else:
        counts = {s: per_class for s in splits}
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"per_class for split {split!r} must be an int >= 1, got {n!r}")
    return counts


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    n_classes: int = 5,
    per_class: int | Mapping[str, int] = 4,
    image_size: int = 64,
    seed: int = 0,
    *,
    splits: Sequence[str] = SPLITS,
    labels: BreedLabels | str | Sequence[str] | None = None,
    quality: int = 90,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write a dogImages-shaped dataset of synthetic JPEG images to ``root``.

    The layout is ``root/{train,valid,test}/NNN.Breed/NNN.Breed_XXXXX.jpg``, with the class folders named after
    the first ``n_classes`` breeds of ``labels`` (so :meth:`BreedLabels.from_folder_names` parses them back).
    Images of one class share a stripe orientation, frequency and overlaid shape; colours and placement are drawn
    per image, so classes cannot be told apart by mean colour. The same arguments always write byte-identical
    files. The dataset is written to a temporary folder beside ``root`` and renamed into place, so ``root`` is
    either absent or complete. Calling again with the same arguments on a complete dataset rewrites nothing (a
    hidden ``.dogclf-synthetic.json`` records them), so a later :class:`~dogclf.data.DatasetStager` run stays a no-op.

    Args:
        root: Dataset folder to create. It may exist only if empty (or pass ``overwrite=True``).
        n_classes: Number of classes (at most the size of ``labels``; 144 distinct visual patterns, larger
            counts reuse patterns).
        per_class: Images per class in every split, or a mapping ``{"train": 8, "valid": 2, "test": 2}``.
        image_size: Side of the square images in pixels (at least 8).
        seed: Seed of all randomness; one class's images do not depend on ``n_classes``.
        splits: The split folders to write.
        labels: Where the class names come from: a :class:`BreedLabels`, a registered label-set name or breed
            names. Defaults to ``"dogimages-133"``.
        quality: JPEG quality (1-95).
        overwrite: Replace an existing non-empty ``root``.

    Returns:
        A :class:`SyntheticDataset` (path-like) with the root, labels and per-split counts.

    Raises:
        ConfigError: an argument is out of range.
        DataError: ``root`` exists, is not empty and ``overwrite`` is false, or is a file.

    Example:
        >>> import tempfile, os
        >>> ds = make_synthetic_dataset(os.path.join(tempfile.mkdtemp(), "dogs"), n_classes=3, per_class=2,
        ...                             image_size=32)
        >>> ds.labels.folder_names, ds.n_images()
        (('001.Affenpinscher', '002.Afghan_hound', '003.Airedale_terrier'), 18)
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int):
        raise ConfigError(f"n_classes must be an int, got {n_classes!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an int >= 8 pixels, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
    if not 1 <= quality <= 95:
        raise ConfigError(f"quality must be between 1 and 95, got {quality}")
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits) or any(not s or "/" in s or s.startswith(".") for s in splits):
        raise ConfigError(f"splits must be distinct non-empty folder names, got {splits!r}")
    labels = _resolve_labels(labels, n_classes)
    counts_per_split = _per_split(per_class, splits)

    from PIL import Image

    root = Path(root)
    params = {"format": _MARKER_FORMAT, "n_classes": n_classes, "per_class": counts_per_split,
              "image_size": image_size, "seed": seed, "quality": quality, "labels": list(labels.names)}
    existing = _existing(root, params, labels)
    if existing is not None:
        log.info("synthetic dataset at %s already written with these arguments; reusing it", root)
        return existing
    if root.exists():
        if not root.is_dir():
            raise DataError(f"dataset root {str(root)!r} exists and is not a directory")
        if any(root.iterdir()) and not overwrite:
            raise DataError(f"dataset root {str(root)!r} is not empty; pass overwrite=True to replace it")
    counts: dict[str, dict[str, int]] = {}
    with atomic_path(root, fsync=False) as tmp:  # a folder: renamed into place when complete, removed on error
        tmp.mkdir()
        for split_no, split in enumerate(splits):
            counts[split] = {}
            for class_index, folder in enumerate(labels.folder_names):
                class_dir = tmp / split / folder
                class_dir.mkdir(parents=True)
                rng = np.random.default_rng([seed, split_no, class_index])
                n = counts_per_split[split]
                for i in range(n):
                    arr = synthetic_image(class_index, image_size, rng)
                    Image.fromarray(arr, "RGB").save(class_dir / f"{folder}_{i:05d}.jpg", "JPEG", quality=quality)
                counts[split][folder] = n
        (tmp / _MARKER).write_text(json.dumps(params))
        if root.exists():
            shutil.rmtree(root)
    total = sum(sum(c.values()) for c in counts.values())
    log.info("wrote %d synthetic images (%d classes, %s) to %s", total, n_classes, counts_per_split, root)
    return SyntheticDataset(root=root, labels=labels, counts=counts, image_size=image_size, seed=seed)
