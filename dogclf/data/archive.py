"""Safe zip extraction: no member escapes the target folder, no links, bounded size and entry count."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from dogclf._faults import failpoint
from dogclf._io import atomic_path
from dogclf.errors import DataError, DataNotFoundError, UnsafeArchiveError

__all__ = ["safe_extract", "check_archive", "zip_fingerprint", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024**3
"""Default limit on an archive's total uncompressed size: 16 GiB (dogImages unpacks to about 1.1 GB)."""

DEFAULT_MAX_ENTRIES = 200_000
"""Default limit on an archive's number of members (dogImages has about 8,500)."""

_CHUNK = 1024 * 1024


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The safe relative path of a member, or None for entries to ignore (macOS resource forks)."""
    raw = info.filename
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive {str(archive)!r}: member {raw!r} has a NUL byte in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive {str(archive)!r}: member {raw!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive {str(archive)!r}: member {raw!r} would escape the target folder (zip-slip)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive {str(archive)!r}: member {raw!r} is a symbolic link")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnsafeArchiveError(f"archive {str(archive)!r}: member {raw!r} is not a regular file or folder")
    if not parts or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store":
        return None
    return PurePosixPath(*parts)


def _open(archive: str | os.PathLike[str]) -> tuple[Path, zipfile.ZipFile]:
    path = Path(archive)
    if not path.is_file():
        raise DataNotFoundError(f"archive {str(path)!r} does not exist or is not a file")
    try:
        return path, zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{str(path)!r} is not a readable zip archive: {exc}") from None


def check_archive(archive: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[int, int]:
    """Check a zip archive's member list without extracting anything.

    Args:
        archive: Path of the zip file.
        max_bytes: Refuse archives whose members add up to more uncompressed bytes than this.
        max_entries: Refuse archives with more members than this.

    Returns:
        ``(number of members, total uncompressed bytes)``.

    Raises:
        DataNotFoundError: ``archive`` does not exist.
        DataError: it is not a zip file.
        UnsafeArchiveError: a member has an absolute path or ``..`` component, is a link or device, or a limit is
            exceeded. The message names the archive and the member.
    """
    path, zf = _open(archive)
    with zf:
        return _check(zf, path, max_bytes, max_entries)


def _check(zf: zipfile.ZipFile, path: Path, max_bytes: int, max_entries: int) -> tuple[int, int]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise UnsafeArchiveError(
            f"archive {str(path)!r} has {len(infos)} members, more than the limit of {max_entries} (max_entries)")
    total = 0
    for info in infos:
        _member_path(info, path)
        total += info.file_size
        if total > max_bytes:
            raise UnsafeArchiveError(
                f"archive {str(path)!r} unpacks to more than {max_bytes} bytes (max_bytes); refusing a possible "
                "zip bomb")
    return len(infos), total


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Extract a zip archive into ``dest`` (which must not exist yet), refusing anything unsafe.

    The member list is checked first (see :func:`check_archive`), so an unsafe archive writes nothing. While
    extracting, the bytes actually inflated are counted too, so an archive whose headers understate its sizes
    cannot exceed ``max_bytes``. Everything goes to a temporary folder beside ``dest`` that is renamed to ``dest``
    only when complete; on any error it is removed.

    Args:
        archive: Path of the zip file.
        dest: Folder to create with the archive's contents.
        max_bytes: Limit on the total uncompressed size.
        max_entries: Limit on the number of members.
        progress: Called as ``progress(bytes_done, bytes_total)`` while extracting.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        UnsafeArchiveError: zip-slip (``../`` or absolute member paths), links, special files, or a size or
            entry-count limit exceeded.
        DataError: ``archive`` is not a valid zip file or a member fails its CRC check, or ``dest`` exists.
        DataNotFoundError: ``archive`` does not exist.
    """
    path, zf = _open(archive)
    dest = Path(dest)
    if dest.exists():
        raise DataError(f"extraction target {str(dest)!r} already exists")
    with zf, atomic_path(dest, fsync=False) as tmp:  # a folder: removed on any error
        _, total = _check(zf, path, max_bytes, max_entries)
        done = 0
        try:
            tmp.mkdir()
            root = tmp.resolve()
            for info in zf.infolist():
                rel = _member_path(info, path)
                if rel is None:
                    continue
                target = tmp.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(root):  # belt and braces after the name checks
                    raise UnsafeArchiveError(f"archive {str(path)!r}: member {info.filename!r} escapes the target")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        done += len(chunk)
                        if done > max_bytes:
                            raise UnsafeArchiveError(
                                f"archive {str(path)!r} inflates past {max_bytes} bytes (max_bytes) at member "
                                f"{info.filename!r}, more than its headers declare")
                        out.write(chunk)
                failpoint("data.archive.member")
                if progress is not None:
                    progress(done, total)
        except zipfile.BadZipFile as exc:
            raise DataError(f"archive {str(path)!r} is damaged: {exc}") from None
        except FileExistsError as exc:
            raise UnsafeArchiveError(f"archive {str(path)!r} holds a member twice: {exc.filename!r}") from None
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise UnsafeArchiveError(
                f"archive {str(path)!r} uses {exc.filename!r} both as a file and as a folder") from None
    log.info("extracted %s (%d bytes) to %s", path, done, dest)
    return dest


def zip_fingerprint(archive: str | os.PathLike[str]) -> str:
    """A content fingerprint of a zip archive from its central directory (member names, sizes and CRC-32s).

    Reads only the directory at the end of the file, so fingerprinting a 1 GB archive is instant; two archives
    with the same members and contents have the same fingerprint.
    """
    path, zf = _open(archive)
    h = hashlib.sha256()
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    return h.hexdigest()
