"""Copying dogclf's own source, for jobs and containers where dogclf is not installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["copy_package_source"]

_SOURCE_SUFFIXES = (".py", ".json", ".txt", ".typed")
_SKIP_DIRS = ("__pycache__", ".pytest_cache")


def copy_package_source(dest: str | os.PathLike[str]) -> Path:
    """Copy the running dogclf package's sources and data files (no caches, no dotfiles) to ``dest/dogclf``.

    Used for the training job's ``source_dir`` and the inference ``code/`` folder: the SageMaker containers have
    torch, torchvision, NumPy and Pillow but not dogclf. Returns the new ``dogclf`` folder.
    """
    import dogclf

    package = Path(dogclf.__file__).resolve().parent

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in _SKIP_DIRS or n.startswith(".")
                or (not os.path.isdir(os.path.join(folder, n)) and not n.endswith(_SOURCE_SUFFIXES))]

    target = Path(dest) / "dogclf"
    shutil.copytree(package, target, ignore=ignore, dirs_exist_ok=True)
    return target
