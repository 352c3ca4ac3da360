"""Helpers of the fault-injection tests: run a real process with fail points armed (``DOGCLF_FAILPOINTS``, see
:mod:`dogclf._faults`), check that it died by ``SIGKILL`` there, and look for what it left behind."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dogclf._faults import ENV

CLI = (sys.executable, "-m", "dogclf.cli")


@dataclass
class Run:
    """A finished process: its exit status (negative: killed by that signal), output and wall time."""

    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self) -> str:
        return f"$ {' '.join(map(str, self.args))}\nrc={self.returncode}\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}"


def run(args: Sequence[str | os.PathLike[str]], *, failpoints: str | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 300, cwd: str | os.PathLike[str] | None = None) -> Run:
    """Run ``args`` (a list) as a process with ``failpoints`` armed (or none); never raises on its exit status."""
    full = {**(env if env is not None else os.environ), "OMP_NUM_THREADS": "1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    full.pop(ENV, None)
    if failpoints:
        full[ENV] = failpoints
    started = time.monotonic()
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=full, timeout=timeout, cwd=cwd)
    return Run([str(a) for a in args], done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def cli(*args: str | os.PathLike[str], **kwargs) -> Run:
    """``dogclf ARGS`` in a fresh process (see :func:`run`)."""
    return run([*CLI, *args], **kwargs)


def assert_killed_at(result: Run, point: str) -> None:
    """The process died by ``SIGKILL`` at fail point ``point`` (not by an error, and not at another point)."""
    assert result.returncode == -signal.SIGKILL, result.tail()
    assert f"fail point {point} hit" in result.stderr, result.tail()


def assert_ok(result: Run) -> None:
    assert result.returncode == 0, result.tail()


def _running_processes() -> Iterator[tuple[int, str, Path | None]]:
    """``(pid, command line, working folder or None)`` of every running (not zombie) process but this one."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        try:
            cwd: Path | None = Path(os.readlink(f"/proc/{entry}/cwd"))
        except OSError:
            cwd = None
        yield int(entry), cmdline, cwd


def live_processes(token: str) -> list[int]:
    """Pids of running (not zombie) processes other than this one whose command line contains ``token``."""
    return [pid for pid, cmdline, _ in _running_processes() if token in cmdline]


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. Raises AssertionError after ``timeout``
    (a bound for a hung process on a loaded machine, not a timing claim)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still not true after {timeout} s: {condition}")
        time.sleep(interval)
    return time.monotonic() - started


def tree_digest(root: Path, *, exclude: Sequence[str] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (hidden ones included), minus ``exclude``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in exclude:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def processes_under(root: Path) -> list[int]:
    """Pids of running (not zombie) processes other than this one that work under ``root``: its path is on their
    command line (a job process, a pool worker) or they run in a folder under it (the training entry point)."""
    root = Path(root).resolve()
    return [pid for pid, cmdline, cwd in _running_processes()
            if str(root) in cmdline or (cwd is not None and (cwd == root or root in cwd.parents))]


def checkpoint_epoch(path: Path) -> int:
    """The epochs a training checkpoint says are done (0 when there is no checkpoint)."""
    import torch

    if not Path(path).is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def assert_same_weights(got: Path, expected: Path) -> int:
    """Two model artifacts hold the same tensors, name by name and bit for bit; returns how many."""
    import torch

    a = torch.load(Path(got) / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(Path(expected) / "model.pt", map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"
    return len(a)


def read_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text(encoding="utf-8"))
