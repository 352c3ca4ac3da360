"""Learning-rate schedules stepped every batch, and the phases of a fine-tune.

A run is one or two **phases** (:class:`PhasePlan`): with ``freeze_epochs=F`` (fastai's ``fine_tune``) epochs
``1..F`` train the head alone and epochs ``F+1..epochs`` train what the model's freeze policy trains, with
discriminative learning rates (:mod:`dogclf.training.optim`); otherwise the whole run is one phase. Each phase
runs the schedule from its start, as fastai's ``fine_tune`` runs one ``fit_one_cycle`` per phase:

* ``constant``: the peak rate (after an optional linear warm-up);
* ``cosine``: a linear warm-up, then cosine decay to zero at the end of the phase;
* ``onecycle``: fastai's one-cycle (``fit_one_cycle``): cosine from ``peak / 25`` up to the peak over the
  warm-up (a quarter of the phase by default), then cosine down to ``peak / 2.5e6``.

The rate is a pure function of ``(epoch, step in epoch)``: :class:`LRSchedule` sets every parameter group's
``lr`` to its own peak (``group["peak_lr"]``) times :func:`lr_factor` before each step, so a resumed run needs
no scheduler state to continue exactly where it stopped.

Example:
    >>> [round(lr_factor("cosine", s, total=10, warmup=2), 3) for s in (0, 1, 2, 9)]
    [0.333, 0.667, 1.0, 0.038]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dogclf.training.config import SCHEDULES

__all__ = ["ONECYCLE_DIV", "ONECYCLE_FINAL_DIV", "ONECYCLE_WARMUP", "Phase", "PhasePlan", "LRSchedule",
           "lr_factor", "warmup_epochs"]

ONECYCLE_DIV = 25.0
"""One-cycle starts at ``peak / ONECYCLE_DIV`` (fastai's ``div``)."""
ONECYCLE_FINAL_DIV = 1e5
"""One-cycle ends at ``peak / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)`` (fastai's ``div_final``)."""
ONECYCLE_WARMUP = 0.25
"""The share of a phase one-cycle warms up over when ``warmup_epochs`` is ``auto`` (fastai's ``pct_start``)."""


def _cos(start: float, end: float, pos: float) -> float:
    """Cosine interpolation from ``start`` (pos 0) to ``end`` (pos 1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, pos))))


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """The multiplier of the peak rate at ``step`` (from 0) of a phase of ``total`` steps with ``warmup`` warm-up
    steps.

    Raises:
        ValueError: an unknown ``kind``, or ``step`` outside ``[0, total)``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0 <= step < total:
        raise ValueError(f"step {step} is outside the phase's {total} steps")
    warmup = max(0, min(warmup, total - 1))
    if kind == "onecycle":
        low = 1.0 / ONECYCLE_DIV
        if step < warmup:
            return _cos(low, 1.0, step / warmup)
        return _cos(1.0, low / ONECYCLE_FINAL_DIV, (step - warmup) / max(1, total - 1 - warmup))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    return _cos(1.0, 0.0, (step - warmup) / max(1, total - warmup))


def warmup_epochs(training: Any, phase_epochs: int) -> float:
    """The warm-up of a phase of ``phase_epochs`` epochs in epochs: ``training.warmup_epochs``, or for ``auto`` a
    quarter of the phase with one-cycle and none otherwise."""
    if training.warmup_epochs is not None:
        return float(training.warmup_epochs)
    return ONECYCLE_WARMUP * phase_epochs if training.schedule == "onecycle" else 0.0


@dataclass(frozen=True)
class Phase:
    """Epochs ``first..last`` (from 1, inclusive) that train the same parameters.

    Attributes:
        name: ``"head"`` (the head alone: a fine-tune's first phase) or ``"train"`` (what the freeze policy
            trains).
        first: The phase's first epoch.
        last: The phase's last epoch.
    """

    name: str
    first: int
    last: int

    @property
    def epochs(self) -> int:
        """The phase's length in epochs."""
        return self.last - self.first + 1

    @property
    def head_only(self) -> bool:
        """Whether only the head trains."""
        return self.name == "head"


@dataclass(frozen=True)
class PhasePlan:
    """The phases of a run: a head-only phase of ``freeze_epochs`` epochs first, when there is one.

    Example:
        >>> [(p.name, p.first, p.last) for p in PhasePlan.of(5, 2).phases]
        [('head', 1, 2), ('train', 3, 5)]
    """

    phases: tuple[Phase, ...]

    @classmethod
    def of(cls, epochs: int, freeze_epochs: int = 0) -> PhasePlan:
        """The plan of a run of ``epochs`` epochs whose first ``freeze_epochs`` train the head alone."""
        if freeze_epochs <= 0:
            return cls((Phase("train", 1, epochs),))
        return cls((Phase("head", 1, freeze_epochs), Phase("train", freeze_epochs + 1, epochs)))

    def phase(self, epoch: int) -> Phase:
        """The phase ``epoch`` belongs to (epochs past the plan belong to the last phase)."""
        return next((p for p in self.phases if p.first <= epoch <= p.last), self.phases[-1])


class LRSchedule:
    """Sets each parameter group's rate before every training step: its peak times :func:`lr_factor`.

    Args:
        training: The :class:`~dogclf.training.TrainingConfig` (``schedule``, ``warmup_epochs``,
            ``freeze_epochs``, ``epochs``).
        steps_per_epoch: Training steps in one epoch.
    """

    def __init__(self, training: Any, steps_per_epoch: int) -> None:
        self.kind = training.schedule
        self.plan = PhasePlan.of(training.epochs, training.freeze_epochs)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.warmups = {p.name: round(warmup_epochs(training, p.epochs) * self.steps_per_epoch)
                        for p in self.plan.phases}

    def factor(self, epoch: int, step: int) -> float:
        """The multiplier at step ``step`` (from 0) of epoch ``epoch`` (from 1)."""
        phase = self.plan.phase(epoch)
        total = phase.epochs * self.steps_per_epoch
        at = min(total - 1, (epoch - phase.first) * self.steps_per_epoch + step)
        return lr_factor(self.kind, at, total, self.warmups[phase.name])

    def apply(self, optimizer: Any, epoch: int, step: int) -> float:
        """Set every group's ``lr`` for this step; returns the multiplier."""
        f = self.factor(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("peak_lr", group["lr"]) * f
        return f
