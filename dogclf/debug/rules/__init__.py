"""Debugger rules as plug-ins: built-in tensor and profiler rules, and a registry for your own.

A rule is found by name. The built-ins register exactly as a third party does, through the ``dogclf.rules``
entry-point group in ``pyproject.toml``::

    [project.entry-points."dogclf.rules"]
    LossNotDecreasing = "dogclf.debug.rules.tensor:LossNotDecreasing"

or, in-process, with :func:`register_rule`::

    from dogclf.debug.rules import TensorRule, register_rule

    @register_rule("HeadWeightsTooLarge")
    class HeadWeightsTooLarge(TensorRule):
        defaults = {"limit": 10.0}
        def check(self, step):
            names = self.names_at(step, regex="weight$")
            if not names:
                return None                      # nothing to judge at this step
            biggest = max(float(abs(self.value(n, step)).max()) for n in names)
            return {"max_abs": biggest} if biggest > self.parameters["limit"] else False

A tensor rule (:class:`TensorRule`, on smdebug's ``Rule`` API) reads Debugger tensors; a profiler rule
(:class:`ProfilerRule`) reads the system monitor's samples and the per-step timings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from dogclf.errors import ConfigError, DuplicateError, UnknownRuleError

from ..config import RuleConfig
from .base import ProfileData, ProfilerRule, RuleFinding, TensorRule
from .profiler import (BatchSize, CPUBottleneck, Dataloader, GPUMemoryIncrease, IOBottleneck, LowGPUUtilization,
                       MaxInitializationTime, StepOutlier)
from .tensor import (ClassImbalance, ExplodingTensor, LossNotDecreasing, Overfit, PoorWeightInitialization,
                     VanishingGradient, WeightUpdateRatio)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProfileData",
    "ProfilerRule",
    "RuleFinding",
    "TensorRule",
    "build_rule",
    "evaluate_profile",
    "evaluate_trial",
    "get_rule",
    "list_rules",
    "register_rule",
    "unregister_rule",
]

ENTRY_POINT_GROUP = "dogclf.rules"
"""The entry-point group rule plug-ins register in."""

logger = logging.getLogger(__name__)

_BUILTINS: tuple[type, ...] = (
    LossNotDecreasing, Overfit, VanishingGradient, ExplodingTensor, PoorWeightInitialization, WeightUpdateRatio,
    ClassImbalance, StepOutlier, Dataloader, CPUBottleneck, IOBottleneck, BatchSize, LowGPUUtilization,
    GPUMemoryIncrease, MaxInitializationTime,
)
_REGISTRY: dict[str, type] = {cls.__name__: cls for cls in _BUILTINS}
_LOCK = threading.Lock()
_EPS_LOADED = False


def _is_rule_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, (TensorRule, ProfilerRule))


def register_rule(name: str | type | None = None, cls: type | None = None, *, overwrite: bool = False) -> Any:
    """Register a rule class under a name, so configs and :func:`get_rule` find it.

    Works as a plain call (``register_rule("MyRule", MyRule)``), as a decorator with a name
    (``@register_rule("MyRule")``) or without one (``@register_rule``, named after the class).

    Args:
        name: The name (defaults to the class's ``rule_name`` or class name), or the class itself.
        cls: The rule class: a subclass of :class:`TensorRule` or :class:`ProfilerRule`.
        overwrite: Replace a rule already registered under that name.

    Returns:
        The class (so it can be used as a decorator).

    Raises:
        ConfigError: ``cls`` is not a rule class.
        DuplicateError: the name is taken by another class and ``overwrite`` is false.
    """
    if isinstance(name, type):
        name, cls = None, name
    if cls is None:
        return lambda c: register_rule(name, c, overwrite=overwrite)
    if not _is_rule_class(cls):
        raise ConfigError(f"a rule must subclass dogclf.debug.rules.TensorRule or ProfilerRule; got {cls!r}")
    key = name or cls.registered_name()
    if not isinstance(key, str) or not key:
        raise ConfigError(f"rule name must be a non-empty string; got {key!r}")
    with _LOCK:
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls and not overwrite:
            raise DuplicateError(f"rule {key!r} is already registered ({existing.__module__}.{existing.__qualname__});"
                                 " pass overwrite=True to replace it")
        if key != cls.registered_name():
            cls = type(cls.__name__, (cls,), {"rule_name": key, "__module__": cls.__module__,
                                              "__doc__": cls.__doc__})
        _REGISTRY[key] = cls
    return cls


def unregister_rule(name: str) -> None:
    """Remove a registered rule (built-ins included).

    Raises:
        UnknownRuleError: nothing is registered under ``name``.
    """
    with _LOCK:
        if name not in _REGISTRY:
            raise UnknownRuleError(f"unknown rule {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
        del _REGISTRY[name]


def _load_entry_points() -> None:
    global _EPS_LOADED
    if _EPS_LOADED:
        return
    _EPS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY and f"{_REGISTRY[ep.name].__module__}:{_REGISTRY[ep.name].__qualname__}" == ep.value:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the built-ins
            logger.warning("rule plug-in %r (%s) failed to import: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        if not _is_rule_class(cls):
            logger.warning("rule plug-in %r (%s) is not a TensorRule/ProfilerRule subclass; ignored", ep.name, ep.value)
            continue
        if ep.name in _REGISTRY and _REGISTRY[ep.name] is not cls:
            logger.warning("rule %r from entry point %s shadows nothing: already registered as %s; kept the first",
                           ep.name, ep.value, _REGISTRY[ep.name].__qualname__)
            continue
        register_rule(ep.name, cls)


def list_rules(kind: str | None = None) -> list[str]:
    """Sorted names of the registered rules.

    Args:
        kind: ``"tensor"`` or ``"profiler"`` to list one kind, ``None`` for all.

    Raises:
        ConfigError: ``kind`` is something else.
    """
    if kind not in (None, "tensor", "profiler"):
        raise ConfigError(f"kind must be 'tensor', 'profiler' or None; got {kind!r}")
    _load_entry_points()
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def get_rule(name: str) -> type:
    """The rule class registered under ``name``.

    Raises:
        UnknownRuleError: nothing is registered under ``name``; the message lists what is.
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownRuleError(f"unknown rule {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def _stop_action(config: RuleConfig) -> str:
    return ""  # in-process stops go through the training context; smdebug's action needs a SageMaker job prefix


def build_rule(config: RuleConfig | str | Mapping[str, Any], trial: Any = None) -> Any:
    """Instantiate a rule from its config (name + parameters); tensor rules need the ``trial`` they read."""
    config = RuleConfig.coerce(config)
    cls = get_rule(config.name)
    if cls.kind == "tensor":
        return cls(trial, _stop_action(config), **dict(config.parameters))
    return cls(**dict(config.parameters))


def validate_rules(configs: Iterable[RuleConfig | str | Mapping[str, Any]], kind: str) -> tuple[RuleConfig, ...]:
    """Check that every rule exists, is of ``kind`` and accepts its parameters (before any job runs)."""
    from .base import check_parameters

    out = []
    for c in configs:
        c = RuleConfig.coerce(c)
        cls = get_rule(c.name)
        if cls.kind != kind:
            raise ConfigError(f"rule {c.name!r} is a {cls.kind} rule; list it under "
                              f"{'rules' if cls.kind == 'tensor' else 'profiler_rules'}")
        params = check_parameters(cls, c.parameters)
        if cls.kind == "profiler":
            cls(**dict(c.parameters))
        else:
            probe = object.__new__(cls)
            probe.validate(params)
        out.append(c)
    return tuple(out)


def evaluate_trial(trial: Any, rules: Iterable[RuleConfig | str | Mapping[str, Any]]) -> list[RuleFinding]:
    """Run tensor rules over every step of a finished trial with smdebug's ``invoke_rule``.

    Args:
        trial: An smdebug trial, or a local path / S3 URI for ``smdebug.trials.create_trial``.
        rules: Rule names or :class:`~dogclf.debug.RuleConfig` entries.

    Returns:
        One :class:`RuleFinding` per rule, in the given order.

    Raises:
        EmptyTrialError: the path holds no saved tensors.
        UnknownRuleError: a rule name is not registered.
    """
    from smdebug.rules.rule_invoker import invoke_rule

    from ..trial import open_trial

    if isinstance(trial, (str, bytes)) or hasattr(trial, "__fspath__"):
        trial = open_trial(trial)
    steps = trial.steps()
    end = (max(steps) + 1) if steps else 0
    configs = [RuleConfig.coerce(c) for c in rules]
    for config in configs:
        if get_rule(config.name).kind != "tensor":
            raise ConfigError(f"rule {config.name!r} is a profiler rule; use evaluate_profile")
    findings = []
    for config in configs:
        rule = build_rule(config, trial)
        invoke_rule(rule, start_step=min(steps) if steps else 0, end_step=end, raise_eval_cond=False)
        findings.append(rule.finding())
    return findings


def evaluate_profile(data: ProfileData, rules: Iterable[RuleConfig | str | Mapping[str, Any]]) -> list[RuleFinding]:
    """Run profiler rules over a run's system samples and step timings; one finding per rule."""
    configs = [RuleConfig.coerce(c) for c in rules]
    for config in configs:
        if get_rule(config.name).kind != "profiler":
            raise ConfigError(f"rule {config.name!r} is a tensor rule; use evaluate_trial")
    return [build_rule(config).evaluate(data) for config in configs]
