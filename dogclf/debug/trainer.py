"""``DebugTrainer``: one training job with Debugger tensors, rules and profiling, then the report."""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf.errors import ConfigError, JobError, NotFittedError

from .callbacks import DEBUG_ENV, HYPERPARAMETER, encode_settings
from .config import DebuggerConfig

__all__ = ["DebugTrainer"]

logger = logging.getLogger(__name__)


class DebugTrainer:
    """Train with Debugger tensors, in-process rules and profiling, on any backend, and build the report.

    The seed's ``PyTorch(..., debugger_hook_config=..., rules=..., profiler_config=...)`` plus its hand-drawn loss
    plot and downloaded ProfilerReport, in one object that runs on PyTorch 2.x locally and on SageMaker.

    Args:
        hyperparameters: Entry-point hyperparameters (``{"lr": 0.001, "batch-size": 64, "epochs": 2, ...}``).
        channels: Data channels: ``{"training": <dogImages root>}`` or ``{"train": ..., "valid": ..., "test": ...}``
            (local folders or ``s3://`` URIs).
        config: What to save, which rules to run and how to profile (default: the seed's collections, all rules,
            500 ms system monitor, ``torch.profiler`` over train steps 5-7).
        backend: ``"local"`` (default), ``"sagemaker"``, or a backend object (see :func:`dogclf.backends.get_backend`).
        job_name: The job's name; the backend makes one when ``None``.
        report_path: Where :meth:`fit` writes the HTML report; default ``<job output>/report/debug-report.html``.
        **spec_options: Further :class:`~dogclf.training.spec.TrainingJobSpec` fields (``instance_type``,
            ``use_spot``, ``environment``, ``checkpoint_uri``, ...).

    Attributes:
        result_: The :class:`~dogclf.training.spec.TrainingJobResult`.
        report_: The :class:`~dogclf.debug.DebugReport` (HTML path, PNGs, findings, step statistics).
        findings_: Every rule's :class:`~dogclf.debug.RuleFinding`, evaluated on the finished trial.
        trial_path_: Where the job's Debugger tensors are (a folder or an ``s3://`` URI).

    Example:
        >>> trainer = DebugTrainer({"lr": 0.001, "batch-size": 64, "epochs": 2}, {"training": "dogImages"})
        >>> trainer.config.collections[0].name
        'model_weights'
    """

    def __init__(self, hyperparameters: dict[str, Any] | None = None, channels: dict[str, Any] | None = None, *,
                 config: DebuggerConfig | None = None, backend: Any = None, job_name: str | None = None,
                 report_path: str | os.PathLike[str] | None = None, **spec_options: Any) -> None:
        self.hyperparameters = hyperparameters
        self.channels = channels
        self.config = config if config is not None else DebuggerConfig()
        self.backend = backend
        self.job_name = job_name
        self.report_path = report_path
        self.spec_options = spec_options

    def __repr__(self) -> str:
        return (f"DebugTrainer(hyperparameters={self.hyperparameters!r}, channels={self.channels!r}, "
                f"backend={self.backend!r}, job_name={self.job_name!r})")

    # -- building the job -------------------------------------------------------------------------------------
    def _check(self) -> None:
        from .rules import validate_rules

        if not isinstance(self.config, DebuggerConfig):
            raise ConfigError(f"config must be a dogclf.debug.DebuggerConfig; got {type(self.config).__name__}")
        validate_rules(self.config.rules, "tensor")
        validate_rules(self.config.profiler_rules, "profiler")

    def build_spec(self, backend: Any = None) -> Any:
        """The :class:`~dogclf.training.spec.TrainingJobSpec` :meth:`fit` runs (nothing is started).

        Locally, the hook config travels as ``debugger_hook_config`` (the backend writes SageMaker's
        ``debughookconfig.json``), the profiler config as ``profiler_config`` and the in-process rules in the
        ``DOGCLF_DEBUG`` environment variable. On the SageMaker backend all three travel packed in the
        ``dogclf-debug`` hyperparameter (the job needs no Debugger on the account); with
        ``config.sagemaker_debugger`` the spec also carries ``debugger_hook_config`` and SageMaker's own Debugger
        objects as ``sagemaker_debugger``.

        Raises:
            ConfigError: invalid hyperparameters, channels or spec options.
            UnknownRuleError: a configured rule is not registered.
        """
        from dogclf.backends import get_backend
        from dogclf.training.spec import TrainingJobSpec

        self._check()
        backend = backend if backend is not None else get_backend(self.backend)
        options = dict(self.spec_options)
        environment = dict(options.pop("environment", {}) or {})
        for key in ("debugger_hook_config", "profiler_config", "sagemaker_debugger"):
            if key in options:
                raise ConfigError(f"{key} is built from DebugTrainer's config; do not pass it as a spec option")
        hyperparameters = dict(self.hyperparameters or {})
        hook = self.config.hook_json(s3_path=self.config.s3_output_path)
        profiler = self.config.profiler.to_json() if self.config.profiler is not None else None
        if getattr(backend, "name", None) == "sagemaker":
            # SageMaker limits environment values to 512 characters and, without Debugger on the account, writes
            # no debughookconfig.json: everything travels packed in one hyperparameter (up to 2500 characters).
            settings = dict(self.config.rules_json(), hook=hook)
            if profiler is not None:
                settings["profiler"] = profiler
            hyperparameters[HYPERPARAMETER] = encode_settings(settings)
            sagemaker = None
            if self.config.sagemaker_debugger:
                from .sagemaker import sagemaker_debugger_kwargs

                sagemaker = sagemaker_debugger_kwargs(self.config)
            return TrainingJobSpec(hyperparameters=hyperparameters, channels=dict(self.channels or {}),
                                   job_name=self.job_name, environment=environment,
                                   debugger_hook_config=hook if self.config.sagemaker_debugger else None,
                                   profiler_config=None, sagemaker_debugger=sagemaker, **options)
        environment[DEBUG_ENV] = json.dumps(self.config.rules_json())
        return TrainingJobSpec(
            hyperparameters=hyperparameters, channels=dict(self.channels or {}), job_name=self.job_name,
            environment=environment, debugger_hook_config=hook, profiler_config=profiler, sagemaker_debugger=None,
            **options,
        )

    # -- running ----------------------------------------------------------------------------------------------
    def fit(self) -> DebugTrainer:
        """Run the training job, evaluate the rules on the finished trial and build the report.

        Returns:
            ``self``, with :attr:`result_`, :attr:`report_`, :attr:`findings_` and :attr:`trial_path_` set.

        Raises:
            ConfigError: bad hyperparameters, channels, rules or options (before anything runs).
            JobError: the job failed.
            EmptyTrialError: the job wrote no tensors.
        """
        from dogclf.backends import get_backend

        require("debug", "smdebug")  # before the job runs: the rules and the report need both
        require("report", "matplotlib")
        from .report import build_report

        backend = get_backend(self.backend)
        spec = self.build_spec(backend)
        logger.info("starting training job %s on %s with Debugger collections %s", spec.job_name or "(auto)",
                    getattr(backend, "name", backend), [c.name for c in self.config.effective_collections()])
        result = backend.train(spec)
        status = getattr(result, "status", None)
        if status not in ("Completed", "Stopped"):
            raise JobError("the Debugger training job did not complete", job_id=getattr(result, "job_name", None),
                           status=status, reason=getattr(result, "failure_reason", None))
        output_dir, trial = self._job_output(result)
        summary = {"job name": result.job_name, "backend": getattr(backend, "name", str(backend)),
                   "status": status, "hyperparameters": json.dumps(getattr(result, "hyperparameters", None)
                                                                   or spec.hyperparameters, default=str)}
        for key, value in sorted((getattr(result, "metrics", None) or {}).items()):
            summary[key] = f"{value:.4f}" if isinstance(value, float) else value
        report = build_report(output_dir, self.report_path, rules=self.config.rules,
                              profiler_rules=self.config.profiler_rules if self.config.profiler else (),
                              trial=trial, summary=summary)
        self.result_ = result
        self.report_ = report
        self.findings_ = report.findings
        self.trial_path_ = str(trial) if isinstance(trial, (str, Path)) else str(output_dir / "tensors")
        return self

    def _job_output(self, result: Any) -> tuple[Path, Any]:
        out = getattr(result, "output_dir", None)
        if not out:
            raise JobError("the training job reported no output folder", job_id=getattr(result, "job_name", None),
                           status=getattr(result, "status", None))
        if not str(out).startswith("s3://"):
            return Path(out), None
        return _download_output(str(out), self.config.s3_output_path, getattr(result, "job_name", "job"))

    def report(self, path: str | os.PathLike[str]) -> Path:
        """Write the report (HTML plus its PNGs beside it) to ``path``; returns the HTML path.

        Raises:
            NotFittedError: :meth:`fit` has not run.
        """
        if not hasattr(self, "report_"):
            raise NotFittedError("DebugTrainer.report() needs fit() first")
        import shutil

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        src = self.report_.html_path
        for name, png in self.report_.images.items():
            shutil.copyfile(png, path.parent / f"{path.stem}-{name}.png")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
        return path

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_") and not name.startswith("_"):
            raise NotFittedError(f"DebugTrainer.{name} is set by fit(); call fit() first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _download_output(output_uri: str, tensors_uri: str | None, job_name: str) -> tuple[Path, Any]:
    """Fetch a SageMaker job's ``output.tar.gz`` (the output data folder) to a local folder."""
    boto3 = require("s3", "boto3", "reading a SageMaker job's output from S3")

    from dogclf.backends.local import default_root

    bucket, _, prefix = output_uri[len("s3://"):].partition("/")
    s3 = boto3.client("s3")
    key = prefix.rstrip("/") + "/output.tar.gz" if not prefix.endswith(".tar.gz") else prefix
    target = default_root() / "debug-reports" / job_name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        archive = Path(tmp) / "output.tar.gz"
        s3.download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    if (target / "tensors").is_dir():
        return target, None
    if tensors_uri is None:  # the platform's hook uploaded them: ask where
        try:
            desc = boto3.client("sagemaker").describe_training_job(TrainingJobName=job_name)
            base = (desc.get("DebugHookConfig") or {}).get("S3OutputPath")
            tensors_uri = f"{base.rstrip('/')}/{job_name}/debug-output" if base else None
        except Exception as exc:  # noqa: BLE001 - the report then covers profiling only
            logger.warning("cannot find the Debugger tensors of %s: %s", job_name, exc)
    return target, tensors_uri
