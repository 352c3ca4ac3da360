"""Profiling callbacks: per-step timings, the system monitor and ``torch.profiler`` over a window of steps.

They write under the job's ``<output_data_dir>/debug/`` (``steps.json``, ``system.json``, ``meta.json``,
``trace.json``, ``top_operators.json``), what the profiler rules and the report read;
:func:`dogclf.debug.callbacks.make_callbacks` attaches them when the job's profiler configuration asks.

A job resumed from a checkpoint (``ctx.state["resumed_from"]``) continues the files of its earlier start: the
step timings of the steps before the checkpoint, the system samples taken until the last epoch ended, the run facts
of the first start (with each restart listed), and a ``torch.profiler`` window already recorded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf._io import atomic_path
from dogclf.training.callbacks import Callback, StepInfo, TrainingContext

from ._io import read_json, write_json

__all__ = ["StepTimer", "SystemMonitor", "TorchProfilerCallback", "gpu_facts"]

logger = logging.getLogger(__name__)


class StepTimer(Callback):
    """Records each step's timing (data loading vs compute), loss and batch size to ``steps.json``.

    Also fills ``meta.json`` with run facts the profiler rules use.

    Args:
        debug_dir: The ``debug/`` folder of the job's output.
        flush_every: Rewrite ``steps.json`` every this many steps (and at each epoch and the end).
    """

    def __init__(self, debug_dir: Path, flush_every: int = 200) -> None:
        self.debug_dir = Path(debug_dir)
        self.flush_every = flush_every
        self.steps: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self._begin: float | None = None

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """Note the start times, cores, data-loader workers and GPU."""
        psutil = require("debug", "psutil", "profiler")

        try:
            process_start = psutil.Process().create_time()
        except Exception:  # noqa: BLE001
            process_start = None
        workers = ctx.state.get("num_workers")
        training = ctx.training
        self.meta = {"process_start": process_start, "train_begin": time.time(), "first_step": None,
                     "cpu_count": os.cpu_count(), "num_workers": workers,
                     "batch_size": training.batch_size if training is not None else None,
                     "feature_cache": bool(ctx.state.get("feature_cache", False)), **gpu_facts()}
        resumed = ctx.state.get("resumed_from")
        if resumed:  # the steps before the checkpoint, and the first start's times, as recorded then
            done = {"train": 0, "eval": 0, **(resumed.get("steps") or {})}
            self.steps = [s for s in read_json(self.debug_dir / "steps.json", None) or []
                          if isinstance(s, dict) and s.get("step", 0) < done.get(s.get("mode"), 0)]
            first = read_json(self.debug_dir / "meta.json", None) or {}
            self.meta.update({k: first[k] for k in ("process_start", "train_begin", "first_step") if k in first})
            self.meta["resumed"] = [*first.get("resumed", []), {"time": time.time(), "epoch": resumed["epoch"]}]
        write_json(self.debug_dir / "meta.json", self.meta)

    def on_step_begin(self, ctx: TrainingContext, mode: str, step: int) -> None:
        """Remember when the step's compute started (after the batch arrived)."""
        self._begin = time.time()
        if mode == "train" and self.meta.get("first_step") is None:
            self.meta["first_step"] = self._begin
            write_json(self.debug_dir / "meta.json", self.meta)

    def on_step_end(self, ctx: TrainingContext, info: StepInfo) -> None:
        """Record the finished step."""
        self.steps.append({"mode": info.mode, "step": info.step, "epoch": info.epoch, "loss": info.loss,
                           "batch_size": info.batch_size, "data_time": info.data_time,
                           "compute_time": info.compute_time, "start": self._begin, "end": time.time()})
        if len(self.steps) % self.flush_every == 0:
            self._flush()

    def on_epoch_end(self, ctx: TrainingContext, epoch: int, metrics: dict[str, float]) -> None:
        """Write what has been recorded so far."""
        self._flush()

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Write the step timings and run facts."""
        self.meta["train_end"] = time.time()
        self.meta["stop_reason"] = ctx.stop_reason
        write_json(self.debug_dir / "meta.json", self.meta)
        self._flush()

    def _flush(self) -> None:
        write_json(self.debug_dir / "steps.json", self.steps)


def gpu_facts() -> dict[str, Any]:
    """``{"gpu_count": N, "gpu_memory_total": bytes}``; ``{"gpu_count": 0}`` when CUDA reports no GPU; and
    ``{"gpu_count": None, "gpu_error": "<cause>"}`` (with a warning logged) when asking failed, so that "no GPU" and
    "could not tell" stay apart."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"gpu_count": 0}
        return {"gpu_count": torch.cuda.device_count(),
                "gpu_memory_total": torch.cuda.get_device_properties(0).total_memory}
    except Exception as exc:  # noqa: BLE001 - a broken driver must not stop training; it is reported instead
        cause = f"{type(exc).__name__}: {exc}"
        logger.warning("could not query the GPUs (%s); their count is recorded as unknown", cause)
        return {"gpu_count": None, "gpu_error": cause}


