"""Local backend: training jobs as processes under the SageMaker training-container contract, without Docker.

Each job gets a folder laid out like a container's ``/opt/ml``::

    <root>/jobs/<job_name>/
        input/config/hyperparameters.json   inputdataconfig.json   resourceconfig.json
                     debughookconfig.json   profilerconfig.json    (when the spec has them)
        input/data/<channel>/               -> the channel's folder (a symlink)
        code/                               the dogclf package the job runs (a copy, so edits don't leak in)
        model/                              the model artifact (SM_MODEL_DIR)
        output/data/                        extra outputs (SM_OUTPUT_DATA_DIR); output/failure on failure
        checkpoints/                        per-epoch checkpoints (or a symlink to spec.checkpoint_uri)
        logs/train.log                      everything the job printed
        job.json                            status, metrics and paths (what :func:`attach` reads)

The job runs in a separate process through the ``sagemaker-training`` toolkit with ``SAGEMAKER_BASE_DIR`` set to
the job folder, i.e. the same code path SageMaker's PyTorch containers use: ``environment.Environment()`` reads the
config files, ``entry_point.run`` starts ``dogclf/training/train.py`` with the hyperparameters as command-line
options and the ``SM_*`` environment (N processes under torchrun for a distributed job, :mod:`.launch`). Its output streams to a logger and to ``on_log_line``; its metrics are the
events the entry point publishes in ``output/data/metrics.jsonl`` (:mod:`dogclf.training.metrics`), read as they
come, never parsed from the log.

A local job lives as long as the process that started it (which reads its output): killed with ``kill -9``, that
process takes its jobs with it (:func:`dogclf._process.die_with_parent`), and ``job.json`` says how each ended
(:mod:`._jobstate`). A job started again under the name of one that did not complete continues in the same folder
from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dogclf._extras import require
from dogclf._io import atomic_write_json
from dogclf._process import die_with_parent, group_members, kill_group
from dogclf._source import copy_package_source
from dogclf.backends.local.launch import distributed_layout, job_processes, resource_config, toolkit_runner
from dogclf.errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    DuplicateError,
    JobError,
    NotFoundError,
)
from dogclf.images import is_image_file
from dogclf.training.metrics import last_values, read_metric_events
from dogclf.training.spec import TrainingJobResult, TrainingJobSpec

from ._jobstate import CALLER_ENV, mark_ended, process_fields, reconcile, running, write_state

if TYPE_CHECKING:
    from dogclf.backends.local import LocalBackend


__all__ = ["train", "attach", "LocalTrainingJob", "job_dir", "ENTRY_POINT"]

logger = logging.getLogger(__name__)

ENTRY_POINT = "dogclf/training/train.py"
"""The entry point, relative to the job's code folder (``sagemaker_program``)."""


def job_dir(backend: LocalBackend, job_name: str) -> Path:
    """The folder of job ``job_name`` under the backend's root."""
    return Path(backend.root) / "jobs" / job_name


def _new_job_name(spec: TrainingJobSpec) -> str:
    backbone = spec.model.backbone
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"dogclf-{backbone}-{stamp}-{uuid.uuid4().hex[:6]}"[:63]


def _has_images(path: Path) -> bool:
    for _root, _dirs, files in os.walk(path, followlinks=True):
        if any(is_image_file(f) for f in files):
            return True
    return False


def _check_channels(spec: TrainingJobSpec) -> dict[str, Path]:
    """Local channel folders, checked before the job starts (missing or empty ones fail here, not in the job)."""
    out = {}
    for name, uri in spec.channels.items():
        if uri.startswith("s3://"):
            raise ConfigError(f"channel {name!r} is an S3 URI ({uri}); the local backend reads local folders: stage "
                              "the data locally first (dogclf.DatasetStager) or use the sagemaker backend")
        path = Path(uri).expanduser().resolve()
        if not path.is_dir():
            raise DataNotFoundError(f"channel {name!r} folder {uri!r} does not exist")
        if not _has_images(path):
            raise DataError(f"channel {name!r} folder {uri!r} is empty: no images in it")
        out[name] = path
    return out


