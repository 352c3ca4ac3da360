"""The one place the SageMaker backend makes its ``sagemaker.Session``."""

from __future__ import annotations

import os
from typing import Any

from dogclf._extras import require

__all__ = ["make_session"]


def make_session(backend: Any) -> Any:
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
