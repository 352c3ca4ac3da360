"""HPOExperiment's logic on a tiny in-test backend, plus search spaces, objectives, strategies and pruning.

The in-test backend implements the Backend protocol for real: its jobs run in threads and publish the training
entry point's metric events (per epoch ``train_loss``, ``valid_loss``, ``valid_acc``; then ``test_loss``,
``test_acc``) through their ``metric_history`` and results, so the experiment drives it exactly as it drives
LocalBackend (which the local integration tests cover).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.backends import Backend, get_backend
from dogclf.errors import BackendError, ConfigError, NotFittedError, NotFoundError
from dogclf.hpo import (
    BayesianStrategy,
    Categorical,
    Continuous,
    ExperimentState,
    HPOExperiment,
    Integer,
    MedianStopping,
    Objective,
    RandomStrategy,
    SearchSpace,
    Strategy,
    Trial,
    get_strategy,
    metric_definitions,
    parse_metrics,
)
from dogclf.training import TrainingJobSpec


def make_spec(channels: Any = None, **training: Any) -> TrainingJobSpec:
    """A real job spec (resnet18, no weights) whose training hyperparameters the fake backend acts on."""
    return TrainingJobSpec({"backbone": "resnet18", "weights": None}, channels or {"training": "/data"}, training)


# What a fake job does, beyond training: its `labels` hyperparameter (any string is valid) names a simulated
# behaviour, its `weight_decay` (when > 0) the seconds each epoch takes. A job reports as its duration the seconds
# its epochs take by that measure (not the wall time, which a busy machine stretches).
FAIL, UNSTARTABLE, SILENT = "fail", "unstartable", "silent"


def loss_of(hp: dict[str, Any], epoch: int) -> float:
    """A smooth, known objective: best near lr=0.01 and batch size 64, improving with epochs."""
    lr = float(hp.get("lr", 0.01))
    bs = int(hp.get("batch_size", 64))
    return (math.log10(lr) + 2.0) ** 2 + abs(math.log2(bs / 64)) * 0.3 + 1.0 / epoch


class FakeJob:
    """A job handle: ``status``, ``metric_history``, ``stop()``, ``wait()``, ``job_name``, ``metrics``."""

    def __init__(self, backend: FakeBackend, spec: TrainingJobSpec) -> None:
        self.backend, self.spec, self.job_name = backend, spec, spec.job_name
        self._stop = threading.Event()
        self._status = "InProgress"
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.reason: str | None = None
        self.epochs_run = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def status(self) -> str:
        return self._status

    @property
    def metric_history(self) -> list[dict[str, float]]:
        return list(self.history)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        hp, behaviour = self.spec.params, self.spec.training.labels
        with self.backend.lock:
            self.backend.running += 1
            self.backend.max_running = max(self.backend.max_running, self.backend.running)
        try:
            if behaviour == FAIL:
                self.reason = "RuntimeError: CUDA out of memory (simulated)"
                self._status = "Failed"
                return
            if self.backend.gate is not None:
                self.backend.gate.wait(30)
            delay = self.epoch_seconds
            for epoch in range(1, int(hp.get("epochs", 2)) + 1):
                if self._stop.wait(delay):
                    self.reason = "stopped"
                    self._status = "Stopped"
                    return
                self.epochs_run = epoch
                valid = loss_of(hp, epoch)
                row = {"epoch": float(epoch), "train_loss": valid + 0.1, "valid_loss": valid,
                       "valid_acc": 1.0 / (1.0 + valid)}
                self.history.append(row)
            if behaviour == SILENT:
                self._status = "Completed"
                return
            test = loss_of(hp, int(hp.get("epochs", 2))) + 0.01
            self.metrics = {"test_loss": test, "test_acc": 1.0 / (1.0 + test)}
            self._status = "Completed"
        finally:
            with self.backend.lock:
                self.backend.running -= 1

    @property
    def epoch_seconds(self) -> float:
        return float(self.spec.params["weight_decay"] or self.backend.delay)

    def wait(self) -> Any:
        self._thread.join()
        return SimpleNamespace(job_name=self.job_name, status=self._status, metrics=dict(self.metrics),
                               metric_history=list(self.history), model_artifact=None,
                               output_dir=str(self.backend.root / "jobs" / self.job_name),
                               failure_reason=self.reason, duration_s=self.epochs_run * self.epoch_seconds,
                               log_path=None)


class FakeBackend:
    """Implements the Backend protocol (name, train, deploy) plus ``root``, like LocalBackend."""

    name = "fake"

    def __init__(self, root: Path, delay: float = 0.0, interrupt_after: int | None = None,
                 jobs: dict[str, FakeJob] | None = None, gate: threading.Event | None = None) -> None:
        self.root = Path(root)
        self.gate = gate  # jobs hold before their first epoch until it is set
        self.jobs = jobs if jobs is not None else {}
        self.delay = delay
        self.interrupt_after = interrupt_after
        self.lock = threading.Condition()
        self.running = 0
        self.max_running = 0
        self.started: list[TrainingJobSpec] = []

    def wait_started(self, n: int, timeout: float = 300) -> bool:
        """Block until ``n`` jobs have been started (``timeout``: a guard against a hung runner only)."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.started) >= n, timeout)

    def train(self, spec: TrainingJobSpec, wait: bool = True, **kwargs: Any) -> Any:
        if self.interrupt_after is not None and len(self.started) >= self.interrupt_after:
            raise KeyboardInterrupt
        if spec.training.labels == UNSTARTABLE:
            raise BackendError("no capacity for instance type (simulated)")
        with self.lock:
            self.started.append(spec)
            self.lock.notify_all()
        job = FakeJob(self, spec)
        self.jobs[spec.job_name] = job
        return job.wait() if wait else job

    def attach(self, job_name: str) -> Any:
        """Like LocalBackend.attach: a job's result, read back by name."""
        if job_name not in self.jobs:
            raise NotFoundError(f"no job {job_name!r}")
        return self.jobs[job_name].wait()

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        raise BackendError("the fake backend does not serve")


