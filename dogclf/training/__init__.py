"""Training: the one entry point that runs unchanged on the local backend and on SageMaker, its job contract and
its callbacks.

* :class:`TrainingConfig` (how a network is trained) and :class:`~dogclf.models.ModelConfig` (what it is) are the
  typed job contract; :class:`TrainingJobSpec` holds them with the data channels for any backend;
  :class:`TrainingJobResult` is what a job produced; :class:`Distribution` spreads a job over processes and
  instances (data-parallel, :mod:`dogclf.training.distributed`).
* :mod:`dogclf.training.train` is the entry point script (``python -m dogclf.training.train``, or the file as
  SageMaker's ``user_entry_point``); the loop is :class:`~dogclf.training.loop.Trainer`.
* :data:`METRIC_DEFINITIONS` are the regexes that read the entry point's metric lines on SageMaker; locally a
  job's metrics come from its metrics file (:mod:`dogclf.training.metrics`).
* :class:`Callback` / :class:`TrainingContext` / :class:`StepInfo` are how Debugger, profilers and tuners observe
  the loop; callback factories register in the ``dogclf.callbacks`` entry-point group.
* :func:`lr_find` sweeps the learning rate on a job's model and data and suggests one (fastai's ``lr_find``).
"""

from dogclf.training.callbacks import Callback, StepInfo, TrainingContext
from dogclf.training.config import TrainingConfig
from dogclf.training.distributed import Distribution
from dogclf.training.lr_finder import LRFinderResult, lr_find
from dogclf.training.metrics import METRIC_DEFINITIONS, METRIC_NAMES, format_metric_line, parse_metric_line
from dogclf.training.spec import JOB_STATUSES, TrainingJobResult, TrainingJobSpec

__all__ = [
    "Callback",
    "Distribution",
    "JOB_STATUSES",
    "LRFinderResult",
    "METRIC_DEFINITIONS",
    "METRIC_NAMES",
    "StepInfo",
    "TrainingConfig",
    "TrainingContext",
    "TrainingJobResult",
    "TrainingJobSpec",
    "format_metric_line",
    "lr_find",
    "parse_metric_line",
]
