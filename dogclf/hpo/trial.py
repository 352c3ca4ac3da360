"""One trial of an experiment: the hyperparameters tried, the training job that tried them, and how it ended."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["Trial", "STATUSES", "FINISHED"]

STATUSES = ("InProgress", "Completed", "Pruned", "Stopped", "Failed")
"""Trial statuses, SageMaker's training-job vocabulary plus ``"Pruned"`` (stopped early by the pruner)."""

FINISHED = frozenset({"Completed", "Pruned", "Stopped", "Failed"})
"""The statuses a trial never leaves; a resumed experiment does not run these again."""


@dataclass
class Trial:
    """The record of one trial, as the experiment's state file keeps it.

    Attributes:
        number: 0-based trial number, in the order trials were started.
        params: The tuned hyperparameters (only the searched ones, not the static ones).
        job_name: The training job's name on its backend.
        status: One of :data:`STATUSES`.
        objective: The final objective value, or ``None`` when the job did not log it.
        metrics: The job's final metrics (``test_loss``, ``test_acc``, last-epoch values...).
        history: The per-epoch metric dicts the job logged, in order (``[{"epoch": 1, "valid_loss": ...}]``).
        failure_reason: Why the job failed, was pruned or was stopped.
        created: Unix time the trial was started.
        ended: Unix time it finished.
        duration_s: Seconds the training job ran.
        output_dir: The job's directory (local) or output S3 prefix (SageMaker).
        model_artifact: Where the trained model went, when the job saved one.
        attempts: How many times the trial was launched (an interrupted run relaunches running trials).
    """

    number: int
    params: dict[str, Any]
    job_name: str
    status: str = "InProgress"
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    failure_reason: str | None = None
    created: float | None = None
    ended: float | None = None
    duration_s: float | None = None
    output_dir: str | None = None
    model_artifact: str | None = None
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"trial status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def finished(self) -> bool:
        """Whether the trial is over (see :data:`FINISHED`)."""
        return self.status in FINISHED

    def intermediate(self, metric: str) -> dict[int, float]:
        """``{epoch: value}`` of ``metric`` from :attr:`history` (epochs count from 1 when the log has none)."""
        out: dict[int, float] = {}
        for i, row in enumerate(self.history, start=1):
            value = row.get(metric)
            if value is not None and not math.isnan(value):
                out[int(row.get("epoch", i))] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN and infinities become ``None``)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer dogclf) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