class Scripted(Strategy):
    """A strategy of our own (the extension point): plays back a fixed list of hyperparameter dicts."""

    name = "scripted"

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self.plan = plan

    def suggest(self, space, trials, number, *, seed, objective):
        return dict(self.plan[number]) if number < len(self.plan) else None


SEED_SPACE = {"lr": Continuous(0.001, 0.1, scale="log"), "batch_size": Categorical([32, 64, 128]),
              "epochs": Categorical([1, 2])}


def make(tmp_path: Path, space: Any = None, backend: FakeBackend | None = None, **kwargs: Any) -> HPOExperiment:
    backend = backend or FakeBackend(tmp_path)
    kwargs.setdefault("name", "exp")
    kwargs.setdefault("seed", 7)
    return HPOExperiment(make_spec(), space or SEED_SPACE, "test_loss", backend=backend,
                         **kwargs)


# -- search spaces ---------------------------------------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.text(max_size=8), st.integers(-1000, 1000), finite, st.booleans())


@st.composite
def ranges(draw: Any) -> Any:
    kind = draw(st.sampled_from(["continuous", "integer", "categorical"]))
    if kind == "categorical":
        values = draw(st.lists(scalars, min_size=1, max_size=6))
        unique: list[Any] = []
        for v in values:
            if not any(v == u and type(v) is type(u) for u in unique):
                unique.append(v)
        return Categorical(unique)
    scale = draw(st.sampled_from(["linear", "log"]))
    if kind == "continuous":
        low = draw(st.floats(1e-6, 1e3) if scale == "log" else finite)
        high = draw(st.floats(low, low + 1e6).filter(lambda h: h > low))
        return Continuous(low, high, scale)
    low = draw(st.integers(1, 1000) if scale == "log" else st.integers(-1000, 1000))
    return Integer(low, draw(st.integers(low + 1, low + 5000)), scale)


