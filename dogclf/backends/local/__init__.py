"""The local backend: runs the shared training entry point and inference handler on this machine, without Docker.

Training jobs run as separate processes under the SageMaker training-container contract (an ``/opt/ml``-style job
folder and the ``SM_*`` environment); endpoints are local HTTP servers speaking the inference-container contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
        # Absolute from the start: jobs run in other working directories (SAGEMAKER_BASE_DIR, child processes).
        self.root = (Path(root).expanduser() if root is not None else default_root()).absolute()

    def __repr__(self) -> str:
        return f"LocalBackend(root={str(self.root)!r})"

    # Each capability lives in its own module of this package and is imported when first used.
    def train(self, spec: Any, **kwargs: Any) -> Any:
        """Run one training job of the shared entry point; see :mod:`.training`."""
        from .training import train

        return train(self, spec, **kwargs)

    def attach(self, job_name: str) -> Any:
        """The result of an earlier training job, read back by name; see :mod:`.training`."""
        from .training import attach

        return attach(self, job_name)

    def tune(self, spec: Any, **kwargs: Any) -> Any:
        """Run a hyperparameter-tuning experiment; see :mod:`.tuning`."""
        from .tuning import tune

        return tune(self, spec, **kwargs)

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve a model artifact through the shared inference handler; see :mod:`.serving`."""
        from .serving import deploy

        return deploy(self, artifact, **kwargs)
