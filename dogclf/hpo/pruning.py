"""Early stopping of clearly worse trials: the median rule, the local analogue of SageMaker's
``early_stopping_type="Auto"``.

Trials log their validation metrics every epoch. After each epoch, :class:`MedianStopping` compares the running
trial's best value so far with the median of the *completed* trials' best values up to the same epoch; a trial
that is worse than that median is stopped ("pruned"). This is the median stopping rule of Google Vizier, which
SageMaker's automatic early stopping and Optuna's :class:`~optuna.pruners.MedianPruner` also implement.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dogclf._registry import Registry
from dogclf.errors import ConfigError

if TYPE_CHECKING:
    from dogclf.hpo.objective import Objective
    from dogclf.hpo.trial import Trial

__all__ = ["MedianStopping", "get_early_stopping", "EARLY_STOPPING"]

@dataclass(frozen=True)
class MedianStopping:
    """Stop a trial whose best per-epoch value so far is worse than the median of completed trials'.

    Args:
        metric: The per-epoch metric to compare; ``None`` uses the objective's
            :attr:`~dogclf.hpo.Objective.epoch_metric` (``valid_loss`` for ``test_loss``).
        min_trials: Completed trials that must have reached an epoch before any trial is stopped at it.
        warmup_epochs: Epochs every trial runs before it can be stopped.

    Raises:
        ConfigError: ``min_trials < 1`` or ``warmup_epochs < 0``.
    """

    metric: str | None = None
    min_trials: int = 3
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        for name, low in (("min_trials", 1), ("warmup_epochs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"MedianStopping {name} must be an int >= {low}, got {value!r}")

    def metric_for(self, objective: Objective) -> str:
        """The per-epoch metric this rule watches for ``objective``."""
        return self.metric or objective.epoch_metric

    def should_stop(self, history: Mapping[int, float], completed: Sequence[Trial], objective: Objective) -> str | None:
        """Decide after an epoch whether to stop a running trial.

        Args:
            history: The running trial's ``{epoch: value}`` of the watched metric so far.
            completed: The experiment's trials; only those with status ``"Completed"`` are compared against.
            objective: Gives the direction and the watched metric.

        Returns:
            The reason to stop (for the trial's record), or ``None`` to let it go on.
        """
        if not history:
            return None
        epoch = max(history)
        if epoch <= self.warmup_epochs:
            return None
        metric, sign = self.metric_for(objective), objective.sign
        best = min(sign * v for e, v in history.items() if e <= epoch)
        others = []
        for t in completed:
            if t.status != "Completed":
                continue
            values = [sign * v for e, v in t.intermediate(metric).items() if e <= epoch]
            if values and max(t.intermediate(metric)) >= epoch:
                others.append(min(values))
        if len(others) < self.min_trials:
            return None
        median = statistics.median(others)
        if best > median:
            return (f"pruned at epoch {epoch}: best {metric} {sign * best:.6g} is worse than the median "
                    f"{sign * median:.6g} of {len(others)} completed trials")
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"type": "median", "metric": self.metric, "min_trials": self.min_trials,
                "warmup_epochs": self.warmup_epochs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MedianStopping:
        """Inverse of :meth:`to_dict`."""
        return cls(data.get("metric"), data.get("min_trials", 3), data.get("warmup_epochs", 1))


_POLICIES: Registry[Callable[[], MedianStopping | None]] = Registry("early stopping", unknown_error=ConfigError)
_POLICIES.register("off", lambda: None)
_POLICIES.register("auto", MedianStopping)

EARLY_STOPPING = ("off", "auto")
"""Early-stopping names an experiment accepts (SageMaker's ``"Off"`` and ``"Auto"``, in any case)."""


def get_early_stopping(value: str | MedianStopping | None | bool) -> MedianStopping | None:
    """Resolve an experiment's ``early_stopping`` argument.

    ``"off"``/``None``/``False`` -> no early stopping; ``"auto"``/``True`` -> :class:`MedianStopping` with its
    defaults; a :class:`MedianStopping` is returned as it is.

    Raises:
        ConfigError: any other value.
    """
    if isinstance(value, MedianStopping):
        return value
    if value is None or isinstance(value, bool):
        value = "auto" if value else "off"
    if isinstance(value, str) and value.lower() in _POLICIES:
        return _POLICIES.get(value.lower())()
    raise ConfigError(f"early_stopping must be one of {', '.join(map(repr, EARLY_STOPPING))} or a MedianStopping, "
                      f"got {value!r}")