spaces = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), ranges(), min_size=1,
                         max_size=5).map(SearchSpace)


@given(spaces)
def test_space_round_trips_through_json(space: SearchSpace) -> None:
    again = SearchSpace.from_json(space.to_json())
    assert again == space
    assert list(again) == list(space)
    assert all(type(again[n]) is type(space[n]) for n in space)


@settings(max_examples=50)
@given(spaces, st.integers(0, 2**32 - 1), st.integers(0, 1000))
def test_random_samples_lie_in_their_ranges(space: SearchSpace, seed: int, number: int) -> None:
    params = RandomStrategy().suggest(space, [], number, seed=seed, objective=Objective("test_loss"))
    assert space.contains(params)
    assert params == RandomStrategy().suggest(space, [], number, seed=seed, objective=Objective("test_loss"))


@given(finite, finite)
def test_continuous_accepts_exactly_increasing_bounds(a: float, b: float) -> None:
    if a < b:
        assert Continuous(a, b).low == a
    else:
        with pytest.raises(ConfigError, match="inverted|empty"):
            Continuous(a, b)


@given(st.floats(-1e3, 0.0), st.floats(1e-3, 1e3))
def test_log_scale_needs_positive_low(low: float, high: float) -> None:
    with pytest.raises(ConfigError, match="scale='log'.*low > 0"):
        Continuous(low, high, scale="log")
    with pytest.raises(ConfigError, match="scale='log'"):
        Integer(int(low), int(high) + 1, scale="log")


@pytest.mark.parametrize("make_range, match", [
    (lambda: Continuous(0.1, 0.001), "inverted: low=0.1 > high=0.001"),
    (lambda: Continuous(0.1, 0.1), "empty"),
    (lambda: Integer(5, 5), "empty"),
    (lambda: Integer(1.5, 4), "must be an int"),
    (lambda: Continuous(0, float("inf")), "finite"),
    (lambda: Continuous("0", 1), "must be a number"),
    (lambda: Continuous(0, 1, scale="exp"), "scale must be one of 'linear', 'log', got 'exp'"),
    (lambda: Categorical([]), "empty"),
    (lambda: Categorical([32, 64, 32]), "32 twice"),
    (lambda: Categorical("abc"), "list of choices"),
    (lambda: Categorical([None]), "str, int, float or bool"),
    (lambda: SearchSpace({}), "at least one"),
    (lambda: SearchSpace({"bad name": [1, 2]}), "'bad name' is not valid"),
    (lambda: SearchSpace({"lr": 0.1}), "Continuous, Integer or Categorical"),
    (lambda: SearchSpace.from_dict({"lr": {"type": "beta", "a": 1}}), "unknown type 'beta'"),
    (lambda: SearchSpace.from_dict({"lr": {"type": "continuous", "low": 0.1, "hihg": 1}}), "unknown keys"),
])
def test_bad_ranges_raise_config_error(make_range: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_range()


def test_integer_log_sampling_covers_the_ends() -> None:
    rng = np.random.default_rng(0)
    draws = {Integer(1, 4, scale="log").sample(rng) for _ in range(400)}
    assert draws == {1, 2, 3, 4}


def test_grid_lists_every_combination_in_order() -> None:
    space = SearchSpace({"batch_size": [32, 64], "epochs": [1, 2, 3]})
    grid = space.grid()
    assert len(grid) == 6 and grid[0] == {"batch_size": 32, "epochs": 1} and grid[-1] == {"batch_size": 64, "epochs": 3}
    with pytest.raises(ConfigError, match=r"categorical-only.*\['lr'\]"):
        SearchSpace(SEED_SPACE).grid()


# -- objective -------------------------------------------------------------------------------------------------------
def test_objective_defaults_to_the_entry_points_metric_definitions() -> None:
    defs = {d["Name"]: d["Regex"] for d in metric_definitions()}
    assert {"train_loss", "valid_loss", "valid_acc", "test_loss", "test_acc"} <= set(defs)
    obj = Objective("test_loss")
    assert obj.regex == defs["test_loss"]
    assert obj.extract("INFO test_loss=0.6566; test_acc=0.81;") == pytest.approx(0.6566)
    assert obj.extract("epoch=1; valid_loss=2.0;") is None
    assert obj.extract("test_loss=3.2; ... test_loss=1.25;") == pytest.approx(1.25)  # the last value, like SageMaker
    assert obj.metric_definition() == {"Name": "test_loss", "Regex": defs["test_loss"]}
    assert obj.epoch_metric == "valid_loss" and Objective("test_acc").epoch_metric == "valid_acc"
    assert parse_metrics("epoch=2; train_loss=0.5; valid_loss=0.75; valid_acc=0.5;") == {
        "epoch": 2.0, "train_loss": 0.5, "valid_loss": 0.75, "valid_acc": 0.5}


def test_objective_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="unknown objective metric 'f1'.*'test_loss'"):
        Objective("f1")
    with pytest.raises(ConfigError, match="exactly one capture group.*has 0"):
        Objective("f1", regex=r"f1=[0-9.]+")
    with pytest.raises(ConfigError, match="has 2"):
        Objective("f1", regex=r"(f1)=([0-9.]+)")
    with pytest.raises(ConfigError, match="does not compile"):
        Objective("f1", regex=r"f1=([0-9.]+")
    with pytest.raises(ConfigError, match="direction must be one of 'minimize', 'maximize'"):
        Objective("test_loss", direction="down")
    custom = Objective("f1", regex=r"f1 score: ([0-9.]+)", direction="maximize")
    assert custom.extract("f1 score: 0.5") == 0.5 and custom.better(0.6, 0.5) and not custom.better(None, 0.1)
    assert Objective.from_dict(custom.to_dict()) == custom


