"""An experiment's state on disk: its configuration and every trial, in one JSON file replaced atomically.

The file lives at ``<root>/experiments/<name>/experiment.json`` (``root`` is the local backend's root, or
``$DOGCLF_HOME`` / ``~/.dogclf`` for other backends). It is rewritten (temporary file + rename) whenever a trial
starts or ends, so a reader never sees half a file and an interrupted experiment resumes from the last event.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._io import atomic_write_json
from dogclf._paths import home
from dogclf.errors import ConfigError, NotFoundError
from dogclf.hpo.objective import Objective
from dogclf.hpo.pruning import MedianStopping
from dogclf.hpo.space import SearchSpace
from dogclf.hpo.strategies import STRATEGIES, Strategy
from dogclf.hpo.trial import Trial

if TYPE_CHECKING:
    from dogclf.backends import Backend


__all__ = ["ExperimentState", "STATE_FORMAT", "experiments_root", "validate_name"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "dogclf.hpo/1"
"""The ``format`` value of ``experiment.json``."""

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}$")


def validate_name(name: str) -> str:
    """Check an experiment name: 1-32 letters, digits and hyphens, not starting or ending with a hyphen
    (SageMaker's rule for tuning-job names, so the same name works on every backend).

    Raises:
        ConfigError: the name breaks the rule.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"experiment name {name!r} is not valid: use 1-32 letters, digits and hyphens, "
                          f"starting and ending with a letter or digit")
    return name


def experiments_root(backend: Backend) -> Path:
    """Where experiment states are kept for ``backend``: ``<backend.root>/experiments`` when it has a ``root``,
    else :func:`dogclf._paths.home`'s ``experiments``."""
    root = getattr(backend, "root", None)
    return Path(root if root is not None else home()) / "experiments"


def strategy_to_dict(strategy: Strategy) -> dict[str, Any]:
    """A strategy as JSON: its name, class path and constructor options (its public attributes)."""
    cls = type(strategy)
    return {"name": strategy.name, "class": f"{cls.__module__}:{cls.__qualname__}",
            "options": {k: v for k, v in vars(strategy).items() if not k.startswith("_")}}


def strategy_from_dict(data: dict[str, Any]) -> Strategy:
    """Inverse of :func:`strategy_to_dict` (imports a custom strategy's class from its module)."""
    name, options = data.get("name"), data.get("options") or {}
    if name in STRATEGIES and data.get("class", "").startswith("dogclf."):
        return STRATEGIES.get(name)(**options)
    module, _, qualname = str(data.get("class", "")).partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj(**options)
    except Exception as exc:
        raise ConfigError(f"cannot rebuild strategy {data!r:.120}: {type(exc).__name__}: {exc}") from exc


@dataclass
class ExperimentState:
    """Everything an experiment needs to resume: its configuration, its trials and backend bookkeeping.

    Attributes:
        name: The experiment's name.
        backend: The backend's name.
        space: The search space.
        objective: The objective.
        strategy: The search strategy.
        max_trials: Trials to run in all.
        max_parallel: Trials to run at the same time.
        early_stopping: The pruning rule, or ``None``.
        seed: Seed of the strategy's random draws.
        base_spec: The training-job spec every trial starts from, as a dict.
        trials: The trials so far, by number.
        created: Unix time the experiment was first run.
        backend_state: Free space for the backend (e.g. the SageMaker tuning-job name).
        path: The state file, once saved or loaded.
    """

    name: str
    backend: str
    space: SearchSpace
    objective: Objective
    strategy: Strategy
    max_trials: int
    max_parallel: int
    early_stopping: MedianStopping | None
    seed: int
    base_spec: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    backend_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the file's content)."""
        return {
            "format": STATE_FORMAT,
            "name": self.name,
            "backend": self.backend,
            "space": self.space.to_dict(),
            "objective": self.objective.to_dict(),
            "strategy": strategy_to_dict(self.strategy),
            "max_trials": self.max_trials,
            "max_parallel": self.max_parallel,
            "early_stopping": self.early_stopping.to_dict() if self.early_stopping else None,
            "seed": self.seed,
            "base_spec": self.base_spec,
            "created": self.created,
            "backend_state": self.backend_state,
            "trials": [t.to_dict() for t in self.trials],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> ExperimentState:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: the data is not a dogclf experiment state.
        """
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path or 'data'} is not a dogclf experiment state (format {STATE_FORMAT!r})")
        es = data.get("early_stopping")
        return cls(
            name=data["name"], backend=data["backend"], space=SearchSpace.from_dict(data["space"]),
            objective=Objective.from_dict(data["objective"]), strategy=strategy_from_dict(data["strategy"]),
            max_trials=int(data["max_trials"]), max_parallel=int(data["max_parallel"]),
            early_stopping=MedianStopping.from_dict(es) if es else None, seed=int(data["seed"]),
            base_spec=dict(data.get("base_spec") or {}), trials=[Trial.from_dict(t) for t in data.get("trials", [])],
            created=float(data.get("created", time.time())), backend_state=dict(data.get("backend_state") or {}),
            path=path,
        )

    def save(self, path: Path | None = None) -> Path:
        """Write the state atomically to ``path`` (default: where it was loaded from or last saved)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("ExperimentState.save needs a path the first time")
        atomic_write_json(target, self.to_dict(), default=_json_default)
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExperimentState:
        """Read a state file.

        Raises:
            NotFoundError: there is no file at ``path``.
            ConfigError: the file is not a dogclf experiment state.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise NotFoundError(f"no experiment state at {str(p)!r}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"experiment state {str(p)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, path=p)

    def trial(self, number: int) -> Trial:
        """The trial with this number."""
        for t in self.trials:
            if t.number == number:
                return t
        raise NotFoundError(f"experiment {self.name!r} has no trial {number}")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
