"""What a training job is (:class:`TrainingJobSpec`) and what it produced (:class:`TrainingJobResult`).

Both backends take the same spec: the local backend runs the entry point as a process under an ``/opt/ml``-style job
folder, the SageMaker backend turns it into a ``sagemaker.pytorch.PyTorch`` estimator.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dogclf.errors import ConfigError
from dogclf.training.metrics import METRIC_DEFINITIONS

__all__ = ["TrainingJobSpec", "TrainingJobResult", "JOB_STATUSES", "normalize_hyperparameters"]

JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
"""Training-job statuses, as SageMaker names them."""

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9\.\-_]{1,64}$")
_INSTANCE = re.compile(r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local|local_gpu)$")

_POSITIVE_FLOAT = ("lr",)
_POSITIVE_INT = ("batch-size", "epochs")
_NON_NEGATIVE_FLOAT = ("weight-decay",)


def normalize_hyperparameters(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters with ``_`` in names spelled ``-`` (``batch_size`` becomes ``batch-size``).

    The entry point accepts both spellings; the spec stores one so both backends send the same thing.

    Raises:
        ConfigError: a name is not a non-empty string, or two spellings of one name are given.
    """
    out: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if not isinstance(key, str) or not key.strip("-_"):
            raise ConfigError(f"hyperparameter names must be non-empty strings, got {key!r}")
        name = key.lstrip("-").replace("_", "-")
        if name.startswith("sagemaker-"):  # SageMaker's own keys keep their spelling
            name = key
        if name in out:
            raise ConfigError(f"hyperparameter {name!r} is given twice (as {key!r} and another spelling)")
        out[name] = value
    return out


def _number(name: str, value: Any, kind: type) -> float:
    try:
        number = kind(value) if not isinstance(value, bool) else math.nan
        if kind is int and isinstance(value, (float, str)) and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"hyperparameter {name!r} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"hyperparameter {name!r} must be a finite number, got {value!r}")
    return number


def check_hyperparameters(hp: dict[str, Any]) -> None:
    """Check the values dogclf knows before a job starts (the entry point checks them again).

    Raises:
        ConfigError: a non-positive ``lr``, ``batch-size`` or ``epochs``, a negative ``weight-decay``, an unknown
            ``backbone``, ``freeze`` or ``optimizer``; the message names the value and what was expected.
    """
    from dogclf.models import BACKBONES, FREEZE_POLICIES

    for name in _POSITIVE_FLOAT:
        if name in hp and _number(name, hp[name], float) <= 0:
            raise ConfigError(f"hyperparameter {name!r} must be > 0, got {hp[name]!r}")
    for name in _POSITIVE_INT:
        if name in hp and _number(name, hp[name], int) <= 0:
            raise ConfigError(f"hyperparameter {name!r} must be a positive integer, got {hp[name]!r}")
    for name in _NON_NEGATIVE_FLOAT:
        if name in hp and _number(name, hp[name], float) < 0:
            raise ConfigError(f"hyperparameter {name!r} must be >= 0, got {hp[name]!r}")
    from dogclf.training.train import OPTIMIZERS

    for name, choices in (("backbone", BACKBONES), ("freeze", FREEZE_POLICIES), ("optimizer", OPTIMIZERS)):
        if name in hp and hp[name] not in choices:
            raise ConfigError(f"hyperparameter {name!r} is {hp[name]!r}; choose one of "
                              f"{', '.join(repr(c) for c in choices)}")


