"""The objective: which metric a tuning experiment optimises, how to read it from a job's log, and in which direction."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from dogclf.errors import ConfigError
from dogclf.training.metrics import METRIC_DEFINITIONS, parse_metric_line

__all__ = ["Objective", "DIRECTIONS", "metric_definitions", "parse_metrics"]

DIRECTIONS = ("minimize", "maximize")
"""The directions an objective can be optimised in."""


def metric_definitions() -> list[dict[str, str]]:
    """The training entry point's metric definitions (SageMaker's ``[{"Name": ..., "Regex": ...}]`` shape): a copy
    of :data:`dogclf.training.METRIC_DEFINITIONS`, the regexes for the lines the entry point logs
    (``epoch=1; train_loss=...; valid_loss=...; valid_acc=...;`` and ``test_loss=...;`` ``test_acc=...;``)."""
    return [dict(d) for d in METRIC_DEFINITIONS]


def _compile(metric: str, regex: str) -> re.Pattern[str]:
    if not isinstance(regex, str) or not regex:
        raise ConfigError(f"objective regex for {metric!r} must be a non-empty string, got {regex!r}")
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"objective regex {regex!r} does not compile: {exc}") from exc
    if pattern.groups != 1:
        raise ConfigError(f"objective regex {regex!r} must have exactly one capture group (the metric value), "
                          f"it has {pattern.groups}")
    return pattern


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def parse_metrics(line: str, definitions: list[dict[str, str]] | None = None) -> dict[str, float]:
    """Every metric of ``definitions`` (default :func:`metric_definitions`) found in one log line, with
    ``epoch`` when the line is a per-epoch line (:func:`dogclf.training.parse_metric_line`, never ``None``).

    Example:
        >>> parse_metrics("epoch=2; train_loss=0.9; valid_loss=1.25; valid_acc=0.5;")["valid_loss"]
        1.25
    """
    return parse_metric_line(line, definitions if definitions is not None else METRIC_DEFINITIONS) or {}


@dataclass(frozen=True)
class Objective:
    """The metric to optimise.

    Args:
        metric: The metric's name: ``"valid_loss"`` (the default), ``"valid_acc"``; ``"test_loss"`` (the
            seed's "average test loss") is selectable but tunes on the test split (see
            :class:`~dogclf.hpo.HPOExperiment`).
        regex: A regular expression with exactly one capture group that extracts the value from a log line.
            ``None`` takes the entry point's own definition of ``metric`` (see :func:`metric_definitions`);
            a custom metric name needs an explicit regex.
        direction: ``"minimize"`` (losses) or ``"maximize"`` (accuracies).

    Raises:
        ConfigError: an unknown metric without a regex, a regex that does not compile or has no (or several)
            capture groups, or an unknown direction.

    Example:
        >>> Objective("valid_acc", direction="maximize").epoch_metric
        'valid_acc'
    """

    metric: str = "valid_loss"
    regex: str | None = None
    direction: str = "minimize"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"objective metric must be a non-empty name, got {self.metric!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"objective direction must be one of {', '.join(map(repr, DIRECTIONS))}, "
                              f"got {self.direction!r}")
        if self.regex is None:
            known = {d["Name"]: d["Regex"] for d in metric_definitions()}
            if self.metric not in known:
                raise ConfigError(f"unknown objective metric {self.metric!r}: the entry point logs "
                                  f"{', '.join(map(repr, known))}; pass regex= for a metric of your own")
            object.__setattr__(self, "regex", known[self.metric])
        _compile(self.metric, self.regex)  # type: ignore[arg-type]

    @property
    def pattern(self) -> re.Pattern[str]:
        """The compiled :attr:`regex`."""
        return re.compile(self.regex)  # type: ignore[arg-type]

    @property
    def sign(self) -> float:
        """``1.0`` when minimising, ``-1.0`` when maximising: ``sign * value`` is always "lower is better"."""
        return 1.0 if self.direction == "minimize" else -1.0

    def extract(self, text: str) -> float | None:
        """The last value the regex finds in ``text`` (a log line or a whole log), or ``None``."""
        value = None
        for m in self.pattern.finditer(text):
            parsed = _to_float(m.group(1))
            if parsed is not None:
                value = parsed
        return value

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether value ``a`` is strictly better than ``b`` (``None`` and NaN are worst)."""
        if a is None or math.isnan(a):
            return False
        if b is None or math.isnan(b):
            return True
        return self.sign * a < self.sign * b

    @property
    def epoch_metric(self) -> str:
        """The per-epoch metric that tracks this objective during training, used for early stopping.

        ``test_loss`` is only known at the end of a job, so it is tracked by ``valid_loss`` (``test_acc`` by
        ``valid_acc``); any other metric tracks itself.
        """
        if self.metric.startswith("test_"):
            return "valid_" + self.metric[len("test_"):]
        return self.metric

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"metric": self.metric, "regex": self.regex, "direction": self.direction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Objective:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or "metric" not in data:
            raise ConfigError(f"a serialised objective must be a dict with 'metric', got {data!r:.100}")
        return cls(data["metric"], data.get("regex"), data.get("direction", "minimize"))

    def metric_definition(self) -> dict[str, str]:
        """This objective as a SageMaker metric definition ``{"Name": metric, "Regex": regex}``."""
        return {"Name": self.metric, "Regex": self.regex}  # type: ignore[dict-item]
