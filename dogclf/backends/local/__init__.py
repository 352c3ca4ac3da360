"""The local backend: runs the shared training entry point and inference handler on this machine, without Docker.

Training jobs run as separate processes under the SageMaker training-container contract (an ``/opt/ml``-style job
folder and the ``SM_*`` environment); endpoints are local HTTP servers speaking the inference-container contract.
"""

from __future__ import annotations

import os
from pathlib import Path

from dogclf.backends.base import PackageBackend

__all__ = ["LocalBackend"]


def default_root() -> Path:
    """Where the local backend keeps job folders and staged data: ``$DOGCLF_HOME`` or ``~/.dogclf``."""
    return Path(os.environ.get("DOGCLF_HOME") or Path.home() / ".dogclf")


class LocalBackend(PackageBackend):
    """Run dogclf's jobs on this machine.

    Args:
        root: Folder for job directories, staged datasets and endpoints; defaults to :func:`default_root`.
            Nothing is created until a job runs.
    """

    name = "local"
    capability_package = __name__
    extras = {
        "train": (("local", "sagemaker_training"),),  # jobs run under the container contract through the toolkit
        "tune": (("local", "sagemaker_training"),),
        "deploy": (("serve", "starlette"), ("serve", "uvicorn"), ("serve", "requests")),
    }

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        # Absolute from the start: jobs run in other working directories (SAGEMAKER_BASE_DIR, child processes).
        self.root = (Path(root).expanduser() if root is not None else default_root()).absolute()

    def __repr__(self) -> str:
        return f"LocalBackend(root={str(self.root)!r})"

