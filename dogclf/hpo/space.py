"""Search spaces: the hyperparameter ranges an :class:`~dogclf.hpo.HPOExperiment` explores.

Three kinds of range, mirroring SageMaker's ``ContinuousParameter`` / ``IntegerParameter`` /
``CategoricalParameter`` and Optuna's distributions::

    from dogclf.hpo import Categorical, Continuous, SearchSpace

    space = SearchSpace({
        "lr": Continuous(0.001, 0.1, scale="log"),
        "batch_size": Categorical([32, 64, 128]),
        "epochs": Categorical([1, 2]),
    })

Ranges are frozen and validated on creation (an empty or inverted range, or a log scale that reaches 0, raises
:class:`~dogclf.errors.ConfigError`), and serialise to plain JSON (:meth:`SearchSpace.to_dict` /
:meth:`SearchSpace.from_dict`) so an experiment's state file can rebuild them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np

from dogclf._contract import python_name
from dogclf.errors import ConfigError

__all__ = ["Continuous", "Integer", "Categorical", "Range", "SearchSpace", "SCALES"]

SCALES = ("linear", "log")
"""The scales a numeric range can be searched on."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _number(owner: str, field_name: str, value: Any, *, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        kind = "an int" if integer else "a number"
        raise ConfigError(f"{owner} {field_name} must be {kind}, got {type(value).__name__}: {value!r:.60}")
    if integer:
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise ConfigError(f"{owner} {field_name} must be an int, got {value!r}")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{owner} {field_name} must be finite, got {value!r}")
    return value


def _validate_numeric(rng: Any, *, integer: bool) -> None:
    """Check and normalise a frozen numeric range's ``low``, ``high`` and ``scale`` in place."""
    owner = type(rng).__name__
    low = _number(owner, "low", rng.low, integer=integer)
    high = _number(owner, "high", rng.high, integer=integer)
    _check_bounds(owner, low, high, rng.scale)
    object.__setattr__(rng, "low", low)
    object.__setattr__(rng, "high", high)


def _check_bounds(owner: str, low: float, high: float, scale: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"{owner} scale must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")
    if low > high:
        raise ConfigError(f"{owner} range is inverted: low={low!r} > high={high!r}")
    if low == high:
        raise ConfigError(f"{owner} range is empty: low == high == {low!r} (fix the value as a static "
                          f"hyperparameter instead)")
    if scale == "log" and low <= 0:
        raise ConfigError(f"{owner} uses scale='log', which needs low > 0; got low={low!r}")