class SystemMonitor(Callback):
    """Samples CPU (total and per core), memory, disk and network I/O, and GPU use on a background thread.

    Args:
        debug_dir: The ``debug/`` folder of the job's output (``system.json`` goes there).
        interval_millis: Sampling interval (SageMaker's ``system_monitor_interval_millis``).
    """

    def __init__(self, debug_dir: Path, interval_millis: int = 500) -> None:
        self.debug_dir = Path(debug_dir)
        self.interval = interval_millis / 1000.0
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._has_gpu: bool | None = None  # None: not asked yet
        self.gpu_errors: dict[str, str] = {}
        """What failed when sampling the GPU (``{"memory"|"utilization": cause}``), each logged once as a
        warning; empty when every query worked or there is no GPU."""

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """Start sampling (after the samples of an earlier start, for a resumed job)."""
        if ctx.state.get("resumed_from"):
            self.samples = list((read_json(self.debug_dir / "system.json", None) or {}).get("samples", []))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dogclf-system-monitor", daemon=True)
        self._thread.start()

    def on_epoch_end(self, ctx: TrainingContext, epoch: int, metrics: dict[str, float]) -> None:
        """Write the samples so far (what a job killed later keeps)."""
        self._write()

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Stop sampling and write ``system.json``."""
        self.stop()

    def stop(self) -> None:
        """Stop the thread (idempotent) and write the samples."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self._write()

    def _write(self) -> None:
        doc: dict[str, Any] = {"interval_millis": int(self.interval * 1000), "samples": list(self.samples)}
        if self.gpu_errors:
            doc["gpu_errors"] = dict(self.gpu_errors)
        write_json(self.debug_dir / "system.json", doc)

    def _gpu_failed(self, what: str, exc: BaseException) -> None:
        if what not in self.gpu_errors:
            self.gpu_errors[what] = f"{type(exc).__name__}: {exc}"
            logger.warning("could not sample GPU %s (%s); system.json has no GPU %s figures", what,
                           self.gpu_errors[what], what)

    def _gpu(self) -> dict[str, Any]:
        """GPU memory use and utilisation in percent; ``{}`` without a GPU. A failing query is logged once (as a
        warning, with its cause) and kept in :attr:`gpu_errors`; it never passes for "no GPU"."""
        try:
            import torch

            if self._has_gpu is None:
                self._has_gpu = bool(torch.cuda.is_available())
            if not self._has_gpu:
                return {}
            free, total = torch.cuda.mem_get_info()
            out: dict[str, Any] = {"gpu_memory": 100.0 * (total - free) / total}
        except Exception as exc:  # noqa: BLE001 - reported, and sampling goes on with the CPU figures
            self._gpu_failed("memory", exc)
            return {}
        try:
            out["gpu"] = float(torch.cuda.utilization())
        except Exception as exc:  # noqa: BLE001 - it needs pynvml; memory alone still helps
            self._gpu_failed("utilization", exc)
            out["gpu"] = None
        return out

    def _run(self) -> None:
        import psutil

        psutil.cpu_percent(percpu=True)
        last_disk = psutil.disk_io_counters()
        last_net = psutil.net_io_counters()
        last_t = time.time()
        while not self._stop.wait(self.interval):
            now = time.time()
            dt = max(now - last_t, 1e-6)
            per_core = psutil.cpu_percent(percpu=True)
            times = psutil.cpu_times_percent()
            disk = psutil.disk_io_counters()
            net = psutil.net_io_counters()
            sample: dict[str, Any] = {
                "t": now, "cpu": sum(per_core) / max(len(per_core), 1), "cpu_per_core": per_core,
                "memory": psutil.virtual_memory().percent, "iowait": getattr(times, "iowait", 0.0),
            }
            if disk is not None and last_disk is not None:
                sample["disk_read"] = (disk.read_bytes - last_disk.read_bytes) / dt
                sample["disk_write"] = (disk.write_bytes - last_disk.write_bytes) / dt
            if net is not None and last_net is not None:
                sample["net_recv"] = (net.bytes_recv - last_net.bytes_recv) / dt
                sample["net_sent"] = (net.bytes_sent - last_net.bytes_sent) / dt
            sample.update(self._gpu())
            self.samples.append(sample)
            last_disk, last_net, last_t = disk, net, now


