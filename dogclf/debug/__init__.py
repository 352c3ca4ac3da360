"""Debugger tensors, rules and profiling for training runs (filled in by its capability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_callbacks(hyperparameters: dict[str, Any], output_data_dir: Path) -> list[Any]:
    """The callbacks the training entry point attaches for Debugger tensors, rules and profiling.

    Reads the hook configuration from ``SMDEBUG_CONFIG_FILE_PATH`` and the profiler configuration from the job's
    environment; returns an empty list when nothing is configured.
    """
    return []
