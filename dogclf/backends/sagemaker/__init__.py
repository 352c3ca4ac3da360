"""The SageMaker backend: the only part of dogclf that knows AWS request shapes.

It builds ``sagemaker.pytorch.PyTorch`` estimators, tuners and ``PyTorchModel`` endpoints for the same training
entry point and inference handler the local backend runs.
"""

from __future__ import annotations

from typing import Any

from dogclf._extras import require
from dogclf.backends.base import PackageBackend

__all__ = ["SageMakerBackend"]


class SageMakerBackend(PackageBackend):
    """Run dogclf's jobs on AWS SageMaker.

    Args:
        role: IAM role ARN that SageMaker jobs assume.
        bucket: S3 bucket for data, checkpoints and artifacts (defaults to the session's default bucket).
        region: AWS region; defaults to the boto3 session's.
        session: A ready ``sagemaker.Session`` to use instead of creating one.

    Nothing contacts AWS until a job runs.
    """

    name = "sagemaker"
    capability_package = __name__
    extras = {capability: (("sagemaker", "sagemaker"),) for capability in ("train", "attach", "tune", "deploy")}

    def __init__(self, role: str | None = None, bucket: str | None = None, region: str | None = None,
                 session: Any = None) -> None:
        self.role = role
        self.bucket = bucket
        self.region = region
        self.session = session

    def __repr__(self) -> str:
        return f"SageMakerBackend(role={self.role!r}, bucket={self.bucket!r}, region={self.region!r})"

    def tuning_state(self, name: str) -> Any:
        """Rebuild a tuning experiment's state from a SageMaker tuning job by name; see :mod:`.tuning`."""
        require("sagemaker", "sagemaker", "SageMaker backend's tuning_state")
        from .tuning import state_from_tuning_job

        return state_from_tuning_job(self, name)
