"""The local backend: runs the shared training entry point and inference handler on this machine, without Docker.

Training jobs run as separate processes under the SageMaker training-container contract (an ``/opt/ml``-style job
folder and the ``SM_*`` environment); endpoints are local HTTP servers speaking the inference-container contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dogclf.errors import BackendError

__all__ = ["LocalBackend"]


def default_root() -> Path:
    """Where the local backend keeps job folders and staged data: ``$DOGCLF_HOME`` or ``~/.dogclf``."""
    return Path(os.environ.get("DOGCLF_HOME") or Path.home() / ".dogclf")


class LocalBackend:
    """Run dogclf's jobs on this machine.

    Args:
        root: Folder for job directories, staged datasets and endpoints; defaults to :func:`default_root`.
            Nothing is created until a job runs.
    """

    name = "local"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"LocalBackend(root={str(self.root)!r})"

    def train(self, spec: Any, **kwargs: Any) -> Any:
        """Run a training job locally (implemented with the training entry point)."""
        raise BackendError("LocalBackend.train is not available in this version of dogclf")

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve an artifact from a local endpoint (implemented with the serving package)."""
        raise BackendError("LocalBackend.deploy is not available in this version of dogclf")
