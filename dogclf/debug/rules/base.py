"""What every rule shares: documented parameters, structured findings, and the smdebug ``Rule`` API."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from dogclf._extras import require
from dogclf.errors import ConfigError

__all__ = ["RuleFinding", "RuleParameters", "TensorRule", "ProfilerRule", "ProfileData", "check_parameters"]


@dataclass(frozen=True)
class RuleFinding:
    """The outcome of one rule over a run, as the report's rules table shows it.

    Attributes:
        rule: The rule's registered name.
        kind: ``"tensor"`` (reads Debugger tensors) or ``"profiler"`` (reads system and step-timing figures).
        triggered: Whether the rule fired at least once.
        trigger_count: How many datapoints (steps, samples or windows) fired.
        datapoints: How many datapoints the rule examined (0: nothing it could judge, e.g. no GPU).
        first_step: The first step (global step for tensor rules) at which it fired, else ``None``.
        steps: Steps at which it fired (at most the first 100).
        evidence: What the rule saw: values, thresholds, tensor names.
        parameters: The parameters it ran with.
        description: What the rule checks.
        recommendation: What to do when it fires.
    """

    rule: str
    kind: str
    triggered: bool
    trigger_count: int
    datapoints: int
    first_step: int | None
    steps: tuple[int, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    recommendation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists, non-finite floats become strings)."""
        return json.loads(json.dumps(_jsonable(asdict(self)), default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuleFinding:
        """Rebuild a finding from :meth:`to_dict`'s form."""
        d = dict(data)
        d["steps"] = tuple(d.get("steps") or ())
        return cls(**d)


class RuleParameters:
    """Mixin: documented parameter defaults, checked against what the user passes."""

    #: The rule's parameters and their defaults, as AWS documents them for its built-in of the same name.
    defaults: ClassVar[dict[str, Any]] = {}
    #: What the rule checks (one sentence or two).
    description: ClassVar[str] = ""
    #: What to do when it fires.
    recommendation: ClassVar[str] = ""
    #: The name it is registered under; the class name when empty.
    rule_name: ClassVar[str] = ""

    def _init_parameters(self, parameters: Mapping[str, Any]) -> None:
        self.parameters = check_parameters(type(self), parameters)
        self.validate(self.parameters)
        self.datapoints = 0
        self.fired_steps: list[int] = []
        self.evidence: dict[str, Any] = {}

    def validate(self, p: dict[str, Any]) -> None:
        """Raise :class:`~dogclf.errors.ConfigError` for out-of-range parameters (override per rule)."""

    def _fire(self, step: int, evidence: Mapping[str, Any]) -> None:
        self.fired_steps.append(int(step))
        if not self.evidence:  # keep the first trigger's evidence, and count the rest
            self.evidence = {"step": int(step), **evidence}

    def finding(self) -> RuleFinding:
        """The structured finding for everything this rule has examined so far."""
        name = type(self).registered_name()
        return RuleFinding(
            rule=name, kind=self.kind, triggered=bool(self.fired_steps), trigger_count=len(self.fired_steps),
            datapoints=self.datapoints, first_step=self.fired_steps[0] if self.fired_steps else None,
            steps=tuple(self.fired_steps[:100]), evidence=_jsonable(self.evidence),
            parameters=dict(self.parameters), description=self.description, recommendation=self.recommendation,
        )

    @classmethod
    def registered_name(cls) -> str:
        """The name the rule goes by in the registry and the report."""
        return cls.rule_name or cls.__name__


def check_parameters(cls: type, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``parameters`` over ``cls.defaults``; unknown names raise :class:`~dogclf.errors.ConfigError`."""
    unknown = sorted(set(parameters) - set(cls.defaults))
    if unknown:
        name = getattr(cls, "rule_name", "") or cls.__name__
        raise ConfigError(f"rule {name!r} has no parameter(s) {unknown}; its parameters are "
                          f"{sorted(cls.defaults) or 'none'}")
    merged = dict(cls.defaults)
    for key, value in parameters.items():
        default = cls.defaults[key]
        if isinstance(default, bool) and isinstance(value, str):
            value = value.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            try:
                value = type(default)(float(value)) if isinstance(default, int) else float(value)
            except ValueError:
                raise ConfigError(f"rule parameter {key}={value!r} is not a number") from None
        merged[key] = value
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return value


def _smdebug_rule_base() -> type:
    return require("debug", "smdebug.rules.rule", "Debugger rule support").Rule


class TensorRule(RuleParameters, _smdebug_rule_base()):  # type: ignore[misc]
    """Base of rules that read Debugger tensors, on smdebug's ``Rule`` API.

    Subclasses implement :meth:`check`; smdebug's ``invoke(step)`` / ``invoke_rule`` drive
    :meth:`invoke_at_step`, which counts datapoints and records triggers. Like smdebug's rules, an instance
    keeps state across steps (windows, last values), so evaluate steps in increasing order.

    Args:
        base_trial: An smdebug trial (``smdebug.trials.create_trial(path)``).
        action_str: smdebug's action JSON (e.g. StopTraining); empty for none.
        **parameters: Overrides of :attr:`defaults`.

    Raises:
        ConfigError: an unknown or out-of-range parameter.
    """

    kind = "tensor"

    def __init__(self, base_trial: Any, action_str: str = "", **parameters: Any) -> None:
        self._init_parameters(parameters)
        super().__init__(base_trial, action_str=action_str)

    def invoke_at_step(self, step: int) -> bool:
        """smdebug's per-step entry point: ``True`` when the rule fires at global ``step``."""
        result = self.check(step)
        if result is None:
            return False
        self.datapoints += 1
        if result is False:
            return False
        self._fire(step, result if isinstance(result, Mapping) else {})
        return True

    def check(self, step: int) -> Mapping[str, Any] | bool | None:
        """Judge global ``step``: ``None`` if there is nothing to judge, ``False`` if fine, evidence if it fires."""
        raise NotImplementedError

    # helpers for check() ---------------------------------------------------------------------------------------
    def value(self, name: str, step: int) -> Any:
        """The tensor ``name`` saved at global ``step``, as a numpy array."""
        return self._value(name, step)

    def names_at(self, step: int, regex: str | None = None, collection: str | None = None) -> list[str]:
        """Tensors saved at global ``step``, optionally only those matching ``regex`` / in ``collection``."""
        return self._names_at(step, regex=regex, collection=collection)

    def mode_of(self, step: int) -> str:
        """The mode (``"TRAIN"``, ``"EVAL"``, ``"GLOBAL"``) global ``step`` was saved in."""
        return self._mode(step)

    def _mode(self, step: int) -> str:
        try:
            return self.base_trial.mode(step).name
        except Exception:  # noqa: BLE001 - a step without mode info counts as GLOBAL
            return "GLOBAL"

    #: Optional dict shared by rules evaluated together, so each saved tensor is read from disk once.
    value_cache: dict[tuple[str, int], Any] | None = None

    def _value(self, name: str, step: int) -> Any:
        import numpy as np

        cache = self.value_cache
        if cache is not None and (name, step) in cache:
            return cache[(name, step)]
        value = np.asarray(self.base_trial.tensor(name).value(step))
        if cache is not None:
            cache[(name, step)] = value
        return value

    def _names_at(self, step: int, regex: str | None = None, collection: str | None = None) -> list[str]:
        import re as _re

        names = self.base_trial.tensor_names(step=step)
        if collection:
            try:
                members = set(self.base_trial.tensor_names(collection=collection))
            except Exception:  # noqa: BLE001 - an unknown collection holds nothing
                members = set()
            names = [n for n in names if n in members]
        if regex:
            pattern = _re.compile(regex)
            names = [n for n in names if pattern.search(n)]
        return names


@dataclass
class ProfileData:
    """The figures profiler rules read, as the job wrote them under ``<output>/debug/``.

    Attributes:
        system: System-monitor samples (dicts with ``t``, ``cpu``, ``cpu_per_core``, ``memory``, ``iowait``,
            ``disk_read``/``disk_write`` bytes per second, ``gpu``/``gpu_memory`` percent when a GPU is present).
        steps: Per-step timings (dicts with ``mode``, ``step``, ``start``, ``data_time``, ``compute_time``,
            ``batch_size``).
        meta: Run facts (``process_start``, ``train_begin``, ``first_step``, ``cpu_count``, ``num_workers``,
            ``gpu_count``, ``gpu_memory_total``; ``gpu_count`` is None, with the cause in ``gpu_error``, when the
            GPU query failed).
    """

    system: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class ProfilerRule(RuleParameters):
    """Base of rules that read system and step-timing figures (:class:`ProfileData`).

    Args:
        **parameters: Overrides of :attr:`defaults`.

    Raises:
        ConfigError: an unknown or out-of-range parameter.
    """

    kind = "profiler"

    def __init__(self, **parameters: Any) -> None:
        self._init_parameters(parameters)

    def evaluate(self, data: ProfileData) -> RuleFinding:
        """Run over a whole run's figures and return the finding."""
        self.datapoints = 0
        self.fired_steps = []
        self.evidence = {}
        self.analyse(data)
        return self.finding()

    def analyse(self, data: ProfileData) -> None:
        """Examine ``data``: add to ``self.datapoints`` and call ``self._fire(index, evidence)`` per trigger."""
        raise NotImplementedError
