"""``DebugTrainer``: one training job with Debugger tensors, rules and profiling, then the report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._extras import require
from dogclf._io import atomic_path
from dogclf.errors import ConfigError, DogclfError, JobError, NotFittedError

from .callbacks import DEBUG_ENV, HYPERPARAMETER, encode_settings
from .config import DebuggerConfig

if TYPE_CHECKING:
    from dogclf.backends import Backend


__all__ = ["DebugTrainer"]

logger = logging.getLogger(__name__)


class DebugTrainer:
    """Train with Debugger tensors, in-process rules and profiling, on any backend, and build the report.

    The seed's ``PyTorch(..., debugger_hook_config=..., rules=..., profiler_config=...)`` plus its hand-drawn loss
    plot and downloaded ProfilerReport, in one object that runs on PyTorch 2.x locally and on SageMaker.

    Args:
        spec: The job: a :class:`~dogclf.training.TrainingJobSpec` (e.g. ``HPOExperiment(...).best_spec_``), or a
            model (:class:`~dogclf.models.ResNetBreedModel`, :class:`~dogclf.models.ModelConfig`) with ``data``.
        config: What to save, which rules to run and how to profile (default: the seed's collections, all rules,
            500 ms system monitor, ``torch.profiler`` over train steps 5-7).
        data: With a model: a dataset folder or URI holding ``train/``, ``valid/`` and ``test/``, or channels.
        training: Training hyperparameters over the spec's (any spelling: ``{"lr": 0.01, "batch_size": 32}``).
        backend: ``None`` (the default backend), a registered name, or a backend object.
        job_name: The job's name (over the spec's); the backend makes one when both are ``None``.
        report_path: Where :meth:`fit` writes the HTML report; default ``<job output>/report/debug-report.html``.

    Attributes:
        spec_: The :class:`~dogclf.training.TrainingJobSpec` that ran, Debugger settings included.
        result_: The :class:`~dogclf.training.TrainingJobResult`.
        report_: The :class:`~dogclf.debug.DebugReport` (HTML path, PNGs, findings, step statistics).
        findings_: Every rule's :class:`~dogclf.debug.RuleFinding`, evaluated on the finished trial.
        trial_path_: Where the job's Debugger tensors are (a folder or an ``s3://`` URI).

    Example:
        >>> from dogclf.training import TrainingJobSpec
        >>> trainer = DebugTrainer(TrainingJobSpec({"backbone": "resnet18"}, "dogImages", {"epochs": 2}))
        >>> trainer.config.collections[0].name
        'model_weights'
    """

    def __init__(self, spec: Any, config: DebuggerConfig | None = None, *, data: Any = None,
                 training: dict[str, Any] | None = None, backend: Backend | str | None = None,
                 job_name: str | None = None, report_path: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.config = config if config is not None else DebuggerConfig()
        self.data = data
        self.training = training
        self.backend = backend
        self.job_name = job_name
        self.report_path = report_path

    def __repr__(self) -> str:
        return f"DebugTrainer(spec={self.spec!r}, backend={self.backend!r}, job_name={self.job_name!r})"

    # -- building the job -------------------------------------------------------------------------------------
    def _base_spec(self) -> Any:
        from dogclf.training import TrainingJobSpec

        spec = self.spec
        if not isinstance(spec, TrainingJobSpec):
            if self.data is None:
                raise ConfigError(f"DebugTrainer needs a TrainingJobSpec, or a model with data=; got "
                                  f"{type(spec).__name__}: {spec!r:.80}")
            spec = TrainingJobSpec(spec, self.data)
        elif self.data is not None:
            spec = spec.with_params({}, channels=TrainingJobSpec(spec.model, self.data).channels)
        changes: dict[str, Any] = {"job_name": self.job_name} if self.job_name is not None else {}
        return spec.with_params(self.training or {}, **changes)

    def build_spec(self, backend: Backend | None = None) -> Any:
        """The :class:`~dogclf.training.TrainingJobSpec` :meth:`fit` runs (nothing is started).

        Where the backend delivers Debugger configs to the job (``backend.delivers_debugger_config``, the local
        backend), the hook config travels as ``debugger_hook_config`` (written as ``debughookconfig.json``), the
        profiler config as ``profiler_config`` and the in-process rules in the ``DOGCLF_DEBUG`` environment
        variable. Elsewhere (SageMaker, where accounts without Debugger get no hook config) all three travel packed
        in the ``dogclf-debug`` hyperparameter; with ``config.sagemaker_debugger`` the spec also carries the hook
        config and the :class:`DebuggerConfig` (``spec.debugger``) from which SageMaker's backend builds its own
        Debugger objects.

        Raises:
            ConfigError: invalid spec, hyperparameters or config.
            UnknownRuleError: a configured rule is not registered.
        """
        from dogclf.backends import get_backend

        from .rules import validate_rules

        if not isinstance(self.config, DebuggerConfig):
            raise ConfigError(f"config must be a dogclf.debug.DebuggerConfig; got {type(self.config).__name__}")
        validate_rules(self.config.rules, "tensor")
        validate_rules(self.config.profiler_rules, "profiler")
        spec = self._base_spec()
        backend = backend if backend is not None else get_backend(self.backend)
        for key in ("debugger_hook_config", "profiler_config"):
            if getattr(spec, key) is not None:
                raise ConfigError(f"{key} is built from DebugTrainer's config; do not set it in the spec")
        hook = self.config.hook_json(s3_path=self.config.s3_output_path)
        profiler = self.config.profiler.to_json() if self.config.profiler is not None else None
        environment = dict(spec.environment)
        if getattr(backend, "delivers_debugger_config", False):
            environment[DEBUG_ENV] = json.dumps(self.config.rules_json())
            return spec.with_params({}, environment=environment, debugger_hook_config=hook,
                                    profiler_config=profiler, debugger=self.config)
        # Environment values are capped at 512 characters on SageMaker: everything travels packed in one
        # hyperparameter (up to 2500 characters).
        settings = dict(self.config.rules_json(), hook=hook)
        if profiler is not None:
            settings["profiler"] = profiler
        extra = {**spec.extra_hyperparameters, HYPERPARAMETER: encode_settings(settings)}
        return spec.with_params({}, extra_hyperparameters=extra,
                                debugger_hook_config=hook if self.config.sagemaker_debugger else None,
                                debugger=self.config)

    # -- running ----------------------------------------------------------------------------------------------
    def fit(self) -> DebugTrainer:
        """Run the training job, evaluate the rules on the finished trial and build the report.

        Run again after an interruption (``kill -9`` included) with the same job name, it continues: a job that
        did not complete resumes from its checkpoints, Debugger trial included, and one that completed with the
        same hyperparameters is read back (``backend.attach``) rather than trained again; either way the result
        and the report are those of an uninterrupted run.

        Returns:
            ``self``, with :attr:`spec_`, :attr:`result_`, :attr:`report_`, :attr:`findings_` and
            :attr:`trial_path_` set.

        Raises:
            ConfigError: bad spec, rules or options (before anything runs).
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
        result = self._completed(backend, spec) or backend.train(spec)
        status = getattr(result, "status", None)
        if status not in ("Completed", "Stopped"):
            raise JobError("the Debugger training job did not complete", job_id=getattr(result, "job_name", None),
                           status=status, reason=getattr(result, "failure_reason", None))
        output_dir = self._job_output(backend, result)
        trial: str | None = None
        if not (output_dir / "tensors").is_dir():  # not written by dogclf's hook into the output folder: ask where
            trial = self.config.s3_output_path
            if trial is None and callable(getattr(backend, "debugger_tensors", None)):
                try:
                    trial = backend.debugger_tensors(result)
                except DogclfError as exc:  # the report then covers profiling only
                    logger.warning("cannot find the Debugger tensors of %s: %s", result.job_name, exc)
        summary = {"job name": result.job_name, "backend": getattr(backend, "name", str(backend)),
                   "status": status, "hyperparameters": json.dumps(getattr(result, "hyperparameters", None)
                                                                   or spec.hyperparameters, default=str)}
        for key, value in sorted((getattr(result, "metrics", None) or {}).items()):
            summary[key] = f"{value:.4f}" if isinstance(value, float) else value
        report = build_report(output_dir, self.report_path, rules=self.config.rules,
                              profiler_rules=self.config.profiler_rules if self.config.profiler else (),
                              trial=trial, summary=summary)
        self.spec_ = spec
        self.result_ = result
        self.report_ = report
        self.findings_ = report.findings
        self.trial_path_ = str(trial) if trial is not None else str(output_dir / "tensors")
        return self

    @staticmethod
    def _completed(backend: Backend, spec: Any) -> Any:
        """The result of a job of this name that already completed with these hyperparameters, or ``None``."""
        attach = getattr(backend, "attach", None)
        if not spec.job_name or not callable(attach):
            return None
        try:
            result = attach(spec.job_name)
        except DogclfError:  # no such job (yet)
            return None
        if getattr(result, "status", None) != "Completed" or \
                getattr(result, "hyperparameters", None) != spec.hyperparameters:
            return None
        logger.info("training job %s already completed with these hyperparameters; building the report from it",
                    spec.job_name)
        return result

    @staticmethod
    def _job_output(backend: Backend, result: Any) -> Path:
        fetch = getattr(backend, "fetch_output", None)
        if callable(fetch):
            return Path(fetch(result))
        out = getattr(result, "output_dir", None)
        if not out or str(out).startswith("s3://"):
            raise JobError(f"backend {getattr(backend, 'name', backend)!r} has no fetch_output() and the job's "
                           f"output {out!r} is not a local folder", job_id=getattr(result, "job_name", None),
                           status=getattr(result, "status", None))
        return Path(out)

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
        with atomic_path(path) as tmp:
            shutil.copyfile(src, tmp)
        return path

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_") and not name.startswith("_"):
            raise NotFittedError(f"DebugTrainer.{name} is set by fit(); call fit() first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