# -- strategies ------------------------------------------------------------------------------------------------------
def test_bayesian_strategy_samples_nearer_the_optimum_than_random() -> None:
    space = SearchSpace({"lr": Continuous(1e-4, 1.0, scale="log")})
    obj = Objective("test_loss")

    def late_distance(strategy: Strategy, seed: int) -> float:
        trials: list[Trial] = []
        for n in range(20):
            params = strategy.suggest(space, trials, n, seed=seed, objective=obj)
            assert space.contains(params)
            trials.append(Trial(n, params, f"j{n}", status="Completed", objective=loss_of(params, 1)))
        # the same seed and history give the same suggestion (what resuming relies on)
        assert strategy.suggest(space, trials[:5], 5, seed=seed, objective=obj) == trials[5].params
        return float(np.median([abs(np.log10(t.params["lr"]) + 2) for t in trials[8:]]))

    seeds = (2, 3, 4)
    tpe = np.mean([late_distance(BayesianStrategy(n_startup_trials=4), s) for s in seeds])
    rnd = np.mean([late_distance(RandomStrategy(), s) for s in seeds])
    assert tpe < 0.75 * rnd  # once TPE has a model it samples closer to lr=0.01 than random search


def test_get_strategy() -> None:
    assert get_strategy("Bayesian").name == "bayesian"
    assert get_strategy("random").sagemaker_name == "Random"
    with pytest.raises(ConfigError, match="unknown strategy 'hyperband'.*'random'"):
        get_strategy("hyperband")


# -- pruning ---------------------------------------------------------------------------------------------------------
def test_median_stopping_rule() -> None:
    obj = Objective("test_loss")
    done = [Trial(i, {}, f"j{i}", status="Completed", objective=1.0,
                  history=[{"epoch": e, "valid_loss": v} for e, v in enumerate(vals, start=1)])
            for i, vals in enumerate([[1.0, 0.8, 0.6], [1.2, 0.9, 0.7], [1.1, 1.0, 0.9]])]
    rule = MedianStopping(min_trials=3, warmup_epochs=1)
    assert rule.should_stop({1: 5.0}, done, obj) is None                        # warm-up epoch
    assert "worse than the median 0.9" in rule.should_stop({1: 5.0, 2: 4.0}, done, obj)
    assert rule.should_stop({1: 1.0, 2: 0.85}, done, obj) is None               # better than the median
    assert rule.should_stop({1: 5.0, 2: 4.0}, done[:2], obj) is None            # too few completed trials
    failed = [Trial(9, {}, "f", status="Failed", history=[{"epoch": 2, "valid_loss": 0.1}])]
    assert rule.should_stop({1: 5.0, 2: 4.0}, done[:2] + failed, obj) is None   # failed trials do not count
    with pytest.raises(ConfigError, match="min_trials must be an int >= 1"):
        MedianStopping(min_trials=0)


