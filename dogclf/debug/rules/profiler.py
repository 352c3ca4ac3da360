"""The built-in profiler rules, computed from the system monitor's samples and the per-step timings.

They follow the rules of SageMaker's ProfilerReport (the seed's report lists them with these parameters and
defaults). ``patience`` is, as there, the number of datapoints skipped at the start of the job before a rule
judges anything; the rules that need a GPU have no datapoints on a machine without one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from dogclf.errors import ConfigError

from .base import ProfileData, ProfilerRule

__all__ = [
    "StepOutlier",
    "Dataloader",
    "CPUBottleneck",
    "IOBottleneck",
    "BatchSize",
    "LowGPUUtilization",
    "GPUMemoryIncrease",
    "MaxInitializationTime",
    "step_durations",
]


def step_durations(data: ProfileData, mode: str = "train") -> np.ndarray:
    """Seconds per step (data loading plus compute) of ``mode`` steps, in step order."""
    rows = [s for s in data.steps if s.get("mode") == mode]
    return np.asarray([float(s["data_time"]) + float(s["compute_time"]) for s in rows], dtype=float)


def _non_negative(p: dict[str, Any], *names: str) -> None:
    for name in names:
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"rule parameter {name} must be a number >= 0; got {value!r}")


def _window(p: dict[str, Any]) -> None:
    if not isinstance(p["window"], int) or p["window"] < 1:
        raise ConfigError(f"rule parameter window must be an integer >= 1; got {p['window']!r}")


def _samples(data: ProfileData, patience: int, key: str) -> list[dict[str, Any]]:
    return [s for s in data.system[int(patience):] if s.get(key) is not None]


class StepOutlier(ProfilerRule):
    """Fires when more than ``n_outliers`` steps take longer than mean + ``stddev`` standard deviations.

    Parameters: ``threshold`` (3), ``mode`` (``None``: train steps), ``n_outliers`` (10), ``stddev`` (3).
    """

    defaults = {"threshold": 3.0, "mode": None, "n_outliers": 10, "stddev": 3.0}
    description = ("Detects outliers in step duration. The step duration for forward and backward pass should be "
                   "roughly the same throughout the training.")
    recommendation = "Check if there are any bottlenecks (CPU, I/O) correlated to the step outliers."

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "threshold", "n_outliers", "stddev")

    def analyse(self, data: ProfileData) -> None:
        mode = str(self.parameters["mode"] or "train").lower()
        durations = step_durations(data, mode)
        self.datapoints = len(durations)
        if len(durations) < 3:
            return
        mean, std = float(durations.mean()), float(durations.std())
        limit = mean + self.parameters["stddev"] * std
        outliers = [i for i, d in enumerate(durations) if d > limit and std > 0]
        self.outliers = outliers
        if len(outliers) > self.parameters["n_outliers"]:
            for i in outliers:
                self._fire(i, {"mean": mean, "std": std, "limit": limit, "duration": float(durations[i]),
                               "outliers": len(outliers)})


class Dataloader(ProfilerRule):
    """Fires when the number of data-loading workers is far from the number of CPU cores.

    The datapoint is ``100 * workers / cores``; it fires below ``min_threshold`` or above ``max_threshold``
    percent, as SageMaker's rule does. The evidence also gives the share of step time spent waiting for data.
    It has no datapoint when the number of workers is unknown or the job trains on cached features.

    Parameters: ``min_threshold`` (70), ``max_threshold`` (200).
    """

    defaults = {"min_threshold": 70.0, "max_threshold": 200.0}
    description = ("Checks how many data loaders are running in parallel and whether the total number is equal "
                   "the number of available CPU cores.")
    recommendation = "Change the number of data loader processes (num_workers)."

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "min_threshold", "max_threshold")
        if p["min_threshold"] > p["max_threshold"]:
            raise ConfigError(f"min_threshold {p['min_threshold']} must not exceed max_threshold {p['max_threshold']}")

    def analyse(self, data: ProfileData) -> None:
        cores = data.meta.get("cpu_count")
        workers = data.meta.get("num_workers")
        if not cores or workers is None or not data.steps or data.meta.get("feature_cache"):
            return  # unknown, or no data loader in the loop (cached features are read from memory)
        self.datapoints = 1
        percent = 100.0 * float(workers) / float(cores)
        rows = data.steps
        total = sum(float(s["data_time"]) + float(s["compute_time"]) for s in rows) or 1.0
        waiting = sum(float(s["data_time"]) for s in rows) / total
        if not self.parameters["min_threshold"] <= percent <= self.parameters["max_threshold"]:
            self._fire(0, {"num_workers": workers, "cpu_count": cores, "percent_of_cores": percent,
                           "data_wait_share": waiting})


class _ShareRule(ProfilerRule):
    """Fires when the samples whose ``metric`` is over the ``limit`` parameter while the GPU idles (under
    ``gpu_threshold``) are more than ``threshold`` percent of the judged samples."""

    metric: ClassVar[str] = ""
    limit: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "threshold", self.limit, "gpu_threshold", "patience")

    def analyse(self, data: ProfileData) -> None:
        p = self.parameters
        samples = _samples(data, p["patience"], self.metric)
        self.datapoints = len(samples)
        hits = [i for i, s in enumerate(samples)
                if s[self.metric] > p[self.limit] and (s.get("gpu") or 0.0) < p["gpu_threshold"]]
        if samples and 100.0 * len(hits) / len(samples) > p["threshold"]:
            share = 100.0 * len(hits) / len(samples)
            for i in hits:
                self._fire(i, {f"{self.label}_percent_of_time": share, "samples": len(samples)})


class CPUBottleneck(_ShareRule):
    """Fires when the CPU is busy (> ``cpu_threshold``) while the GPU idles (< ``gpu_threshold``) for more than
    ``threshold`` percent of the samples. Without a GPU its utilisation counts as 0.

    Parameters: ``threshold`` (50), ``cpu_threshold`` (90), ``gpu_threshold`` (10), ``patience`` (1000).
    """

    defaults = {"threshold": 50.0, "cpu_threshold": 90.0, "gpu_threshold": 10.0, "patience": 1000}
    description = ("Checks if the CPU utilization is high and the GPU utilization is low. It might indicate CPU "
                   "bottlenecks, where the GPUs are waiting for data to arrive from the CPUs.")
    recommendation = "Consider increasing the number of data loaders or applying data pre-fetching."
    metric, limit, label = "cpu", "cpu_threshold", "cpu_bottleneck"


class IOBottleneck(_ShareRule):
    """Fires when I/O wait is high (> ``io_threshold`` percent of CPU time) while the GPU idles, for more than
    ``threshold`` percent of the samples.

    Parameters: ``threshold`` (50), ``io_threshold`` (50), ``gpu_threshold`` (10), ``patience`` (1000).
    """

    defaults = {"threshold": 50.0, "io_threshold": 50.0, "gpu_threshold": 10.0, "patience": 1000}
    description = ("Checks if the data I/O wait time is high and the GPU utilization is low. It might indicate IO "
                   "bottlenecks where GPU is waiting for data to arrive from storage.")
    recommendation = ("Pre-fetch data or choose different file formats, such as binary formats that improve I/O "
                      "performance.")
    metric, limit, label = "iowait", "io_threshold", "io_bottleneck"


class BatchSize(ProfilerRule):
    """Fires when, over a window of samples, the p95 of CPU, GPU and GPU-memory utilisation are all below
    their thresholds: the GPU is underused and a larger batch would fit. Needs a GPU.

    Parameters: ``cpu_threshold_p95`` (70), ``gpu_threshold_p95`` (70), ``gpu_memory_threshold_p95`` (70),
    ``patience`` (1000), ``window`` (500).
    """

    defaults = {"cpu_threshold_p95": 70.0, "gpu_threshold_p95": 70.0, "gpu_memory_threshold_p95": 70.0,
                "patience": 1000, "window": 500}
    description = ("Checks if GPUs are underutilized because the batch size is too small. To detect this problem, "
                   "the rule analyzes the average GPU memory footprint, the CPU and the GPU utilization.")
    recommendation = ("The batch size is too small, and GPUs are underutilized. Consider running on a smaller "
                      "instance type or increasing the batch size.")

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "cpu_threshold_p95", "gpu_threshold_p95", "gpu_memory_threshold_p95", "patience")
        _window(p)

    def analyse(self, data: ProfileData) -> None:
        p = self.parameters
        samples = _samples(data, p["patience"], "gpu")
        w = p["window"]
        for start in range(0, len(samples) - w + 1, w):
            chunk = samples[start:start + w]
            self.datapoints += 1
            cpu = float(np.percentile([s["cpu"] for s in chunk], 95))
            gpu = float(np.percentile([s["gpu"] for s in chunk], 95))
            mem = float(np.percentile([s.get("gpu_memory") or 0.0 for s in chunk], 95))
            if cpu < p["cpu_threshold_p95"] and gpu < p["gpu_threshold_p95"] and mem < p["gpu_memory_threshold_p95"]:
                self._fire(start, {"cpu_p95": cpu, "gpu_p95": gpu, "gpu_memory_p95": mem})


class LowGPUUtilization(ProfilerRule):
    """Fires when, over a window, GPU utilisation's p95 is below ``threshold_p95`` (low) or its p5 is below
    ``threshold_p5`` while p95 is high (fluctuating). Needs a GPU.

    Parameters: ``threshold_p95`` (70), ``threshold_p5`` (10), ``window`` (500), ``patience`` (1000).
    """

    defaults = {"threshold_p95": 70.0, "threshold_p5": 10.0, "window": 500, "patience": 1000}
    description = ("Checks if the GPU utilization is low or fluctuating. This can happen due to bottlenecks, "
                   "blocking calls for synchronizations, or a small batch size.")
    recommendation = ("Check if there are bottlenecks, minimize blocking calls, change distributed training "
                      "strategy, or increase the batch size.")

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "threshold_p95", "threshold_p5", "patience")
        _window(p)

    def analyse(self, data: ProfileData) -> None:
        p = self.parameters
        samples = _samples(data, p["patience"], "gpu")
        w = p["window"]
        for start in range(0, len(samples) - w + 1, w):
            values = [s["gpu"] for s in samples[start:start + w]]
            self.datapoints += 1
            p95, p5 = float(np.percentile(values, 95)), float(np.percentile(values, 5))
            if p95 < p["threshold_p95"]:
                self._fire(start, {"gpu_p95": p95, "gpu_p5": p5, "issue": "low"})
            elif p5 < p["threshold_p5"]:
                self._fire(start, {"gpu_p95": p95, "gpu_p5": p5, "issue": "fluctuating"})


class GPUMemoryIncrease(ProfilerRule):
    """Fires when the mean GPU memory use of a window of samples is more than ``increase`` percentage points
    above the previous window's. Needs a GPU.

    Parameters: ``increase`` (5), ``patience`` (1000), ``window`` (10).
    """

    defaults = {"increase": 5.0, "patience": 1000, "window": 10}
    description = "Measures the average GPU memory footprint and triggers if there is a large increase."
    recommendation = ("Choose a larger instance type with more memory if footprint is close to maximum available "
                      "memory; look for tensors kept alive across steps.")

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "increase", "patience")
        _window(p)

    def analyse(self, data: ProfileData) -> None:
        p = self.parameters
        samples = _samples(data, p["patience"], "gpu_memory")
        w = p["window"]
        means = [float(np.mean([s["gpu_memory"] for s in samples[i:i + w]]))
                 for i in range(0, len(samples) - w + 1, w)]
        for i in range(1, len(means)):
            self.datapoints += 1
            if means[i] - means[i - 1] > p["increase"]:
                self._fire(i * w, {"previous_mean": means[i - 1], "mean": means[i]})


class MaxInitializationTime(ProfilerRule):
    """Fires when the time from process start to the first training step exceeds ``threshold`` minutes.

    Parameters: ``threshold`` (20).
    """

    defaults = {"threshold": 20.0}
    description = ("Checks if the time spent on initialization exceeds a threshold. The rule waits until the first "
                   "step of training loop starts.")
    recommendation = ("Initialization takes too long: stage the data closer to the job (cached features, FastFile "
                      "or Pipe mode), or download less at start.")

    def validate(self, p: dict[str, Any]) -> None:
        _non_negative(p, "threshold")

    def analyse(self, data: ProfileData) -> None:
        start = data.meta.get("process_start")
        if start is None:
            start = data.meta.get("train_begin")
        first = data.meta.get("first_step")
        if start is None or first is None:
            return
        self.datapoints = 1
        minutes = (float(first) - float(start)) / 60.0
        self.initialization_minutes = minutes
        if minutes > self.parameters["threshold"]:
            self._fire(0, {"initialization_minutes": minutes})
