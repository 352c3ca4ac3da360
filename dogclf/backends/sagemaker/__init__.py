"""The SageMaker backend: the only part of dogclf that knows AWS request shapes.

It builds ``sagemaker.pytorch.PyTorch`` estimators, tuners and ``PyTorchModel`` endpoints for the same training
entry point and inference handler the local backend runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SageMakerBackend"]


class SageMakerBackend:
    """Run dogclf's jobs on AWS SageMaker.

    Args:
        role: IAM role ARN that SageMaker jobs assume.
        bucket: S3 bucket for data, checkpoints and artifacts (defaults to the session's default bucket).
        region: AWS region; defaults to the boto3 session's.
        session: A ready ``sagemaker.Session`` to use instead of creating one.

    Nothing contacts AWS until a job runs.
    """

    name = "sagemaker"

    def __init__(self, role: str | None = None, bucket: str | None = None, region: str | None = None,
                 session: Any = None) -> None:
        self.role = role
        self.bucket = bucket
        self.region = region
        self.session = session

    def __repr__(self) -> str:
        return f"SageMakerBackend(role={self.role!r}, bucket={self.bucket!r}, region={self.region!r})"

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

    def tuning_state(self, name: str) -> Any:
        """Rebuild a tuning experiment's state from a SageMaker tuning job by name; see :mod:`.tuning`."""
        from .tuning import state_from_tuning_job

        return state_from_tuning_job(self, name)

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve a model artifact through the shared inference handler; see :mod:`.serving`."""
        from .serving import deploy

        return deploy(self, artifact, **kwargs)
