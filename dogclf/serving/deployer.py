""":class:`EndpointDeployer`: serve a model artifact on the local backend or on SageMaker."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from dogclf.errors import ConfigError, NotFittedError
from dogclf.serving.server import ServerConfig

if TYPE_CHECKING:
    from dogclf.backends import Backend


__all__ = ["DeployConfig", "EndpointDeployer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployConfig:
    """Where and how an endpoint runs, validated on creation.

    Attributes:
        endpoint_name: The endpoint's name; a fresh ``dogclf-<time>-<hex>`` by default.
        instance_type: SageMaker instance type.
        initial_instance_count: SageMaker instance count.
        framework_version: PyTorch version of the stock SageMaker inference container.
        py_version: Its Python version tag.
        server: How the local endpoint serves (:class:`~dogclf.serving.server.ServerConfig`: host, port, dynamic
            batching, request size limit, timeout, threads) and the inference ``runtime`` every backend serves
            (``"torch"``, ``"onnx"`` or ``"onnx-int8"``; also given as ``EndpointDeployer(runtime=...)``).
        calibration: Training photos (a folder) to calibrate ``onnx-int8`` with when the artifact has none recorded
            (see :func:`dogclf.serving.export.export_runtimes`).
        startup_timeout_s: How long the local backend waits for ``/ping``.
        wait_poll_s: Seconds between status checks while a SageMaker endpoint is being created.

    Raises:
        ConfigError: a value is invalid.
    """

    endpoint_name: str | None = None
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = 1
    framework_version: str = "2.6"
    py_version: str = "py312"
    server: ServerConfig = ServerConfig()
    calibration: str | None = None
    startup_timeout_s: float = 120.0
    wait_poll_s: float = 15.0

    def __post_init__(self) -> None:
        if self.endpoint_name is not None:
            import re

            if not isinstance(self.endpoint_name, str) or \
                    not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", self.endpoint_name):
                raise ConfigError(f"endpoint_name {self.endpoint_name!r} is not a valid SageMaker endpoint name "
                                  "(letters, digits and hyphens, at most 63, starting with a letter or digit)")
        if not isinstance(self.instance_type, str) or not self.instance_type.startswith(("ml.", "local")):
            raise ConfigError(f"instance_type must look like 'ml.m5.large', got {self.instance_type!r}")
        count = self.initial_instance_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"initial_instance_count must be an int >= 1, got {count!r}")
        if isinstance(self.server, dict):
            object.__setattr__(self, "server", ServerConfig.from_dict(self.server))
        if not isinstance(self.server, ServerConfig):
            raise ConfigError(f"server must be a ServerConfig or a dict, got {self.server!r:.80}")
        if isinstance(self.calibration, os.PathLike):
            object.__setattr__(self, "calibration", os.fspath(self.calibration))
        if self.calibration is not None and (not isinstance(self.calibration, str) or not self.calibration):
            raise ConfigError(f"calibration must be a folder of training photos, got {self.calibration!r:.80}")
        if isinstance(self.startup_timeout_s, bool) or not isinstance(self.startup_timeout_s, (int, float)) \
                or self.startup_timeout_s <= 0:
            raise ConfigError(f"startup_timeout_s must be a number > 0, got {self.startup_timeout_s!r}")
        if isinstance(self.wait_poll_s, bool) or not isinstance(self.wait_poll_s, (int, float)) \
                or self.wait_poll_s <= 0:
            raise ConfigError(f"wait_poll_s must be a number > 0, got {self.wait_poll_s!r}")

    @property
    def runtime(self) -> str:
        """The inference runtime served (``server.runtime``)."""
        return self.server.runtime


_SERVER_KEYS = {f.name for f in fields(ServerConfig)}
_DEPLOY_KEYS = {f.name for f in fields(DeployConfig)}


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    deploy = {k: v for k, v in options.items() if k in _DEPLOY_KEYS}
    server = {k: v for k, v in options.items() if k in _SERVER_KEYS}
    unknown = sorted(set(options) - _DEPLOY_KEYS - _SERVER_KEYS)
    if unknown:
        raise ConfigError(f"unknown deploy options {unknown}; expected some of "
                          f"{sorted(_DEPLOY_KEYS | _SERVER_KEYS - {'server'})}")
    return deploy, server


class EndpointDeployer:
    """Serve a trained model behind an endpoint, locally or on SageMaker.

    Args:
        config: A :class:`DeployConfig`; keyword options override its fields, and the
            :class:`~dogclf.serving.server.ServerConfig` fields (``runtime``, ``max_batch_size``, ``max_delay_ms``,
            ``port``, ``workers``, ...) may be given directly too.
        backend: ``None`` (the default backend: ``local``, or ``$DOGCLF_BACKEND``), a registered name, or a backend
            object (``get_backend("sagemaker", role=..., bucket=...)``).
        **options: Field overrides, e.g. ``instance_type="ml.c5.xlarge"``, ``max_batch_size=16`` or
            ``runtime="onnx-int8"``.

    Nothing starts until :meth:`deploy`.

    Example::

        deployer = EndpointDeployer(max_batch_size=8, backend="local")
        with deployer.deploy("model.tar.gz") as endpoint:
            print(BreedPredictor(endpoint).predict("dog.jpg").breed)
    """

    def __init__(self, config: DeployConfig | None = None, *, backend: Backend | str | None = None,
                 **options: Any) -> None:
        self.config = config
        self.backend = backend
        self.options = options
        self._endpoint: Any = None

    def resolved_config(self) -> DeployConfig:
        """:attr:`config` with the keyword options applied and validated."""
        base = self.config if self.config is not None else DeployConfig()
        if not isinstance(base, DeployConfig):
            raise ConfigError(f"config must be a DeployConfig, got {type(base).__name__}")
        deploy, server = _split_options(self.options)
        if server:
            deploy["server"] = replace(deploy.get("server", base.server), **server)
        return replace(base, **deploy)

    def deploy(self, artifact: Any) -> Any:
        """Deploy ``artifact`` on the deployer's backend and return its endpoint handle (a context manager; leaving
        it deletes the endpoint).

        With an ONNX ``runtime``, an artifact deployed for the first time is exported (into an artifact folder, so
        once) and checked against its eager model first; a failed or disagreeing export raises
        :class:`~dogclf.errors.RuntimeExportError` / :class:`~dogclf.errors.AgreementError` and nothing is deployed.

        Args:
            artifact: An artifact folder, a ``model.tar.gz`` (local path, or ``s3://`` for SageMaker) or a built
                :class:`~dogclf.models.ResNetBreedModel`.

        Returns:
            A :class:`~dogclf.serving.endpoint.LocalEndpoint` serving on 127.0.0.1 and answering ``/ping``, or a
            :class:`~dogclf.backends.sagemaker.serving.SageMakerEndpoint` in service.
        """
        from dogclf.backends import get_backend

        config = self.resolved_config()
        target = get_backend(self.backend)
        endpoint = target.deploy(artifact, config=config)
        self._endpoint = endpoint
        logger.info("deployed %s on %s as %s", artifact, getattr(target, "name", target), endpoint.name)
        return endpoint

    @property
    def endpoint_(self) -> Any:
        """The handle of the last deployment; :class:`~dogclf.errors.NotFittedError` before :meth:`deploy`."""
        if self._endpoint is None:
            raise NotFittedError("EndpointDeployer.endpoint_ is set by deploy(); call deploy() first")
        return self._endpoint
