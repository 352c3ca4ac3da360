"""Frozen, validated configuration for Debugger tensors, rules and profiling.

The shapes follow the SageMaker Python SDK the seed notebook used (``CollectionConfig(name, parameters)``,
``ProfilerConfig(system_monitor_interval_millis=...)``), so a seed user can copy their settings over; they are
validated on creation, so a typo fails before a job starts rather than silently saving nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dogclf.errors import ConfigError

__all__ = [
    "BUILTIN_COLLECTIONS",
    "COLLECTION_ALIASES",
    "CollectionConfig",
    "DebuggerConfig",
    "ProfilerConfig",
    "RuleConfig",
    "seed_collections",
]

#: Collections smdebug's PyTorch hook knows by name (they carry their own include regexes).
BUILTIN_COLLECTIONS: dict[str, str] = {
    "weights": "^(?!gradient).*weight",
    "biases": "^(?!gradient).*bias",
    "gradients": "^gradient",
    "losses": "[Ll]oss_(?!input).*output",
    "inputs": "",
    "outputs": "",
    "all": ".*",
    "default": "",
}

#: The collection names the seed notebook used, with the tensors SageMaker's Debugger saved for them.
COLLECTION_ALIASES: dict[str, str] = {
    "model_weights": "^(?!gradient).*weight",
    "model_gradients": "^gradient/",
    "biases_values": "^(?!gradient).*bias",
    "loss_inputs": "CrossEntropyLoss_input_[01]",
}

_INTERVAL_KEYS = ("save_interval", "train.save_interval", "eval.save_interval", "predict.save_interval")
_STEP_KEYS = ("save_steps", "train.save_steps", "eval.save_steps", "predict.save_steps")
_INT_KEYS = ("start_step", "end_step", "train.start_step", "eval.start_step", "train.end_step", "eval.end_step")
_OTHER_KEYS = ("include_regex", "reductions", "save_histogram", "save_shape", "save_raw_tensor")
_KNOWN_KEYS = frozenset(_INTERVAL_KEYS + _STEP_KEYS + _INT_KEYS + _OTHER_KEYS)
_REDUCTIONS = frozenset(
    f"{a}{r}" for a in ("", "abs_") for r in ("min", "max", "mean", "std", "variance", "sum", "prod", "l1_norm",
                                              "l2_norm")
)


def _as_int(name: str, key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"collection {name!r}: {key}={value!r} is not an integer") from None
    if number < minimum:
        raise ConfigError(f"collection {name!r}: {key}={value!r} must be >= {minimum}")
    return number


@dataclass(frozen=True)
class CollectionConfig:
    """One Debugger collection: which tensors to save and how often, per mode.

    Mirrors ``sagemaker.debugger.CollectionConfig``: ``parameters`` takes the same string keys the seed used
    (``"include_regex"``, ``"save_interval"``, ``"train.save_interval"``, ``"eval.save_interval"``,
    ``"save_steps"``, ``"start_step"``, ``"end_step"``, ``"reductions"``, ``"save_histogram"``, ...).

    Args:
        name: A built-in smdebug collection (``weights``, ``biases``, ``gradients``, ``losses``, ``all``, ...),
            one of the seed's names (``model_weights``, ``model_gradients``, ``biases_values``, ``loss_inputs``),
            or any other name together with an ``include_regex``.
        parameters: Collection parameters; values may be strings (as SageMaker stores them) or numbers.

    Raises:
        ConfigError: an unknown name without ``include_regex``, an unknown parameter key, an interval below 1,
            a regex that does not compile or an unknown reduction.

    Example:
        >>> CollectionConfig("LossOutput", {"include_regex": "CrossEntropyLoss_output_0", "save_interval": "1"}).name
        'LossOutput'
    """

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name or ""):
            raise ConfigError(f"collection name must be a non-empty identifier-like string; got {self.name!r}")
        if not isinstance(self.parameters, Mapping):
            raise ConfigError(f"collection {self.name!r}: parameters must be a mapping; got "
                              f"{type(self.parameters).__name__}")
        params = {str(k): v for k, v in self.parameters.items()}
        unknown = sorted(set(params) - _KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"collection {self.name!r}: unknown parameter(s) {unknown}; expected some of "
                              f"{sorted(_KNOWN_KEYS)}")
        for key in _INTERVAL_KEYS:
            if key in params:
                _as_int(self.name, key, params[key], 1)
        for key in _INT_KEYS:
            if key in params:
                _as_int(self.name, key, params[key], 0)
        for key in _STEP_KEYS:
            if key in params:
                for part in str(params[key]).split(","):
                    if part.strip():
                        _as_int(self.name, key, part, 0)
        if "reductions" in params:
            bad = [r for r in str(params["reductions"]).split(",") if r.strip() and r.strip() not in _REDUCTIONS]
            if bad:
                raise ConfigError(f"collection {self.name!r}: unknown reduction(s) {bad}; expected some of "
                                  f"{sorted(_REDUCTIONS)}")
        regex = params.get("include_regex")
        if regex is not None:
            for part in str(regex).split(","):
                try:
                    re.compile(part)
                except re.error as exc:
                    raise ConfigError(f"collection {self.name!r}: include_regex {part!r} does not compile: "
                                      f"{exc}") from None
        elif self.name not in BUILTIN_COLLECTIONS and self.name not in COLLECTION_ALIASES:
            known = sorted(BUILTIN_COLLECTIONS) + sorted(COLLECTION_ALIASES)
            raise ConfigError(f"unknown collection {self.name!r}; use one of {known} or give it an include_regex")
        object.__setattr__(self, "parameters", MappingProxyType({k: str(v) for k, v in params.items()}))

    def interval(self, mode: str = "train") -> int:
        """The save interval in steps for ``mode`` (``"train"`` or ``"eval"``); 1 when unset."""
        value = self.parameters.get(f"{mode}.save_interval", self.parameters.get("save_interval", "1"))
        return int(value)

    def include_regex(self) -> str | None:
        """The include regex smdebug gets: the explicit one, or the alias's, or ``None`` for built-ins."""
        if "include_regex" in self.parameters:
            return self.parameters["include_regex"]
        return COLLECTION_ALIASES.get(self.name)

    def to_hook_json(self) -> dict[str, Any]:
        """This collection as one ``CollectionConfigurations`` entry of smdebug's JSON hook configuration."""
        params = dict(self.parameters)
        regex = self.include_regex()
        if regex:
            params["include_regex"] = regex
        return {"CollectionName": self.name, "CollectionParameters": params}