class TorchProfilerCallback(Callback):
    """Profiles a window of train steps with ``torch.profiler``: a Chrome trace and the top operators.

    Args:
        debug_dir: The ``debug/`` folder of the job's output.
        start_step: First train step recorded.
        num_steps: Number of train steps recorded.
        top: How many operators ``top_operators.json`` keeps.
    """

    def __init__(self, debug_dir: Path, start_step: int = 5, num_steps: int = 3, top: int = 25) -> None:
        self.debug_dir = Path(debug_dir)
        self.start_step = start_step
        self.num_steps = num_steps
        self.top = top
        self._prof: Any = None
        self._done = False
        self._recorded = 0

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """A resumed job whose earlier start recorded the window does not record another."""
        if ctx.state.get("resumed_from") and (self.debug_dir / "top_operators.json").is_file():
            self._done = True

    def on_step_begin(self, ctx: TrainingContext, mode: str, step: int) -> None:
        """Start recording at ``start_step``."""
        if self._done or self._prof is not None or mode != "train" or step < self.start_step or self.num_steps < 1:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._prof = profile(activities=activities, record_shapes=False)
        self._prof.__enter__()

    def on_step_end(self, ctx: TrainingContext, info: StepInfo) -> None:
        """Stop after ``num_steps`` train steps and write the results."""
        if self._prof is None or info.mode != "train":
            return
        self._recorded += 1
        if self._recorded >= self.num_steps:
            self._finish()

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Write what was recorded if training ended inside the window."""
        if self._prof is not None:
            self._finish()

    def _finish(self) -> None:
        prof, self._prof, self._done = self._prof, None, True
        prof.__exit__(None, None, None)
        with atomic_path(self.debug_dir / "trace.json") as tmp:
            prof.export_chrome_trace(str(tmp))
        rows = []
        for evt in prof.key_averages():
            rows.append({
                "name": evt.key, "count": int(evt.count),
                "self_cpu_time_us": float(evt.self_cpu_time_total), "cpu_time_us": float(evt.cpu_time_total),
                "self_device_time_us": float(getattr(evt, "self_device_time_total", 0.0) or 0.0),
            })
        rows.sort(key=lambda r: r["self_cpu_time_us"], reverse=True)
        write_json(self.debug_dir / "top_operators.json",
                   {"steps": self._recorded, "start_step": self.start_step, "operators": rows[: self.top]})
