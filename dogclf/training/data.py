"""The entry point's data: channels to splits, the label set, and images decoded once into memory.

A job's data arrives as SageMaker channels: ``train``, ``valid`` and ``test`` folders, or one ``training`` root
holding ``train/``, ``valid/`` and ``test/`` (dogImages layout: one folder per class, ``001.Affenpinscher/*.jpg``).
:func:`resolve_channels` finds the folders, :func:`resolve_data_labels` the label set, :func:`scan_split` lists a
split's images; :func:`decode_batches` decodes a split with DataLoader workers (each image once, through
:func:`dogclf.images.load_image`, the same pipeline the inference handler runs), and :class:`LazyImages` decodes
on demand when the decoded data would not fit in memory. Normalisation is :class:`dogclf.images.Normalizer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogclf.errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    DatasetLayoutError,
    DogclfError,
)
from dogclf.images import IMAGE_SUFFIXES, Preprocess, is_image_file, load_image

__all__ = ["Split", "resolve_channels", "resolve_data_labels", "scan_split", "DecodedImages", "auto_workers",
           "decode_batches", "memory_budget", "LazyImages", "load_split_images"]

logger = logging.getLogger(__name__)

_VALID_NAMES = ("valid", "validation", "val")


@dataclass(frozen=True)
class Split:
    """One dataset split: its folder and ``(path, label index)`` samples in a stable order."""

    name: str
    root: Path
    samples: tuple[tuple[Path, int], ...]

    def __len__(self) -> int:
        return len(self.samples)


def resolve_channels(paths: Any) -> dict[str, Path | None]:
    """The train/valid/test folders from explicit channels or one ``training`` root (``paths`` has ``train``,
    ``valid``, ``test`` and ``training`` attributes, each a folder or ``None``).

    Raises:
        DataNotFoundError: no train or test folder, or a given folder does not exist.
    """
    found: dict[str, Path | None] = {"train": None, "valid": None, "test": None}
    root = Path(paths.training) if paths.training else None
    if root is not None and not root.is_dir():
        raise DataNotFoundError(f"training channel {str(root)!r} is not a folder")
    for split, names in (("train", ("train", "training")), ("valid", _VALID_NAMES), ("test", ("test", "testing"))):
        explicit = getattr(paths, split)
        if explicit:
            found[split] = Path(explicit)
        elif root is not None:
            found[split] = next((root / n for n in names if (root / n).is_dir()), None)
    for split, path in found.items():
        if path is not None and not path.is_dir():
            raise DataNotFoundError(f"{split} channel {str(path)!r} is not a folder")
    for split in ("train", "test"):
        if found[split] is None:
            where = f" under the training channel {str(root)!r}" if root is not None else ""
            raise DataNotFoundError(f"no {split} data{where}: give a {split!r} channel (SM_CHANNEL_{split.upper()}) "
                                    f"or a 'training' channel holding {split}/")
    return found


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file()
                  and not p.name.startswith("."))


def resolve_data_labels(spec: str, train_root: Path) -> Any:
    """The label set for the data: from the train channel's class folders (``auto``), or checked against them.

    Raises:
        DatasetLayoutError: the train channel has no class folders.
        LabelMismatchError: the label set's size or names differ from the train channel's class folders.
    """
    from dogclf.errors import LabelMismatchError
    from dogclf.labels import BreedLabels
    from dogclf.models import resolve_labels

    folders = _class_folders(train_root)
    if not folders:
        raise DatasetLayoutError(f"train channel {str(train_root)!r} has no class folders (expected "
                                 "NNN.Breed/ sub-folders holding images)")
    if spec in ("auto", "", None):
        try:
            return BreedLabels.from_folder_names(folders)
        except ConfigError:
            return BreedLabels(folders)
    labels = resolve_labels(spec)
    if len(labels) != len(folders):
        raise LabelMismatchError(f"label set {spec!r} has {len(labels)} breeds but the train channel "
                                 f"{str(train_root)!r} has {len(folders)} class folders; pass --labels auto or the "
                                 "matching label set")
    for position, folder in enumerate(folders):
        try:
            index = labels.index(folder)
        except DogclfError:
            index = -1
        if index != position:
            raise LabelMismatchError(f"train class folder {folder!r} (position {position}) is not breed {position} "
                                     f"({labels[position]!r}) of label set {spec!r}")
    return labels


def scan_split(name: str, root: Path, labels: Any) -> Split:
    """List a split's images as ``(path, label)``; class folders are matched to ``labels`` by name.

    Raises:
        DataError: the split holds no images (an empty channel).
        LabelMismatchError: a class folder is not in the label set.
    """
    from dogclf.errors import LabelMismatchError

    samples: list[tuple[Path, int]] = []
    for folder in _class_folders(root):
        try:
            index = labels.index(folder)
        except DogclfError:
            raise LabelMismatchError(f"{name} class folder {folder!r} in {str(root)!r} is not a breed of the label "
                                     f"set ({len(labels)} breeds)") from None
        samples.extend((p, index) for p in _images(root / folder))
    if not samples:
        raise DataError(f"{name} channel {str(root)!r} holds no images (expected class folders with "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return Split(name, root, tuple(samples))


class DecodedImages:
    """A map-style dataset decoding ``Split`` samples with :func:`dogclf.images.load_image`, the pipeline the
    inference handler runs too (used by DataLoader workers).

    Args:
        split: The split.
        preprocess: The model's :class:`~dogclf.images.Preprocess`.
        crop: The side of the squares returned (``preprocess.crop``, or ``resize`` for random crops later).
    """

    def __init__(self, split: Split, preprocess: Preprocess, crop: int) -> None:
        self.split, self.preprocess, self.crop = split, preprocess, crop

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.split.samples[i]
        return load_image(path, self.preprocess, crop=self.crop), label


SMALL_SPLIT = 512
"""Splits of up to this many images are decoded in the job's own process: a worker process costs a second or more
to start (it imports torch), more than decoding a few hundred photos."""


def auto_workers(n_images: int, batch_size: int) -> int:
    """DataLoader workers for decoding: the machine's CPUs less one (at most 8); none for small splits
    (:data:`SMALL_SPLIT`) or a single batch."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    if cpus <= 1 or n_images <= max(batch_size, SMALL_SPLIT):
        return 0
    return max(1, min(8, cpus - 1))


