"""A compact preprocessed copy of a dataset: images downscaled to a fixed short side, same folder layout."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dogclf.images import decode_image

__all__ = ["build_cache", "resize_short_side"]

log = logging.getLogger(__name__)


def resize_short_side(src: Path, dest: Path, short_side: int, quality: int = 90) -> int:
    """Write ``src`` to ``dest`` as an RGB JPEG whose shorter side is at most ``short_side``; return its size.

    Decoded by :func:`dogclf.images.decode_image` (JPEG draft mode, EXIF orientation, RGB as training and serving
    see it), larger images are downscaled with a bilinear resize (``reducing_gap``); RGB JPEGs already small enough
    are copied byte for byte (their EXIF orientation with them), anything else is re-encoded as an upright RGB JPEG.
    """
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        if min(im.size) <= short_side and im.format == "JPEG" and im.mode == "RGB":
            shutil.copyfile(src, dest)
            return dest.stat().st_size
    out = decode_image(src, draft_size=short_side)  # draft: libjpeg skips detail at 1/2, 1/4 or 1/8 scale
    w, h = out.size
    scale = short_side / min(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = out.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    out.save(dest, "JPEG", quality=quality, optimize=True)
    return dest.stat().st_size


def build_cache(files: Sequence[tuple[Path, str]], dest_root: Path, short_side: int, *, quality: int = 90,
                workers: int = 4, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the downscaled copy of every ``(source path, relpath)`` under ``dest_root``; return its total bytes."""
    total = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = pool.map(lambda item: resize_short_side(item[0], dest_root / item[1], short_side, quality), files)
        for i, size in enumerate(sizes, 1):
            total += size
            if progress is not None and (i % 64 == 0 or i == len(files)):
                progress(i, len(files))
    return total
