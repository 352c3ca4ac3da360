"""The offline Debugger/profiler report: one self-contained HTML file plus its PNGs.

It reproduces what the seed users drew by hand and downloaded from SageMaker: the train/eval
``CrossEntropyLoss_output_0`` curves on two step axes, system utilisation, the step-duration histogram and
statistics (mean, max, p99, p95, p50, min), the rules table and the top operators. Images are embedded as data
URIs, so the page renders without network access.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf.errors import EmptyTrialError

from ._io import read_json, write_bytes
from .config import DebuggerConfig, RuleConfig
from .rules.base import ProfileData, RuleFinding

__all__ = ["DebugReport", "build_report", "load_profile", "step_statistics"]

logger = logging.getLogger(__name__)


def load_profile(debug_dir: str | os.PathLike[str]) -> ProfileData:
    """Read the system samples, step timings and run facts a job wrote under ``<output>/debug``."""
    debug_dir = Path(debug_dir)
    system = read_json(debug_dir / "system.json", {}) or {}
    return ProfileData(system=list(system.get("samples", [])), steps=list(read_json(debug_dir / "steps.json", [])),
                       meta=dict(read_json(debug_dir / "meta.json", {}) or {}))


def step_statistics(durations: Sequence[float]) -> dict[str, float]:
    """``mean``, ``max``, ``p99``, ``p95``, ``p50`` and ``min`` of step durations in seconds (empty if none)."""
    import numpy as np

    values = np.asarray(list(durations), dtype=float)
    if values.size == 0:
        return {}
    return {"mean": float(values.mean()), "max": float(values.max()), "p99": float(np.percentile(values, 99)),
            "p95": float(np.percentile(values, 95)), "p50": float(np.percentile(values, 50)),
            "min": float(values.min())}


@dataclass(frozen=True)
class DebugReport:
    """A built report.

    Attributes:
        html_path: The HTML file.
        images: PNG files by name (``loss``, ``system``, ``step_durations``).
        findings: Every rule's finding (tensor rules from the finished trial, then profiler rules).
        step_stats: Train step-duration statistics in seconds.
        top_operators: The profiled steps' most expensive operators.
        loss: Loss per mode: ``{"TRAIN": (steps, values), "EVAL": (steps, values)}``.
        stopped_by: Why training stopped early, if a rule stopped it.
    """

    html_path: Path
    images: Mapping[str, Path]
    findings: tuple[RuleFinding, ...]
    step_stats: Mapping[str, float]
    top_operators: tuple[Mapping[str, Any], ...] = ()
    loss: Mapping[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    stopped_by: str | None = None

    def finding(self, rule: str) -> RuleFinding:
        """The finding of the rule named ``rule``.

        Raises:
            UnknownRuleError: the report has no finding for that rule.
        """
        from dogclf.errors import UnknownRuleError

        for f in self.findings:
            if f.rule == rule:
                return f
        raise UnknownRuleError(f"no finding for rule {rule!r} in this report; it has "
                               f"{', '.join(f.rule for f in self.findings) or 'none'}")

    @property
    def triggered(self) -> list[str]:
        """Names of the rules that fired."""
        return [f.rule for f in self.findings if f.triggered]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _loss_figure(loss: Mapping[str, tuple[list[int], list[float]]], name: str) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not loss:
        return None
    fig, host = plt.subplots(figsize=(8.3, 6.2))
    lines = []
    if "TRAIN" in loss:
        steps, values = loss["TRAIN"]
        lines += host.plot(steps, values, color="tab:blue", label=name)
        host.set_xlabel("Steps (TRAIN)", color="tab:blue")
    host.set_ylabel(name)
    if "EVAL" in loss:
        top = host.twiny()
        steps, values = loss["EVAL"]
        lines += top.plot(steps, values, color="tab:orange", label=f"val_{name}")
        top.set_xlabel("Steps (EVAL)", color="tab:orange")
    host.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    return _png(fig)


def _system_figure(data: ProfileData) -> bytes | None:
    import matplotlib.pyplot as plt

    if not data.system:
        return None
    t0 = data.system[0]["t"]
    ts = [s["t"] - t0 for s in data.system]
    fig, ax = plt.subplots(figsize=(8.3, 3.6))
    cores = max((len(s.get("cpu_per_core") or ()) for s in data.system), default=0)
    for core in range(cores if cores <= 16 else 0):  # per-core lines while they stay readable
        ax.plot(ts, [(s.get("cpu_per_core") or [0.0] * cores)[core] if core < len(s.get("cpu_per_core") or ())
                     else 0.0 for s in data.system], color="tab:gray", linewidth=0.6, alpha=0.5,
                label="CPU per core" if core == 0 else None)
    ax.plot(ts, [s.get("cpu", 0.0) for s in data.system], label="CPU (all cores)")
    ax.plot(ts, [s.get("memory", 0.0) for s in data.system], label="memory")
    if any(s.get("gpu") is not None for s in data.system):
        ax.plot(ts, [s.get("gpu") or 0.0 for s in data.system], label="GPU")
    if any(s.get("gpu_memory") is not None for s in data.system):
        ax.plot(ts, [s.get("gpu_memory") or 0.0 for s in data.system], label="GPU memory")
    ax.plot(ts, [s.get("iowait", 0.0) for s in data.system], label="I/O wait", linestyle=":")
    ax.set_xlabel("seconds since the monitor started")
    ax.set_ylabel("utilisation [%]")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right", fontsize="small")
    return _png(fig)


def _histogram_figure(durations: Sequence[float]) -> bytes | None:
    import matplotlib.pyplot as plt

    if len(durations) == 0:
        return None
    fig, ax = plt.subplots(figsize=(8.3, 3.6))
    ax.hist(list(durations), bins=min(50, max(5, len(durations) // 3)), color="tab:blue")
    ax.set_xlabel("step duration [s]")
    ax.set_ylabel("steps")
    ax.set_title("Step durations (TRAIN)")
    return _png(fig)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fired td{background:#fff3f0}img{max-width:100%}code{background:#f5f5f5;padding:0 3px}
.small{color:#666;font-size:.85em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _params(params: Mapping[str, Any]) -> str:
    return "<br>".join(f"{_esc(k)}:{_esc(v)}" for k, v in params.items())


def _img(name: str, data: bytes | None, alt: str) -> str:
    if data is None:
        return f"<p class='small'>No data for {_esc(alt)}.</p>"
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"


def _render(title: str, summary: Mapping[str, Any], images: Mapping[str, bytes | None],
            stats: Mapping[str, float], findings: Sequence[RuleFinding], operators: Sequence[Mapping[str, Any]],
            stopped_by: str | None, outliers: int | None) -> str:
    rows = []
    for key, value in summary.items():
        rows.append(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>",
             "<p class='small'>Generated offline by dogclf from the job's Debugger tensors (smdebug trial), system "
             "monitor and step timings. Recommendations are informational.</p>",
             "<h2>Training job summary</h2><table>", *rows, "</table>"]
    if stopped_by:
        parts.append(f"<p><b>Training was stopped early:</b> {_esc(stopped_by)}</p>")
    parts += ["<h2>Loss (Debugger tensors)</h2>", _img("loss", images.get("loss"), "train and eval loss")]
    parts += ["<h2>System usage statistics</h2>", _img("system", images.get("system"), "system utilisation")]
    parts.append("<h2>Step duration analysis</h2>")
    if stats:
        header = "".join(f"<th>{k}</th>" for k in stats)
        cells = "".join(f"<td class='num'>{v:.4f}</td>" for v in stats.values())
        parts.append(f"<table><tr><th></th>{header}</tr><tr><th>Step Durations in [s]</th>{cells}</tr></table>")
        if outliers is not None:
            parts.append(f"<p>The average step duration was {stats['mean']:.4f}s; {outliers} step(s) took longer "
                         "than the StepOutlier rule's limit (mean + stddev standard deviations).</p>")
    parts.append(_img("step_durations", images.get("step_durations"), "step-duration histogram"))
    parts.append("<h2>Rules summary</h2>")
    ordered = sorted(findings, key=lambda f: (-f.trigger_count, f.rule))
    parts.append("<table><tr><th>Rule</th><th>Kind</th><th>Description</th><th>Recommendation</th>"
                 "<th>Number of times rule triggered</th><th>Number of datapoints</th><th>First step</th>"
                 "<th>Rule parameters</th><th>Evidence</th></tr>")
    for f in ordered:
        evidence = ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in list(f.evidence.items())[:8])
        parts.append(f"<tr class='{'fired' if f.triggered else 'quiet'}'><td>{_esc(f.rule)}</td><td>{_esc(f.kind)}</td>"
                     f"<td>{_esc(f.description)}</td><td>{_esc(f.recommendation)}</td>"
                     f"<td class='num'>{f.trigger_count}</td><td class='num'>{f.datapoints}</td>"
                     f"<td class='num'>{'' if f.first_step is None else f.first_step}</td>"
                     f"<td>{_params(f.parameters)}</td><td class='small'>{evidence}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Framework metrics: top operators (torch.profiler)</h2>")
    if operators:
        parts.append("<table><tr><th>Operator</th><th>Calls</th><th>Self CPU [ms]</th><th>CPU total [ms]</th>"
                     "<th>Self device [ms]</th></tr>")
        for op in operators:
            parts.append(f"<tr><td><code>{_esc(op['name'])}</code></td><td class='num'>{op['count']}</td>"
                         f"<td class='num'>{op['self_cpu_time_us'] / 1000:.3f}</td>"
                         f"<td class='num'>{op['cpu_time_us'] / 1000:.3f}</td>"
                         f"<td class='num'>{op.get('self_device_time_us', 0.0) / 1000:.3f}</td></tr>")
        parts.append("</table><p class='small'>The Chrome trace of the profiled steps is <code>debug/trace.json"
                     "</code> in the job's output (open it in chrome://tracing or Perfetto).</p>")
    else:
        parts.append("<p class='small'>No framework profile was recorded.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _tensor_dir(output_dir: Path) -> Path:
    cfg = read_json(output_dir / "debug" / "debughookconfig.json", {}) or {}
    local = cfg.get("LocalPath")
    if local and Path(local).is_dir():
        return Path(local)
    return output_dir / "tensors"


def build_report(output_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *,
                 rules: Iterable[RuleConfig | str] | None = None,
                 profiler_rules: Iterable[RuleConfig | str] | None = None,
                 trial: Any = None, title: str = "dogclf Debugger and profiling report",
                 summary: Mapping[str, Any] | None = None) -> DebugReport:
    """Build the report from a finished job's output data folder.

    The tensor rules are evaluated afresh on the finished trial (read back with smdebug's ``create_trial``),
    the profiler rules on ``debug/``'s figures.

    Args:
        output_dir: The job's output data folder (it holds ``tensors/`` and ``debug/``).
        path: The HTML file to write; default ``<output_dir>/report/debug-report.html``. PNGs go beside it.
        rules: Tensor rules to evaluate (default: :class:`DebuggerConfig`'s).
        profiler_rules: Profiler rules to evaluate (default: all eight).
        trial: A trial or ``s3://`` URI to read tensors from instead of ``<output_dir>/tensors``.
        title: The page title.
        summary: Extra rows for the job-summary table (job name, backend, hyperparameters...).

    Returns:
        The :class:`DebugReport`.

    Raises:
        EmptyTrialError: there are no tensors to read (and no profiling data either).
        MissingExtraError: matplotlib (the ``report`` extra) or smdebug (``debug``) is not installed.
    """
    require("report", "matplotlib", "Debugger report")
    from .rules import evaluate_profile, evaluate_trial
    from .rules.profiler import step_durations
    from .trial import loss_series, open_trial

    output_dir = Path(output_dir)
    defaults = DebuggerConfig()
    rules = tuple(defaults.rules if rules is None else rules)
    profiler_rules = tuple(defaults.profiler_rules if profiler_rules is None else profiler_rules)
    data = load_profile(output_dir / "debug")
    in_job = read_json(output_dir / "debug" / "rules.json", {}) or {}

    loss: dict[str, Any] = {}
    findings: list[RuleFinding] = []
    loss_name = "CrossEntropyLoss_output_0"
    try:
        opened = trial if trial is not None and not isinstance(trial, (str, os.PathLike)) else \
            open_trial(trial if trial is not None else _tensor_dir(output_dir))
    except EmptyTrialError:
        if not data.steps:
            raise
        opened = None
        logger.warning("no Debugger tensors under %s; the report covers profiling only", output_dir)
    if opened is not None:
        from .rules.tensor import LOSS_REGEX

        names = opened.tensor_names(regex=LOSS_REGEX)
        loss_name = names[0] if names else loss_name
        loss = loss_series(opened, loss_name) if names else {}
        findings += evaluate_trial(opened, rules)
    findings += evaluate_profile(data, profiler_rules)

    durations = step_durations(data, "train")
    stats = step_statistics(durations)
    outliers = None
    for f in findings:
        if f.rule == "StepOutlier":
            outliers = len(getattr(f, "steps", ())) if f.triggered else None
    if stats and outliers is None and len(durations) >= 3:
        limit = stats["mean"] + 3 * float(durations.std())
        outliers = int((durations > limit).sum()) if durations.std() > 0 else 0

    images = {"loss": _loss_figure(loss, loss_name), "system": _system_figure(data),
              "step_durations": _histogram_figure(durations)}
    operators = tuple((read_json(output_dir / "debug" / "top_operators.json", {}) or {}).get("operators", []))
    rows: dict[str, Any] = dict(summary or {})
    meta = data.meta
    if meta.get("train_begin") and meta.get("train_end"):
        rows.setdefault("training time [s]", f"{meta['train_end'] - meta['train_begin']:.1f}")
    if meta.get("process_start") and meta.get("first_step"):
        rows.setdefault("initialization time [s]", f"{meta['first_step'] - meta['process_start']:.1f}")
    rows.setdefault("train steps", int(len(durations)))
    train_rows = [r for r in data.steps if r.get("mode") == "train"]
    if train_rows:
        data_s = sum(float(r["data_time"]) for r in train_rows)
        compute_s = sum(float(r["compute_time"]) for r in train_rows)
        if data_s + compute_s > 0:
            rows.setdefault("train step time: data loading / compute",
                            f"{data_s:.2f}s / {compute_s:.2f}s ({100 * data_s / (data_s + compute_s):.1f}% waiting "
                            "for data)")
    gpus = meta.get("gpu_count", 0)
    if gpus is None:
        gpus = f"unknown (the query failed: {meta.get('gpu_error', 'no cause recorded')})"
    rows.setdefault("CPU cores / GPUs", f"{meta.get('cpu_count')} / {gpus}")
    rows.setdefault("rules triggered", ", ".join(f.rule for f in findings if f.triggered) or "none")

    html_path = Path(path) if path is not None else output_dir / "report" / "debug-report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, png in images.items():
        if png is not None:
            written[name] = write_bytes(html_path.parent / f"{html_path.stem}-{name}.png", png)
    page = _render(title, rows, images, stats, findings, operators, in_job.get("stopped_by"), outliers)
    write_bytes(html_path, page.encode("utf-8"))
    return DebugReport(html_path=html_path, images=written, findings=tuple(findings), step_stats=stats,
                       top_operators=operators, loss=loss, stopped_by=in_job.get("stopped_by"))


