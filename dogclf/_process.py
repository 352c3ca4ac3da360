"""Processes dogclf starts and must not leave behind: is one still running, kill its group, die with a parent.

A process id alone does not name a process for long: once it has ended the kernel may give its number to another
one. :func:`identity` therefore pairs the id with the process's start time (``/proc/<pid>/stat``), and
:func:`alive` with an identity is true only for that very process.

:func:`die_with_parent` is how a child process (a local training job, a tuning pool worker) makes sure it does not
outlive the process that started it and reads its output: a thread waits on the parent (``pidfd_open``, no
polling, where the kernel has it) and, once the parent has gone, kills the child's whole process group with
``SIGKILL``, the training entry point and its data-loader workers included. It does not rely on
``PR_SET_PDEATHSIG``, which fires when the *thread* that forked the child ends, not the process.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["identity", "alive", "group_members", "kill_group", "die_with_parent"]

logger = logging.getLogger(__name__)


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or ``None``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def identity(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot): with the id, it names one process.
    ``None`` when the process does not exist or the system does not say (not Linux)."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def alive(pid: object, start: object = None) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not); with ``start`` (its
    :func:`identity`), whether *that* process runs, not a later one that got the same id."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OverflowError:
        return False
    fields = _stat(pid)
    if fields is None:  # gone meanwhile; or no /proc (not Linux), where the signal test is all there is
        return not Path("/proc").is_dir()
    if fields[0] in ("Z", "X"):
        return False
    return not (isinstance(start, int) and identity(pid) not in (None, start))


def group_members(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except OSError:
            return []
        return [pgid]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        try:
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
        except (IndexError, ValueError):
            continue
    return found


def kill_group(pgid: int, *, grace_s: float = 0.0, wait_s: float = 10.0) -> bool:
    """End process group ``pgid``: ``SIGTERM`` and up to ``grace_s`` seconds to exit (when ``grace_s > 0``), then
    ``SIGKILL``; waits up to ``wait_s`` more for its members to be gone. Returns whether none is left.

    Never signals this process's own group.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to kill process group {pgid} (this process's own, or init's)")
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, wait_s)):
        if sig == signal.SIGTERM and grace_s <= 0:
            continue
        if not group_members(pgid):
            return True
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.monotonic() + wait
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return not group_members(pgid)


def _wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited (a pidfd where the kernel has one, else polling ``getppid``)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if os.getppid() != pid:  # gone already (this process was re-parented), or not our parent
            return
        if fd is not None:
            select.select([fd], [], [])
            return
        while os.getppid() == pid:  # pragma: no cover - kernels before 5.3
            time.sleep(0.2)
    finally:
        if fd is not None:
            os.close(fd)


def _say(text: str) -> None:
    """One line straight to stderr (logging may hold a lock of a thread that is mid-write; the pipe may be gone)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def die_with_parent(parent: int, on_gone: Callable[[], None] | None = None) -> threading.Thread:
    """In a child process: once ``parent`` (this process's parent when it started) has exited, call ``on_gone``
    and kill this process's group with ``SIGKILL`` (only this process when it does not lead a group of its own).

    Returns the watching thread (a daemon).
    """
    def watch() -> None:
        _wait_for_exit(parent)
        _say(f"dogclf: the process that started this one (pid {parent}) is gone; stopping process {os.getpid()} "
             "and its group\n")
        if on_gone is not None:
            try:
                on_gone()
            except BaseException as exc:  # noqa: BLE001 - dying anyway; say why the note is missing
                _say(f"dogclf: could not record it: {type(exc).__name__}: {exc}\n")
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="dogclf-die-with-parent", daemon=True)
    thread.start()
    return thread
