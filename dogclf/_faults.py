"""Named fail points: kill this process with ``SIGKILL`` at a chosen point, to test what survives a crash.

Library code marks the places where a crash matters with :func:`failpoint`::

    failpoint("data.archive.member")   # once per extracted archive member

A fail point does nothing unless the environment variable ``DOGCLF_FAILPOINTS`` names it when the process first
reaches a fail point. Its value is a comma-separated list of ``name`` or ``name@N``: the process sends itself
``SIGKILL`` on the ``N``-th time (default the first time) it passes that point, the same ``kill -9`` an
out-of-memory killer, a spot-instance reclaim or an impatient user deals out. It first writes one line to standard
error (``dogclf: fail point NAME hit (N): ...``); then nothing is flushed, no ``finally`` block or ``atexit`` handler
runs. A child process inherits the variable and counts its own hits.

Cost when nothing is armed: one call and one lookup in an empty dict; the variable is read once per process.

The fail points (``name``: where the process dies):

``data.archive.member``
    :func:`dogclf.data.archive.safe_extract`, after writing each archive member (mid-extract).
``data.stager.swap``
    :class:`dogclf.data.DatasetStager`, a new local dataset complete beside the target, just before it replaces
    the target.
``data.s3.upload.done``
    :func:`dogclf.data.s3.upload_files`, after each object whose upload has finished (mid-upload: other transfers
    are in flight).
``serving.batcher.forward``
    The local endpoint server, on its inference thread just before each forward pass of a request batch
    (mid-request: the client is waiting for the answer).
``serving.endpoint.spawned``
    :meth:`dogclf.serving.LocalEndpoint.start`, in the deploying process right after the server process was
    started and before it answers ``/ping``.
``training.loop.step``
    The training entry point, after each train step (its optimizer step done): mid-epoch.
``training.checkpoint.write``
    :func:`dogclf.training.checkpoint.save_checkpoint`, after each MiB written to the checkpoint's temporary file
    (mid-write: the previous checkpoint is still in place).
``training.features.batch``
    :func:`dogclf.training.features.cached_features`, after each batch of backbone features computed for the
    feature cache (mid-fill: that split's cache file is not written yet).
``hpo.runner.launched``
    :func:`dogclf.hpo.runner.run_trials` (the tuning process), after each trial's job has started and the
    experiment's state is saved.
``hpo.runner.progress``
    :func:`dogclf.hpo.runner.run_trials`, after recording each epoch a running trial has published (mid-trial).

Example (a shell)::

    DOGCLF_FAILPOINTS=data.archive.member@40 dogclf stage dogImages.zip runs/data/dogImages   # killed
    dogclf stage dogImages.zip runs/data/dogImages                                          # completes

``tests/test_faults.py`` runs every fault case this way (``pytest -m faults``).
"""

from __future__ import annotations

import itertools
import os
import signal
from typing import Any

__all__ = ["ENV", "failpoint", "armed", "reload", "watch_writes"]

ENV = "DOGCLF_FAILPOINTS"
"""The environment variable naming the armed fail points (``name[@N],...``)."""

_armed: dict[str, tuple[int, itertools.count]] | None = None


def _parse(value: str) -> dict[str, tuple[int, itertools.count]]:
    points: dict[str, tuple[int, itertools.count]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, nth = item.partition("@")
        try:
            after = int(nth) if nth else 1
        except ValueError:
            after = 0
        if not name.strip() or after < 1:
            raise ValueError(f"{ENV}: bad fail point {item!r}; expected 'name' or 'name@N' with N >= 1")
        points[name.strip()] = (after, itertools.count(1))
    return points


def reload() -> dict[str, int]:
    """Read ``DOGCLF_FAILPOINTS`` again (hit counts restart); returns ``{name: N}`` of the armed points.

    Raises:
        ValueError: the variable holds a malformed entry (the message names it).
    """
    global _armed
    _armed = _parse(os.environ.get(ENV, ""))
    return armed()


def armed() -> dict[str, int]:
    """``{name: N}`` of the armed fail points (empty when none is)."""
    if _armed is None:
        reload()
    assert _armed is not None
    return {name: after for name, (after, _) in _armed.items()}


def failpoint(name: str) -> None:
    """Send this process ``SIGKILL`` if ``name`` is armed and this is its ``N``-th hit; otherwise do nothing."""
    if _armed is None:
        reload()
    point = _armed.get(name)  # type: ignore[union-attr]
    if point is None:
        return
    after, hits = point
    hit = next(hits)  # atomic under the GIL: concurrent threads count each hit once
    if hit == after:
        # straight to stderr, not through logging: it may not be configured, and nothing is flushed after this
        os.write(2, f"dogclf: fail point {name} hit ({hit}): sending SIGKILL to process {os.getpid()}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


class _WatchedWriter:
    """A binary file whose writes pass fail point ``name`` each time another ``every`` bytes have been written."""

    def __init__(self, fh: Any, name: str, every: int) -> None:
        self._fh, self._name, self._every, self._written = fh, name, every, 0

    def write(self, data: Any) -> int:
        written = self._fh.write(data)
        before, self._written = self._written, self._written + memoryview(data).nbytes
        for _ in range(before // self._every, self._written // self._every):
            failpoint(self._name)
        return written

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fh, attr)


def watch_writes(fh: Any, name: str, every: int = 1 << 20) -> Any:
    """``fh`` itself, or, when ``name`` is armed, a stand-in whose writes pass fail point ``name`` once per
    ``every`` bytes written (to die in the middle of writing a file)."""
    return _WatchedWriter(fh, name, every) if name in armed() else fh