def _rewrite_opt_ml(value: Any, base: Path) -> Any:
    """Point ``/opt/ml/...`` paths inside a Debugger/profiler config at the job folder."""
    if isinstance(value, str) and (value == "/opt/ml" or value.startswith("/opt/ml/")):
        return str(base) + value[len("/opt/ml"):]
    if isinstance(value, dict):
        return {k: _rewrite_opt_ml(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_opt_ml(v, base) for v in value]
    return value


def prepare_job(backend: LocalBackend, spec: TrainingJobSpec, job_name: str,
                processes: int | None = None) -> tuple[Path, dict[str, str]]:
    """Lay out the job folder and return it with the environment for the job process (of ``processes`` under
    torchrun, :func:`.launch.job_processes`).

    A job of that name that did not complete starts again in its folder and resumes from its checkpoints; one
    whose process is gone, or orphaned, is first recorded as ended (:func:`._jobstate.reconcile`).

    Raises:
        DuplicateError: a completed job of that name exists, or one runs.
        ConfigError, DataNotFoundError, DataError: bad channels or checkpoint location.
    """
    channels = _check_channels(spec)
    base = job_dir(backend, job_name)
    previous = reconcile(base)
    if previous is not None:
        if previous.get("status") == "Completed":
            raise DuplicateError(f"training job {job_name!r} already completed in {base}; read it with "
                                 "attach(job_name) or choose another job_name")
        if previous.get("status") in ("InProgress", "Stopping") and all(running(previous)):
            raise DuplicateError(f"training job {job_name!r} is running (pid {previous.get('pid')})")
        logger.info("job folder %s exists (status %s): starting again, resuming from its checkpoints", base,
                    previous.get("status"))
    config = base / "input" / "config"
    for sub in (config, base / "input" / "data", base / "model", base / "output" / "data", base / "logs"):
        sub.mkdir(parents=True, exist_ok=True)
    (base / "output" / "failure").unlink(missing_ok=True)

    checkpoints = base / "checkpoints"
    if spec.checkpoint_uri:
        if spec.checkpoint_uri.startswith("s3://"):
            raise ConfigError(f"checkpoint_uri {spec.checkpoint_uri!r} is an S3 URI; the local backend needs a folder")
        target = Path(spec.checkpoint_uri).expanduser().resolve()
        target.mkdir(parents=True, exist_ok=True)
        if checkpoints.is_symlink() or checkpoints.is_file():
            checkpoints.unlink()
        elif checkpoints.is_dir():
            shutil.rmtree(checkpoints)
        checkpoints.symlink_to(target, target_is_directory=True)
    else:
        checkpoints.mkdir(exist_ok=True)

    for name, path in channels.items():
        link = base / "input" / "data" / name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(path, target_is_directory=True)

    code = base / "code"
    if code.exists():
        shutil.rmtree(code)
    code.mkdir()
    copy_package_source(code)

    # As on SageMaker: the SDK sends each hyperparameter JSON-encoded (json.dumps of the spec's wire string) and
    # the container's toolkit decodes it back into the entry point's command-line option.
    hyperparameters = {k: json.dumps(v) for k, v in spec.hyperparameters.items()}
    hyperparameters.update({
        "sagemaker_program": json.dumps(ENTRY_POINT),
        "sagemaker_submit_directory": json.dumps(str(code)),
        "sagemaker_job_name": json.dumps(job_name),
        "sagemaker_container_log_level": "20",
        "sagemaker_region": json.dumps("local"),
    })
    atomic_write_json(config / "inputdataconfig.json", {
        name: {"ContentType": "application/x-image", "TrainingInputMode": "File",
               "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"} for name in channels})
    atomic_write_json(config / "resourceconfig.json", resource_config())

    env = dict(os.environ)
    env.update({
        "SAGEMAKER_BASE_DIR": str(base),
        "SM_STUDIO_LOCAL_MODE": "True",  # no DNS wait for algo-1 hosts
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "PYTHONUNBUFFERED": "1",
        "DOGCLF_FEATURE_CACHE_DIR": str(Path(backend.root) / "cache" / "features"),
        "TRAINING_JOB_NAME": job_name,
        CALLER_ENV: str(os.getpid()),  # the job dies with this process, which reads its output
    })
    if processes is not None:
        distributed_layout(base, processes, hyperparameters, env)
    atomic_write_json(config / "hyperparameters.json", hyperparameters)
    for var in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST", "SM_CHANNEL_TRAINING", "SM_MODEL_DIR",
                "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR"):
        env.pop(var, None)  # the toolkit sets these for this job; a caller's own must not leak in
    if spec.debugger_hook_config is not None:
        atomic_write_json(config / "debughookconfig.json", _rewrite_opt_ml(spec.debugger_hook_config, base))
        env["SMDEBUG_CONFIG_FILE_PATH"] = str(config / "debughookconfig.json")
    else:
        env.pop("SMDEBUG_CONFIG_FILE_PATH", None)
    if spec.profiler_config is not None:
        atomic_write_json(config / "profilerconfig.json", _rewrite_opt_ml(spec.profiler_config, base))
        env["SMPROFILER_CONFIG_PATH"] = str(config / "profilerconfig.json")
    else:
        env.pop("SMPROFILER_CONFIG_PATH", None)
    env.pop("DOGCLF_DEBUG", None)  # a Debugger job's rules come in its own spec.environment, never the caller's
    env.update(spec.environment)
    return base, env


