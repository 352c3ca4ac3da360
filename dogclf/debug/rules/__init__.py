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
from collections.abc import Iterable, Mapping
from typing import Any

from dogclf._registry import Registry
from dogclf.errors import ConfigError, PluginLoadError, UnknownRuleError

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


def _rule_class(name: str, cls: Any) -> type:
    """The class to register under ``name``: ``cls`` itself, or a subclass carrying ``name`` as its rule name."""
    if not (isinstance(cls, type) and issubclass(cls, (TensorRule, ProfilerRule))):
        raise ConfigError(f"a rule must subclass dogclf.debug.rules.TensorRule or ProfilerRule; got {cls!r}")
    if name != cls.registered_name():
        cls = type(cls.__name__, (cls,), {"rule_name": name, "__module__": cls.__module__, "__doc__": cls.__doc__})
    return cls


_RULES: Registry[type] = Registry("rule", group=ENTRY_POINT_GROUP, unknown_error=UnknownRuleError,
                                  check=_rule_class)
for _cls in _BUILTINS:  # the classes the entry points name, registered here too so they need no package metadata
    _RULES.register_lazy(_cls.__name__, lambda c=_cls: c, source=f"{_cls.__module__}:{_cls.__qualname__}")


def register_rule(name: str | type | None = None, cls: type | None = None, *, overwrite: bool = False) -> Any:
    """Register a rule class under a name, so configs and :func:`get_rule` find it.

    Works as a plain call (``register_rule("MyRule", MyRule)``), as a decorator with a name
    (``@register_rule("MyRule")``) or without one (``@register_rule``, named after the class).

    Args:
        name: The name (defaults to the class's ``rule_name`` or class name), or the class itself.
        cls: The rule class: a subclass of :class:`TensorRule` or :class:`ProfilerRule`.
        overwrite: Replace a rule already registered under that name.

    Returns:
        The registered class (so it can be used as a decorator).

    Raises:
        ConfigError: ``cls`` is not a rule class, or the name is not a non-empty string.
        DuplicateError: the name is taken by another class and ``overwrite`` is false.
    """
    if isinstance(name, type):
        name, cls = None, name
    if cls is None:
        return lambda c: register_rule(name, c, overwrite=overwrite)
    if name is None and isinstance(cls, type) and issubclass(cls, (TensorRule, ProfilerRule)):
        name = cls.registered_name()
    return _RULES.register(name, cls, overwrite=overwrite)


def unregister_rule(name: str) -> None:
    """Remove a registered rule (built-ins included).

    Raises:
        UnknownRuleError: nothing is registered under ``name``.
    """
    _RULES.unregister(name)


def list_rules(kind: str | None = None) -> list[str]:
    """Sorted names of the registered rules (plug-ins that fail to load are left out with a warning).

    Args:
        kind: ``"tensor"`` or ``"profiler"`` to list one kind, ``None`` for all.

    Raises:
        ConfigError: ``kind`` is something else.
    """
    if kind not in (None, "tensor", "profiler"):
        raise ConfigError(f"kind must be 'tensor', 'profiler' or None; got {kind!r}")
    names = []
    for name in _RULES.names():
        try:
            cls = _RULES.get(name)
        except (PluginLoadError, ConfigError) as exc:  # a broken plug-in must not hide the others
            logger.warning("rule plug-in %r is left out: %s", name, exc)
            continue
        if kind is None or cls.kind == kind:
            names.append(name)
    return names


def get_rule(name: str) -> type:
    """The rule class registered under ``name``.

    Raises:
        UnknownRuleError: nothing is registered under ``name``; the message lists what is and the closest names.
        PluginLoadError: the rule's entry point fails to import.
        ConfigError: the entry point names something that is not a rule class.
    """
    return _RULES.get(name)


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
