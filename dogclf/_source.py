"""Copying dogclf's own source, for jobs and containers where dogclf is not installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["copy_package_source"]

_SOURCE_SUFFIXES = (".py", ".json", ".txt", ".typed")
_SKIP_DIRS = ("__pycache__", ".pytest_cache")


def _write_metadata(dest: Path) -> None:
    """A ``dogclf-<version>.dist-info`` beside the copy, holding the package's entry points.

    Plug-in groups (``dogclf.callbacks``, ``dogclf.rules``, ``dogclf.backbones``, ...) are read with
    :func:`importlib.metadata.entry_points`, which looks for a ``*.dist-info`` on ``sys.path``; SageMaker puts the
    ``source_dir`` (and the inference ``code/`` folder) on ``sys.path``, so the copy registers exactly as an
    installed dogclf does.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution("dogclf")
        version, entry_points = dist.version, dist.read_text("entry_points.txt") or ""
    except metadata.PackageNotFoundError:  # pragma: no cover - dogclf runs from a bare copy without metadata
        return
    info = dest / f"dogclf-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: dogclf\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


def copy_package_source(dest: str | os.PathLike[str]) -> Path:
    """Copy the running dogclf package's sources and data files (no caches, no dotfiles) to ``dest/dogclf``, with
    its entry-point metadata beside it (``dest/dogclf-<version>.dist-info``).

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
    _write_metadata(Path(dest))
    return target
