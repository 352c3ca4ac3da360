"""Local backend: serving. Starts the local endpoint server (:mod:`dogclf.serving.server`) in a child process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dogclf.backends.local import LocalBackend


__all__ = ["deploy"]


def deploy(backend: LocalBackend, artifact: Any, config: Any = None, **kwargs: Any) -> Any:
    """Serve ``artifact`` from a local HTTP server process and return its started handle.

    Args:
        backend: The :class:`~dogclf.backends.local.LocalBackend` (its ``root`` is not used: the unpacked model and
            the server log live in a temporary folder removed when the endpoint is deleted).
        artifact: An artifact folder, a ``model.tar.gz`` or a built :class:`~dogclf.models.ResNetBreedModel`.
        config: A :class:`~dogclf.serving.DeployConfig` (its ``server``, ``calibration`` and ``startup_timeout_s``
            apply here); defaults to its defaults.
        **kwargs: :class:`~dogclf.serving.DeployConfig` or :class:`~dogclf.serving.server.ServerConfig` field
            overrides, e.g. ``port=8080`` or ``max_batch_size=16``.

    Returns:
        A :class:`~dogclf.serving.endpoint.LocalEndpoint` answering ``/ping``.

    Raises:
        EndpointError: the server did not start.
        ArtifactError: the artifact is not usable.
    """
    from dogclf.serving import EndpointDeployer
    from dogclf.serving.endpoint import LocalEndpoint

    config = EndpointDeployer(config, **kwargs).resolved_config()
    endpoint = LocalEndpoint(artifact, config.server, name=config.endpoint_name,
                             startup_timeout_s=config.startup_timeout_s, calibration=config.calibration)
    return endpoint.start()
