"""Find, scan and validate a dataset laid out as ``train|valid|test/NNN.Breed/*.jpg``."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dogclf.errors import (
    ConfigError,
    CorruptImageError,
    DataNotFoundError,
    DatasetLayoutError,
    LabelMismatchError,
)
from dogclf.images import IMAGE_SUFFIXES, decode_image
from dogclf.labels import BreedLabels, normalize_breed

__all__ = ["find_dataset_root", "scan_layout", "check_files", "FileCheck", "IMAGE_EXTENSIONS", "match_labels"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = IMAGE_SUFFIXES
"""File extensions (lower case) treated as images (:data:`dogclf.images.IMAGE_SUFFIXES`); other files in class
folders are ignored with a warning."""

_IGNORED = {"__MACOSX", "Thumbs.db"}


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(e for e in path.iterdir() if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED)


def find_dataset_root(path: str | os.PathLike[str], splits: Sequence[str]) -> Path:
    """The folder holding the split folders: ``path`` itself, or its only sub-folder (``dogImages/train/...``).

    Raises:
        DataNotFoundError: ``path`` is not a directory.
        DatasetLayoutError: neither ``path`` nor a single sub-folder holds all of ``splits``; the message names
            the folder and the splits missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataNotFoundError(f"dataset folder {str(path)!r} does not exist or is not a directory")

    def missing(p: Path) -> list[str]:
        return [s for s in splits if not (p / s).is_dir()]

    if not missing(path):
        return path
    subdirs = _visible_dirs(path)
    if len(subdirs) == 1 and not missing(subdirs[0]):
        log.debug("dataset sits one folder deep in %s", subdirs[0])
        return subdirs[0]
    where = path if len(subdirs) != 1 else subdirs[0]
    found = [d.name for d in _visible_dirs(where)]
    raise DatasetLayoutError(
        f"dataset folder {str(where)!r} is missing split folder(s) {missing(where)}; expected "
        f"{list(splits)} each holding NNN.Breed class folders, found {found[:10]}")


def scan_layout(root: Path, splits: Sequence[str],
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[BreedLabels, dict[str, dict[str, list[Path]]]]:
    """List the images of every split and class, and check the class folders.

    Returns:
        The label set parsed from the class folder names, and ``{split: {class_folder: [image paths]}}``.

    Raises:
        DatasetLayoutError: a split is missing or has no class folders, folder names do not parse as
            ``NNN.Breed``, the splits' class sets differ, or a split holds no images. Messages name the folder.
    """
    exts = {e.lower() for e in extensions}
    layout: dict[str, dict[str, list[Path]]] = {}
    label_sets: dict[str, BreedLabels] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(f"split folder {str(split_dir)!r} is missing")
        classes = _visible_dirs(split_dir)
        if not classes:
            raise DatasetLayoutError(f"split folder {str(split_dir)!r} has no class folders (expected NNN.Breed)")
        try:
            label_sets[split] = BreedLabels.from_folder_names([c.name for c in classes], strict=True)
        except ConfigError as exc:
            raise DatasetLayoutError(f"class folders in {str(split_dir)!r} do not parse: {exc}") from None
        per_class: dict[str, list[Path]] = {}
        ignored = 0
        for cdir in classes:
            files = []
            for entry in os.scandir(cdir):
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                if os.path.splitext(entry.name)[1].lower() in exts:
                    files.append(Path(entry.path))
                else:
                    ignored += 1
            per_class[cdir.name] = sorted(files)
        if ignored:
            log.warning("%s: ignored %d files that are not images (%s)", split_dir, ignored, ", ".join(sorted(exts)))
        if not any(per_class.values()):
            raise DatasetLayoutError(f"split folder {str(split_dir)!r} holds no images")
        empty = [c for c, f in per_class.items() if not f]
        if empty:
            log.warning("%s: %d class folders hold no images: %s", split_dir, len(empty), empty[:5])
        layout[split] = per_class
    first = splits[0]
    for split in splits[1:]:
        a, b = set(layout[first]), set(layout[split])
        if a != b:
            raise DatasetLayoutError(
                f"split {str(root / split)!r} has different classes from {first!r}: "
                f"missing {sorted(a - b)[:5]}, extra {sorted(b - a)[:5]}")
    return label_sets[first], layout


def match_labels(found: BreedLabels, expected: BreedLabels, where: str) -> None:
    """Check that a dataset's classes are ``expected``, in the same order.

    Raises:
        LabelMismatchError: names are missing, extra or in another order; the message says which.
    """
    got = [normalize_breed(n) for n in found.names]
    want = [normalize_breed(n) for n in expected.names]
    if got == want:
        return
    missing = [n for n in expected.names if normalize_breed(n) not in set(got)]
    extra = [n for n in found.names if normalize_breed(n) not in set(want)]
    label = f"label set {expected.name!r}" if expected.name else f"the expected {len(expected)} breeds"
    detail = (f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, extra {extra[:5]}"
              f"{'...' if len(extra) > 5 else ''}" if missing or extra else "same breeds in a different order")
    raise LabelMismatchError(f"classes of {where!r} ({len(found)}) do not match {label} ({len(expected)}): {detail}")


@dataclass(frozen=True)
class FileCheck:
    """The result of reading one file: its size and digests, why it does not decode (``None`` if it does), and its
    perceptual hash (:func:`~dogclf.data.duplicates.perceptual_hash`; ``""`` when not decoded)."""

    path: Path
    size: int
    sha256: str
    md5: str
    error: str | None = None
    phash: str = ""


def _check_one(path: Path, decode: bool) -> FileCheck:
    data = path.read_bytes()
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()
    error, phash = None, ""
    if decode:
        from dogclf.data.duplicates import HASH_DECODE_SIZE, perceptual_hash

        try:  # the checks training and serving decode with, at a reduced JPEG scale that keeps the hash's pixels
            phash = perceptual_hash(decode_image(data, draft_size=HASH_DECODE_SIZE))
        except CorruptImageError as exc:
            error = str(exc)
    return FileCheck(path, len(data), sha, md5, error, phash if error is None else "")


def check_files(paths: Sequence[Path], *, decode: bool = True, workers: int = 4,
                progress: Callable[[int, int], None] | None = None) -> list[FileCheck]:
    """Read every file once: size, sha256, MD5 and (with ``decode``) whether the image decodes fully, and its
    perceptual hash.

    The decode is :func:`dogclf.images.decode_image`, the checks training and serving decode with; JPEGs are
    decoded at a reduced scale that keeps :data:`~dogclf.data.duplicates.HASH_DECODE_SIZE` pixels a side (every
    byte of the entropy-coded data is still read, so truncated files are caught at a fraction of the cost of a
    full decode), and the upright image gives the perceptual hash. Files are processed by ``workers`` threads
    (hashing and decoding release the GIL).

    Returns:
        One :class:`FileCheck` per path, in the order given.
    """
    results: list[FileCheck] = []
    total = len(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, res in enumerate(pool.map(lambda p: _check_one(p, decode), paths), 1):
            results.append(res)
            if progress is not None and (i % 64 == 0 or i == total):
                progress(i, total)
    return results
