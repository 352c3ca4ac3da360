"""Local backend: hyperparameter tuning, each trial a separate training job of the shared entry point.

:class:`~dogclf.hpo.HPOExperiment` calls :meth:`LocalBackend.tune <dogclf.backends.local.LocalBackend.tune>`, which
runs the experiment's remaining trials with :func:`dogclf.hpo.runner.run_trials`: up to ``max_parallel`` jobs at
once through :meth:`LocalBackend.train <dogclf.backends.local.LocalBackend.train>` (each in its own job
directory), pruned trials stopped, failures recorded with their reason, the state saved after every event.
"""

from __future__ import annotations

import logging
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["tune", "uses_feature_cache"]

logger = logging.getLogger(__name__)

def uses_feature_cache(spec: Any, space: Any = ()) -> bool:
    """Whether the spec's jobs fit only the head on the shared backbone feature cache.

    The entry point uses the cache with ``--feature-cache on``, or ``auto`` (its default) when ``freeze`` is
    ``head`` and ``augment`` is ``none`` (their defaults). When the space tunes one of these, not every trial
    does, and the answer is ``False``.
    """
    hp = dict(getattr(spec, "hyperparameters", {}) or {})
    if any(name in space for name in ("feature-cache", "freeze", "augment")):
        return False
    mode = str(hp.get("feature-cache", "auto")).strip().lower()
    return mode == "on" or (mode == "auto" and str(hp.get("freeze", "head")) == "head"
                            and str(hp.get("augment", "none")) == "none")


def tune(backend: Any, spec: Any, *, state: Any = None, launch: bool = True, wait: bool = True,
         poll_interval: float = 0.2, **kwargs: Any) -> Any:
    """Run (or, with ``launch=False``, only look at) a tuning experiment on the local backend.

    Args:
        backend: The :class:`~dogclf.backends.local.LocalBackend`.
        spec: The base ``TrainingJobSpec`` every trial starts from.
        state: The experiment's :class:`~dogclf.hpo.ExperimentState` (created by
            :class:`~dogclf.hpo.HPOExperiment`); updated in place and saved after every trial event.
        launch: ``False`` only reports: the local state file already is the whole truth.
        wait: Accepted for symmetry with SageMaker; local tuning always runs to the end in the calling thread
            (:meth:`HPOExperiment.run(wait=False) <dogclf.hpo.HPOExperiment.run>` runs it in a thread).
        poll_interval: Seconds between looks at the running jobs.

    Returns:
        ``state``.

    Raises:
        ConfigError: no ``state`` was given, or unknown keyword arguments.
    """
    if state is None:
        raise ConfigError("LocalBackend.tune needs state= (an ExperimentState); use dogclf.hpo.HPOExperiment")
    if kwargs:
        raise ConfigError(f"LocalBackend.tune got unknown arguments {sorted(kwargs)}")
    if not launch:
        return state
    from dogclf.hpo.runner import run_trials

    # With a shared feature cache, let the first job fill it before the others start reading it.
    warm = uses_feature_cache(spec, state.space) and state.max_parallel > 1
    return run_trials(backend, spec, state, poll_interval=poll_interval, warm_up_first=warm)
