"""What a training job is (:class:`TrainingJobSpec`) and what it produced (:class:`TrainingJobResult`).

Both backends take the same spec: the local backend runs the entry point as a process under an ``/opt/ml``-style job
folder, the SageMaker backend turns it into a ``sagemaker.pytorch.PyTorch`` estimator.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dogclf._contract import decode, encode, names, split_known, values, wire_value
from dogclf._io import atomic_write_json
from dogclf.errors import ConfigError
from dogclf.training.config import TrainingConfig
from dogclf.training.distributed import Distribution, check_job_distribution
from dogclf.training.metrics import METRIC_DEFINITIONS

__all__ = ["TrainingJobSpec", "TrainingJobResult", "JOB_STATUSES", "check_job", "normalize_channels"]

JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
"""Training-job statuses, as SageMaker names them."""

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9\.\-_]{1,64}$")
_INSTANCE = re.compile(r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local|local_gpu)$")

def _model_config(model: Any) -> tuple[Any, str | None]:
    """``(ModelConfig, registered label-set name or None)`` from a config, a model object or a dict."""
    from dogclf.models import ModelConfig

    if isinstance(model, ModelConfig):
        return model, None
    if isinstance(model, Mapping):
        return decode(ModelConfig, model), None
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        labels = getattr(model, "labels", None)
        named = labels if isinstance(labels, str) and "/" not in labels and os.sep not in labels else None
        return config, named
    raise ConfigError(f"model must be a dogclf.models.ModelConfig, a model (ResNetBreedModel, BreedModel) or a dict "
                      f"of model hyperparameters, got {type(model).__name__}: {model!r:.80}")


def normalize_channels(channels: Any) -> dict[str, str]:
    """Channels as ``{name: local path or s3:// URI}``: a dataset folder or URI becomes the ``"training"``
    channel; names and values are checked.

    Raises:
        ConfigError: no channels, a bad name or value, or no ``train``/``training`` channel.
    """
    if isinstance(channels, (str, os.PathLike)):
        channels = {"training": os.fspath(channels)}
    if not isinstance(channels, Mapping) or not channels:
        raise ConfigError("channels must be a dataset folder or URI holding train/, valid/ and test/, or a non-empty "
                          "dict of name -> local path or s3:// URI, e.g. {'training': 's3://bucket/dogImages'} or "
                          "{'train': ..., 'valid': ..., 'test': ...}")
    out: dict[str, str] = {}
    for name, uri in channels.items():
        if not isinstance(name, str) or not _CHANNEL.match(name):
            raise ConfigError(f"channel name {name!r} is invalid: use letters, digits, '.', '-', '_' (<= 64)")
        if hasattr(uri, "__fspath__"):
            uri = os.fspath(uri)
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"channel {name!r} must be a local path or an s3:// URI, got {uri!r}")
        out[name] = uri
    if "train" not in out and "training" not in out:
        raise ConfigError(f"channels {sorted(out)} have no 'train' (or 'training' root) channel")
    return out


def check_job(model: Any, training: TrainingConfig) -> None:
    """The checks that span the model and training configs (each config checks its own fields), run when a spec
    is made and by the entry point before anything else, so an impossible job fails before training.

    Raises:
        ConfigError: naming the value: ``freeze_epochs`` that leaves no epoch to unfreeze (the unfreeze epoch
            past the end of the run) or with ``freeze='head'`` (nothing to unfreeze); a warm-up as long as the
            run or one of its phases; ``feature_cache='on'`` where cached features cannot stand in for the
            backbone.
    """
    if training.freeze_epochs:
        if training.freeze_epochs >= training.epochs:
            raise ConfigError(f"freeze_epochs (--freeze-epochs) {training.freeze_epochs} would unfreeze the backbone "
                              f"at epoch {training.freeze_epochs + 1}, past the end of the {training.epochs}-epoch run "
                              f"(epochs={training.epochs}); use freeze_epochs < epochs")
        if model.freeze == "head":
            raise ConfigError(f"freeze_epochs (--freeze-epochs) {training.freeze_epochs} needs a freeze policy that "
                              "trains backbone layers after the head-only epochs (freeze='full' for fastai's "
                              "fine_tune, or 'last-block'); with freeze='head' nothing unfreezes")
    if training.warmup_epochs is not None and training.warmup_epochs > 0:
        phases = ([("the head-only phase", training.freeze_epochs),
                   ("the unfrozen phase", training.epochs - training.freeze_epochs)] if training.freeze_epochs
                  else [("the run", training.epochs)])
        for what, length in phases:
            if training.warmup_epochs >= length:
                raise ConfigError(f"warmup_epochs (--warmup-epochs) {training.warmup_epochs:g} is longer than "
                                  f"{what} ({length} epoch{'s' if length != 1 else ''}; epochs={training.epochs}, "
                                  f"freeze_epochs={training.freeze_epochs}): each phase warms up from its start, "
                                  "so the warm-up must end before the phase does")
    if training.feature_cache == "on":
        fixed = training.augment == "none" and training.tta == "none"
        head = model.freeze == "head" or training.freeze_epochs > 0
        if not (fixed and head):
            raise ConfigError(f"feature_cache (--feature-cache) 'on' needs freeze='head' (or head-only epochs, "
                              f"freeze_epochs > 0), augment='none' and tta='none' (got freeze={model.freeze!r}, "
                              f"freeze_epochs={training.freeze_epochs}, augment={training.augment!r}, "
                              f"tta={training.tta!r}): cached features only fit a frozen backbone and fixed inputs")


@dataclass(frozen=True)
class TrainingJobSpec:
    """One training job of the shared entry point (:mod:`dogclf.training.train`), for any backend.

    The job contract is typed: ``model`` (:class:`~dogclf.models.ModelConfig`) says what the network is,
    ``training`` (:class:`~dogclf.training.TrainingConfig`) how it is trained. Both are validated when made;
    :attr:`hyperparameters` is their one encoding on the wire, which both backends send unchanged.

    Attributes:
        model: The model: a :class:`~dogclf.models.ModelConfig`, a model object (``ResNetBreedModel(...)``; a
            registered label-set name it carries becomes ``training.labels``) or a dict of model hyperparameters.
        channels: Data channels: a dataset folder or ``s3://`` URI holding ``train/``, ``valid/`` and ``test/``
            (becomes the ``"training"`` channel), or a dict of name to a local folder or ``s3://`` URI
            (``"train"``, ``"valid"``, ``"test"``).
        training: The training hyperparameters: a :class:`~dogclf.training.TrainingConfig` or a dict of them in
            any spelling (``{"lr": 0.01, "batch_size": 32}``).
        job_name: The job's name (SageMaker rules: letters, digits and ``-``, up to 63); ``None`` lets the
            backend make one.
        instance_type: SageMaker instance type (``"ml.c5.2xlarge"``, the seed's); ignored locally.
        instance_count: Number of instances.
        metric_definitions: ``[{"Name", "Regex"}]`` with one capture group each, for SageMaker's metric capture;
            defaults to the entry point's.
        checkpoint_uri: Where checkpoints are synced (an ``s3://`` URI on SageMaker; a folder locally, default
            the job folder's ``checkpoints``). A job started again with the same URI resumes.
        use_spot: Run on managed spot capacity (SageMaker).
        max_run_s: Longest the job may run, in seconds.
        max_wait_s: With spot, longest to wait for capacity plus run (default twice ``max_run_s``).
        environment: Extra environment variables for the training process.
        extra_hyperparameters: Hyperparameters the entry point passes on to callbacks (e.g. a plug-in's
            settings), sent as they are.
        debugger_hook_config: smdebug's JSON hook config, as SageMaker writes ``debughookconfig.json``.
        profiler_config: Profiler JSON config, as SageMaker writes ``profilerconfig.json``.
        debugger: The :class:`~dogclf.debug.DebuggerConfig` of a Debugger job, for backends with a Debugger
            service of their own (SageMaker builds its Debugger objects from it); ``None`` otherwise.
        distribution: Data-parallel training over several processes and instances
            (:class:`~dogclf.training.Distribution`, or a dict of its fields); ``None``: one process on one
            instance. ``training.batch_size`` stays the global batch size.

    Raises:
        ConfigError: a value is invalid (the message names it and what was expected).

    Example:
        >>> spec = TrainingJobSpec({"backbone": "resnet18", "weights": None}, "dogImages", {"lr": 0.01})
        >>> spec.hyperparameters["lr"], spec.training.batch_size, spec.channels
        ('0.01', 64, {'training': 'dogImages'})
    """

    model: Any = field(default_factory=dict)
    channels: Any = field(default_factory=dict)
    training: Any = field(default_factory=TrainingConfig)
    job_name: str | None = None
    instance_type: str = "ml.c5.2xlarge"
    instance_count: int = 1
    metric_definitions: list[dict[str, str]] = field(default_factory=lambda: [dict(d) for d in METRIC_DEFINITIONS])
    checkpoint_uri: str | None = None
    use_spot: bool = False
    max_run_s: int = 24 * 3600
    max_wait_s: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    extra_hyperparameters: dict[str, str] = field(default_factory=dict)
    debugger_hook_config: dict[str, Any] | None = None
    profiler_config: dict[str, Any] | None = None
    debugger: Any = None
    distribution: Any = None

    def __post_init__(self) -> None:
        model, labels = _model_config(self.model)
        training = self.training
        if isinstance(training, Mapping):
            training = decode(TrainingConfig, training)
        if not isinstance(training, TrainingConfig):
            raise ConfigError(f"training must be a dogclf.training.TrainingConfig or a dict of training "
                              f"hyperparameters, got {type(training).__name__}: {training!r:.80}")
        if labels is not None and training.labels == "auto":
            training = replace(training, labels=labels)
        check_job(model, training)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "training", training)
        object.__setattr__(self, "channels", normalize_channels(self.channels))
        if not isinstance(self.extra_hyperparameters, Mapping):
            raise ConfigError(f"extra_hyperparameters must be a dict, got {type(self.extra_hyperparameters).__name__}")
        extra: dict[str, str] = {}
        for key, value in self.extra_hyperparameters.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"hyperparameter names must be non-empty strings, got {key!r}")
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise ConfigError(f"hyperparameter {key!r} must be a str, number, bool or None, got "
                                  f"{type(value).__name__}: {value!r:.80}")
            extra[key] = wire_value(value)
        clash = sorted(set(extra) & set(encode(model, training)))
        if clash:
            raise ConfigError(f"extra_hyperparameters {clash} are model or training hyperparameters: set them in "
                              "model= or training=")
        object.__setattr__(self, "extra_hyperparameters", extra)

        if self.job_name is not None and (not isinstance(self.job_name, str) or not _JOB_NAME.match(self.job_name)):
            raise ConfigError(f"job_name {self.job_name!r} is invalid: 1-63 letters, digits and '-', starting with "
                              "a letter or digit")
        if not isinstance(self.instance_type, str) or not _INSTANCE.match(self.instance_type):
            raise ConfigError(f"instance_type {self.instance_type!r} is not a SageMaker instance type like "
                              "'ml.c5.2xlarge'")
        if isinstance(self.instance_count, bool) or not isinstance(self.instance_count, int) \
                or self.instance_count < 1:
            raise ConfigError(f"instance_count must be a positive int, got {self.instance_count!r}")
        object.__setattr__(self, "distribution", Distribution.coerce(self.distribution))
        check_job_distribution(self.distribution, self.instance_count, training)
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
        if isinstance(self.max_run_s, bool) or not isinstance(self.max_run_s, int) or self.max_run_s < 1:
            raise ConfigError(f"max_run_s must be a positive int (seconds), got {self.max_run_s!r}")
        if self.max_wait_s is not None and (not isinstance(self.max_wait_s, int) or self.max_wait_s < self.max_run_s):
            raise ConfigError(f"max_wait_s must be an int >= max_run_s ({self.max_run_s}), got {self.max_wait_s!r}")
        if not isinstance(self.environment, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.environment.items()):
            raise ConfigError("environment must be a dict of str -> str")
        for name in ("debugger_hook_config", "profiler_config"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, dict):
                    raise ConfigError(f"{name} must be a dict or None, got {type(value).__name__}")
                try:
                    json.dumps(value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{name} must be JSON-serialisable: {exc}") from None

    # -- the wire ----------------------------------------------------------------------------------------------
    @property
    def hyperparameters(self) -> dict[str, str]:
        """The job's hyperparameters on the wire, as both backends send them (``{"batch-size": "64", ...}``)."""
        return {**encode(self.model, self.training), **self.extra_hyperparameters}

    @property
    def params(self) -> dict[str, Any]:
        """Every model and training hyperparameter by Python name, typed (``{"batch_size": 64, ...}``)."""
        return {**values(self.model), **values(self.training)}

    @classmethod
    def tunable(cls) -> dict[str, str]:
        """Python name -> wire name of every hyperparameter a search space may tune (model and training)."""
        from dogclf.models import ModelConfig

        return {**names(ModelConfig), **names(TrainingConfig)}

    def with_params(self, params: Mapping[str, Any], **changes: Any) -> TrainingJobSpec:
        """This spec with some hyperparameters changed (any spelling; typed values or wire strings), and other
        fields (``job_name=...``) replaced; the new values are validated.

        Raises:
            ConfigError: an unknown hyperparameter name (the known ones are listed) or an invalid value.
        """
        model_values, rest = split_known(type(self.model), params)
        training_values, rest = split_known(TrainingConfig, rest)
        if rest:
            known = ", ".join(sorted(self.tunable()))
            raise ConfigError(f"unknown hyperparameter(s) {sorted(rest)}; the entry point has: {known}")
        model = decode(type(self.model), model_values, base=self.model) if model_values else self.model
        training = decode(TrainingConfig, training_values, base=self.training) if training_values else self.training
        return replace(self, model=model, training=training, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (hyperparameters on the wire; ``debugger`` is not kept), for state files."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "training", "debugger",
                                                                                  "extra_hyperparameters")}
        out["hyperparameters"] = self.hyperparameters
        out["distribution"] = self.distribution.to_dict() if self.distribution is not None else None
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingJobSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a spec document, or a value is invalid.
        """
        if not isinstance(data, Mapping) or "hyperparameters" not in data or "channels" not in data:
            raise ConfigError(f"not a training-spec document: {str(data)[:100]}")
        known = {f.name for f in fields(cls)} - {"model", "training", "debugger", "extra_hyperparameters",
                                                  "channels"}
        return cls.from_hyperparameters(data["hyperparameters"], data["channels"],
                                        **{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any], channels: Any, **fields: Any) -> TrainingJobSpec:
        """A spec from a flat dict of hyperparameters in any spelling (wire strings or typed values), as a tuning
        job or ``hyperparameters.json`` holds them; names that are neither model nor training hyperparameters go
        to ``extra_hyperparameters``."""
        from dogclf.models import ModelConfig

        model_values, rest = split_known(ModelConfig, hyperparameters)
        training_values, rest = split_known(TrainingConfig, rest)
        extra = {k: v for k, v in rest.items() if not k.startswith("sagemaker_")}
        return cls(decode(ModelConfig, model_values), channels, decode(TrainingConfig, training_values),
                   extra_hyperparameters={**extra, **dict(fields.pop("extra_hyperparameters", {}) or {})}, **fields)


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
        return atomic_write_json(path, self.to_dict())
