"""One metrics channel: a job publishes each metric event once; everything that reads metrics reads those events.

:class:`MetricsPublisher` (used by the entry point) does two things with every event, and nothing else in dogclf
writes metrics:

* it prints the metric line SageMaker's metric capture reads with :data:`METRIC_DEFINITIONS` (one ``name=value;``
  pair each, a line per epoch, a selection line, and one per test metric)::

      epoch=1; train_loss=2.710233; train_acc=0.312500; valid_loss=2.013378; valid_acc=0.450000;
      epoch=2; train_loss=1.904417; train_acc=0.531250; valid_loss=2.101032; valid_acc=0.425000;
      best_epoch=1.000000; valid_loss=2.013378; valid_acc=0.450000;
      test_loss=0.656600;
      test_acc=0.812500;

  The selection line (``select='best'``; ``stopped_epoch`` joins it when early stopping ended the run) repeats
  the selected epoch's validation metrics, so the last ``valid_loss`` of a job, the value a tuner reads on either
  backend, is the one of the weights the artifact holds.

* it appends the exact values as one JSON line to ``metrics.jsonl`` in the job's output data folder, and at the end
  writes ``metrics.json`` (final metrics, history, timings).

The local backend, tuning and the command line read a job's metrics from those files
(:func:`read_metric_events`), never by parsing its log; :func:`parse_metric_line` remains for logs where only the
lines exist (a SageMaker job's CloudWatch stream).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from dogclf._io import atomic_write, atomic_write_json

__all__ = ["METRIC_NAMES", "METRIC_DEFINITIONS", "METRIC_EVENTS_FILE", "METRICS_FILE", "MetricsPublisher",
           "format_metric_line", "parse_metric_line", "read_metric_events", "last_values"]

METRIC_EVENTS_FILE = "metrics.jsonl"
"""The job's metric events, one JSON object per line, in its output data folder."""
METRICS_FILE = "metrics.json"
"""The job's final metrics, history and timings, in its output data folder (written at the end)."""

METRIC_NAMES = ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc", "best_epoch",
                "stopped_epoch")
"""The metrics the entry point reports. ``valid_loss`` is the default tuning objective: its last value is the
selected epoch's (see :class:`MetricsPublisher`). ``test_loss`` (average test loss) was the seed's objective; the
test split is only reported, never used to select. ``best_epoch`` and ``stopped_epoch`` report best-epoch
selection and early stopping."""

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


class MetricsPublisher:
    """Publishes a job's metric events: the SageMaker metric line on stdout and a JSON line in ``metrics.jsonl``.

    Args:
        output_dir: The job's output data folder (``SM_OUTPUT_DATA_DIR``).
        history: Events published before a resume (from the checkpoint): the events file is rewritten with
            them, so it never holds an event twice or one of a run that was thrown away.
        stream: Where metric lines go (default ``sys.stdout``, which SageMaker's metric capture reads).
    """

    def __init__(self, output_dir: str | os.PathLike[str], history: list[dict[str, Any]] | None = None,
                 stream: Any = None) -> None:
        self.path = Path(output_dir) / METRIC_EVENTS_FILE
        self.stream = stream
        events = [dict(e) for e in history or []]
        atomic_write(self.path, "".join(json.dumps(e) + "\n" for e in events))
        for event in events:  # the job's log shows every epoch, resumed or not
            self._print(event)

    def _print(self, event: dict[str, Any]) -> None:
        metrics = {k: v for k, v in event.items() if k != "epoch"}
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(format_metric_line(metrics, epoch=event.get("epoch")) + "\n")
        stream.flush()

    def publish(self, metrics: dict[str, float], epoch: int | None = None) -> dict[str, Any]:
        """Publish one event (``epoch`` for per-epoch metrics); returns it as stored."""
        event: dict[str, Any] = ({"epoch": int(epoch)} if epoch is not None else {})
        event.update({k: float(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as fh:  # one write of one line: appended whole or not at all
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._print(event)
        return event

    def finish(self, document: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (final metrics, history, timings) atomically beside the events."""
        return atomic_write_json(self.path.with_name(METRICS_FILE), document)


def read_metric_events(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events a job published so far, in order (an unfinished last line, from a job killed mid-write, is
    skipped); ``[]`` when it has published none."""
    path = Path(output_dir) / METRIC_EVENTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def last_values(events: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of each metric over ``events`` (``epoch`` left out)."""
    out: dict[str, float] = {}
    for event in events:
        out.update({k: float(v) for k, v in event.items() if k != "epoch"})
    return out
