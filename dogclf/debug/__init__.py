"""Debugger tensors, rules and profiling for training runs, on PyTorch 2.x, locally and on SageMaker.

* :class:`DebugTrainer` runs a training job with the configured collections, rules and profiling and builds the
  report (:class:`DebugReport`); :func:`build_report` builds one from any finished job's output folder.
* :class:`DebuggerConfig`, :class:`CollectionConfig`, :class:`ProfilerConfig`, :class:`RuleConfig` configure it;
  :func:`seed_collections` are the seed notebook's collections.
* Rules are plug-ins: :func:`register_rule`, :func:`get_rule`, :func:`list_rules` (entry-point group
  ``dogclf.rules``); :func:`evaluate_trial` runs tensor rules on any smdebug trial.
* :func:`make_callbacks` attaches the hook, rules and profilers to a training run; it is registered in the
  ``dogclf.callbacks`` entry-point group, through which the training entry point finds it.

Heavy imports (torch, smdebug, matplotlib) happen on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dogclf._lazy import lazy_exports

from .config import (
    CollectionConfig,
    DebuggerConfig,
    ProfilerConfig,
    RuleConfig,
    seed_collections,
)

__all__ = [
    "CollectionConfig",
    "DebugReport",
    "DebugTrainer",
    "DebuggerConfig",
    "ProfileData",
    "ProfilerConfig",
    "ProfilerRule",
    "RuleConfig",
    "RuleFinding",
    "TensorRule",
    "build_report",
    "evaluate_profile",
    "evaluate_trial",
    "get_rule",
    "list_rules",
    "make_callbacks",
    "open_trial",
    "register_rule",
    "seed_collections",
]

_LAZY = {
    "DebugTrainer": "dogclf.debug.trainer",
    "DebugReport": "dogclf.debug.report",
    "build_report": "dogclf.debug.report",
    "ProfileData": "dogclf.debug.rules",
    "ProfilerRule": "dogclf.debug.rules",
    "RuleFinding": "dogclf.debug.rules",
    "TensorRule": "dogclf.debug.rules",
    "evaluate_profile": "dogclf.debug.rules",
    "evaluate_trial": "dogclf.debug.rules",
    "get_rule": "dogclf.debug.rules",
    "list_rules": "dogclf.debug.rules",
    "register_rule": "dogclf.debug.rules",
    "open_trial": "dogclf.debug.trial",
}


def make_callbacks(hyperparameters: dict[str, Any], output_data_dir: Path) -> list[Any]:
    """The callbacks the training entry point attaches for Debugger tensors, rules and profiling.

    See :func:`dogclf.debug.callbacks.make_callbacks` (this wrapper keeps ``import dogclf.debug`` light).
    """
    from .callbacks import make_callbacks as _make

    return _make(hyperparameters, output_data_dir)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