# -- the experiment on the in-test backend ----------------------------------------------------------------------------
def test_fake_backend_implements_the_protocol(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path)
    assert isinstance(backend, Backend) and get_backend(backend) is backend


@pytest.mark.parametrize("kwargs, match", [
    ({"max_parallel": 0}, "max_parallel must be an int >= 1, got 0"),
    ({"max_trials": 0}, "max_trials must be an int >= 1"),
    ({"strategy": "grid"}, "categorical-only"),
    ({"early_stopping": "sometimes"}, "early_stopping must be one of 'off', 'auto'"),
    ({"name": "bad_name!"}, "experiment name 'bad_name!' is not valid"),
    ({"seed": "1"}, "seed must be an int"),
])
def test_bad_experiment_config_raises_at_construction(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make(tmp_path, **kwargs)


def test_bad_model_objective_and_space_raise_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TrainingJobSpec"):
        HPOExperiment("train.py", SEED_SPACE)
    with pytest.raises(ConfigError, match="unknown objective metric 'val_los'"):
        HPOExperiment(make_spec(), SEED_SPACE, "val_los")
    with pytest.raises(ConfigError, match="inverted"):
        HPOExperiment(make_spec(), {"lr": Continuous(0.1, 0.001)})
    exp = make(tmp_path)
    assert not (tmp_path / "experiments").exists()  # construction touches no disk
    with pytest.raises(NotFittedError, match="call run"):
        exp.trials_


def test_run_records_trials_and_best(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, delay=0.1)
    exp = make(tmp_path, backend=backend, max_trials=6, max_parallel=2, strategy="random")
    assert exp.run() is exp
    df = exp.trials_
    assert list(df.columns[:3]) == ["lr", "batch_size", "epochs"]
    assert {"job_name", "status", "objective", "duration_s", "failure_reason"} <= set(df.columns)
    assert len(df) == 6 and (df["status"] == "Completed").all()
    # The duration is the one each job reported (its epochs of 0.1 s), not the runner's own clock.
    assert df["duration_s"].tolist() == pytest.approx((df["epochs"] * 0.1).tolist())
    assert df["job_name"].tolist() == [f"exp-{i:03d}" for i in range(1, 7)]
    # The objective is what the job logged for test_loss, and best_* is its minimum.
    for _, row in df.iterrows():
        expected = loss_of({"lr": row["lr"], "batch_size": row["batch_size"]}, row["epochs"]) + 0.01
        assert row["objective"] == pytest.approx(expected, abs=1e-5)
    best = df["objective"].idxmin()
    assert exp.best_trial_.number == best
    assert exp.best_params_ == {k: df.loc[best, k] for k in SEED_SPACE}
    assert backend.max_running == 2
    # Every trial ran as its own job with the static hyperparameters kept.
    assert [s.hyperparameters["backbone"] for s in backend.started] == ["resnet18"] * 6
    best_spec = exp.best_spec_
    assert {k: best_spec.params[k] for k in exp.best_params_} == exp.best_params_
    assert best_spec.model.backbone == "resnet18" and exp.best_hyperparameters_ == best_spec.hyperparameters


def test_maximised_objective(tmp_path: Path) -> None:
    exp = HPOExperiment(make_spec(), SEED_SPACE, "test_acc", backend=FakeBackend(tmp_path), max_trials=4,
                        strategy="random", seed=1, name="acc").run()
    assert exp.objective.direction == "maximize"
    assert exp.best_trial_.number == exp.trials_["objective"].idxmax()


def test_same_seed_same_trials(tmp_path: Path) -> None:
    runs = [make(tmp_path, name=f"s{i}", max_trials=5, seed=11).run().trials_[list(SEED_SPACE)] for i in range(2)]
    assert runs[0].equals(runs[1])
    other = make(tmp_path, name="s3", max_trials=5, seed=12).run().trials_[list(SEED_SPACE)]
    assert not runs[0].equals(other)


def test_grid_runs_each_combination_once(tmp_path: Path) -> None:
    space = {"batch_size": [32, 64, 128], "epochs": [1, 2]}
    backend = FakeBackend(tmp_path)
    exp = make(tmp_path, space=space, backend=backend, strategy="grid", max_trials=50, max_parallel=3).run()
    combos = {(s.params["batch_size"], s.params["epochs"]) for s in backend.started}
    assert len(exp.trials_) == 6 == len(backend.started) and len(combos) == 6


def test_failures_are_recorded_and_do_not_stop_the_others(tmp_path: Path) -> None:
    plan = [{"lr": 0.01, "labels": FAIL}, {"lr": 0.01, "labels": UNSTARTABLE}, {"lr": 0.02, "labels": SILENT},
            {"lr": 0.03}]
    backend = FakeBackend(tmp_path)
    exp = HPOExperiment(make_spec(), {"lr": Continuous(0.001, 0.1), "labels": [FAIL, UNSTARTABLE, SILENT]},
                        backend=backend, strategy=Scripted(plan), max_trials=10, max_parallel=2, name="f").run()
    df = exp.trials_
    assert df["status"].tolist() == ["Failed", "Failed", "Failed", "Completed"]
    assert "CUDA out of memory" in df.loc[0, "failure_reason"]
    assert "could not start" in df.loc[1, "failure_reason"] and "no capacity" in df.loc[1, "failure_reason"]
    assert "never published the objective metric 'test_loss'" in df.loc[2, "failure_reason"]
    assert exp.best_trial_.number == 3
    # A custom strategy survives the state file.
    restored = ExperimentState.load(exp.state_path).strategy
    assert type(restored).__name__ == "Scripted" and restored.plan == plan


def test_no_scored_trial_means_no_best(tmp_path: Path) -> None:
    exp = HPOExperiment(make_spec(), {"lr": Continuous(0.001, 0.1), "labels": [FAIL]}, backend=FakeBackend(tmp_path),
                        max_trials=2, name="allfail", seed=0).run()
    with pytest.raises(NotFittedError, match="no trial with an objective value.*CUDA out of memory"):
        exp.best_params_


def test_median_pruning_stops_clearly_worse_trials(tmp_path: Path) -> None:
    good = {"lr": 0.01, "epochs": 4, "weight_decay": 0.0}
    plan = [good, dict(good, lr=0.012), dict(good, lr=0.009), {"lr": 0.1, "epochs": 4, "weight_decay": 1.0}]
    backend = FakeBackend(tmp_path)
    exp = HPOExperiment(make_spec(), {"lr": Continuous(0.001, 0.1), "epochs": [4], "weight_decay": [0.0, 1.0]},
                        backend=backend, strategy=Scripted(plan), max_trials=4, name="prune",
                        early_stopping=MedianStopping(min_trials=3, warmup_epochs=1)).run()
    df = exp.trials_
    assert df["status"].tolist() == ["Completed", "Completed", "Completed", "Pruned"]
    assert "worse than the median" in df.loc[3, "failure_reason"]
    pruned = exp.state_.trial(3)
    assert len(pruned.history) < 4  # it did not run all its epochs: stopped, and its reported duration says so
    assert backend.jobs[pruned.job_name].reason == "stopped"
    assert df.loc[3, "duration_s"] == pytest.approx(len(pruned.history) * 1.0)


def test_interrupted_run_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    jobs: dict[str, FakeJob] = {}
    flaky = FakeBackend(tmp_path, interrupt_after=3, jobs=jobs)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, backend=flaky, max_trials=6, strategy="bayesian").run()
    path = tmp_path / "experiments" / "exp" / "experiment.json"
    state = ExperimentState.load(path)
    assert [t.status for t in state.trials] == ["Completed"] * 3 + ["InProgress"]
    finished = {t.job_name: t.params for t in state.trials[:3]}
    # As if the run had died before recording trial 2's end: its job completed, unwatched.
    expected = state.trials[2].objective
    state.trials[2].status, state.trials[2].objective = "InProgress", None
    state.save()

    healthy = FakeBackend(tmp_path, jobs=jobs)  # the same jobs, read back with attach()
    exp = make(tmp_path, backend=healthy, max_trials=6, strategy="bayesian").run()
    rerun = [s.job_name for s in healthy.started]
    assert not set(rerun) & set(finished)                      # finished trials are not trained again
    assert exp.state_.trial(2).status == "Completed" and exp.state_.trial(2).objective == pytest.approx(expected)
    assert rerun[0] == "exp-004-r2"                            # the interrupted one is, with its parameters
    assert healthy.started[0].params["lr"] == state.trials[3].params["lr"]
    df = exp.trials_
    assert len(df) == 6 and (df["status"] == "Completed").all()
    assert {df.loc[i, "job_name"]: {k: df.loc[i, k] for k in SEED_SPACE} for i in range(3)} == finished
    # Running it once more does nothing; raising max_trials adds trials.
    again = FakeBackend(tmp_path)
    make(tmp_path, backend=again, max_trials=6, strategy="bayesian").run()
    assert again.started == []
    assert len(make(tmp_path, backend=again, max_trials=7, strategy="bayesian").run().trials_) == 7


