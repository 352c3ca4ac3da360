"""A local job's ``job.json``: what it says must be true of the job's processes, even after a ``kill -9``.

The process that starts a job (the *caller*) writes ``job.json`` when the job starts and again with the result when
it ends. A local job lives only as long as its caller, which reads its output: the job process watches the caller
(:func:`dogclf._process.die_with_parent`) and, when it is gone, records that here (:func:`mark_ended`) and kills its
process group. Should nobody be left to record it (the job killed together with its caller), the next reader does:
:func:`reconcile`, used by ``attach`` and by a job started again under the same name, turns a job that claims to
run but whose process is gone into a ``Failed`` one with the reason, and kills what is left of an orphaned job.
So ``job.json`` never reports a job running once its process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dogclf._io import atomic_write_json
from dogclf._process import alive, group_members, identity, kill_group
from dogclf.training.metrics import last_values, read_metric_events
from dogclf.training.spec import TrainingJobResult

__all__ = ["JOB_FILE", "CALLER_ENV", "read_state", "write_state", "mark_ended", "reconcile", "running"]

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
"""The job's state file in its folder."""

CALLER_ENV = "DOGCLF_JOB_CALLER"
"""Environment variable handing a job process its caller's pid (the process it must not outlive)."""

_RUNNING = ("InProgress", "Stopping")


def read_state(base: Path) -> dict[str, Any] | None:
    """The job's ``job.json`` as a dict, or ``None`` when there is none (or it is unreadable)."""
    try:
        state = json.loads((Path(base) / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(base: Path, state: dict[str, Any]) -> None:
    """Replace ``job.json`` atomically."""
    atomic_write_json(Path(base) / JOB_FILE, state)


def process_fields(pid: int, caller: int | None = None) -> dict[str, Any]:
    """The ``job.json`` fields naming the job process and its caller (ids with start times)."""
    caller = os.getpid() if caller is None else caller
    return {"pid": pid, "pid_start": identity(pid), "caller_pid": caller, "caller_start": identity(caller)}


def running(state: dict[str, Any]) -> tuple[bool, bool]:
    """``(job process runs, caller runs)`` for a state that claims to run (a caller not recorded counts as
    running: a job started by an older dogclf)."""
    job = alive(state.get("pid"), state.get("pid_start"))
    caller = alive(state.get("caller_pid"), state.get("caller_start")) if state.get("caller_pid") else True
    return job, caller


def mark_ended(base: Path, reason: str, status: str = "Failed") -> dict[str, Any] | None:
    """Record in ``job.json`` that the job ended without its caller recording a result: ``status`` with
    ``reason``, the metrics it published so far. A state that already holds a result is left as it is.

    Returns:
        The state as written (or found), ``None`` when the folder has no ``job.json``.
    """
    base = Path(base)
    state = read_state(base)
    if state is None or "result" in state:
        return state
    output = base / "output" / "data"
    failure = base / "output" / "failure"
    try:
        written = failure.read_text(encoding="utf-8").strip()
    except OSError:
        written = ""
    history = read_metric_events(output)
    started = state.get("started")
    result = TrainingJobResult(
        job_name=str(state.get("job_name", base.name)), status=status, metrics=last_values(history),
        metric_history=history, output_dir=str(output), failure_reason=(written or reason)[:1024],
        duration_s=time.time() - started if isinstance(started, (int, float)) else None,
        log_path=str(base / "logs" / "train.log"), hyperparameters=dict(state.get("spec_hyperparameters") or {}))
    state.update(status=status, result=result.to_dict())
    write_state(base, state)
    return state


def reconcile(base: Path) -> dict[str, Any] | None:
    """The job's state, made true: a job that claims to run whose process is gone becomes ``Failed`` (written
    back), and an orphan (its process runs, its caller is gone, so nobody reads its output or records its end) is
    killed with its process group first. Processes a dead job left in its group are killed too.

    Returns:
        The state, ``None`` when the folder has no ``job.json``.
    """
    state = read_state(base)
    if state is None or "result" in state or state.get("status") not in _RUNNING:
        return state
    pid = state.get("pid")
    job, caller = running(state)
    if job and caller:
        return state
    if job:
        logger.warning("local training job %s (pid %s) is orphaned: the process that started it (pid %s) is gone; "
                       "killing it", state.get("job_name"), pid, state.get("caller_pid"))
        reason = (f"orphaned: the process that started the job (pid {state.get('caller_pid')}) is gone, so the job "
                  "was killed")
    else:
        reason = (f"the job process (pid {pid}) ended without recording a result: it was killed (kill -9, out of "
                  "memory) or died with the process that started it")
    # The job process leads its own group: the entry point and its data-loader workers are in it. After the
    # leader's end its id stays reserved while the group has members, so a group of that id is still the job's
    # unless the id now names another process.
    ours = isinstance(pid, int) and pid > 1 and pid != os.getpgrp() and \
        identity(pid) in (None, state.get("pid_start"))
    if ours and (job or group_members(pid)) and not kill_group(pid) and job:
        return state  # could not kill it: it still runs, and says so
    return mark_ended(base, reason)
