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
    delivers_debugger_config = False
    """SageMaker writes ``debughookconfig.json`` only for accounts that have Debugger: dogclf's Debugger settings
    travel packed in a hyperparameter instead (see :class:`~dogclf.debug.DebugTrainer`)."""
    extras = {capability: (("sagemaker", "sagemaker"),)
              for capability in ("train", "attach", "tune", "deploy", "fetch_output", "debugger_tensors")}

    def __init__(self, role: str | None = None, bucket: str | None = None, region: str | None = None,
                 session: Any = None) -> None:
        self.role = role
        self.bucket = bucket
        self.region = region
        self.session = session

    def __repr__(self) -> str:
        return f"SageMakerBackend(role={self.role!r}, bucket={self.bucket!r}, region={self.region!r})"

    def tune(self, spec: Any, **kwargs: Any) -> Any:
        """Run a tuning experiment as a SageMaker hyperparameter-tuning job (:func:`.tuning.tune`)."""
        return self._capability("tuning", "tune")(self, spec, **kwargs)

    def attach_endpoint(self, endpoint_name: str, *, labels: Any = None) -> Any:
        """A handle on an endpoint that already runs (deployed elsewhere); see
        :meth:`.serving.SageMakerEndpoint.attach`."""
        from .serving import SageMakerEndpoint
        from .session import make_session

        return SageMakerEndpoint.attach(endpoint_name, make_session(self), labels=labels)

    def fetch_output(self, result: Any, dest: Any = None) -> Any:
        """A finished job's output data folder on this machine (downloaded); see :func:`.outputs.fetch_output`."""
        return self._capability("outputs", "fetch_output")(self, result, dest)

    def debugger_tensors(self, result: Any) -> str | None:
        """Where SageMaker's own Debugger hook wrote a job's tensors; see :func:`.outputs.debugger_tensors`."""
        return self._capability("outputs", "debugger_tensors")(self, result)

    def tuning_state(self, name: str) -> Any:
        """Rebuild a tuning experiment's state from a SageMaker tuning job by name; see :mod:`.tuning`."""
        require("sagemaker", "sagemaker", "SageMaker backend's tuning_state")
        from .tuning import state_from_tuning_job

        return state_from_tuning_job(self, name)
