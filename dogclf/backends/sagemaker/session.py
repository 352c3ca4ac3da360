"""The one place the SageMaker backend makes its ``sagemaker.Session``, and reads botocore errors."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from dogclf._extras import require

if TYPE_CHECKING:
    from dogclf.backends.sagemaker import SageMakerBackend


__all__ = ["make_session", "error_cause", "is_not_found"]

_NOT_FOUND_CODES = frozenset({"ResourceNotFound", "ResourceNotFoundException", "NotFound", "NoSuchEntity", "404"})


def make_session(backend: SageMakerBackend) -> Any:
    """The ``sagemaker.Session`` for ``backend``: its ``session`` if given, else one for its region and bucket.

    The region is the backend's, else ``AWS_REGION``/``AWS_DEFAULT_REGION``. ``AWS_ENDPOINT_URL`` (e.g. a moto
    server in tests) is honoured by the boto3 clients underneath.
    """
    if getattr(backend, "session", None) is not None:
        return backend.session
    sagemaker = require("sagemaker", "sagemaker", "SageMaker backend")
    import boto3

    region = backend.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return sagemaker.Session(boto_session=boto3.Session(region_name=region), default_bucket=backend.bucket)


def error_cause(exc: BaseException) -> str:
    """A botocore error as ``"<Code>: <Message>"`` (e.g. ``"AccessDeniedException: User ... is not authorized"``);
    any other exception as ``"<type>: <text>"``."""
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    if error.get("Code"):
        return f"{error['Code']}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def is_not_found(exc: BaseException) -> bool:
    """Whether a botocore error says the resource does not exist. SageMaker answers ``ValidationException``
    "Could not find endpoint ..." (or endpoint configuration, model) rather than a not-found code."""
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if code in _NOT_FOUND_CODES:
        return True
    return code == "ValidationException" and re.search(r"could not find|does not exist|not found", message,
                                                       re.IGNORECASE) is not None