def decode_batches(split: Split, preprocess: Preprocess, crop: int, batch_size: int,
                   workers: int) -> Iterator[tuple[Any, Any]]:
    """Decode a split in order, yielding ``(uint8 images (B,3,crop,crop), labels (B,))`` batches."""
    import torch

    loader = torch.utils.data.DataLoader(DecodedImages(split, preprocess, crop), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
                                         prefetch_factor=4 if workers else None)
    yield from loader


def memory_budget() -> float:
    """Bytes the decoded-image cache may use: half the available memory (``DOGCLF_DECODE_CACHE_BYTES`` overrides)."""
    override = os.environ.get("DOGCLF_DECODE_CACHE_BYTES")
    if override:
        return float(override)
    try:
        import psutil

        return psutil.virtual_memory().available / 2
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        return 4e9


class LazyImages:
    """Images decoded on demand (a thread pool; PIL releases the GIL), for data too large to keep decoded."""

    def __init__(self, split: Split, preprocess: Preprocess, crop: int, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.split, self.preprocess, self.crop = split, preprocess, crop
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: Any) -> Any:
        import torch

        paths = [self.split.samples[int(i)][0] for i in index]
        return torch.stack(list(self.pool.map(lambda p: load_image(p, self.preprocess, crop=self.crop), paths)))


def load_split_images(splits: dict[str, Split], preprocess: Preprocess, decode_size: int, batch_size: int,
                      workers: int) -> dict[str, tuple[Any, Any]]:
    """Every split as ``(uint8 images, labels)``: decoded once into memory, or a :class:`LazyImages` that decodes
    on demand when the decoded data would take more than :func:`memory_budget`."""
    import time

    import torch

    data: dict[str, tuple[Any, Any]] = {}
    needed = sum(len(s) for s in splits.values()) * 3 * decode_size * decode_size
    lazy = needed > memory_budget()
    if lazy:
        logger.warning("decoded images would take %.1f GB, over half the available memory: decoding on the fly "
                       "every epoch instead", needed / 1e9)
    for name, split in splits.items():
        if lazy:
            data[name] = (LazyImages(split, preprocess, decode_size, max(1, workers)),
                          torch.tensor([label for _, label in split.samples]))
            continue
        t0 = time.perf_counter()
        batches = list(decode_batches(split, preprocess, decode_size, batch_size, workers))
        data[name] = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).long())
        logger.info("decoded %d %s images in %.1fs", len(split), name, time.perf_counter() - t0)
    return data