def test_a_backend_that_resumes_jobs_gets_interrupted_trials_back_under_their_own_names(tmp_path: Path) -> None:
    jobs: dict[str, FakeJob] = {}
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, backend=FakeBackend(tmp_path, interrupt_after=3, jobs=jobs), max_trials=5).run()
    resuming = FakeBackend(tmp_path, jobs=jobs)
    resuming.resumes_jobs = True  # like LocalBackend: a job started again continues from its checkpoints
    exp = make(tmp_path, backend=resuming, max_trials=5).run()
    assert [s.job_name for s in resuming.started] == ["exp-004", "exp-005"]
    trial = exp.state_.trial(3)
    assert (trial.job_name, trial.attempts, trial.status) == ("exp-004", 2, "Completed")
    assert exp.trials_["job_name"].tolist() == [f"exp-{i:03d}" for i in range(1, 6)]


def test_rerun_with_a_different_space_is_refused(tmp_path: Path) -> None:
    make(tmp_path, max_trials=1).run()
    with pytest.raises(ConfigError, match="already exists.*different space.*attach"):
        make(tmp_path, space={"lr": Continuous(0.001, 0.5)}, max_trials=1).run()


def test_attach_reconnects(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path)
    exp = make(tmp_path, backend=backend, max_trials=3).run()
    again = HPOExperiment.attach("exp", backend=backend)
    assert again.trials_.equals(exp.trials_)
    assert again.best_params_ == exp.best_params_ and again.space == exp.space and again.seed == 7
    with pytest.raises(NotFoundError, match="no experiment state"):
        HPOExperiment.attach("nope", backend=backend)


