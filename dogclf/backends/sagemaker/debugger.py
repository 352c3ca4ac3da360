"""SageMaker's own Debugger objects, for accounts that still have Debugger.

Debugger closed to new customers on 2026-07-30; accounts that had it keep it. For those, the estimator also
receives ``DebuggerHookConfig`` (the same collections), ``Rule.sagemaker`` for the tensor rules named in
``DebuggerConfig.sagemaker_rules`` (default the seed's ``loss_not_decreasing``), ``ProfilerRule.sagemaker(rule_configs.ProfilerReport())`` and a
``ProfilerConfig`` with the system-monitor interval. dogclf's in-process rules run regardless.

SageMaker's detailed framework profiling (``FrameworkProfile``) is left out on purpose: it drives smdebug's
profiler, which does not run on torch 2.x; ``torch.profiler`` covers it.
"""

from __future__ import annotations

import os
from typing import Any

from dogclf._extras import require
from dogclf.errors import ConfigError

from dogclf.debug.config import DebuggerConfig

__all__ = ["SAGEMAKER_RULE_CONFIGS", "sagemaker_debugger_kwargs"]

#: dogclf rule name -> the ``sagemaker.debugger.rule_configs`` function of SageMaker's built-in.
SAGEMAKER_RULE_CONFIGS: dict[str, str] = {
    "LossNotDecreasing": "loss_not_decreasing",
    "Overfit": "overfit",
    "VanishingGradient": "vanishing_gradient",
    "ExplodingTensor": "exploding_tensor",
    "PoorWeightInitialization": "poor_weight_initialization",
    "WeightUpdateRatio": "weight_update_ratio",
    "ClassImbalance": "class_imbalance",
}


def _rule_parameters(parameters: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in parameters.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def sagemaker_debugger_kwargs(config: DebuggerConfig, s3_output_path: str | None = None) -> dict[str, Any]:
    """Extra ``sagemaker.pytorch.PyTorch`` keyword arguments that switch SageMaker's Debugger on.

    Args:
        config: The Debugger configuration.
        s3_output_path: Where SageMaker uploads tensors (default ``config.s3_output_path``, else SageMaker's
            default under the job's output path).

    Returns:
        A dict with ``debugger_hook_config`` (a ``DebuggerHookConfig``), ``rules`` (``Rule`` and
        ``ProfilerRule`` objects), ``profiler_config`` (a ``ProfilerConfig``; with
        ``disable_profiler=True`` when ``config.profiler`` is ``None``) and the estimator's own
        ``disable_profiler`` flag to match.

    Raises:
        ConfigError: a name in ``config.sagemaker_rules`` is not one of SageMaker's built-in rules.
    """
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    require("sagemaker", "sagemaker.debugger", "SageMaker Debugger configuration")
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, ProfilerConfig, ProfilerRule, Rule, rule_configs

    collections = []
    for c in config.effective_collections():
        entry = c.to_hook_json()
        collections.append(CollectionConfig(name=entry["CollectionName"], parameters=dict(entry["CollectionParameters"])))
    hook = DebuggerHookConfig(s3_output_path=s3_output_path or config.s3_output_path,
                              collection_configs=collections)
    rules: list[Any] = []
    configured = {r.name: r for r in config.rules}
    for name in config.sagemaker_rules:
        fn = SAGEMAKER_RULE_CONFIGS.get(name)
        if fn is None:
            raise ConfigError(f"SageMaker has no built-in rule {name!r}; it has {sorted(SAGEMAKER_RULE_CONFIGS)} "
                              "(plug-in rules run in-process only)")
        r = configured.get(name)
        params = _rule_parameters(dict(r.parameters)) if r is not None else {}
        rules.append(Rule.sagemaker(getattr(rule_configs, fn)(), rule_parameters=params or None))
    if config.profiler is not None:
        rules.append(ProfilerRule.sagemaker(rule_configs.ProfilerReport()))
        profiler = ProfilerConfig(system_monitor_interval_millis=config.profiler.system_monitor_interval_millis)
    else:
        profiler = ProfilerConfig(disable_profiler=True)
    return {"debugger_hook_config": hook, "rules": rules, "profiler_config": profiler,
            "disable_profiler": config.profiler is None}
