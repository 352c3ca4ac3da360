"""Hyperparameter tuning: :class:`HPOExperiment` runs the training entry point over a search space on any backend.

The seed notebook's tuning job, on either backend::

    from dogclf.hpo import Categorical, Continuous, HPOExperiment

    exp = HPOExperiment(
        spec,                                   # a dogclf.training.TrainingJobSpec: data channels, static hyperparameters
        {"lr": Continuous(0.001, 0.1), "batch_size": Categorical([32, 64, 128]), "epochs": Categorical([1, 2])},
        objective="test_loss",                  # minimised; its regex comes from the entry point's metric definitions
        max_trials=3, max_parallel=2, strategy="bayesian", early_stopping="auto", backend="local",
    ).run()
    exp.trials_            # pandas DataFrame: hyperparameters, status, objective, duration
    exp.best_params_       # {"lr": ..., "batch_size": 64, "epochs": 2}
    exp.plot("hpo.png")    # objective per trial and against each hyperparameter
    exp.train_best()       # the final model, one call

Extension points, one module each: :mod:`~dogclf.hpo.space` (ranges), :mod:`~dogclf.hpo.objective`,
:mod:`~dogclf.hpo.strategies` (subclass :class:`Strategy`), :mod:`~dogclf.hpo.pruning` (early stopping),
:mod:`~dogclf.hpo.runner` (trials as training jobs on any backend with ``train``), :mod:`~dogclf.hpo.state`
(the on-disk state) and :mod:`~dogclf.hpo.report` (plots).
"""

from dogclf.hpo.experiment import HPOExperiment
from dogclf.hpo.objective import DIRECTIONS, Objective, metric_definitions, parse_metrics
from dogclf.hpo.pruning import MedianStopping
from dogclf.hpo.space import SCALES, Categorical, Continuous, Integer, SearchSpace
from dogclf.hpo.state import ExperimentState
from dogclf.hpo.strategies import BayesianStrategy, GridStrategy, RandomStrategy, Strategy, get_strategy
from dogclf.hpo.trial import STATUSES, Trial

__all__ = [
    "HPOExperiment",
    "SearchSpace",
    "Continuous",
    "Integer",
    "Categorical",
    "SCALES",
    "Objective",
    "DIRECTIONS",
    "metric_definitions",
    "parse_metrics",
    "Strategy",
    "RandomStrategy",
    "BayesianStrategy",
    "GridStrategy",
    "get_strategy",
    "MedianStopping",
    "Trial",
    "STATUSES",
    "ExperimentState",
]