@dataclass(frozen=True)
class Continuous:
    """A real-valued range ``[low, high]``.

    Args:
        low: Smallest value (inclusive).
        high: Largest value (inclusive); must be greater than ``low``.
        scale: ``"linear"`` samples uniformly; ``"log"`` samples uniformly in ``log(value)``, the usual choice for
            learning rates (needs ``low > 0``).

    Raises:
        ConfigError: non-numeric or non-finite bounds, ``low >= high``, an unknown scale, or ``scale="log"``
            with ``low <= 0``.
    """

    low: float
    high: float
    scale: str = "linear"

    kind: ClassVar[str] = "continuous"

    def __post_init__(self) -> None:
        _validate_numeric(self, integer=False)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a number inside the range."""
        return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
                and self.low <= float(value) <= self.high)

    def sample(self, rng: np.random.Generator) -> float:
        """Draw one value with ``rng`` on the range's scale."""
        if self.scale == "log":
            value = float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        else:
            value = float(rng.uniform(self.low, self.high))
        return min(max(value, self.low), self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"type": "continuous", "low": ..., "high": ..., "scale": ...}``."""
        return {"type": self.kind, "low": self.low, "high": self.high, "scale": self.scale}


@dataclass(frozen=True)
class Integer:
    """An integer range ``[low, high]`` (both inclusive).

    Args:
        low: Smallest value.
        high: Largest value; must be greater than ``low``.
        scale: ``"linear"`` or ``"log"`` (needs ``low > 0``).

    Raises:
        ConfigError: non-integer bounds, ``low >= high``, an unknown scale, or ``scale="log"`` with ``low <= 0``.
    """

    low: int
    high: int
    scale: str = "linear"

    kind: ClassVar[str] = "integer"

    def __post_init__(self) -> None:
        _validate_numeric(self, integer=True)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is an integer inside the range."""
        return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
                and self.low <= int(value) <= self.high)

    def sample(self, rng: np.random.Generator) -> int:
        """Draw one value with ``rng`` on the range's scale."""
        if self.scale == "log":
            # Uniform in log space over [low, high + 1), floored: every integer gets its log-width share.
            value = int(math.floor(math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))))
        else:
            value = int(rng.integers(self.low, self.high + 1))
        return min(max(value, self.low), self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"type": "integer", "low": ..., "high": ..., "scale": ...}``."""
        return {"type": self.kind, "low": self.low, "high": self.high, "scale": self.scale}


_CategoryValue = Union[str, int, float, bool]


@dataclass(frozen=True)
class Categorical:
    """A finite set of choices, tried as they are (no order is implied).

    Args:
        values: The choices: strings, ints, floats or bools, at least one, no duplicates. Stored as a tuple.

    Raises:
        ConfigError: no values, a duplicate, or a value that is not a JSON scalar.
    """

    values: tuple[_CategoryValue, ...]

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__iter__"):
            raise ConfigError(f"Categorical values must be a list of choices, got {self.values!r:.80}")
        values = tuple(v.item() if isinstance(v, np.generic) else v for v in self.values)
        if not values:
            raise ConfigError("Categorical range is empty: give at least one value")
        for v in values:
            if not isinstance(v, (str, int, float, bool)) or (isinstance(v, float) and not math.isfinite(v)):
                raise ConfigError(f"Categorical values must be str, int, float or bool (finite); "
                                  f"got {type(v).__name__}: {v!r:.60}")
        seen: list[Any] = []
        for v in values:
            # 1 == 1.0 == True in Python; treat them as different choices only when their types differ in kind.
            if any(v == s and type(v) is type(s) for s in seen):
                raise ConfigError(f"Categorical values contain {v!r} twice: {list(values)!r:.120}")
            seen.append(v)
        object.__setattr__(self, "values", values)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices."""
        return any(value == v and type(value) is type(v) for v in self.values)

    def sample(self, rng: np.random.Generator) -> _CategoryValue:
        """Draw one choice uniformly with ``rng``."""
        return self.values[int(rng.integers(len(self.values)))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"type": "categorical", "values": [...]}``."""
        return {"type": self.kind, "values": list(self.values)}


Range = Union[Continuous, Integer, Categorical]
"""Any one hyperparameter range."""

_KINDS: dict[str, type] = {"continuous": Continuous, "integer": Integer, "categorical": Categorical}


def _range_from_dict(name: str, data: Any) -> Range:
    if not isinstance(data, Mapping) or "type" not in data:
        raise ConfigError(f"range {name!r} must be a dict with a 'type' key, got {data!r:.100}")
    kind = data["type"]
    if kind not in _KINDS:
        raise ConfigError(f"range {name!r} has unknown type {kind!r}; expected one of {', '.join(map(repr, _KINDS))}")
    fields = {k: v for k, v in data.items() if k != "type"}
    allowed = {"values"} if kind == "categorical" else {"low", "high", "scale"}
    unknown = set(fields) - allowed
    if unknown:
        raise ConfigError(f"range {name!r} ({kind}) has unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
    try:
        return _KINDS[kind](**fields)
    except TypeError as exc:
        raise ConfigError(f"range {name!r} ({kind}) is incomplete: {exc}") from exc


class SearchSpace(Mapping[str, Range]):
    """An immutable mapping from hyperparameter name to its range.

    Names are the entry point's hyperparameters by their Python names (``"lr"``, ``"batch_size"``); the wire
    spelling (``"batch-size"``) is accepted and stored as the Python name.

    Args:
        ranges: ``{name: Continuous | Integer | Categorical}``; a plain list or tuple is taken as
            :class:`Categorical`. At least one entry.

    Raises:
        ConfigError: no ranges, a name that is not a valid hyperparameter name, or a value that is not a range.

    Example:
        >>> space = SearchSpace({"lr": Continuous(1e-3, 0.1, scale="log"), "epochs": [1, 2]})
        >>> space["epochs"]
        Categorical(values=(1, 2))
        >>> SearchSpace.from_dict(space.to_dict()) == space
        True
    """

    def __init__(self, ranges: Mapping[str, Range | list[Any] | tuple[Any, ...]]) -> None:
        if isinstance(ranges, SearchSpace):
            self._ranges: dict[str, Range] = dict(ranges._ranges)
            return
        if not isinstance(ranges, Mapping):
            raise ConfigError(f"a search space must be a dict of name -> range, got {type(ranges).__name__}")
        if not ranges:
            raise ConfigError("a search space needs at least one hyperparameter range")
        out: dict[str, Range] = {}
        for name, rng in ranges.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(f"hyperparameter name {name!r} is not valid: use letters, digits, '_', '-', '.'")
            if isinstance(rng, (list, tuple)):
                rng = Categorical(tuple(rng))
            name = python_name(name)
            if name in out:
                raise ConfigError(f"hyperparameter {name!r} is in the search space twice (in two spellings)")
            if not isinstance(rng, (Continuous, Integer, Categorical)):
                raise ConfigError(f"range for {name!r} must be Continuous, Integer or Categorical, "
                                  f"got {type(rng).__name__}: {rng!r:.80}")
            out[name] = rng
        self._ranges = out

    def __getitem__(self, name: str) -> Range:
        return self._ranges[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SearchSpace):
            return self._ranges == other._ranges
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._ranges.items()))

    def __repr__(self) -> str:
        return f"SearchSpace({self._ranges!r})"

    @property
    def is_categorical(self) -> bool:
        """True when every range is :class:`Categorical` (the spaces a grid search can cover)."""
        return all(isinstance(r, Categorical) for r in self._ranges.values())

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a categorical-only space, in a fixed order (the last name varies fastest).

        Raises:
            ConfigError: the space has a numeric range.
        """
        numeric = [n for n, r in self._ranges.items() if not isinstance(r, Categorical)]
        if numeric:
            raise ConfigError(f"grid search needs a categorical-only space; {numeric} are numeric ranges")
        names = list(self._ranges)
        values = [self._ranges[n].values for n in names]  # type: ignore[union-attr]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one value per range with ``rng``."""
        return {name: r.sample(rng) for name, r in self._ranges.items()}

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` has exactly this space's names, each value inside its range."""
        return set(params) == set(self._ranges) and all(r.contains(params[n]) for n, r in self._ranges.items())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready form: ``{name: range.to_dict()}``."""
        return {name: r.to_dict() for name, r in self._ranges.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Rebuild a space from :meth:`to_dict` output.

        Raises:
            ConfigError: an entry has an unknown type, unknown keys, or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a serialised search space must be a dict, got {type(data).__name__}")
        return cls({name: _range_from_dict(name, d) for name, d in data.items()})

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"search space JSON is not valid: {exc}") from exc
        return cls.from_dict(data)
