"""SageMaker-style ``model.tar.gz`` packing and safe unpacking.

SageMaker hands an endpoint's inference container the model as one gzipped tar: the artifact files at its root and,
for the PyTorch containers, the inference code under ``code/``. :func:`pack` writes that layout; :func:`unpack`
extracts it while refusing members that could escape the target folder or are not plain files and folders.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from dogclf._io import atomic_path
from dogclf.errors import ArtifactError, UnsafeArchiveError

__all__ = ["pack", "unpack", "MAX_UNPACKED_BYTES"]

logger = logging.getLogger(__name__)

MAX_UNPACKED_BYTES = 8 * 1024**3
"""Upper bound on the total size of the members :func:`unpack` extracts (a guard against decompression bombs)."""

_SKIP_CODE = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")


def pack(artifact_dir: str | os.PathLike[str], tar_path: str | os.PathLike[str],
         code_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``artifact_dir``'s files at the root of a gzipped tar, plus ``code/`` copied from ``code_dir``.

    The tar is written to a temporary file and renamed into place, so ``tar_path`` is either the old file or the
    complete new one. Symlinks inside ``artifact_dir`` or ``code_dir`` are stored as the files they point to;
    ``__pycache__`` folders are skipped.

    Args:
        artifact_dir: A folder written by :meth:`ResNetBreedModel.save <dogclf.models.ResNetBreedModel.save>`.
        tar_path: Where the ``model.tar.gz`` goes.
        code_dir: A folder with inference code (``inference.py``, ``requirements.txt``, packages) to ship under
            ``code/``; ``None`` ships none.

    Returns:
        ``tar_path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: ``artifact_dir`` or ``code_dir`` is not a folder, or ``artifact_dir`` already has a
            ``code`` entry while ``code_dir`` is given.
    """
    src = Path(artifact_dir)
    if not src.is_dir():
        raise ArtifactError(f"artifact folder {str(src)!r} does not exist")
    code = Path(code_dir) if code_dir is not None else None
    if code is not None and not code.is_dir():
        raise ArtifactError(f"code_dir {str(code)!r} is not a folder")
    if code is not None and (src / "code").exists():
        raise ArtifactError(f"artifact folder {str(src)!r} already has a 'code' entry; pass code_dir=None")
    dest = Path(tar_path)

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(part in _SKIP_CODE for part in PurePosixPath(info.name).parts) or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with atomic_path(dest) as tmp, tarfile.open(tmp, "w:gz", dereference=True) as tar:
        for entry in sorted(src.iterdir()):
            if entry.name.startswith(".") and ".tmp-" in entry.name:  # an atomic_path write in progress
                continue
            tar.add(entry, arcname=entry.name, filter=skip)
        if code is not None:
            tar.add(code, arcname="code", filter=skip)
    logger.info("packed %s%s into %s", src, f" with code from {code}" if code else "", dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive {archive!r} has a member with an absolute path: {name!r}")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchiveError(f"archive {archive!r} has a member that escapes the target folder: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive {archive!r} has a link member {name!r} -> {member.linkname!r}; "
                                 "only regular files and folders are allowed")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive {archive!r} has a member {name!r} that is not a regular file or "
                                 "folder (device, FIFO or other special file)")


def unpack(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], *,
           max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Extract a ``model.tar.gz`` into ``dest`` after checking every member.

    All members are checked before anything is written, so an unsafe archive leaves ``dest`` untouched.

    Args:
        tar_path: The archive (gzipped or plain tar).
        dest: Folder to extract into; created if missing.
        max_bytes: Refuse archives whose members add up to more than this.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        UnsafeArchiveError: a member has an absolute path or ``..``, is a symlink, hard link, device or FIFO, or
            the archive is larger than ``max_bytes`` when unpacked.
        ArtifactError: the file is missing or not a readable tar archive.
    """
    src = Path(tar_path)
    if not src.is_file():
        raise ArtifactError(f"model archive {str(src)!r} does not exist")
    try:
        with tarfile.open(src, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _check_member(member, str(src))
                total += member.size
            if total > max_bytes:
                raise UnsafeArchiveError(f"archive {str(src)!r} unpacks to {total} bytes, over the limit of "
                                         f"{max_bytes}")
            out = Path(dest)
            out.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = out / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fileobj = tar.extractfile(member)
                if fileobj is None:  # pragma: no cover - isfile() members always have data
                    raise ArtifactError(f"archive {str(src)!r} member {member.name!r} has no data")
                with fileobj, open(target, "wb") as fh:
                    shutil.copyfileobj(fileobj, fh)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, (UnsafeArchiveError, ArtifactError)):
            raise
        raise ArtifactError(f"model archive {str(src)!r} is not a readable tar archive: {exc}") from exc
    return out
