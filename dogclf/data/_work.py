"""The work folder of one staging run, and the clean-up of those left behind by a run that was killed.

A staging run extracts, copies and builds caches in a hidden folder beside its target (``.<name>.staging-<pid>-*``),
so files reach the target by rename. The run holds an exclusive ``flock`` on that folder while it works and
removes it when it ends, successfully or not. A run killed with ``SIGKILL`` cannot remove it; the next run with the
same dataset name in the same place does: a folder whose process is gone and whose lock is free is stale. A folder
of a live process (or one whose lock is still held, e.g. by a process in another PID namespace) is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dogclf._process import alive as _alive

__all__ = ["work_folder", "remove_stale"]

log = logging.getLogger(__name__)


def _prefix(name: str) -> str:
    return f".{name}.staging-"


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove the work folders of dataset ``name`` under ``parent`` left by staging runs that are gone.

    Returns:
        The folders removed.
    """
    removed = []
    for folder in sorted(parent.glob(glob.escape(_prefix(name)) + "*")):
        pid_text = folder.name[len(_prefix(name)):].split("-", 1)[0]
        if not folder.is_dir() or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # still in use
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.warning("removed %s, left by staging process %s, which ended without cleaning up (killed?)",
                        folder, pid_text)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def work_folder(parent: Path, name: str) -> Iterator[Path]:
    """A fresh, locked work folder under ``parent`` for staging dataset ``name``; removed when the block ends.

    Stale work folders of the same dataset name under ``parent`` (see :func:`remove_stale`) are removed first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, name)
    work = Path(tempfile.mkdtemp(prefix=f"{_prefix(name)}{os.getpid()}-", dir=parent))
    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when this process ends, however it ends
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)
