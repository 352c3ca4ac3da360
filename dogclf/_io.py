"""One way to write a file so that a reader never sees half of it: :func:`atomic_write`.

Every file dogclf writes where a complete one is expected (artifacts, checkpoints, state, manifests, reports)
goes through here: the bytes land in a temporary file beside the target, are flushed and fsync'ed, and the
temporary file is renamed over the target (``os.replace``, atomic on POSIX). A crash or ``kill -9`` at any point
leaves either the old file or the new one, never a partial file under the real name; on an exception the
temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json", "atomic_path", "temporary_name", "remove_stale_temporaries",
           "exchange_paths"]


def temporary_name(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique per process and thread (``.name.tmp-<pid>-<tid>``)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of writes to ``path`` whose process is gone (killed mid-write); returns them.

    The temporaries of a live process (another writer of the same file, this one included) are left alone.
    """
    from dogclf._process import alive

    target = Path(path)
    removed = []
    prefix = f".{target.name}.tmp-"
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path to write to; renamed over ``path`` when the block ends without an exception.

    For writers that want a file name rather than a file object (``torch.save(obj, tmp)``, ``tarfile.open``).
    The parent folder is created. On an exception the temporary file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        if fsync and tmp.is_file():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[IO[bytes]], Any], *,
                 encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Args:
        path: The target file; its folder is created.
        data: The bytes, a string (encoded with ``encoding``), or a function called with the open binary file
            (``lambda fh: torch.save(state, fh)``) that streams the content itself.
        encoding: The encoding of a string ``data``.
        fsync: Flush the file to disk before the rename (off only for throw-away files).
    """
    target = Path(path)
    with atomic_path(target, fsync=False) as tmp:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode(encoding) if isinstance(data, str) else data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    return target


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1, fsync: bool = True,
                      **dumps: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path (``dumps`` go to :func:`json.dumps`)."""
    return atomic_write(path, json.dumps(obj, indent=indent, **dumps), fsync=fsync)


def exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths (files or folders) in one atomic step; ``False`` where the system cannot.

    Uses Linux's ``renameat2(RENAME_EXCHANGE)``: a crash at any moment leaves each name pointing at either its old
    or its new content, never missing. Returns ``False`` without touching anything where that call is not available
    (another OS, an old kernel or C library, a file system without it); the caller then falls back to two renames.

    Raises:
        OSError: the exchange was refused for another reason (a path missing, different file systems, ...).
    """
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))