class LocalTrainingJob:
    """A running (or finished) local training job, as returned by ``train(..., wait=False)``.

    Attributes:
        job_name: The job's name.
        job_dir: The job's folder.
        spec: The spec it runs.
    """

    def __init__(self, job_name: str, job_dir: Path, spec: TrainingJobSpec, process: subprocess.Popen,
                 on_log_line: Callable[[str], None] | None, log: logging.Logger) -> None:
        self.job_name = job_name
        self.job_dir = job_dir
        self.spec = spec
        self._process = process
        self._on_log_line = on_log_line
        self._log = log
        self._lock = threading.Lock()
        self._tail: list[str] = []
        self._status = "InProgress"
        self._stop_requested = False
        self._started = time.time()
        self._result: TrainingJobResult | None = None
        self._ids = process_fields(process.pid)  # read now: once it has ended, the process cannot be named
        self._save_state()
        self._reader = threading.Thread(target=self._read, name=f"dogclf-job-{job_name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"LocalTrainingJob(job_name={self.job_name!r}, status={self.status!r})"

    @property
    def log_path(self) -> Path:
        """The job's log file."""
        return self.job_dir / "logs" / "train.log"

    @property
    def status(self) -> str:
        """``"InProgress"``, ``"Stopping"``, ``"Completed"``, ``"Failed"`` or ``"Stopped"``."""
        with self._lock:
            return self._status

    @property
    def output_dir(self) -> Path:
        """The job's output data folder (``SM_OUTPUT_DATA_DIR``): metrics, tensors, reports."""
        return self.job_dir / "output" / "data"

    @property
    def metric_history(self) -> list[dict[str, Any]]:
        """Every metric event the job has published so far (``metrics.jsonl``), in order."""
        return read_metric_events(self.output_dir)

    @property
    def metrics(self) -> dict[str, float]:
        """The last value of each metric published so far."""
        return last_values(self.metric_history)

    @property
    def pid(self) -> int:
        """The job process's id."""
        return self._process.pid

    def _save_state(self, result: TrainingJobResult | None = None) -> None:
        doc = {"job_name": self.job_name, "status": self._status, **self._ids,
               "started": self._started, "spec_hyperparameters": self.spec.hyperparameters,
               "channels": self.spec.channels}
        if result is not None:
            doc["result"] = result.to_dict()
        write_state(self.job_dir, doc)

    def _read(self) -> None:
        assert self._process.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            for raw in self._process.stdout:
                line = raw.rstrip("\n")
                log_file.write(line + "\n")
                log_file.flush()
                self._log.info("[%s] %s", self.job_name, line)
                with self._lock:
                    self._tail = (self._tail + [line])[-40:]
                if self._on_log_line is not None:
                    try:
                        self._on_log_line(line)
                    except Exception:  # a caller's callback must not kill the log reader
                        logger.exception("on_log_line callback failed for job %s", self.job_name)
        code = self._process.wait()
        if isinstance(self._process, subprocess.Popen) and group_members(self._process.pid):
            # the job process ended (killed alone?) and left the entry point or its workers: they go with it
            logger.warning("job %s: process %d ended with status %s and left processes in its group; killing them",
                           self.job_name, self._process.pid, code)
            kill_group(self._process.pid)
        self._finish(code)

    def _finish(self, code: int) -> None:
        model = self.job_dir / "model"
        with self._lock:
            if self._stop_requested:
                status, reason = "Stopped", "stopped by the caller"
            elif code == 0 and (model / "config.json").is_file():
                status, reason = "Completed", None
            else:
                status = "Failed"
                failure = self.job_dir / "output" / "failure"
                reason = failure.read_text(encoding="utf-8").strip() if failure.is_file() else None
                if not reason:
                    errors = [t for t in self._tail if "Error" in t or "error" in t or "killed by" in t]
                    reason = (errors[-1] if errors else _exit_text(code))[:1024]
            self._status = status
            history = self.metric_history
            self._result = TrainingJobResult(
                job_name=self.job_name, status=status, metrics=last_values(history), metric_history=history,
                model_artifact=str(model) if status == "Completed" else None,
                output_dir=str(self.output_dir), failure_reason=reason,
                duration_s=time.time() - self._started, log_path=str(self.log_path),
                hyperparameters=dict(self.spec.hyperparameters))
            self._save_state(self._result)

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> TrainingJobResult:
        """Wait for the job to end and return its result.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.
            raise_on_failure: Raise :class:`~dogclf.errors.JobError` when the job failed or was stopped.

        Raises:
            JobError: the job did not complete (and ``raise_on_failure``), or ``timeout`` passed first
                (``status="InProgress"``).
        """
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise JobError(f"training job {self.job_name!r} still running after {timeout}s", job_id=self.job_name,
                           status=self.status)
        assert self._result is not None
        if raise_on_failure and self._result.status != "Completed":
            raise JobError(f"training job {self.job_name!r} did not complete", job_id=self.job_name,
                           status=self._result.status, reason=self._result.failure_reason)
        return self._result

    @property
    def result(self) -> TrainingJobResult | None:
        """The result once the job ended, else ``None``."""
        with self._lock:
            return self._result

    def done(self) -> bool:
        """Whether the job has ended (and its result is available)."""
        return not self._reader.is_alive()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the job: SIGTERM to its process group, SIGKILL after ``grace_s``; its status becomes ``Stopped``."""
        with self._lock:
            if self._result is not None:
                return
            self._stop_requested = True
            self._status = "Stopping"
        # the whole group: the entry point (a grandchild) and its workers too, not only the toolkit runner
        kill_group(self._process.pid, grace_s=grace_s)
        self._reader.join(30)


def train(backend: LocalBackend, spec: TrainingJobSpec, *, wait: bool = True,
          on_log_line: Callable[[str], None] | None = None,
          raise_on_failure: bool = True, logger: logging.Logger | None = None) -> TrainingJobResult | LocalTrainingJob:
    """Run one training job of the shared entry point on this machine.

    Args:
        backend: The :class:`~dogclf.backends.local.LocalBackend` (its ``root`` holds the job folders).
        spec: What to run. Channels must be local folders with images.
        wait: Wait for the job and return its :class:`~dogclf.training.TrainingJobResult`; ``False`` returns a
            :class:`LocalTrainingJob` handle at once (``.wait()``, ``.stop()``, ``.status``, ``.metrics``).
        on_log_line: Called with every line the job prints (from a reader thread).
        raise_on_failure: With ``wait=True``, raise :class:`~dogclf.errors.JobError` if the job fails.
        logger: Where the job's lines are logged (INFO); defaults to this module's logger.

    Raises:
        ConfigError, DataNotFoundError, DataError: bad spec or channels, or a distribution this machine cannot
            run (:func:`.launch.job_processes`), before anything runs.
        DuplicateError: a completed (or running) job of that name exists.
        JobError: the job failed (``wait=True`` and ``raise_on_failure``).
    """
    if not isinstance(spec, TrainingJobSpec):
        raise ConfigError(f"spec must be a dogclf.training.TrainingJobSpec, got {type(spec).__name__}")
    processes = job_processes(getattr(backend, "processes", None), spec)
    job_name = spec.job_name or _new_job_name(spec)
    base, env = prepare_job(backend, spec, job_name, processes)
    log = logger or globals()["logger"]
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "dogclf.backends.local.training", str(base)],
        env=env, cwd=str(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        bufsize=1, start_new_session=True,
    )
    log.info("started local training job %s (pid %d) in %s", job_name, process.pid, base)
    job = LocalTrainingJob(job_name, base, spec, process, on_log_line, log)
    if not wait:
        return job
    try:
        return job.wait(raise_on_failure=raise_on_failure)
    except KeyboardInterrupt:
        job.stop()
        raise


def attach(backend: LocalBackend, job_name: str) -> TrainingJobResult:
    """Read a local job's result from its folder (like ``Estimator.attach``).

    A job whose process is gone without a result (killed, or with the process that started it) reads as
    ``Failed``, and ``job.json`` is rewritten to say so; an orphaned one is killed first
    (:func:`._jobstate.reconcile`).

    Raises:
        NotFoundError: no job of that name under the backend's root.
    """
    base = job_dir(backend, job_name)
    state = reconcile(base)
    if state is None:
        known = sorted(p.name for p in (Path(backend.root) / "jobs").glob("*") if (p / "job.json").is_file()) \
            if (Path(backend.root) / "jobs").is_dir() else []
        raise NotFoundError(f"no local training job {job_name!r} under {backend.root}; known: "
                            f"{', '.join(map(repr, known[-10:])) or 'none'}")
    if "result" in state:
        return TrainingJobResult.from_dict(state["result"])
    history = read_metric_events(base / "output" / "data")  # it runs: what it has published so far
    return TrainingJobResult(
        job_name=job_name, status=str(state.get("status", "InProgress")), metrics=last_values(history),
        metric_history=history, output_dir=str(base / "output" / "data"), log_path=str(base / "logs" / "train.log"),
        hyperparameters=state.get("spec_hyperparameters", {}))


def _exit_text(code: int) -> str:
    """How a process ended, from its exit status (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"the job process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the job process was killed by signal {-code}"
    return f"the job process exited with status {code}"


def _watch_caller(base: str | os.PathLike[str]) -> None:
    """In a job process: die with the caller named by ``DOGCLF_JOB_CALLER``, recording why in ``job.json``."""
    caller = os.environ.get(CALLER_ENV, "")
    if caller.isdigit():
        die_with_parent(int(caller), lambda: mark_ended(
            Path(base), f"the process that started the job (pid {caller}) is gone; the job was killed with it"))


def _run_in_job_folder(base: str) -> int:
    """The job process: run the entry point through the sagemaker-training toolkit (``SAGEMAKER_BASE_DIR`` set)."""
    os.environ["SAGEMAKER_BASE_DIR"] = base
    _watch_caller(base)
    require("local", "sagemaker_training", "local backend's training job")
    from sagemaker_training import entry_point, environment, errors

    env = environment.Environment()
    try:
        entry_point.run(uri=env.module_dir, user_entry_point=env.user_entry_point, args=env.to_cmd_args(),
                        env_vars=env.to_env_vars(), capture_error=False, runner_type=toolkit_runner(env))
    except errors.ExecuteUserScriptError as exc:
        code = int(getattr(exc, "return_code", 1) or 1)
        how = _exit_text(code).replace("the job process", "the training entry point")
        print(f"training entry point failed: {how} ({' '.join(str(exc).split())[:500]})", flush=True)
        return 128 - code if code < 0 else code  # a signal as a shell reports it (137: SIGKILL)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m dogclf.backends.local.training JOB_DIR", file=sys.stderr)
        sys.exit(64)
    sys.exit(_run_in_job_folder(sys.argv[1]))
