"""The metric lines the training entry point prints, and the regexes that read them (locally and on SageMaker).

The entry point prints one line per epoch and one per test metric, each ``name=value;`` pair ending in ``;``::

    epoch=1; train_loss=2.710233; train_acc=0.312500; valid_loss=2.013378; valid_acc=0.450000;
    test_loss=0.656600;
    test_acc=0.812500;

:data:`METRIC_DEFINITIONS` is the list SageMaker's ``metric_definitions`` expects (one capture group each); the
local backend parses job logs with the same regexes through :func:`parse_metric_line`.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["METRIC_NAMES", "METRIC_DEFINITIONS", "format_metric_line", "parse_metric_line"]

METRIC_NAMES = ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc")
"""The metrics the entry point reports. ``test_loss`` (average test loss) is the seed's tuning objective."""

_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"

METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"{name}={_NUMBER};"} for name in METRIC_NAMES
]
"""SageMaker-style metric definitions (``{"Name", "Regex"}``, one capture group) for the entry point's lines."""

_EPOCH = re.compile(r"(?<![a-z_])epoch=([0-9]+);")


def format_metric_line(metrics: dict[str, float], epoch: int | None = None) -> str:
    """One metric line: ``epoch=1; train_loss=0.123456; ...;`` (values with 6 decimals)."""
    parts = [f"epoch={int(epoch)};"] if epoch is not None else []
    for name, value in metrics.items():
        value = float(value)
        text = "nan" if math.isnan(value) else ("inf" if value == math.inf else
                                                 "-inf" if value == -math.inf else f"{value:.6f}")
        parts.append(f"{name}={text};")
    return " ".join(parts)


def parse_metric_line(line: str, definitions: list[dict[str, str]] | None = None) -> dict[str, Any] | None:
    """The metrics ``line`` carries under ``definitions`` (default :data:`METRIC_DEFINITIONS`), or ``None``.

    Returns:
        ``{"train_loss": 0.12, ..., "epoch": 1}`` (``epoch`` only where the line has one), or ``None`` when no
        definition matches.
    """
    found: dict[str, Any] = {}
    for definition in definitions if definitions is not None else METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if match:
            try:
                found[definition["Name"]] = float(match.group(1))
            except (ValueError, IndexError):
                continue
    if not found:
        return None
    epoch = _EPOCH.search(line)
    if epoch:
        found["epoch"] = int(epoch.group(1))
    return found
