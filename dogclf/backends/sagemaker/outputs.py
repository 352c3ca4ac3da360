"""SageMaker backend: a finished job's outputs on this machine, and where its Debugger tensors went.

SageMaker packs a job's output data folder (``SM_OUTPUT_DATA_DIR``: metrics, dogclf's tensors, profiling, the
report's inputs) as ``<output path>/<job>/output/output.tar.gz``; :func:`fetch_output` downloads and unpacks it.
With SageMaker's own Debugger hook, tensors go to the hook's S3 path instead; :func:`debugger_tensors` asks
``DescribeTrainingJob`` where.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._paths import home
from dogclf.backends.sagemaker.session import make_session
from dogclf.errors import BackendError, JobError

if TYPE_CHECKING:
    from dogclf.backends.sagemaker import SageMakerBackend


__all__ = ["fetch_output", "debugger_tensors"]

logger = logging.getLogger(__name__)


def fetch_output(backend: SageMakerBackend, result: Any, dest: str | Path | None = None) -> Path:
    """Download and unpack a finished job's ``output.tar.gz``; returns the local folder.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend`.
        result: The job's :class:`~dogclf.training.TrainingJobResult` (its ``output_dir`` is the S3 prefix).
        dest: Where to unpack; default ``<dogclf home>/outputs/<job name>``.

    Raises:
        JobError: the result names no output.
        BackendError: the archive cannot be downloaded (the message names the S3 object).
    """
    out = getattr(result, "output_dir", None)
    if not out:
        raise JobError("the training job reported no output folder", job_id=getattr(result, "job_name", None),
                       status=getattr(result, "status", None))
    out = str(out)
    if not out.startswith("s3://"):
        return Path(out)
    bucket, _, prefix = out[len("s3://"):].partition("/")
    key = prefix if prefix.endswith(".tar.gz") else prefix.rstrip("/") + "/output.tar.gz"
    target = Path(dest) if dest is not None else home() / "outputs" / str(result.job_name)
    target.mkdir(parents=True, exist_ok=True)
    s3 = make_session(backend).boto_session.client("s3")
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        archive = Path(tmp) / "output.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except Exception as exc:  # noqa: BLE001 - botocore's errors, named with the object
            raise BackendError(f"cannot download s3://{bucket}/{key}: {type(exc).__name__}: {exc}") from exc
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def debugger_tensors(backend: SageMakerBackend, result: Any) -> str | None:
    """Where SageMaker's own Debugger hook wrote the job's tensors (an ``s3://`` URI), or ``None`` when the job
    had no platform hook (dogclf's hook then wrote them into the output folder).

    Raises:
        BackendError: ``DescribeTrainingJob`` fails (the message names the job).
    """
    name = getattr(result, "job_name", None)
    try:
        desc = make_session(backend).sagemaker_client.describe_training_job(TrainingJobName=name)
    except Exception as exc:  # noqa: BLE001 - botocore's errors, named with the job
        raise BackendError(f"cannot describe training job {name!r}: {type(exc).__name__}: {exc}") from exc
    base = (desc.get("DebugHookConfig") or {}).get("S3OutputPath")
    return f"{base.rstrip('/')}/{name}/debug-output" if base else None
