"""SageMaker backend: serving on a real-time endpoint of the stock SageMaker PyTorch inference container.

:func:`deploy` uploads the artifact (unless it is already an ``s3://`` ``model.tar.gz``, such as a training job's
output), builds a ``sagemaker.pytorch.PyTorchModel`` whose ``code/`` is the self-sufficient folder of
:func:`dogclf.serving.package.write_code_dir` (the shared handler plus a vendored dogclf), and deploys it with
``deploy(instance_type="ml.m5.large", initial_instance_count=1)``. The returned :class:`SageMakerEndpoint` sends
requests through the ``sagemaker-runtime`` ``InvokeEndpoint`` API, passing ``k`` as the ``k=<n>`` custom attribute,
and its :meth:`~SageMakerEndpoint.delete` removes the endpoint, its endpoint config and its model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._extras import require
from dogclf.backends.sagemaker.session import error_cause, is_not_found, make_session
from dogclf.errors import ConfigError, EndpointError
from dogclf.serving.endpoint import (
    CostWarning,
    Endpoint,
    new_endpoint_name,
    raise_for_error,
)

if TYPE_CHECKING:
    from dogclf.backends.sagemaker import SageMakerBackend


__all__ = ["SageMakerEndpoint", "deploy", "make_session"]

logger = logging.getLogger(__name__)


class SageMakerEndpoint(Endpoint):
    """A SageMaker real-time endpoint serving the dogclf handler.

    Args:
        name: The endpoint's name.
        session: The ``sagemaker.Session`` it lives in.
        owned: Whether this handle created the endpoint; an owned endpoint that is still running when the handle
            is garbage-collected triggers a :class:`~dogclf.serving.CostWarning`.
        labels: The model's labels, when known (used by :class:`~dogclf.serving.BreedPredictor`).
        runtime_client: The ``sagemaker-runtime`` client to send requests with (defaults to the session's).
        model: The ``sagemaker.pytorch.PyTorchModel`` that was deployed, when this handle deployed it.
        sdk_predictor: The SDK's ``sagemaker.predictor.Predictor`` for the endpoint, set up with matching
            serializers (raw image bytes in as ``application/x-image``, JSON out), for code written against the SDK.

    Use :meth:`attach` for an endpoint that already exists.
    """

    backend = "sagemaker"

    def __init__(self, name: str, session: Any, *, owned: bool = True, labels: Any = None,
                 runtime_client: Any = None, model: Any = None, sdk_predictor: Any = None) -> None:
        self.name = name
        self.session = session
        self.owned = owned
        self.labels = labels
        self.runtime_client = runtime_client
        self.model = model
        self.sdk_predictor = sdk_predictor

    @classmethod
    def attach(cls, endpoint_name: str, session: Any = None, *, labels: Any = None) -> SageMakerEndpoint:
        """A handle for an existing endpoint (not owned: no :class:`~dogclf.serving.CostWarning`, but
        :meth:`delete` still deletes it).

        Raises:
            EndpointError: the endpoint does not exist.
        """
        if session is None:
            sagemaker = require("sagemaker", "sagemaker", "SageMaker endpoint")

            session = sagemaker.Session()
        try:
            session.sagemaker_client.describe_endpoint(EndpointName=endpoint_name)
        except Exception as exc:  # botocore ClientError
            raise EndpointError(f"SageMaker endpoint {endpoint_name!r} cannot be described: {exc}") from exc
        return cls(endpoint_name, session, owned=False, labels=labels)

    def build_request(self, body: bytes, content_type: str, *, accept: str = "application/json",
                      k: int | None = None) -> dict[str, Any]:
        """The ``InvokeEndpoint`` parameters for one request (``k`` travels as the ``k=<n>`` custom attribute)."""
        request: dict[str, Any] = {"EndpointName": self.name, "Body": body, "ContentType": content_type,
                                   "Accept": accept}
        if k is not None:
            request["CustomAttributes"] = f"k={int(k)}"
        return request

    def invoke(self, body: bytes, content_type: str, *, accept: str = "application/json",
               k: int | None = None) -> tuple[bytes, str]:
        """``InvokeEndpoint``; see :meth:`Endpoint.invoke <dogclf.serving.Endpoint.invoke>`.

        A model error (the container's 4xx/5xx) becomes :class:`~dogclf.errors.InvalidRequestError` or
        :class:`~dogclf.errors.EndpointError` with the container's status.
        """
        self._check_live()
        client = self.runtime_client or self.session.sagemaker_runtime_client
        request = self.build_request(body, content_type, accept=accept, k=k)
        try:
            response = client.invoke_endpoint(**request)
        except Exception as exc:  # botocore ClientError: ModelError carries the container's answer
            info = getattr(exc, "response", {}) or {}
            status = info.get("OriginalStatusCode")
            message = info.get("OriginalMessage") or info.get("Error", {}).get("Message") or str(exc)
            if status:
                raise_for_error(int(status), str(message).encode(), f"SageMaker endpoint {self.name!r}")
            raise EndpointError(f"SageMaker endpoint {self.name!r} could not be invoked: {exc}") from exc
        payload = response["Body"]
        data = payload.read() if hasattr(payload, "read") else bytes(payload)
        return data, response.get("ContentType", accept)

    def delete(self) -> None:
        """Delete the endpoint, its endpoint config and its model(s); idempotent.

        Parts already gone (SageMaker's "Could not find ..." answers) count as deleted. Any other failure
        (``AccessDenied``, throttling after retries, a network error) raises, naming what is still there; the
        handle then stays live: :attr:`deleted` is False, calling :meth:`delete` again retries what is left, and an
        owned handle still warns with :class:`~dogclf.serving.CostWarning` when it is garbage-collected.

        Raises:
            EndpointError: something could not be deleted (or the endpoint could not be described to find its
                parts). Its ``remaining`` attribute lists ``(kind, name)`` of what is still there, e.g.
                ``[("endpoint", "dogclf-..."), ("endpoint config", "..."), ("model", "...")]``.
        """
        if self.deleted:
            return
        client = self.session.sagemaker_client
        problems: list[str] = []
        pending: list[tuple[str, str]] | None = getattr(self, "_pending", None)
        described = pending is not None
        if pending is None:
            pending = [("endpoint", self.name)]
            try:
                config_name = client.describe_endpoint(EndpointName=self.name)["EndpointConfigName"]
                pending.append(("endpoint config", config_name))
                variants = client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
                pending += [("model", v["ModelName"]) for v in variants if v.get("ModelName")]
                described = True
            except Exception as exc:  # noqa: BLE001 - botocore errors; only "not found" means gone
                if not is_not_found(exc):
                    problems.append("describing it to find its endpoint config and models failed: "
                                    f"{error_cause(exc)}")
                else:
                    described = True
                    logger.info("endpoint %s not fully described (%s); deleting what remains", self.name, exc)
            if self.model is not None and getattr(self.model, "name", None) and \
                    ("model", self.model.name) not in pending:
                pending.append(("model", self.model.name))
        calls = {"endpoint": (client.delete_endpoint, "EndpointName"),
                 "endpoint config": (client.delete_endpoint_config, "EndpointConfigName"),
                 "model": (client.delete_model, "ModelName")}
        left: list[tuple[str, str]] = []
        for kind, name in pending:
            if ("endpoint", self.name) in left:  # a live endpoint keeps its config and model(s)
                left.append((kind, name))
                continue
            call, key = calls[kind]
            try:
                call(**{key: name})
            except Exception as exc:  # noqa: BLE001 - botocore errors; only "not found" means gone
                if is_not_found(exc):
                    logger.info("%s %s was already deleted", kind, name)
                    continue
                left.append((kind, name))
                problems.append(f"{kind} {name!r}: {error_cause(exc)}")
        if problems:
            self._pending = left if described else None  # a retry describes again what it could not
            billed = ("the endpoint is still running and billed" if ("endpoint", self.name) in left
                      else "the endpoint itself is gone")
            error = EndpointError(f"SageMaker endpoint {self.name!r} was not fully deleted ({billed}); "
                                  f"{'; '.join(problems)}. Call delete() again once fixed, or delete what is left in "
                                  "the SageMaker console")
            error.remaining = left  # type: ignore[attr-defined]
            raise error
        self._deleted = True
        logger.info("deleted SageMaker endpoint %s (%s)", self.name,
                    ", ".join(f"{kind} {name}" for kind, name in pending))

    def keep(self) -> SageMakerEndpoint:
        """Keep the endpoint running on purpose after this handle goes away (no :class:`CostWarning`)."""
        self.owned = False
        return self

    def __del__(self) -> None:
        if getattr(self, "owned", False) and not self.deleted:
            warnings.warn(f"SageMaker endpoint {self.name!r} is still running (and billed) but its handle was "
                          "garbage-collected; call delete() or use the handle as a context manager, or keep() it "
                          "on purpose", CostWarning, stacklevel=2)


def _upload_artifact(artifact: Any, session: Any, key_prefix: str, runtime: str = "torch",
                     calibration: Any = None) -> str:
    """Pack ``artifact`` with the self-sufficient ``code/`` (:func:`~dogclf.serving.pack_artifact`) and the
    ``runtime``'s export, and upload it."""
    from dogclf.serving.package import pack_artifact

    with tempfile.TemporaryDirectory(prefix="dogclf-sm-") as tmp:
        tar = pack_artifact(artifact, Path(tmp) / "model.tar.gz", runtime=runtime, calibration=calibration)
        return session.upload_data(str(tar), key_prefix=key_prefix)


def _download(uri: str, session: Any, dest: Path) -> Path:
    """Download an ``s3://`` object (a training job's ``model.tar.gz``) to ``dest``."""
    from sagemaker.s3 import parse_s3_url

    bucket, key = parse_s3_url(uri)
    session.boto_session.client("s3").download_file(bucket, key, str(dest))
    return dest


def _labels_of(artifact: Any) -> Any:
    from dogclf.labels import BreedLabels

    if hasattr(artifact, "labels_"):
        return artifact.labels_
    if isinstance(artifact, (str, os.PathLike)) and Path(artifact).is_dir():
        try:
            return BreedLabels.load(Path(artifact) / "labels.json")
        except Exception:  # noqa: BLE001 - labels are optional here
            return None
    return None


def deploy(backend: SageMakerBackend, artifact: Any, config: Any = None, **kwargs: Any) -> SageMakerEndpoint:
    """Deploy ``artifact`` on a SageMaker real-time endpoint of the stock PyTorch inference container.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend` (``role`` is required).
        artifact: An ``s3://`` ``model.tar.gz`` (e.g. a training job's output), or a local artifact folder,
            ``model.tar.gz`` or built :class:`~dogclf.models.ResNetBreedModel` (uploaded to the backend's bucket).
        config: A :class:`~dogclf.serving.DeployConfig` (endpoint name, instance type and count, framework and
            Python versions, and the inference runtime ``server.runtime``: with an ONNX runtime the artifact, an
            ``s3://`` one downloaded first, is exported if it lacks the runtime, checked, and packed with it).
        **kwargs: :class:`~dogclf.serving.DeployConfig` field overrides.

    Returns:
        A :class:`SageMakerEndpoint` in service.

    Raises:
        ConfigError: no IAM role.
        JobError: the endpoint failed to come into service.
    """
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.serializers import IdentitySerializer

    from dogclf.errors import JobError
    from dogclf.serving import EndpointDeployer
    from dogclf.serving.package import write_code_dir

    config = EndpointDeployer(config, **kwargs).resolved_config()
    if not backend.role:
        raise ConfigError("SageMakerBackend(role=...) is required to deploy: the IAM role the endpoint's model "
                          "assumes, e.g. 'arn:aws:iam::123456789012:role/SageMakerRole'")
    session = make_session(backend)
    name = config.endpoint_name or new_endpoint_name()
    env = {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/json"}
    with tempfile.TemporaryDirectory(prefix="dogclf-code-") as tmp:
        if isinstance(artifact, str) and artifact.startswith("s3://") and config.runtime != "torch":
            # The ONNX runtimes need the export inside the archive: fetch it, export if needed, pack and upload.
            artifact = _download(artifact, session, Path(tmp) / "source.tar.gz")
        if isinstance(artifact, str) and artifact.startswith("s3://"):
            # An archive already on S3 (a training job's output): the SDK repacks it with our code/ folder.
            code_dir = write_code_dir(Path(tmp) / "code")
            code: dict[str, Any] = {"entry_point": "inference.py", "source_dir": str(code_dir)}
            model_data = artifact
        else:
            # Packed here with code/ inside, exactly the archive the stock handler was tested with; no repacking.
            code = {"entry_point": None}
            env.update(SAGEMAKER_PROGRAM="inference.py", SAGEMAKER_SUBMIT_DIRECTORY="/opt/ml/model/code")
            model_data = _upload_artifact(artifact, session, f"dogclf/endpoints/{name}", config.runtime,
                                          config.calibration)
        model = PyTorchModel(
            model_data=model_data,
            role=backend.role,
            framework_version=config.framework_version,
            py_version=config.py_version,
            sagemaker_session=session,
            name=name,
            env=env,
            **code,
        )
        try:
            sdk_predictor = model.deploy(initial_instance_count=config.initial_instance_count, instance_type=config.instance_type,
                         endpoint_name=name, serializer=IdentitySerializer("application/x-image"),
                         deserializer=JSONDeserializer(), wait=False)
            session.wait_for_endpoint(name, poll=config.wait_poll_s)
        except Exception as exc:  # the SDK raises UnexpectedStatusException / ClientError
            endpoint = SageMakerEndpoint(name, session, owned=False, model=model)
            try:
                endpoint.delete()
            except EndpointError as cleanup:
                raise JobError(f"SageMaker endpoint {name!r} did not come into service: {exc}; and cleaning up "
                               f"failed: {cleanup}", job_id=name, status="Failed") from exc
            raise JobError(f"SageMaker endpoint {name!r} did not come into service: {exc}", job_id=name,
                           status="Failed") from exc
    logger.info("SageMaker endpoint %s in service (%s x %d) serving %s", name, config.instance_type,
                config.initial_instance_count, model_data)
    return SageMakerEndpoint(name, session, owned=True, labels=_labels_of(artifact), model=model,
                             sdk_predictor=sdk_predictor)
