"""Local backend: the trial pool for tuning, trial jobs in reused worker processes (SageMaker's warm pools).

:class:`~dogclf.hpo.HPOExperiment` runs a local experiment's trials as training jobs of the shared entry point
through :func:`dogclf.hpo.runner.run_trials`. For head-only experiments on the shared feature cache, where a
trial's own work is a fraction of a second, the interpreter start, the torch import and the toolkit's process per
job would dominate: :meth:`LocalBackend.trial_pool <dogclf.backends.local.LocalBackend.trial_pool>` then offers a
:class:`WarmPoolBackend`, whose workers run one job after another, each in its own job folder under the
training-container environment.

Like every local job, pool workers live only as long as the process that started them (the experiment's): killed
with ``kill -9``, it takes the workers and their jobs with it, and each job's ``job.json`` records how it ended
(:mod:`._jobstate`). The next run of the experiment resumes those trials from their checkpoints, under their own
names (the backend's ``resumes_jobs``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import BackendError

from ._jobstate import CALLER_ENV

if TYPE_CHECKING:
    from dogclf.backends.local import LocalBackend


__all__ = ["trial_pool", "uses_feature_cache", "WarmPoolBackend"]

logger = logging.getLogger(__name__)


def uses_feature_cache(spec: Any, space: Any = ()) -> bool:
    """Whether the spec's jobs fit only the head on the shared backbone feature cache.

    The entry point uses the cache for the whole run when ``freeze`` is ``"head"`` with no augmentation and no
    test-time augmentation (their defaults) and ``feature_cache`` is not ``"off"``
    (:func:`dogclf.training.features.cache_plan`). When the space tunes one of these, not every trial does, and
    the answer is ``False``.
    """
    from dogclf.training.features import cache_plan

    if any(name in space for name in ("feature_cache", "freeze", "augment", "tta", "freeze_epochs")):
        return False
    return cache_plan(spec.model, spec.training) == "all"


def trial_pool(backend: LocalBackend, spec: Any, space: Any, size: int) -> WarmPoolBackend | None:
    """A warm pool of ``size`` workers for an experiment's trials when they are head-only fits on the shared
    feature cache (where start-up dominates) of one process each, else ``None`` (each trial is a fresh job).

    The pool's ``warm_up_first`` asks the runner to let the first trial fill the feature cache before the others
    start reading it.
    """
    if not uses_feature_cache(spec, space) or spec.distribution is not None or (backend.processes or 1) > 1:
        return None  # a pool worker runs one process per job, in-process: not a job of several processes
    pool = WarmPoolBackend(backend, size)
    pool.warm_up_first = size > 1
    return pool


# -- warm pool: trial jobs in reused worker processes ---------------------------------------------------------------
_DONE_MARK = "\x1edogclf-pool-job-done "


class _PoolWorker:
    """One long-lived worker process that runs training jobs one after another (SageMaker's warm pools, locally).

    The worker imports torch and the entry point once; each job still gets its own job folder and the
    training-container environment (read through the sagemaker-training toolkit, as a fresh job process would)
    and runs the entry point's ``main`` with the job's hyperparameters as command-line options.
    """

    def __init__(self, root: Any) -> None:
        # the backend's root on the command line: `ps` shows which jobs folder a worker serves
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "dogclf.backends.local.tuning", "--pool-worker", str(root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            bufsize=1, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", CALLER_ENV: str(os.getpid())},
        )
        self.busy = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def shut(self) -> None:
        """Ask the worker to end (end of its job requests); :meth:`close` waits for it."""
        if self.alive and self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.alive:
            try:
                self.shut()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class _PoolJobProcess:
    """What :class:`~dogclf.backends.local.training.LocalTrainingJob` needs of a job process (``pid``,
    ``stdout``, ``wait``), for a job that runs in a pool worker: ``stdout`` yields the job's lines up to the
    worker's end-of-job mark; stopping the job kills the worker (its process group), which the pool replaces."""

    def __init__(self, worker: _PoolWorker) -> None:
        self._worker = worker
        self.pid = worker.process.pid
        self._code: int | None = None
        self._ended = threading.Event()
        self.stdout = self._lines()

    def _lines(self) -> Iterator[str]:
        stream = self._worker.process.stdout
        assert stream is not None
        try:
            for line in stream:
                if line.startswith(_DONE_MARK):
                    self._code = int(line[len(_DONE_MARK):].strip() or 1)
                    return
                yield line
            self._code = self._worker.process.wait()  # the worker died (stopped, or crashed)
        finally:
            self._worker.busy = False
            self._ended.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"pool job in worker {self.pid}", timeout or 0)
        return self._code if self._code is not None else 1


