"""How the inference handler reads a request: content types, ``k``, arrays, JSON bodies and photos, and the 4xx
errors it answers bad ones with. Part of :mod:`dogclf.serving.handler` (which re-exports the public names)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from dogclf import images
from dogclf.errors import CorruptImageError, InvalidRequestError
from dogclf.images import MAX_IMAGE_PIXELS, Preprocess

MAX_BATCH = int(os.environ.get("DOGCLF_MAX_REQUEST_BATCH", 64))
"""The most images one request may carry (an ``(N, 3, H, W)`` array or a JSON ``images`` list)."""

_CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


# -- errors -----------------------------------------------------------------------------------------------------
def _toolkit_error_class() -> type[InvalidRequestError]:
    """:class:`InvalidRequestError`, also a ``BaseInferenceToolkitError`` where the SageMaker toolkit is installed."""
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:
        return InvalidRequestError

    class ToolkitRequestError(InvalidRequestError, BaseInferenceToolkitError):
        """An :class:`InvalidRequestError` the SageMaker inference toolkit answers with its own status code."""

        def __init__(self, message: str, *, code: str = "bad_request", status_code: int = 400) -> None:
            InvalidRequestError.__init__(self, message, code=code, status_code=status_code)
            # BaseInferenceToolkitError's fields: the toolkit answers `status_code` with `phrase` as reason.
            self.message = json.dumps({"error": code, "message": message})
            self.phrase = code

    return ToolkitRequestError


_RequestError = _toolkit_error_class()


def request_error(message: str, code: str, status_code: int = 400) -> InvalidRequestError:
    """Build the :class:`~dogclf.errors.InvalidRequestError` this handler raises for a bad request.

    Args:
        message: What is wrong, naming the bad value and what was expected.
        code: Short machine-readable name of the problem.
        status_code: HTTP status (4xx).
    """
    return _RequestError(message, code=code, status_code=status_code)


# -- reading requests -------------------------------------------------------------------------------------------
def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``"image/JPEG; q=1"`` -> ``("image/jpeg", {"q": "1"})``; ``("", {})`` for none."""
    if not content_type:
        return "", {}
    main, *params = content_type.split(";")
    options = {}
    for param in params:
        key, _, value = param.partition("=")
        options[key.strip().lower()] = value.strip().strip('"')
    return main.strip().lower(), options


def parse_k(value: Any, source: str = "k") -> int:
    """Validate a requested ``k``: a positive int (or a string of one); the upper bound is checked later.

    Raises:
        InvalidRequestError: ``value`` is not a positive integer (code ``"bad_k"``).
    """
    if isinstance(value, bool):
        raise request_error(f"{source} must be a positive integer, got {value!r}", "bad_k")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\+?\d{1,9}\s*", value):
            raise request_error(f"{source} must be a positive integer, got {value!r}", "bad_k")
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise request_error(f"{source} must be a positive integer, got {value!r}", "bad_k")
    return value


def headers_from_context(context: Any) -> dict[str, str]:
    """Request headers from a SageMaker model-server context (or the local server's stand-in), lower-cased."""
    if context is None:
        return {}
    try:
        props = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        return {}
    return {str(key).lower(): str(value) for key, value in dict(props or {}).items()}


def k_from_context(context: Any) -> int | None:
    """``k`` from dogclf's own servers (the context's ``k``), else from SageMaker's custom attributes header."""
    k = getattr(context, "k", None)
    if k is not None:
        return parse_k(k)
    attributes = headers_from_context(context).get(_CUSTOM_ATTRIBUTES)
    if attributes:
        for item in re.split(r"[,;]", attributes):
            key, sep, value = item.partition("=")
            if sep and key.strip().lower() in ("k", "top_k", "topk"):
                return parse_k(value.strip(), "custom attribute k")
    return None


_IMAGE_STATUS = {"unsupported_image": 415, "image_too_large": 413}


def photo_batch(bodies: Iterable[bytes], preprocess: Preprocess) -> np.ndarray:
    """Encoded photos to the normalised float32 batch ``(N, 3, crop, crop)`` with :mod:`dogclf.images` (the
    training entry point's decoding); a bad photo is answered with a 4xx request error."""
    def check(data: bytes) -> bytes:
        if not data:
            raise request_error("the request body is empty; expected the bytes of a JPEG or PNG photo",
                                "empty_body")
        return data

    try:
        return images.collate(map(check, bodies), preprocess, max_pixels=MAX_IMAGE_PIXELS, allow_animated=False,
                              what="the body")
    except CorruptImageError as exc:
        raise request_error(str(exc), exc.code, _IMAGE_STATUS.get(exc.code, 400)) from exc


def check_array(array: Any, crop: int | None, source: str) -> np.ndarray:
    """Preprocessed pixels as a float32 ``(N, 3, crop, crop)`` batch; 4xx for a wrong dtype, shape, size or value."""
    if not isinstance(array, np.ndarray):
        raise request_error(f"{source} must be an array, got {type(array).__name__}", "bad_array")
    if array.dtype.type not in _FLOAT_DTYPES:
        raise request_error(f"{source} has dtype {array.dtype}; expected float32 (or float16/float64) "
                            "preprocessed pixels", "bad_dtype")
    if array.ndim == 3:
        array = array[None]
    size = crop or (array.shape[-1] if array.ndim == 4 else 224)
    expected = f"(3, {size}, {size}) or (N, 3, {size}, {size})"
    if array.ndim != 4 or array.shape[1:] != (3, size, size) or array.shape[0] < 1:
        raise request_error(f"{source} has shape {tuple(array.shape)}; expected {expected}", "bad_shape")
    if array.shape[0] > MAX_BATCH:
        raise request_error(f"{source} holds {array.shape[0]} images; at most {MAX_BATCH} per request",
                            "batch_too_large", 413)
    if not np.isfinite(array).all():
        raise request_error(f"{source} contains NaN or infinite values", "bad_array")
    return np.ascontiguousarray(array, dtype=np.float32)


def decode_npy(data: bytes, crop: int | None) -> np.ndarray:
    """A ``.npy`` body (no pickles) checked by :func:`check_array`."""
    if not data:
        raise request_error("the request body is empty; expected a .npy array", "empty_body")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise request_error(f"the body is not a readable .npy array (pickled object arrays are refused): {exc}",
                            "bad_npy") from exc
    if isinstance(array, np.lib.npyio.NpzFile):  # pragma: no cover - np.load of .npz
        raise request_error("the body is an .npz archive; send one .npy array", "bad_npy")
    return check_array(array, crop, "the .npy array")


def b64_field(value: Any, where: str) -> bytes:
    """The bytes of a base64 JSON field (a ``data:`` URL too); 400 ``"bad_json"`` otherwise."""
    if not isinstance(value, str):
        raise request_error(f"{where} must be a base64 string, got {type(value).__name__}", "bad_json")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise request_error(f"{where} is not valid base64: {exc}", "bad_json") from exc