def seed_collections() -> tuple[CollectionConfig, ...]:
    """The seed notebook's four collections.

    ``model_weights``, ``model_gradients`` and ``biases_values`` every 5 train steps and every eval step, and
    ``LossOutput`` (``CrossEntropyLoss_output_0``) every step in both modes.
    """
    every = {"train.save_interval": "5", "eval.save_interval": "1"}
    return (
        CollectionConfig("model_weights", dict(every)),
        CollectionConfig("model_gradients", dict(every)),
        CollectionConfig("biases_values", dict(every)),
        CollectionConfig("LossOutput", {"include_regex": "CrossEntropyLoss_output_0",
                                        "train.save_interval": "1", "eval.save_interval": "1"}),
    )


@dataclass(frozen=True)
class RuleConfig:
    """One rule to run, by registered name, with parameter overrides.

    Args:
        name: A name from :func:`dogclf.debug.list_rules` (built-in or registered by a plug-in).
        parameters: Overrides of the rule's documented parameters (checked when the rule is built).
        stop_training: Stop the training job when the rule triggers during training (the "StopTraining"
            action of SageMaker's rule actions).

    Raises:
        ConfigError: ``name`` is empty or ``parameters`` is not a mapping.
    """

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    stop_training: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"rule name must be a non-empty string; got {self.name!r}")
        if not isinstance(self.parameters, Mapping):
            raise ConfigError(f"rule {self.name!r}: parameters must be a mapping; got {self.parameters!r}")
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (travels to the training job in ``DOGCLF_DEBUG``)."""
        return {"name": self.name, "parameters": dict(self.parameters), "stop_training": self.stop_training}

    @classmethod
    def coerce(cls, value: RuleConfig | str | Mapping[str, Any]) -> RuleConfig:
        """Accept a :class:`RuleConfig`, a rule name, or the dict :meth:`to_json` makes."""
        if isinstance(value, RuleConfig):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"name", "parameters", "stop_training"}
            if unknown:
                raise ConfigError(f"rule entry has unknown keys {sorted(unknown)}; expected name, parameters, "
                                  "stop_training")
            return cls(value.get("name", ""), value.get("parameters") or {}, bool(value.get("stop_training", False)))
        raise ConfigError(f"a rule is a RuleConfig, a name or a dict; got {type(value).__name__}: {value!r:.80}")


@dataclass(frozen=True)
class ProfilerConfig:
    """System monitoring and framework profiling settings.

    Args:
        system_monitor_interval_millis: How often the system monitor samples CPU, memory, I/O and GPU (ms).
        enabled: Whether to monitor/profile at all.
        profile_start_step: First train step that ``torch.profiler`` records.
        profile_num_steps: How many train steps it records (0 switches framework profiling off).

    Raises:
        ConfigError: an interval below 50 ms or above an hour, or a negative step window.
    """

    system_monitor_interval_millis: int = 500
    enabled: bool = True
    profile_start_step: int = 5
    profile_num_steps: int = 3

    def __post_init__(self) -> None:
        ms = self.system_monitor_interval_millis
        if isinstance(ms, bool) or not isinstance(ms, int) or not 50 <= ms <= 3_600_000:
            raise ConfigError(f"system_monitor_interval_millis must be an integer in [50, 3600000]; got {ms!r}")
        for name in ("profile_start_step", "profile_num_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0; got {value!r}")

    def to_json(self) -> dict[str, Any]:
        """The ``profilerconfig.json`` content for a job (``SMPROFILER_CONFIG_PATH``).

        SageMaker's top-level keys are kept (``ProfilingIntervalInMilliseconds``); ``DisableProfiler`` switches
        off smdebug's own in-process profiler, whose framework profiling does not run on torch 2.x, and dogclf's
        settings travel under ``DogclfProfiler``.
        """
        return {
            "ProfilingIntervalInMilliseconds": self.system_monitor_interval_millis,
            "DisableProfiler": True,
            "DogclfProfiler": {"Enabled": self.enabled, "StartStep": self.profile_start_step,
                               "NumSteps": self.profile_num_steps},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfilerConfig:
        """Read :meth:`to_json`'s form, or the ``profilerconfig.json`` SageMaker itself writes.

        From SageMaker's form, ``DetailedProfilingConfig``'s ``StartStep``/``NumSteps`` become the
        ``torch.profiler`` window.
        """
        lowered = {str(k).lower(): v for k, v in data.items()}
        interval = int(lowered.get("profilingintervalinmilliseconds", 500))
        own = lowered.get("dogclfprofiler")
        if isinstance(own, Mapping):
            own = {str(k).lower(): v for k, v in own.items()}
            return cls(interval, bool(own.get("enabled", True)), int(own.get("startstep", 5)),
                       int(own.get("numsteps", 3)))
        params = {str(k).lower(): v for k, v in (lowered.get("profilingparameters") or {}).items()}
        detailed = params.get("detailedprofilingconfig")
        start, num = 5, 0
        if detailed:
            try:
                d = json.loads(detailed) if isinstance(detailed, str) else dict(detailed)
                d = {str(k).lower(): v for k, v in d.items()}
                start, num = int(d.get("startstep", 5)), int(d.get("numsteps", 3))
            except (ValueError, TypeError):
                start, num = 5, 3
        return cls(interval, True, start, num)


@dataclass(frozen=True)
class DebuggerConfig:
    """Everything :class:`~dogclf.debug.DebugTrainer` sets up: tensors, rules, profiling, SageMaker switches.

    Args:
        collections: The tensor collections to save (default: the seed's, :func:`seed_collections`).
        rules: Tensor rules to run, as names or :class:`RuleConfig` (default: all seven built-ins).
        profiler_rules: Profiler rules to run on the system and step-timing figures (default: all eight).
        rule_interval: During training, evaluate the tensor rules every this many train steps.
        profiler: System monitor and ``torch.profiler`` settings; ``None`` switches profiling off.
        sagemaker_debugger: On the SageMaker backend, also hand the estimator ``DebuggerHookConfig``,
            ``Rule.sagemaker`` and ``ProfilerRule`` (only for accounts that still have Debugger).
        s3_output_path: Where SageMaker uploads tensors (``DebuggerHookConfig.s3_output_path``).
        sagemaker_rules: Which tensor rules also run as SageMaker rule jobs when ``sagemaker_debugger`` is on
            (each is a processing job billed separately; the seed ran ``LossNotDecreasing``).
        frozen_weights: ``"once"`` (default) saves parameters that do not train (a frozen backbone) at their first
            save step only, since they never change; ``"always"`` saves them at every save step, as SageMaker's
            own hook does. Applies to dogclf's in-job hook.

    Raises:
        ConfigError: duplicate collection names, ``rule_interval < 1``, or entries of the wrong type.
    """

    collections: tuple[CollectionConfig, ...] = field(default_factory=seed_collections)
    rules: tuple[RuleConfig, ...] = ("LossNotDecreasing", "Overfit", "VanishingGradient", "ExplodingTensor",
                                     "PoorWeightInitialization", "WeightUpdateRatio", "ClassImbalance")
    profiler_rules: tuple[RuleConfig, ...] = ("StepOutlier", "Dataloader", "CPUBottleneck", "IOBottleneck",
                                              "BatchSize", "LowGPUUtilization", "GPUMemoryIncrease",
                                              "MaxInitializationTime")
    rule_interval: int = 10
    profiler: ProfilerConfig | None = field(default_factory=ProfilerConfig)
    sagemaker_debugger: bool = False
    s3_output_path: str | None = None
    sagemaker_rules: tuple[str, ...] = ("LossNotDecreasing",)
    frozen_weights: str = "once"

    def __post_init__(self) -> None:
        colls = tuple(self.collections)
        for c in colls:
            if not isinstance(c, CollectionConfig):
                raise ConfigError(f"collections must be CollectionConfig objects; got {type(c).__name__}: {c!r:.80}")
        names = [c.name for c in colls]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ConfigError(f"collection name(s) {dups} given more than once")
        object.__setattr__(self, "collections", colls)
        object.__setattr__(self, "rules", tuple(RuleConfig.coerce(r) for r in self.rules))
        object.__setattr__(self, "profiler_rules", tuple(RuleConfig.coerce(r) for r in self.profiler_rules))
        if isinstance(self.rule_interval, bool) or not isinstance(self.rule_interval, int) or self.rule_interval < 1:
            raise ConfigError(f"rule_interval must be an integer >= 1; got {self.rule_interval!r}")
        if self.profiler is not None and not isinstance(self.profiler, ProfilerConfig):
            raise ConfigError(f"profiler must be a ProfilerConfig or None; got {self.profiler!r:.80}")
        if self.s3_output_path is not None and not str(self.s3_output_path).startswith("s3://"):
            raise ConfigError(f"s3_output_path must be an s3:// URI; got {self.s3_output_path!r}")
        if isinstance(self.sagemaker_rules, str) or not all(isinstance(r, str) for r in self.sagemaker_rules):
            raise ConfigError(f"sagemaker_rules must be a tuple of rule names; got {self.sagemaker_rules!r}")
        object.__setattr__(self, "sagemaker_rules", tuple(self.sagemaker_rules))
        if self.frozen_weights not in ("once", "always"):
            raise ConfigError(f"frozen_weights must be 'once' or 'always'; got {self.frozen_weights!r}")

    def effective_collections(self) -> tuple[CollectionConfig, ...]:
        """The collections to save, plus ``loss_inputs`` when ``ClassImbalance`` needs the loss's inputs."""
        colls = list(self.collections)
        if any(r.name == "ClassImbalance" for r in self.rules) and not any(c.name == "loss_inputs" for c in colls):
            colls.append(CollectionConfig("loss_inputs", {"save_interval": "1"}))
        return tuple(colls)

    def hook_json(self, local_path: str | None = None, s3_path: str | None = None) -> dict[str, Any]:
        """smdebug's JSON hook configuration (the ``debughookconfig.json`` SageMaker writes).

        Args:
            local_path: Tensor folder (``LocalPath``); left out, the entry point uses ``<output data dir>/tensors``.
            s3_path: ``S3Path`` to record.
        """
        out: dict[str, Any] = {
            "HookParameters": {"save_all": "false"},
            "CollectionConfigurations": [c.to_hook_json() for c in self.effective_collections()],
        }
        if local_path:
            out["LocalPath"] = str(local_path)
        if s3_path:
            out["S3Path"] = s3_path
        return out

    def rules_json(self) -> dict[str, Any]:
        """The ``DOGCLF_DEBUG`` environment value: which rules the entry point evaluates in-process."""
        return {"rules": [r.to_json() for r in self.rules],
                "profiler_rules": [r.to_json() for r in self.profiler_rules],
                "rule_interval": self.rule_interval, "frozen_weights": self.frozen_weights}

