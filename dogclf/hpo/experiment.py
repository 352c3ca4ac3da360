""":class:`HPOExperiment`: tune the training entry point's hyperparameters on any backend."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._extras import require
from dogclf.errors import ConfigError, NotFittedError, NotFoundError
from dogclf.hpo.objective import Objective
from dogclf.training.spec import normalize_channels
from dogclf.hpo.pruning import MedianStopping, get_early_stopping
from dogclf.hpo.space import SearchSpace
from dogclf.hpo.state import ExperimentState, experiments_root, validate_name
from dogclf.hpo.strategies import Strategy, get_strategy
from dogclf.hpo.trial import Trial

if TYPE_CHECKING:
    from dogclf.backends import Backend


__all__ = ["HPOExperiment"]

logger = logging.getLogger(__name__)

_SCORED = ("Completed", "Pruned", "Stopped")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _is_spec(obj: Any) -> bool:
    from dogclf.training import TrainingJobSpec

    return isinstance(obj, TrainingJobSpec)


def _is_model(obj: Any) -> bool:
    from dogclf.models import ModelConfig

    return isinstance(getattr(obj, "config", None), ModelConfig) or isinstance(obj, ModelConfig)


def _check_space(space: SearchSpace) -> None:
    """Every tuned name is a hyperparameter of the entry point (checked when the experiment is built)."""
    from dogclf.training import TrainingJobSpec

    tunable = TrainingJobSpec.tunable()
    unknown = [name for name in space if name not in tunable]
    if unknown:
        raise ConfigError(f"search space names {unknown} are not hyperparameters of the training entry point; it has: "
                          f"{', '.join(sorted(tunable))}")


class HPOExperiment:
    """Tune the training entry point's hyperparameters: the seed's SageMaker tuning job as a few lines of code,
    on the local backend or on SageMaker.

    Each trial is one training job of the shared entry point: the spec with the trial's hyperparameters
    (``spec.with_params(params)``). On the local backend trials run as separate processes, up to ``max_parallel`` at
    once, each in its own job directory; on SageMaker the experiment is a hyperparameter-tuning job. The
    experiment's state is kept on disk (``<root>/experiments/<name>/experiment.json``): running :meth:`run` again
    after an interruption continues where it stopped and never repeats a finished trial, and :meth:`attach`
    reconnects to an earlier or still-running experiment by name.

    Args:
        model_or_entry_point: The training job every trial starts from: a :class:`~dogclf.training.TrainingJobSpec`
            (its hyperparameters are the static ones, its channels the data); a model
            (:class:`~dogclf.models.ResNetBreedModel` or a :class:`~dogclf.models.ModelConfig`; give ``data``); or
            an object with a ``training_spec()`` method returning a spec.
        space: ``{name: Continuous | Integer | Categorical}`` or a :class:`~dogclf.hpo.SearchSpace`; names are
            the entry point's hyperparameters (``"lr"``, ``"batch_size"``; the wire spelling ``"batch-size"`` is
            accepted too) and are checked against them here.
        objective: An :class:`~dogclf.hpo.Objective`, or a metric name (``"test_loss"``; names ending in
            ``acc``/``accuracy`` are maximised, others minimised).
        max_trials: Trials to run in all (a grid stops earlier when it has fewer combinations).
        max_parallel: Trials running at the same time.
        strategy: ``"bayesian"`` (Optuna TPE), ``"random"``, ``"grid"`` (categorical-only spaces) or a
            :class:`~dogclf.hpo.Strategy`.
        early_stopping: ``"off"``, ``"auto"`` (the median rule, like SageMaker's ``early_stopping_type="Auto"``)
            or a :class:`~dogclf.hpo.MedianStopping`.
        backend: ``None`` (the default backend), a registered backend name or a backend object.
        name: The experiment's name (1-32 letters, digits, hyphens); default ``hpo-<UTC timestamp>-<6 hex>``.
        seed: Seed of the strategy's draws; the same seed reproduces the same trials (run sequentially).
            ``None`` picks one and records it in the state.
        data: The data channels: a dataset folder or ``s3://`` URI holding ``train/``, ``valid/`` and ``test/``,
            or a dict of channels. Needed with a model; with a spec it replaces the spec's channels.
        hyperparameters: More static hyperparameters (e.g. ``{"optimizer": "sgd"}``), over the spec's or model's.


    Raises:
        ConfigError: an invalid space, objective, strategy (e.g. grid over a numeric range), early-stopping
            value, name, ``max_trials < 1`` or ``max_parallel < 1``, or a ``model_or_entry_point`` that is no
            training spec.

    Example:
        >>> from dogclf.hpo import HPOExperiment, Continuous, Categorical
        >>> exp = HPOExperiment(spec, {"lr": Continuous(1e-3, 0.1, scale="log"),
        ...                            "batch_size": Categorical([32, 64, 128]), "epochs": Categorical([1, 2])},
        ...                     "test_loss", max_trials=3, max_parallel=2, backend="local")  # doctest: +SKIP
        >>> exp.run().best_params_  # doctest: +SKIP
        {'lr': 0.0011, 'batch_size': 64, 'epochs': 2}
    """

    def __init__(self, model_or_entry_point: Any, space: Mapping[str, Any] | SearchSpace,
                 objective: Objective | str = "test_loss", *, max_trials: int = 10, max_parallel: int = 1,
                 strategy: str | Strategy = "bayesian", early_stopping: str | MedianStopping | None = "off",
                 backend: Backend | str | None = None, name: str | None = None, seed: int | None = None,
                 data: Any = None, hyperparameters: Mapping[str, Any] | None = None) -> None:
        src = model_or_entry_point
        if not (_is_spec(src) or _is_model(src) or callable(getattr(src, "training_spec", None))):
            raise ConfigError(
                f"model_or_entry_point must be a dogclf.training.TrainingJobSpec, a model (ResNetBreedModel, "
                f"ModelConfig) or have a training_spec() method, got {type(src).__name__}: {src!r:.80}")
        if _is_model(src) and not _is_spec(src) and data is None:
            raise ConfigError("HPOExperiment with a model needs data= (a dataset folder or URI, or channels)")
        if data is not None:
            normalize_channels(data)
        if hyperparameters is not None and not isinstance(hyperparameters, Mapping):
            raise ConfigError(f"hyperparameters must be a dict, got {type(hyperparameters).__name__}")
        self.model_or_entry_point = model_or_entry_point
        self.data = data
        self.hyperparameters = dict(hyperparameters or {})
        self.space = SearchSpace(space)
        _check_space(self.space)
        if isinstance(objective, str):
            maximize = objective.endswith(("acc", "accuracy"))
            objective = Objective(objective, direction="maximize" if maximize else "minimize")
        if not isinstance(objective, Objective):
            raise ConfigError(f"objective must be an Objective or a metric name, got {objective!r:.80}")
        self.objective = objective
        self.max_trials = _positive_int("max_trials", max_trials)
        self.max_parallel = _positive_int("max_parallel", max_parallel)
        self.strategy = get_strategy(strategy)
        self.strategy.validate(self.space)
        self.early_stopping = get_early_stopping(early_stopping)
        self.backend = backend
        self.name = validate_name(name) if name is not None else (
            f"hpo-{time.strftime('%y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self._backend_obj: Any = None
        self._spec: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return (f"HPOExperiment(name={self.name!r}, space={dict(self.space)!r}, objective={self.objective!r}, "
                f"max_trials={self.max_trials}, max_parallel={self.max_parallel}, strategy={self.strategy!r})")

    # -- running ---------------------------------------------------------------------------------------------------
    def _resolve_backend(self) -> Any:
        if self._backend_obj is None:
            from dogclf.backends import get_backend

            self._backend_obj = get_backend(self.backend)
        return self._backend_obj

    def _base_spec(self) -> Any:
        if self._spec is None:
            from dogclf.training import TrainingJobSpec

            src = self.model_or_entry_point
            if _is_spec(src):
                spec = src
            elif _is_model(src):
                spec = TrainingJobSpec(src, normalize_channels(self.data))
            else:
                spec = src.training_spec()
                if not _is_spec(spec):
                    raise ConfigError(f"{type(src).__name__}.training_spec() returned {type(spec).__name__}, "
                                      f"not a TrainingJobSpec")
            changes: dict[str, Any] = {}
            if self.data is not None and not _is_model(src):
                changes["channels"] = normalize_channels(self.data)
            self._spec = spec.with_params(self.hyperparameters, **changes)
        return self._spec

    @property
    def state_path(self) -> Path:
        """Where this experiment's state file is (``<root>/experiments/<name>/experiment.json``)."""
        return experiments_root(self._resolve_backend()) / self.name / "experiment.json"

    def _new_state(self, backend: Backend, spec: Any) -> ExperimentState:
        seed = self.seed if self.seed is not None else int(time.time_ns() % (2**31 - 1))
        return ExperimentState(
            name=self.name, backend=str(getattr(backend, "name", type(backend).__name__)), space=self.space,
            objective=self.objective, strategy=self.strategy, max_trials=self.max_trials,
            max_parallel=self.max_parallel, early_stopping=self.early_stopping, seed=seed,
            base_spec=spec.to_dict())

    def _load_or_create(self) -> ExperimentState:
        backend, spec = self._resolve_backend(), self._base_spec()
        path = self.state_path
        try:
            state = ExperimentState.load(path)
        except NotFoundError:
            state = self._new_state(backend, spec)
            state.save(path)
            return state
        diffs = [what for what, a, b in (("space", state.space, self.space), ("objective", state.objective,
                                                                                self.objective))
                 if a != b]
        if state.strategy.name != self.strategy.name:
            diffs.append("strategy")
        if self.seed is not None and state.seed != self.seed:
            diffs.append("seed")
        if diffs:
            raise ConfigError(f"experiment {self.name!r} already exists at {str(path)!r} with a different "
                              f"{', '.join(diffs)}; pick another name, or use HPOExperiment.attach({self.name!r})")
        # A re-run may raise the budget or the parallelism; finished trials stay as they are.
        state.max_trials, state.max_parallel, state.early_stopping = (self.max_trials, self.max_parallel,
                                                                      self.early_stopping)
        done = sum(t.finished for t in state.trials)
        logger.info("resuming experiment %r: %d of %d trials finished", self.name, done, state.max_trials)
        return state

    def _tune(self, state: ExperimentState, *, launch: bool, wait: bool) -> None:
        """On a backend with a tuning service of its own (``backend.tune``, SageMaker's), that service runs the
        trials; otherwise :func:`~dogclf.hpo.runner.run_trials` runs them as jobs, through the backend's trial pool
        when it offers one (``backend.trial_pool``, the local backend's warm worker processes)."""
        backend, spec = self._resolve_backend(), self._base_spec()
        tune = getattr(backend, "tune", None)
        if callable(tune):
            tune(spec, state=state, launch=launch, wait=wait)
            return
        if not launch:
            return
        from dogclf.hpo.runner import run_trials

        remaining = state.max_trials - sum(t.finished for t in state.trials)
        make_pool = getattr(backend, "trial_pool", None)
        pool = make_pool(spec, state.space, max(1, min(state.max_parallel, remaining))) if callable(make_pool) \
            else None
        try:
            run_trials(pool if pool is not None else backend, spec, state,
                       warm_up_first=bool(getattr(pool, "warm_up_first", False)))
        finally:
            if pool is not None:
                pool.close()

    def run(self, wait: bool = True) -> HPOExperiment:
        """Run the experiment (or the trials an earlier, interrupted run left) and return ``self``.

        Args:
            wait: Block until every trial has ended. With ``wait=False`` the trials run in the background
                (a thread for the local backend, the tuning job on SageMaker); call :meth:`wait` or
                :meth:`refresh` later.

        Returns:
            ``self``, with :attr:`trials_`, :attr:`best_params_` and :attr:`best_trial_` filled in.

        Raises:
            ConfigError: an experiment of the same name exists with a different space, objective, strategy or
                seed.
        """
        state = self._load_or_create()
        self.state_ = state
        if wait:
            self._tune(state, launch=True, wait=True)
        else:
            def target() -> None:
                try:
                    self._tune(state, launch=True, wait=True)
                except BaseException as exc:  # surfaced by wait()
                    self._error = exc
                    logger.exception("experiment %r failed", self.name)

            self._thread = threading.Thread(target=target, name=f"dogclf-hpo-{self.name}", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> HPOExperiment:
        """Block until a ``run(wait=False)`` has finished (or ``timeout`` seconds have passed); re-raise its error.
        """
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self

    def done(self) -> bool:
        """Whether no :meth:`run` started with ``wait=False`` is still going (also ``True`` before any run)."""
        return self._thread is None or not self._thread.is_alive()

    def refresh(self) -> HPOExperiment:
        """Re-read the experiment's state (another process, or SageMaker, may have moved it on)."""
        self._require_state()
        if self.done():  # a background run of this object keeps state_ current itself
            state = ExperimentState.load(self.state_path)
            self._tune(state, launch=False, wait=False)
            self.state_ = state
        return self

    @classmethod
    def attach(cls, name: str, backend: Backend | str | None = None) -> HPOExperiment:
        """Reconnect to an earlier or running experiment by name.

        Args:
            name: The experiment's name.
            backend: The backend it ran on (name or object), as for the constructor.

        Returns:
            An experiment with the stored configuration and the current :attr:`trials_`; :meth:`run` continues
            it, :meth:`train_best` trains the final model.

        Raises:
            NotFoundError: no experiment of that name is stored for this backend (a backend with a
                ``tuning_state(name)`` method, like SageMaker's, rebuilds it from the remote tuning job instead).
        """
        from dogclf.backends import get_backend

        backend_obj = get_backend(backend)
        path = experiments_root(backend_obj) / validate_name(name) / "experiment.json"
        try:
            state = ExperimentState.load(path)
        except NotFoundError:
            rebuild = getattr(backend_obj, "tuning_state", None)  # a backend that keeps experiments remotely
            if not callable(rebuild):
                raise
            state = rebuild(name)
            state.save(path)
        from dogclf.training import TrainingJobSpec

        spec = TrainingJobSpec.from_dict(state.base_spec)
        exp = cls(spec, state.space, state.objective, max_trials=state.max_trials, max_parallel=state.max_parallel,
                  strategy=state.strategy, early_stopping=state.early_stopping, backend=backend_obj, name=name,
                  seed=state.seed)
        exp._backend_obj = backend_obj
        exp.state_ = state
        exp._tune(state, launch=False, wait=False)
        return exp

    # -- results ---------------------------------------------------------------------------------------------------
    def _require_state(self) -> ExperimentState:
        state = getattr(self, "state_", None)
        if state is None:
            raise NotFittedError(f"experiment {self.name!r} has no results yet: call run() or attach() first")
        return state

    @property
    def trials_(self) -> Any:
        """The trials as a :class:`pandas.DataFrame`, one row per trial (index: trial number).

        Columns: one per tuned hyperparameter, then ``job_name``, ``status``, ``objective``, ``duration_s``,
        ``failure_reason``, ``created`` and ``ended`` (UTC timestamps).
        """
        pd = require("tune", "pandas", "trial table")

        state = self._require_state()
        rows = []
        for t in state.trials:
            row = {name: t.params.get(name) for name in state.space}
            row.update(trial=t.number, job_name=t.job_name, status=t.status,
                       objective=t.objective if t.objective is not None else math.nan,
                       duration_s=t.duration_s if t.duration_s is not None else math.nan,
                       failure_reason=t.failure_reason,
                       created=pd.to_datetime(t.created, unit="s", utc=True) if t.created else pd.NaT,
                       ended=pd.to_datetime(t.ended, unit="s", utc=True) if t.ended else pd.NaT)
            rows.append(row)
        columns = ["trial", *state.space, "job_name", "status", "objective", "duration_s", "failure_reason",
                   "created", "ended"]
        return pd.DataFrame(rows, columns=columns).set_index("trial")

    @property
    def best_trial_(self) -> Trial:
        """The trial with the best objective among those that logged one.

        Raises:
            NotFittedError: before :meth:`run`, or when no trial has an objective value yet.
        """
        state = self._require_state()
        best: Trial | None = None
        for t in state.trials:
            if t.status in _SCORED and t.objective is not None and (
                    best is None or self.objective.better(t.objective, best.objective)):
                best = t
        if best is None:
            reasons = "; ".join(f"trial {t.number} {t.status}: {t.failure_reason}" for t in state.trials
                                if t.failure_reason) or "no trial has finished"
            raise NotFittedError(f"experiment {self.name!r} has no trial with an objective value ({reasons})")
        return best

    @property
    def best_params_(self) -> dict[str, Any]:
        """The best trial's tuned hyperparameters."""
        return dict(self.best_trial_.params)

    @property
    def best_spec_(self) -> Any:
        """The base :class:`~dogclf.training.TrainingJobSpec` with the best trial's hyperparameters (no job name):
        what to train next, e.g. ``DebugTrainer(experiment.best_spec_)``."""
        return self._base_spec().with_params(self.best_params_)

    @property
    def best_hyperparameters_(self) -> dict[str, str]:
        """Every hyperparameter of the best trial's job, on the wire (:attr:`best_spec_`'s)."""
        return self.best_spec_.hyperparameters

    def train_best(self, job_name: str | None = None, wait: bool = True, **train_kwargs: Any) -> Any:
        """Train the final model from the best hyperparameters: one training job on the same backend.

        Args:
            job_name: The job's name; default ``<experiment>-best``.
            wait: Passed to the backend's ``train``.
            **train_kwargs: More keyword arguments for the backend's ``train``.

        Returns:
            What the backend's ``train`` returns (a ``TrainingJobResult``, or a job handle with ``wait=False``).

        Raises:
            NotFittedError: no trial has an objective value yet.
        """
        params = self.best_params_
        spec = self._base_spec().with_params(params, job_name=job_name or f"{self.name}-best")
        logger.info("training the final model of %r with %s", self.name, params)
        return self._resolve_backend().train(spec, wait=wait, **train_kwargs)

    # -- reporting -------------------------------------------------------------------------------------------------
    def jobs_table(self) -> Any:
        """The "Training jobs" table of the SageMaker console's tuning-job page, as a :class:`pandas.DataFrame`.

        Columns: ``Name``, ``Status``, ``Final objective metric value``, ``Creation time``,
        ``Training Duration``; newest first, like the console.
        """
        pd = require("tune", "pandas", "trial table")

        state = self._require_state()
        rows = [{
            "Name": t.job_name,
            "Status": t.status,
            "Final objective metric value": t.objective if t.objective is not None else math.nan,
            "Creation time": pd.to_datetime(t.created, unit="s", utc=True) if t.created else pd.NaT,
            "Training Duration": _duration(t.duration_s),
        } for t in sorted(state.trials, key=lambda t: (t.created or 0, t.number), reverse=True)]
        return pd.DataFrame(rows, columns=["Name", "Status", "Final objective metric value", "Creation time",
                                           "Training Duration"])

    def format_jobs_table(self) -> str:
        """:meth:`jobs_table` as fixed-width text (for logs and terminals)."""
        return self.jobs_table().to_string(index=False)

    def plot(self, path: str | Path | None = None) -> Any:
        """Plot the objective per trial and against each tuned hyperparameter.

        Args:
            path: Where to save the figure as PNG (written atomically); ``None`` only returns it.

        Returns:
            The :class:`matplotlib.figure.Figure`.
        """
        from dogclf.hpo.report import plot_experiment

        return plot_experiment(self._require_state(), path)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} second(s)"
    return f"{round(seconds / 60)} minute(s)"

