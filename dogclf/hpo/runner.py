"""The trial runner: runs an experiment's trials as separate training jobs on any backend that can start one.

This is how :class:`~dogclf.hpo.HPOExperiment` tunes on a backend without a tuning service of its own (the local
backend, a third-party one). It needs only this of the backend (or of the trial pool the backend offers, see
:meth:`LocalBackend.trial_pool <dogclf.backends.local.LocalBackend.trial_pool>`)::

    handle = backend.train(spec, wait=False)
    handle.status          # "InProgress" until it ends, then "Completed" / "Failed" / "Stopped"
    handle.metric_history  # the metric events the job has published so far (optional: no pruning without it)
    handle.stop()          # ask the job to stop
    result = handle.wait(raise_on_failure=False)   # a TrainingJobResult: status, metrics, metric_history, ...

It keeps up to ``max_parallel`` jobs running, asks the strategy for each new trial's hyperparameters, reads each
job's published per-epoch metrics (recorded in the trial as they come) and stops those the pruner calls clearly
worse, records every ending (a failed job is recorded with its reason and does not stop the others) and saves the
experiment's state after every event; a trial is recorded before its job starts, so no job runs unrecorded.

Trials a previous, interrupted run (``kill -9`` included) left "InProgress" are read back with the backend's
``attach(job_name)`` when it has one: a job that completed meanwhile is recorded, not run again. The others start
again with the same hyperparameters: under their own job names where the backend resumes jobs
(``backend.resumes_jobs``, the local backend), so each continues from its own last checkpoint, and otherwise as
``<name>-r<attempt>``. No trial is lost or run twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from dogclf._faults import failpoint
from dogclf.errors import DogclfError
from dogclf.hpo.state import ExperimentState
from dogclf.hpo.trial import Trial

if TYPE_CHECKING:
    from dogclf.backends import Backend


__all__ = ["run_trials", "trial_job_name", "trial_spec"]

logger = logging.getLogger(__name__)

_DONE = ("Completed", "Failed", "Stopped")


def trial_job_name(experiment: str, number: int, attempt: int = 1) -> str:
    """The training-job name of a trial: ``<experiment>-<NNN>`` (1-based, like SageMaker's tuning jobs), with
    ``-r<attempt>`` when a trial is run again after an interruption."""
    name = f"{experiment}-{number + 1:03d}"
    return name if attempt <= 1 else f"{name}-r{attempt}"


def trial_spec(base: Any, params: dict[str, Any], job_name: str) -> Any:
    """``base`` (a ``TrainingJobSpec``) with the trial's hyperparameters and job name (validated)."""
    return base.with_params(params, job_name=job_name)


def _epochs(handle: Any) -> list[dict[str, float]]:
    """The per-epoch metric events a running job has published (none where the handle cannot tell)."""
    try:
        return [dict(e) for e in (getattr(handle, "metric_history", None) or []) if "epoch" in e]
    except Exception as exc:  # the events file is being replaced: try again at the next look
        logger.debug("could not read the metrics of %s: %s", getattr(handle, "job_name", handle), exc)
        return []


class _Running:
    def __init__(self, trial: Trial, handle: Any) -> None:
        self.trial = trial
        self.handle = handle
        self.prune_reason: str | None = None
        self.started = time.time()


def _status(handle: Any) -> str:
    try:
        return str(handle.status)
    except Exception as exc:  # a backend whose status lookup fails: treat the job as ended and let wait() tell
        logger.warning("could not read status of %s: %s", getattr(handle, "job_name", handle), exc)
        return "Failed"


def _stop(run: _Running) -> None:
    try:
        run.handle.stop()
    except Exception as exc:  # the job may have ended meanwhile; its status tells
        logger.warning("could not stop %s: %s", run.trial.job_name, exc)


class _Ended:
    """A handle for a job that ended while nobody watched it (read back with the backend's ``attach``)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.status = result.status

    def wait(self, raise_on_failure: bool = False) -> Any:
        return self.result

    def stop(self) -> None:
        """Nothing to stop."""


def _recover(backend: Backend, trials: list[Trial], objective: Any) -> None:
    """Record the trials an interrupted run left "InProgress" whose jobs completed meanwhile, so they are not
    trained again (needs the backend's ``attach(job_name)``; others are started again by the caller)."""
    attach = getattr(backend, "attach", None)
    if not callable(attach):
        return
    for trial in trials:
        try:
            result = attach(trial.job_name)
        except DogclfError:
            continue
        if getattr(result, "status", None) == "Completed":
            logger.info("trial %d (%s) completed while the experiment was not watching; recorded, not rerun",
                        trial.number, trial.job_name)
            _finish(_Running(trial, _Ended(result)), objective)


def _finish(run: _Running, objective: Any) -> None:
    """Wait for an ended job and copy its outcome into the trial record."""
    trial = run.trial
    result, error = None, None
    try:
        try:
            result = run.handle.wait(raise_on_failure=False)
        except TypeError:  # a handle whose wait() always returns the result
            result = run.handle.wait()
    except DogclfError as exc:
        error = exc
    except Exception as exc:  # the backend broke, not only the job: still record it and carry on
        error = exc
        logger.exception("trial %s: waiting for job %s failed", trial.number, trial.job_name)
    trial.ended = time.time()
    if result is not None:
        status = str(getattr(result, "status", "Failed"))
        trial.metrics = {k: float(v) for k, v in (getattr(result, "metrics", None) or {}).items()
                         if isinstance(v, (int, float))}
        trial.history = [dict(r) for r in getattr(result, "metric_history", None) or [] if "epoch" in r]
        trial.duration_s = getattr(result, "duration_s", None)
        out = getattr(result, "output_dir", None)
        trial.output_dir = str(out) if out is not None else None
        art = getattr(result, "model_artifact", None)
        trial.model_artifact = str(art) if art is not None else None
        trial.failure_reason = getattr(result, "failure_reason", None)
        value = trial.metrics.get(objective.metric)
    else:
        status = str(getattr(error, "status", None) or "Failed")
        trial.history = _epochs(run.handle)
        trial.failure_reason = str(getattr(error, "reason", None) or error)
        value = None
        trial.duration_s = trial.ended - run.started
    if trial.duration_s is None:
        trial.duration_s = trial.ended - run.started
    if status not in _DONE:
        status = "Failed"
    if run.prune_reason is not None and status != "Failed":
        status, trial.failure_reason = "Pruned", run.prune_reason
    elif status == "Completed" and (value is None or not math.isfinite(value)):
        status = "Failed"
        trial.failure_reason = (f"the job completed but never published the objective metric "
                                f"{objective.metric!r}" if value is None
                                else f"the objective {objective.metric!r} is {value}")
    trial.objective = value if value is not None and math.isfinite(value) else None
    trial.status = status
    logger.info("trial %d (%s) %s: %s=%s%s", trial.number, trial.job_name, status, objective.metric,
                trial.objective, f" ({trial.failure_reason})" if trial.failure_reason else "")


def run_trials(backend: Backend, spec: Any, state: ExperimentState, *, poll_interval: float = 0.2,
               warm_up_first: bool = False) -> ExperimentState:
    """Run ``state``'s remaining trials as training jobs on ``backend``; return ``state`` when all have ended.

    Args:
        backend: An object whose ``train(spec, wait=False, on_log_line=...)`` starts a job and returns a handle
            (see the module docs).
        spec: The base training-job spec; each trial replaces its hyperparameters and job name.
        state: The experiment's state; updated and saved after every trial start and end.
        poll_interval: Seconds between looks at the running jobs.
        warm_up_first: Run the first trial alone until it ends before starting the others, so that a shared
            backbone feature cache is filled once rather than by every parallel job.

    Returns:
        ``state``.

    If the caller is interrupted (``KeyboardInterrupt``), the running jobs are stopped and stay "InProgress" in
    the state file; the next run starts them again (see the module docs).

    Fail points (:mod:`dogclf._faults`): ``hpo.runner.launched`` after each trial's job has started and the state
    is saved; ``hpo.runner.progress`` after each epoch a running trial published is recorded.
    """
    objective, strategy, pruner = state.objective, state.strategy, state.early_stopping
    limit = state.max_trials
    cap = strategy.max_trials(state.space)
    if cap is not None and cap < limit:
        logger.info("strategy %s has only %d combinations; running %d trials, not %d", strategy.name, cap, cap,
                    limit)
        limit = cap
    relaunch = [t for t in state.trials if t.status == "InProgress"]
    _recover(backend, relaunch, objective)
    if any(t.finished for t in relaunch):
        relaunch = [t for t in relaunch if not t.finished]
        state.save()
    same_name = bool(getattr(backend, "resumes_jobs", False))
    running: dict[int, _Running] = {}
    exhausted = False

    def launch(trial: Trial) -> None:
        try:
            handle = backend.train(trial_spec(spec, trial.params, trial.job_name), wait=False)
        except DogclfError as exc:
            trial.status, trial.failure_reason = "Failed", f"the job could not start: {exc}"
            trial.ended, trial.duration_s = time.time(), 0.0
            logger.warning("trial %d (%s) could not start: %s", trial.number, trial.job_name, exc)
            return
        running[trial.number] = _Running(trial, handle)
        logger.info("trial %d (%s) started: %s", trial.number, trial.job_name, trial.params)

    def may_launch() -> bool:
        if len(running) >= state.max_parallel:
            return False
        # Until one trial has ended, a cold feature cache would be filled by every job started meanwhile.
        return not (warm_up_first and running and not any(t.finished for t in state.trials))

    try:
        while True:
            while may_launch():
                if relaunch:
                    trial = relaunch.pop(0)
                    trial.attempts += 1
                    if not same_name:  # a backend that cannot continue a job: a new one, from scratch
                        trial.job_name = trial_job_name(state.name, trial.number, trial.attempts)
                    logger.info("trial %d: starting job %s again (attempt %d)%s", trial.number, trial.job_name,
                                trial.attempts, "; it resumes from its checkpoints" if same_name else "")
                    trial.created, trial.ended, trial.failure_reason, trial.history = time.time(), None, None, []
                elif not exhausted and len(state.trials) < limit:
                    number = len(state.trials)
                    params = strategy.suggest(state.space, state.trials, number, seed=state.seed,
                                              objective=objective)
                    if params is None:
                        exhausted = True
                        break
                    trial = Trial(number=number, params=dict(params), job_name=trial_job_name(state.name, number),
                                  created=time.time())
                    state.trials.append(trial)
                    state.save()  # recorded before its job starts: a kill in between leaves no unrecorded job
                else:
                    break
                launch(trial)
                state.save()
                failpoint("hpo.runner.launched")
            if not running:
                break
            changed, progress = False, 0
            for number, run in list(running.items()):
                epochs = _epochs(run.handle)
                if len(epochs) > len(run.trial.history) and _status(run.handle) not in _DONE:
                    progress += len(epochs) - len(run.trial.history)
                    run.trial.history, changed = epochs, True
                if pruner is not None and run.prune_reason is None:
                    metric = pruner.metric_for(objective)
                    history = {int(r["epoch"]): r[metric] for r in epochs if metric in r}
                    reason = pruner.should_stop(history, state.trials, objective)
                    if reason is not None:
                        run.prune_reason = reason
                        logger.info("trial %d (%s) %s", number, run.trial.job_name, reason)
                        # stop() may wait for the process to exit: keep watching the other jobs meanwhile
                        threading.Thread(target=_stop, args=(run,), name=f"dogclf-prune-{run.trial.job_name}",
                                         daemon=True).start()
                if _status(run.handle) in _DONE:
                    _finish(run, objective)
                    del running[number]
                    changed = True
            if changed:
                state.save()
                for _ in range(progress):
                    failpoint("hpo.runner.progress")
            else:
                time.sleep(poll_interval)
    except BaseException:
        for run in running.values():
            try:
                run.handle.stop()
            except Exception as exc:  # best effort while unwinding
                logger.warning("could not stop %s: %s", run.trial.job_name, exc)
        state.save()
        raise
    return state
