"""Training: the one entry point that runs unchanged on the local backend and on SageMaker, and its callbacks.

* :mod:`dogclf.training.train` is the entry point script (``python -m dogclf.training.train``, or the file as
  SageMaker's ``user_entry_point``).
* :class:`TrainingJobSpec` describes a job for any backend; :class:`TrainingJobResult` is what it produced.
* :data:`METRIC_DEFINITIONS` are the regexes that read the entry point's metric lines.
* :class:`Callback` / :class:`TrainingContext` / :class:`StepInfo` are how Debugger, profilers and tuners observe
  the loop.
"""

from dogclf.training.callbacks import Callback, StepInfo, TrainingContext
from dogclf.training.metrics import METRIC_DEFINITIONS, METRIC_NAMES, format_metric_line, parse_metric_line
from dogclf.training.spec import JOB_STATUSES, TrainingJobResult, TrainingJobSpec, normalize_hyperparameters

__all__ = [
    "Callback",
    "JOB_STATUSES",
    "METRIC_DEFINITIONS",
    "METRIC_NAMES",
    "StepInfo",
    "TrainingContext",
    "TrainingJobResult",
    "TrainingJobSpec",
    "format_metric_line",
    "normalize_hyperparameters",
    "parse_metric_line",
]