class WarmPoolBackend:
    """Runs the local backend's training jobs in reused worker processes (see :func:`trial_pool`).

    It implements ``train(spec, wait=False, on_log_line=...)`` like
    :class:`~dogclf.backends.local.LocalBackend` (same job folders under the same root, same
    :class:`~dogclf.backends.local.training.LocalTrainingJob` handles) but skips a new interpreter, the torch
    import and the toolkit's process per job, which dominate a head fit on cached features.

    Args:
        backend: The local backend whose root and feature cache the jobs use.
        size: Worker processes at most (the experiment's ``max_parallel``).
    """

    def __init__(self, backend: LocalBackend, size: int) -> None:
        self.backend = backend
        self.name = getattr(backend, "name", "local")
        self.root = backend.root
        self.size = size
        self._workers: list[_PoolWorker] = []
        self._lock = threading.Lock()
        self.warm_up_first = False
        self.resumes_jobs = bool(getattr(backend, "resumes_jobs", False))

    def _worker(self) -> _PoolWorker:
        with self._lock:
            self._workers = [w for w in self._workers if w.alive or w.busy]
            for w in self._workers:
                if not w.busy and w.alive:
                    w.busy = True
                    return w
            if len(self._workers) >= self.size:
                raise BackendError(f"all {self.size} pool workers are busy")
            w = _PoolWorker(self.root)
            w.busy = True
            self._workers.append(w)
            # start the others now, so their start-up overlaps this first job (e.g. its backbone pass)
            while len(self._workers) < self.size:
                self._workers.append(_PoolWorker(self.root))
            return w

    def train(self, spec: Any, wait: bool = True, on_log_line: Any = None, **kwargs: Any) -> Any:
        """Start ``spec`` as a job in a free worker; returns its handle (or, with ``wait=True``, its result)."""
        from dogclf.backends.local.training import LocalTrainingJob, prepare_job
        from dogclf.backends.local.training import logger as training_logger

        base, env = prepare_job(self.backend, spec, spec.job_name)
        worker = self._worker()
        assert worker.process.stdin is not None
        try:
            worker.process.stdin.write(json.dumps({"base": str(base), "env": env}) + "\n")
            worker.process.stdin.flush()
        except OSError as exc:
            worker.busy = False
            raise BackendError(f"pool worker {worker.process.pid} is gone: {exc}") from exc
        logger.info("started training job %s in pool worker %d", spec.job_name, worker.process.pid)
        job = LocalTrainingJob(spec.job_name, base, spec, _PoolJobProcess(worker), on_log_line, training_logger)
        return job.wait(raise_on_failure=kwargs.get("raise_on_failure", True)) if wait else job

    def attach(self, job_name: str) -> Any:
        """A job's result from its folder (the local backend's ``attach``)."""
        return self.backend.attach(job_name)

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Not a serving backend: deploy with the local backend itself."""
        raise BackendError("the tuning pool does not serve models; use LocalBackend.deploy")

    def close(self) -> None:
        """End the worker processes."""
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:  # all at once: each worker's exit then overlaps the others'
            w.shut()
        for w in workers:
            w.close()


def _mark_my_jobs(root: Path, reason: str) -> None:
    """Record as ended every job under ``root`` that names this worker as its process and claims to run (the one it
    runs, and one handed to it that it has not read yet)."""
    from ._jobstate import mark_ended, read_state

    for job in (root / "jobs").glob("*"):
        state = read_state(job)
        if state and state.get("pid") == os.getpid() and state.get("status") == "InProgress" and "result" not in state:
            mark_ended(job, reason)


def _pool_worker_main(root: str | None = None) -> int:
    """The worker: read job requests (one JSON line each) from stdin and run each job's entry point in-process;
    die with the process that started it (its jobs recorded as ended in their ``job.json``)."""
    from dogclf._process import die_with_parent

    caller = os.environ.get(CALLER_ENV, "")
    if caller.isdigit():
        reason = f"the process that started the job (pid {caller}) is gone; the job was killed with it"
        die_with_parent(int(caller), lambda: root is not None and _mark_my_jobs(Path(root), reason))

    import torch  # noqa: F401 - import torch and what the entry point runs once, up front
    import torchvision  # noqa: F401
    from sagemaker_training import environment

    import dogclf.debug  # noqa: F401
    import dogclf.models  # noqa: F401
    import dogclf.training.train as entry

    for request in sys.stdin:
        if not request.strip():
            continue
        job = json.loads(request)
        os.environ.clear()
        os.environ.update(job["env"])
        code = 1
        try:
            # the toolkit reads SAGEMAKER_BASE_DIR into module constants when imported: re-read them per job
            importlib.reload(environment)
            env = environment.Environment()
            os.environ.update({k: str(v) for k, v in env.to_env_vars().items()})
            code = entry.main(list(env.to_cmd_args()))
        except BaseException as exc:  # report and keep serving: the job failed, not the worker
            print(f"training entry point failed: {type(exc).__name__}: {exc}", flush=True)
        sys.stdout.flush()
        print(f"{_DONE_MARK}{code}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pool-worker"]:
        status = _pool_worker_main(sys.argv[2] if len(sys.argv) > 2 else None)
        # Every job's files are written (atomically) and its output flushed before its done-mark: skip the
        # interpreter's teardown of torch and the toolkit (about a second per worker on 2 busy cores).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    print("usage: python -m dogclf.backends.local.tuning --pool-worker [ROOT]", file=sys.stderr)
    sys.exit(64)
