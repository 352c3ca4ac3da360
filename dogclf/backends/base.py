"""The :class:`Backend` protocol and the job descriptions every backend shares.

A backend is where work runs: ``local`` runs training jobs as processes on this machine and serves endpoints
from a local HTTP server; ``sagemaker`` runs the same entry point and inference handler on AWS SageMaker. Only
the SageMaker backend knows AWS request shapes; user code talks to the protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What dogclf needs from a place that runs jobs.

    A third-party backend is any object with these members, registered in the ``dogclf.backends`` entry-point
    group (see :func:`dogclf.backends.get_backend`). The built-ins are :class:`~dogclf.backends.local.LocalBackend`
    and :class:`~dogclf.backends.sagemaker.SageMakerBackend`.

    Attributes:
        name: The name the backend is registered under (``"local"``, ``"sagemaker"``).
    """

    name: str

    def train(self, spec: Any, **kwargs: Any) -> Any:
        """Run one training job of the shared training entry point and return its result."""
        ...

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve a model artifact through the shared inference handler and return an endpoint handle."""
        ...