@dataclass(frozen=True)
class TrainingJobSpec:
    """One training job of the shared entry point (:mod:`dogclf.training.train`), for any backend.

    Attributes:
        hyperparameters: Entry-point hyperparameters (``{"lr": 0.001, "batch-size": 64, "epochs": 2, ...}``);
            ``batch_size`` and ``batch-size`` spellings are both accepted and stored with ``-``. Values are sent as
            strings, as SageMaker does.
        channels: Data channels, name to a local folder or an ``s3://`` URI: ``"train"``, ``"valid"``, ``"test"``,
            or one ``"training"`` root holding ``train/``, ``valid/`` and ``test/``.
        job_name: The job's name (SageMaker rules: letters, digits and ``-``, up to 63); ``None`` lets the
            backend make one.
        instance_type: SageMaker instance type (``"ml.c5.2xlarge"``, the seed's); ignored locally.
        instance_count: Number of instances.
        metric_definitions: ``[{"Name", "Regex"}]`` with one capture group each; defaults to the entry point's.
        checkpoint_uri: Where checkpoints are synced (an ``s3://`` URI on SageMaker; a folder locally, default
            the job folder's ``checkpoints``). A job started again with the same URI resumes.
        use_spot: Run on managed spot capacity (SageMaker).
        max_run_s: Longest the job may run, in seconds.
        max_wait_s: With spot, longest to wait for capacity plus run (default twice ``max_run_s``).
        environment: Extra environment variables for the training process.
        debugger_hook_config: smdebug's JSON hook config, as SageMaker writes ``debughookconfig.json``.
        profiler_config: Profiler JSON config, as SageMaker writes ``profilerconfig.json``.
        sagemaker_debugger: Extra keyword arguments for the SageMaker estimator (``debugger_hook_config``,
            ``rules``, ``profiler_config`` objects); only the SageMaker backend reads them.

    Raises:
        ConfigError: a value is invalid (the message names it and what was expected).
    """

    hyperparameters: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    instance_type: str = "ml.c5.2xlarge"
    instance_count: int = 1
    metric_definitions: list[dict[str, str]] = field(default_factory=lambda: [dict(d) for d in METRIC_DEFINITIONS])
    checkpoint_uri: str | None = None
    use_spot: bool = False
    max_run_s: int = 24 * 3600
    max_wait_s: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    debugger_hook_config: dict[str, Any] | None = None
    profiler_config: dict[str, Any] | None = None
    sagemaker_debugger: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hyperparameters, dict):
            raise ConfigError(f"hyperparameters must be a dict, got {type(self.hyperparameters).__name__}")
        hp = normalize_hyperparameters(self.hyperparameters)
        for key, value in hp.items():
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise ConfigError(f"hyperparameter {key!r} must be a str, number, bool or None, got "
                                  f"{type(value).__name__}: {value!r:.80}")
        check_hyperparameters(hp)
        object.__setattr__(self, "hyperparameters", hp)

        if not isinstance(self.channels, dict) or not self.channels:
            raise ConfigError("channels must be a non-empty dict of name -> local path or s3:// URI, e.g. "
                              "{'training': 's3://bucket/dogImages'} or {'train': ..., 'valid': ..., 'test': ...}")
        channels: dict[str, str] = {}
        for name, uri in self.channels.items():
            if not isinstance(name, str) or not _CHANNEL.match(name):
                raise ConfigError(f"channel name {name!r} is invalid: use letters, digits, '.', '-', '_' (<= 64)")
            if hasattr(uri, "__fspath__"):
                uri = str(uri.__fspath__())
            if not isinstance(uri, str) or not uri:
                raise ConfigError(f"channel {name!r} must be a local path or an s3:// URI, got {uri!r}")
            channels[name] = uri
        if "train" not in channels and "training" not in channels:
            raise ConfigError(f"channels {sorted(channels)} have no 'train' (or 'training' root) channel")
        object.__setattr__(self, "channels", channels)

        if self.job_name is not None and (not isinstance(self.job_name, str) or not _JOB_NAME.match(self.job_name)):
            raise ConfigError(f"job_name {self.job_name!r} is invalid: 1-63 letters, digits and '-', starting with "
                              "a letter or digit")
        if not isinstance(self.instance_type, str) or not _INSTANCE.match(self.instance_type):
            raise ConfigError(f"instance_type {self.instance_type!r} is not a SageMaker instance type like "
                              "'ml.c5.2xlarge'")
        if isinstance(self.instance_count, bool) or not isinstance(self.instance_count, int) \
                or self.instance_count < 1:
            raise ConfigError(f"instance_count must be a positive int, got {self.instance_count!r}")
        if not isinstance(self.metric_definitions, list) or not all(
                isinstance(d, dict) and isinstance(d.get("Name"), str) and isinstance(d.get("Regex"), str)
                for d in self.metric_definitions):
            raise ConfigError("metric_definitions must be a list of {'Name': str, 'Regex': str}")
        for d in self.metric_definitions:
            try:
                groups = re.compile(d["Regex"]).groups
            except re.error as exc:
                raise ConfigError(f"metric {d['Name']!r} regex {d['Regex']!r} does not compile: {exc}") from None
            if groups != 1:
                raise ConfigError(f"metric {d['Name']!r} regex {d['Regex']!r} must have exactly one capture group")
        for name in ("max_run_s",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int (seconds), got {value!r}")
        if self.max_wait_s is not None and (not isinstance(self.max_wait_s, int) or self.max_wait_s < self.max_run_s):
            raise ConfigError(f"max_wait_s must be an int >= max_run_s ({self.max_run_s}), got {self.max_wait_s!r}")
        if not isinstance(self.environment, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.environment.items()):
            raise ConfigError("environment must be a dict of str -> str")
        for name in ("debugger_hook_config", "profiler_config", "sagemaker_debugger"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{name} must be a dict or None, got {type(value).__name__}")
        for name in ("debugger_hook_config", "profiler_config"):
            value = getattr(self, name)
            if value is not None:
                try:
                    json.dumps(value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{name} must be JSON-serialisable: {exc}") from None

    def hyperparameters_as_strings(self) -> dict[str, str]:
        """The hyperparameters as SageMaker sends them: every value a string (``None`` and bools spelled out)."""
        out = {}
        for key, value in self.hyperparameters.items():
            if value is None:
                out[key] = "None"
            elif isinstance(value, bool):
                out[key] = "true" if value else "false"
            else:
                out[key] = str(value)
        return out


@dataclass
class TrainingJobResult:
    """What a finished training job produced.

    Attributes:
        job_name: The job's name.
        status: ``"Completed"``, ``"Failed"`` or ``"Stopped"``.
        metrics: The last value of each metric (``{"test_loss": 0.6566, "test_acc": 0.81, ...}``).
        metric_history: Every captured metric line in order, as dicts (with ``"epoch"`` where the line has one).
        model_artifact: The model: the artifact folder (local) or the ``model.tar.gz`` S3 URI (SageMaker).
        output_dir: The job's output data folder (local) or S3 prefix.
        failure_reason: Why the job failed or stopped, if it did.
        duration_s: Wall time of the job in seconds.
        log_path: The job's log file (local) or ``None``.
        hyperparameters: The hyperparameters the job ran with.
    """

    job_name: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    metric_history: list[dict[str, Any]] = field(default_factory=list)
    model_artifact: str | None = None
    output_dir: str | None = None
    failure_reason: str | None = None
    duration_s: float | None = None
    log_path: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """Whether the job completed."""
        return self.status == "Completed"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingJobResult:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON atomically; returns the path."""
        import os

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path