def test_run_without_waiting(tmp_path: Path) -> None:
    gate = threading.Event()
    backend = FakeBackend(tmp_path, gate=gate)
    exp = make(tmp_path, backend=backend, max_trials=3, max_parallel=3)
    assert exp.done()
    exp.run(wait=False)
    assert backend.wait_started(3)  # each trial is in the state file before its job starts; the gate holds them
    assert len(ExperimentState.load(exp.state_path).trials) == 3
    assert not exp.done() and exp.trials_["status"].tolist() == ["InProgress"] * 3
    watcher = HPOExperiment.attach("exp", backend=backend)   # e.g. another process looking at the running one
    assert watcher.trials_["status"].tolist() == ["InProgress"] * 3
    gate.set()
    exp.wait(timeout=30)
    assert exp.done()
    assert (exp.refresh().trials_["status"] == "Completed").sum() == 3
    assert watcher.refresh().trials_.equals(exp.trials_)


def test_train_best_is_one_call(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path)
    exp = make(tmp_path, backend=backend, max_trials=4).run()
    result = exp.train_best()
    spec = backend.started[-1]
    assert spec.job_name == "exp-best" and result.status == "Completed"
    assert spec.with_params({}, job_name=None) == exp.best_spec_ and spec.model.backbone == "resnet18"
    assert {k: spec.params[k] for k in exp.best_params_} == exp.best_params_


