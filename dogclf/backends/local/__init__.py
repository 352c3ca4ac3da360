"""The local backend: runs the shared training entry point and inference handler on this machine, without Docker.

Training jobs run as separate processes under the SageMaker training-container contract (an ``/opt/ml``-style job
folder and the ``SM_*`` environment); endpoints are local HTTP servers speaking the inference-container contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dogclf._paths import home
from dogclf.backends.base import PackageBackend
from dogclf.errors import ConfigError

__all__ = ["LocalBackend"]


def default_root() -> Path:
    """Where the local backend keeps job folders and staged data: ``$DOGCLF_HOME`` or ``~/.dogclf``."""
    return home()


class LocalBackend(PackageBackend):
    """Run dogclf's jobs on this machine.

    Args:
        root: Folder for job directories, staged datasets and endpoints; defaults to :func:`default_root`.
            Nothing is created until a job runs.
        processes: Training processes per job on this machine (data-parallel under ``torchrun``, gloo on the
            CPU, see :mod:`dogclf.training.distributed`) where the spec's
            :class:`~dogclf.training.Distribution` does not say; ``None``: jobs without a distribution run one
            plain process, jobs with one run one process each.

    Raises:
        ConfigError: ``processes`` is not an int >= 1 or ``None``.
    """

    name = "local"
    capability_package = __name__
    delivers_debugger_config = True
    """Jobs get ``debughookconfig.json`` / ``profilerconfig.json`` written from the spec, as SageMaker's Debugger
    service does."""
    resumes_jobs = True
    """A job started again under the name of one that did not complete (killed, failed, stopped) continues in
    its folder from its last checkpoint: a killed experiment's trials resume under their own names."""
    extras = {
        "train": (("local", "sagemaker_training"),),  # jobs run under the container contract through the toolkit
        "trial_pool": (("local", "sagemaker_training"),),
        "deploy": (("serve", "starlette"), ("serve", "uvicorn"), ("serve", "requests")),
    }

    def __init__(self, root: str | os.PathLike[str] | None = None, processes: int | None = None) -> None:
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
            raise ConfigError(f"processes must be an int >= 1 (or None), got {processes!r}")
        # Absolute from the start: jobs run in other working directories (SAGEMAKER_BASE_DIR, child processes).
        self.root = (Path(root).expanduser() if root is not None else default_root()).absolute()
        self.processes = processes

    def __repr__(self) -> str:
        extra = f", processes={self.processes}" if self.processes is not None else ""
        return f"LocalBackend(root={str(self.root)!r}{extra})"

    def fetch_output(self, result: Any, dest: Any = None) -> Path:
        """A job's output data folder: on this machine already (``dest`` is not used)."""
        return Path(result.output_dir)

    def debugger_tensors(self, result: Any) -> str | None:
        """``None``: local jobs keep their Debugger tensors in their output folder."""
        return None

    def trial_pool(self, spec: Any, space: Any, size: int) -> Any:
        """Worker processes for a tuning experiment's trials, or ``None``; see :func:`.tuning.trial_pool`."""
        return self._capability("tuning", "trial_pool")(self, spec, space, size)

