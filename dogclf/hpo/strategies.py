"""Search strategies: how the next trial's hyperparameters are chosen.

A strategy is stateless: :meth:`Strategy.suggest` sees the space, the trials so far (finished and running) and
the number of the trial to fill, and returns that trial's hyperparameters. Every random draw is seeded from
``(seed, trial number)``, so an experiment that is interrupted and resumed suggests exactly what an uninterrupted
run with the same finished trials would have suggested, and the same seed reproduces a sequential experiment.

``"random"``
    Independent uniform draws on each range's scale.
``"bayesian"``
    Optuna's Tree-structured Parzen Estimator (:class:`optuna.samplers.TPESampler`), refitted on the finished
    trials for every suggestion; running trials are told to it as "constant liars" so parallel trials spread out.
``"grid"``
    Every combination of a categorical-only space, in order.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dogclf._extras import require
from dogclf._registry import Registry
from dogclf.errors import ConfigError
from dogclf.hpo.space import Categorical, Continuous, Integer, SearchSpace

if TYPE_CHECKING:
    from dogclf.hpo.objective import Objective
    from dogclf.hpo.trial import Trial

__all__ = ["Strategy", "RandomStrategy", "BayesianStrategy", "GridStrategy", "STRATEGIES", "get_strategy"]

logger = logging.getLogger(__name__)



class Strategy(ABC):
    """How the next trial's hyperparameters are chosen. Subclass it for a strategy of your own.

    Attributes:
        name: The short name (``"random"``, ``"bayesian"``, ``"grid"``).
        sagemaker_name: The ``strategy`` value SageMaker's tuner takes for the same search.
    """

    name: str = ""
    sagemaker_name: str = ""

    def validate(self, space: SearchSpace) -> None:
        """Raise :class:`~dogclf.errors.ConfigError` when this strategy cannot search ``space``."""

    def max_trials(self, space: SearchSpace) -> int | None:
        """The most trials this strategy can propose for ``space`` (``None``: unbounded)."""
        return None

    @abstractmethod
    def suggest(self, space: SearchSpace, trials: Sequence[Trial], number: int, *, seed: int,
                objective: Objective) -> dict[str, Any] | None:
        """Hyperparameters for trial ``number``, or ``None`` when the strategy has nothing left to try.

        Args:
            space: The search space.
            trials: Every trial recorded so far (finished and running), in trial-number order.
            number: The number of the trial being filled (0-based).
            seed: The experiment's seed.
            objective: What is optimised (its direction, and the per-epoch metric pruned trials reported).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _rng(seed: int, number: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(number)])


class RandomStrategy(Strategy):
    """Uniform random search on each range's scale."""

    name = "random"
    sagemaker_name = "Random"

    def suggest(self, space: SearchSpace, trials: Sequence[Trial], number: int, *, seed: int,
                objective: Objective) -> dict[str, Any]:
        """Draw every range independently with a generator seeded from ``(seed, number)``."""
        return space.sample(_rng(seed, number))


class GridStrategy(Strategy):
    """Every combination of a categorical-only space, one per trial, in :meth:`SearchSpace.grid` order."""

    name = "grid"
    sagemaker_name = "Grid"

    def validate(self, space: SearchSpace) -> None:
        """Grid search covers categorical-only spaces; a numeric range raises :class:`ConfigError`."""
        space.grid()

    def max_trials(self, space: SearchSpace) -> int:
        """The number of combinations."""
        return len(space.grid())

    def suggest(self, space: SearchSpace, trials: Sequence[Trial], number: int, *, seed: int,
                objective: Objective) -> dict[str, Any] | None:
        """Combination ``number`` of the grid, or ``None`` once the grid is exhausted."""
        grid = space.grid()
        return grid[number] if number < len(grid) else None


class BayesianStrategy(Strategy):
    """Bayesian optimisation with Optuna's TPE sampler.

    Args:
        n_startup_trials: Random trials before TPE starts modelling (Optuna's default is 10; tuning budgets
            here are small, so the default is 3).
        multivariate: Model the ranges jointly (Optuna's multivariate TPE) rather than one by one.
    """

    name = "bayesian"
    sagemaker_name = "Bayesian"

    def __init__(self, n_startup_trials: int = 3, multivariate: bool = True) -> None:
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
            raise ConfigError(f"n_startup_trials must be an int >= 0, got {n_startup_trials!r}")
        self.n_startup_trials = n_startup_trials
        self.multivariate = bool(multivariate)

    def __repr__(self) -> str:
        return f"BayesianStrategy(n_startup_trials={self.n_startup_trials}, multivariate={self.multivariate})"

    @staticmethod
    def distributions(space: SearchSpace) -> dict[str, Any]:
        """The space as Optuna distributions."""
        require("tune", "optuna", "Bayesian search")
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for name, r in space.items():
            if isinstance(r, Continuous):
                out[name] = FloatDistribution(r.low, r.high, log=r.scale == "log")
            elif isinstance(r, Integer):
                out[name] = IntDistribution(r.low, r.high, log=r.scale == "log")
            elif isinstance(r, Categorical):
                out[name] = CategoricalDistribution(r.values)
        return out

    def suggest(self, space: SearchSpace, trials: Sequence[Trial], number: int, *, seed: int,
                objective: Objective) -> dict[str, Any]:
        """Refit TPE on ``trials`` and ask it for one point (seeded from ``(seed, number)``)."""
        optuna = require("tune", "optuna", "Bayesian search")
        from optuna.trial import TrialState, create_trial

        dists = self.distributions(space)
        sampler = optuna.samplers.TPESampler(
            seed=int(_rng(seed, number).integers(2**31 - 1)),
            n_startup_trials=self.n_startup_trials,
            multivariate=self.multivariate,
            constant_liar=True,
        )
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study = optuna.create_study(direction=objective.direction, sampler=sampler)
                for t in trials:
                    params = dict(t.params)
                    if not space.contains(params):
                        continue  # a trial from an older space: TPE cannot place it
                    status, value = t.status, t.objective
                    history = t.intermediate(objective.epoch_metric)
                    if status == "Completed" and value is not None and math.isfinite(value):
                        state, val = TrialState.COMPLETE, float(value)
                    elif status == "InProgress":
                        state, val = TrialState.RUNNING, None
                    elif status in ("Pruned", "Stopped"):
                        state, val = TrialState.PRUNED, None
                    else:
                        state, val = TrialState.FAIL, None
                    study.add_trial(create_trial(
                        params=params, distributions=dists, value=val, state=state,
                        intermediate_values={int(k): float(v) for k, v in history.items()
                                             if v is not None and math.isfinite(v)},
                    ))
                return dict(study.ask(dists).params)
        finally:
            optuna.logging.set_verbosity(verbosity)


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", unknown_error=ConfigError)
"""The strategy classes by name (``"random"``, ``"bayesian"``, ``"grid"``); ``STRATEGIES.register("mine", Mine)``
adds one."""
for _cls in (RandomStrategy, BayesianStrategy, GridStrategy):
    STRATEGIES.register(_cls.name, _cls)


def get_strategy(strategy: str | Strategy) -> Strategy:
    """Resolve a strategy name (``"random"``, ``"bayesian"``, ``"grid"``, any case) or return a ready object.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones and the closest) or a value that is
            neither a name nor a :class:`Strategy`.
    """
    if isinstance(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise ConfigError(f"strategy must be a name ({', '.join(map(repr, STRATEGIES.names()))}) or a "
                          f"dogclf.hpo.Strategy, got {type(strategy).__name__}: {strategy!r:.80}")
    return STRATEGIES.get(strategy.lower())()