def test_plot_and_jobs_table(tmp_path: Path) -> None:
    plan = [{"lr": 0.003, "batch_size": 64, "epochs": 2}, {"lr": 0.01, "batch_size": 32, "epochs": 1},
            {"lr": 0.05, "batch_size": 128, "epochs": 2, "labels": FAIL}]
    space = dict(SEED_SPACE, labels=[FAIL])
    exp = HPOExperiment(make_spec(), space, backend=FakeBackend(tmp_path), strategy=Scripted(plan), max_trials=3,
                        name="rep").run()
    png = tmp_path / "out" / "hpo.png"
    fig = exp.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(fig.axes) == 1 + len(space)
    assert fig.axes[1].get_xscale() == "log"             # lr is log-scaled
    table = exp.jobs_table()
    assert list(table.columns) == ["Name", "Status", "Final objective metric value", "Creation time",
                                   "Training Duration"]
    assert table["Name"].tolist() == ["rep-003", "rep-002", "rep-001"]  # newest first, like the console
    assert table["Status"].tolist() == ["Failed", "Completed", "Completed"]
    text = exp.format_jobs_table()
    assert "rep-002" in text and "Completed" in text and "second(s)" in text


def test_a_model_and_data_instead_of_a_spec(tmp_path: Path) -> None:
    from dogclf.models import ResNetBreedModel
    from dogclf.training import TrainingJobSpec

    model = ResNetBreedModel(["Beagle", "Pug"], backbone="resnet18", weights=None, dropout=0.1)
    with pytest.raises(ConfigError, match="needs data="):
        HPOExperiment(model, SEED_SPACE)
    backend = FakeBackend(tmp_path)
    exp = HPOExperiment(model, SEED_SPACE, data=tmp_path / "dogImages", hyperparameters={"optimizer": "sgd"},
                        max_trials=2, backend=backend, name="model", seed=0).run()
    spec = backend.started[0]
    assert isinstance(spec, TrainingJobSpec) and spec.channels == {"training": str(tmp_path / "dogImages")}
    hp = spec.hyperparameters
    assert {k: hp[k] for k in ("backbone", "weights", "freeze", "dropout", "optimizer", "labels")} == {
        "backbone": "resnet18", "weights": "None", "freeze": "head", "dropout": "0.1", "optimizer": "sgd",
        "labels": "auto"}
    assert (hp["resize"], hp["crop"]) == ("256", "224") and spec.params["lr"] == exp.trials_.loc[0, "lr"]
    # A spec's channels and static hyperparameters can be overridden the same way.
    exp2 = HPOExperiment(make_spec({"training": "a"}), SEED_SPACE, data={"train": "b"},
                         hyperparameters={"seed": 3}, max_trials=1, backend=backend, name="over", seed=0).run()
    assert exp2.best_spec_.training.seed == 3 and backend.started[-1].channels == {"train": "b"}


def test_default_names_are_unique_and_valid_on_sagemaker() -> None:
    names = {HPOExperiment(make_spec(), SEED_SPACE).name for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("hpo-") and len(n) <= 32 for n in names)
