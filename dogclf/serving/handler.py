"""The inference handler: ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``.

One module serves both backends unchanged. The local endpoint (:mod:`dogclf.serving.server`) calls these four
functions, and :func:`dogclf.serving.package.write_code_dir` ships this module as ``code/inference.py`` inside
``model.tar.gz`` so a stock SageMaker PyTorch inference container (``sagemaker-pytorch-inference``) calls them too.
Their signatures follow that toolkit: each may take an optional trailing ``context`` argument, which the toolkit
fills with the model-server context (request headers live in ``context.request_processor[0]``).

Requests (``Content-Type``):

* ``image/jpeg``, ``image/png``, ``application/x-image``: the raw bytes of one photo. The server applies the EXIF
  orientation, converts to RGB (transparent pixels become white, 16-bit greyscale is scaled down, CMYK and palette
  images are converted), resizes the shorter side to 256, centre-crops 224 and applies the ImageNet normalisation
  (the sizes and statistics come from the artifact's ``config.json``). JPEGs are decoded at a reduced DCT scale
  (:meth:`PIL.Image.Image.draft`) when they are at least twice the needed size.
* ``application/x-npy``: a preprocessed float array of shape ``(3, 224, 224)`` or ``(N, 3, 224, 224)``, the seed
  notebook's way.
* ``application/json``: ``{"image": "<base64>"}``, ``{"images": ["<base64>", ...]}`` or
  ``{"instances": <nested list (N, 3, 224, 224)>}``, optionally with ``"k"``.

``k`` (how many breeds to return, default 5) comes from the JSON body, a ``k=3`` entry of the
``X-Amzn-SageMaker-Custom-Attributes`` header (how SageMaker passes per-request options), an ``X-Dogclf-K`` header,
or the ``?k=3`` query string of the local endpoint.

Responses (``Accept``): ``application/json`` (default) ``{"k": 5, "predictions": [{"breed", "display_name",
"index", "probability", "top_k": [...]}, ...]}`` with one entry per input image, or ``application/x-npy`` with the
raw ``(N, num_classes)`` float32 logits for old clients.

Bad requests raise :class:`~dogclf.errors.InvalidRequestError` (its ``status_code`` is 400, 406, 413 or 415); in the
SageMaker toolkit the raised error is also a ``BaseInferenceToolkitError``, so the container answers with that
status rather than 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dogclf.errors import ArtifactError, InvalidRequestError
from dogclf.labels import BreedLabels

__all__ = [
    "IMAGE_CONTENT_TYPES",
    "NPY_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "CONTENT_TYPES",
    "ACCEPT_TYPES",
    "DEFAULT_K",
    "MAX_IMAGE_PIXELS",
    "ServedModel",
    "InferenceInput",
    "InferenceOutput",
    "model_fn",
    "load_model",
    "input_fn",
    "predict_fn",
    "output_fn",
    "decode_image",
    "preprocess_image",
    "parse_k",
    "resolve_k",
    "top_k",
    "request_error",
]

logger = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
"""Content types whose body is one encoded photo."""
NPY_CONTENT_TYPE = "application/x-npy"
"""A NumPy ``.npy`` body: preprocessed input on requests, raw logits on responses."""
JSON_CONTENT_TYPE = "application/json"
"""JSON requests (base64 images or nested lists) and the default response."""
CONTENT_TYPES = (*IMAGE_CONTENT_TYPES, NPY_CONTENT_TYPE, JSON_CONTENT_TYPE)
"""Every request content type :func:`input_fn` accepts."""
ACCEPT_TYPES = (JSON_CONTENT_TYPE, NPY_CONTENT_TYPE)
"""Every response type :func:`output_fn` produces."""
DEFAULT_K = 5
"""How many breeds a response lists when the request does not say."""
MAX_IMAGE_PIXELS = int(os.environ.get("DOGCLF_MAX_IMAGE_PIXELS", 64_000_000))
"""Images with more pixels than this are refused before decoding (decompression-bomb guard); set
``DOGCLF_MAX_IMAGE_PIXELS`` to change it."""
MAX_BATCH = int(os.environ.get("DOGCLF_MAX_REQUEST_BATCH", 64))
"""The most images one request may carry (an ``(N, 3, H, W)`` array or a JSON ``images`` list)."""

_CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_K_HEADER = "x-dogclf-k"
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


# -- the model --------------------------------------------------------------------------------------------------
@dataclass
class ServedModel:
    """What :func:`model_fn` loads: the network in eval mode and what the handler needs around it.

    Attributes:
        module: The ``torch.nn.Module`` (eval mode, channels-last memory format on CPU), or for the ONNX runtimes
            a :class:`~dogclf.serving.runtimes.OnnxModule` called the same way (batch tensor in, logits out).
        labels: The breed labels, in output order.
        resize: Shorter-side length images are resized to.
        crop: Side of the centre crop (the network's input size).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        device: Where the module runs.
        runtime: The inference runtime (:data:`~dogclf.serving.runtimes.RUNTIMES`).
    """

    module: Any
    labels: BreedLabels
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    runtime: str = "torch"

    @property
    def num_classes(self) -> int:
        """Number of breeds the model scores."""
        return len(self.labels)


def model_fn(model_dir: str | os.PathLike[str]) -> ServedModel:
    """Load the artifact in ``model_dir`` (``model.pt``, ``labels.json``, ``config.json``) for serving with the
    ``torch`` runtime (the stock SageMaker contract: one argument; see :func:`load_model` for the others).

    Args:
        model_dir: The unpacked artifact folder (``/opt/ml/model`` in a SageMaker container).

    Returns:
        A :class:`ServedModel` on CUDA when available, else on CPU in channels-last memory format (faster
        convolutions on CPU).

    Raises:
        ArtifactError: the folder is not a dogclf model artifact.
    """
    return load_model(model_dir)


def load_model(model_dir: str | os.PathLike[str], runtime: str = "torch", *,
               intra_op_threads: int | None = None) -> ServedModel:
    """Load the artifact in ``model_dir`` for serving with an inference runtime.

    Args:
        model_dir: The unpacked artifact folder.
        runtime: ``"torch"`` (the eager module, as :func:`model_fn`), ``"onnx"`` or ``"onnx-int8"`` (the
            artifact's exported model in ONNX Runtime; see :mod:`dogclf.serving.runtimes`).
        intra_op_threads: Threads of one ONNX Runtime forward pass (``None``: as many as torch uses). The torch
            runtime uses torch's global setting (``torch.set_num_threads``).

    Raises:
        ArtifactError: the folder is not a dogclf model artifact, or has no accepted, current export for
            ``runtime``.
        MissingDependencyError: an ONNX runtime without onnxruntime installed.
        ConfigError: an unknown runtime.
    """
    from dogclf.models import ResNetBreedModel
    from dogclf.serving import runtimes

    runtimes.check_runtime(runtime)
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{str(folder)!r} is not a dogclf model artifact: config.json is missing")
    if runtime == "torch":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = ResNetBreedModel.load(folder, map_location=device)
        module = model.module_.eval().to(device)
        if device.type == "cpu":
            module = module.to(memory_format=torch.channels_last)
        for param in module.parameters():
            param.requires_grad_(False)
        pre, labels, backbone = model.preprocess, model.labels_, model.backbone
    else:  # the exported model alone: no torch weights are loaded
        module = runtimes.load_onnx_module(folder, runtime, intra_op_threads=intra_op_threads)
        device = torch.device("cpu")
        config, labels = runtimes.read_config(folder)
        pre, backbone = config.preprocess, config.backbone
    served = ServedModel(module=module, labels=labels, resize=pre.resize, crop=pre.crop, mean=tuple(pre.mean),
                         std=tuple(pre.std), device=device, runtime=runtime)  # type: ignore[arg-type]
    _publish_preprocess(served)
    logger.info("loaded %s (%d breeds) from %s on %s, runtime %s", backbone, served.num_classes, folder, device,
                runtime)
    return served


# -- requests ---------------------------------------------------------------------------------------------------
@dataclass
class InferenceInput:
    """What :func:`input_fn` returns and :func:`predict_fn` consumes.

    Attributes:
        batch: Preprocessed float32 images, shape ``(N, 3, crop, crop)``.
        k: Requested number of breeds, or ``None`` for the default (checked against the model in ``predict_fn``).
    """

    batch: torch.Tensor
    k: int | None = None


@dataclass
class InferenceOutput:
    """What :func:`predict_fn` returns and :func:`output_fn` serialises.

    Attributes:
        logits: Raw scores, shape ``(N, num_classes)``, on CPU.
        k: Number of breeds to list per image.
        labels: The breed labels.
    """

    logits: torch.Tensor
    k: int
    labels: BreedLabels


def _media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
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


def _headers_from_context(context: Any) -> dict[str, str]:
    """Request headers from a SageMaker model-server context (or the local server's stand-in), lower-cased."""
    if context is None:
        return {}
    try:
        props = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        return {}
    return {str(key).lower(): str(value) for key, value in dict(props or {}).items()}


def _k_from_headers(headers: dict[str, str]) -> int | None:
    if _K_HEADER in headers:
        return parse_k(headers[_K_HEADER], "X-Dogclf-K header")
    attributes = headers.get(_CUSTOM_ATTRIBUTES)
    if attributes:
        for item in re.split(r"[,;]", attributes):
            key, sep, value = item.partition("=")
            if sep and key.strip().lower() in ("k", "top_k", "topk"):
                return parse_k(value.strip(), "custom attribute k")
    return None


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _known_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def decode_image(data: bytes, *, draft_size: int | None = None) -> Image.Image:
    """Decode one photo into an upright 8-bit RGB image.

    Applies the EXIF orientation; composites transparency (RGBA, LA, palette with transparency) onto white;
    scales 16/32-bit greyscale to 8 bits; converts CMYK, palette, greyscale and bilevel images to RGB. With
    ``draft_size``, JPEGs are decoded at the largest DCT reduction that keeps both sides >= ``draft_size``.

    Args:
        data: The encoded image.
        draft_size: The smallest side the caller needs (the resize target), or ``None`` for a full decode.

    Raises:
        InvalidRequestError: empty body (``"empty_body"``), not an image (``"unsupported_image"``), truncated or
            corrupt data (``"corrupt_image"``), more pixels than :data:`MAX_IMAGE_PIXELS`
            (``"image_too_large"``, 413), or an animated image (``"animated_image"``).
    """
    if not data:
        raise request_error("the request body is empty; expected the bytes of a JPEG or PNG photo", "empty_body")
    try:
        # Pillow itself refuses images over 2x Image.MAX_IMAGE_PIXELS at open; MAX_IMAGE_PIXELS below is ours.
        # (No warnings.catch_warnings here: it is not thread-safe, and the server decodes on several threads.)
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        head = data[:8]
        known = _known_format(data)
        if known:
            raise request_error(f"the body starts like a {known} file but Pillow cannot read it: the {known} data "
                                "is corrupt", "corrupt_image") from exc
        raise request_error(f"the body ({len(data)} bytes, starting {head!r}) is not an image Pillow can read; "
                            "expected JPEG, PNG, GIF, BMP, TIFF or WebP", "unsupported_image", 415) from exc
    except Image.DecompressionBombError as exc:
        raise request_error(f"image refused as a possible decompression bomb: {exc}", "image_too_large", 413) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise request_error(f"the image header is corrupt: {exc}", "corrupt_image") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise request_error(f"the image has no pixels ({width}x{height})", "corrupt_image")
    if width * height > MAX_IMAGE_PIXELS:
        raise request_error(f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                            f"{MAX_IMAGE_PIXELS} (a possible decompression bomb)", "image_too_large", 413)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise request_error(f"the image is animated ({image.format}, {frames} frames); send one still frame",
                            "animated_image")
    if draft_size and image.format == "JPEG" and image.mode in ("RGB", "L"):
        image.draft(image.mode, (draft_size, draft_size))
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise request_error(f"the {image.format or 'image'} data is truncated or corrupt: {exc}",
                            "corrupt_image") from exc
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if mode == "F" and array.max(initial=0) <= 1.0:
            peak = 1.0
        array = np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, resize: int = 256, crop: int = 224,
                     mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                     std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), centre-crop ``crop`` and normalise.

    The same arithmetic as torchvision's ``Resize(resize)``, ``CenterCrop(crop)``, ``ToTensor()``,
    ``Normalize(mean, std)`` on a PIL image.

    Returns:
        A float32 array of shape ``(3, crop, crop)``.
    """
    if image.mode != "RGB":
        image = _to_rgb(image)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if new_w < crop or new_h < crop:  # torchvision pads; only possible when crop > resize
        raise request_error(f"image of {new_w}x{new_h} after resizing is smaller than the {crop}px crop",
                            "image_too_small")
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32)  # (crop, crop, 3)
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    shift = np.asarray([m / s for m, s in zip(mean, std)], dtype=np.float32)
    array = array * scale - shift
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _check_array(array: Any, crop: int | None, source: str) -> np.ndarray:
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


def _decode_npy(data: bytes, crop: int | None) -> np.ndarray:
    if not data:
        raise request_error("the request body is empty; expected a .npy array", "empty_body")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise request_error(f"the body is not a readable .npy array (pickled object arrays are refused): {exc}",
                            "bad_npy") from exc
    if isinstance(array, np.lib.npyio.NpzFile):  # pragma: no cover - np.load of .npz
        raise request_error("the body is an .npz archive; send one .npy array", "bad_npy")
    return _check_array(array, crop, "the .npy array")


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise request_error(f"{where} must be a base64 string, got {type(value).__name__}", "bad_json")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise request_error(f"{where} is not valid base64: {exc}", "bad_json") from exc


def input_fn(request_body: bytes | str, content_type: str | None, context: Any = None) -> InferenceInput:
    """Decode and validate one request into preprocessed tensors.

    Args:
        request_body: The raw body (the SageMaker toolkit passes JSON bodies already decoded to ``str``).
        content_type: The request's ``Content-Type``; one of :data:`CONTENT_TYPES` (parameters are ignored).
        context: The model-server context (optional); its headers may carry ``k``. A ``served_model`` attribute
            (set by dogclf's servers) names the model whose preprocessing applies; otherwise the last model
            :func:`model_fn` loaded in this process.

    Returns:
        An :class:`InferenceInput`.

    Raises:
        InvalidRequestError: the body, content type, image, array or ``k`` is not acceptable.
    """
    served = getattr(context, "served_model", None)  # dogclf's own servers name the model; SageMaker's cannot
    preprocess = _preprocess_options(served) if served is not None else _PREPROCESS.get("current") or {}
    resize, crop = preprocess.get("resize", 256), preprocess.get("crop", 224)
    mean, std = preprocess.get("mean", (0.485, 0.456, 0.406)), preprocess.get("std", (0.229, 0.224, 0.225))
    media, _ = _media_type(content_type)
    k = _k_from_headers(_headers_from_context(context))
    body = request_body.encode("utf-8") if isinstance(request_body, str) else bytes(request_body or b"")

    def image_tensor(data: bytes) -> np.ndarray:
        return preprocess_image(decode_image(data, draft_size=resize), resize, crop, mean, std)

    if media in IMAGE_CONTENT_TYPES:
        array = image_tensor(body)[None]
    elif media == NPY_CONTENT_TYPE:
        array = _decode_npy(body, crop)
    elif media == JSON_CONTENT_TYPE:
        if not body.strip():
            raise request_error("the request body is empty; expected a JSON object", "empty_body")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise request_error(f"the body is not valid JSON: {exc}", "bad_json") from exc
        if not isinstance(doc, dict):
            raise request_error(f"the JSON body must be an object with 'image', 'images' or 'instances', got "
                                f"{type(doc).__name__}", "bad_json")
        if "k" in doc:
            k = parse_k(doc["k"], "JSON field k")
        keys = [key for key in ("image", "images", "instances", "inputs") if key in doc]
        if len(keys) != 1:
            raise request_error(f"the JSON body must have exactly one of 'image', 'images', 'instances' "
                                f"(got keys {sorted(doc)})", "bad_json")
        key = keys[0]
        if key == "image":
            array = image_tensor(_b64(doc["image"], "JSON field image"))[None]
        elif key == "images":
            images = doc["images"]
            if not isinstance(images, list) or not images:
                raise request_error("JSON field images must be a non-empty list of base64 strings", "bad_json")
            if len(images) > MAX_BATCH:
                raise request_error(f"JSON field images holds {len(images)} images; at most {MAX_BATCH}",
                                    "batch_too_large", 413)
            array = np.stack([image_tensor(_b64(item, f"images[{i}]")) for i, item in enumerate(images)])
        else:
            try:
                array = np.asarray(doc[key], dtype=np.float32)
            except (ValueError, TypeError) as exc:
                raise request_error(f"JSON field {key} is not a rectangular array of numbers: {exc}",
                                    "bad_shape") from exc
            array = _check_array(array, crop, f"JSON field {key}")
    elif not media:
        raise request_error(f"no Content-Type given; expected one of {', '.join(CONTENT_TYPES)}",
                            "unsupported_content_type", 415)
    else:
        raise request_error(f"unsupported Content-Type {content_type!r}; expected one of {', '.join(CONTENT_TYPES)}",
                            "unsupported_content_type", 415)
    return InferenceInput(batch=torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), k=k)


# input_fn has no model argument in SageMaker's contract, so model_fn publishes the preprocessing it needs here
# (dogclf's own servers pass the model on the context instead, so several models can share a process).
_PREPROCESS: dict[str, dict[str, Any]] = {}


def _preprocess_options(model: ServedModel) -> dict[str, Any]:
    return {"resize": model.resize, "crop": model.crop, "mean": model.mean, "std": model.std}


def _publish_preprocess(model: ServedModel) -> None:
    _PREPROCESS["current"] = _preprocess_options(model)


def resolve_k(k: int | None, num_classes: int) -> int:
    """The ``k`` to answer with: :data:`DEFAULT_K` (at most ``num_classes``) when ``None``.

    Raises:
        InvalidRequestError: ``k`` is larger than ``num_classes`` (code ``"bad_k"``).
    """
    if k is None:
        return min(DEFAULT_K, num_classes)
    k = parse_k(k)
    if k > num_classes:
        raise request_error(f"k={k} is out of range; this model knows {num_classes} breeds (1 <= k <= {num_classes})",
                            "bad_k")
    return k


def predict_fn(data: InferenceInput, model: ServedModel) -> InferenceOutput:
    """Run the network on a batch.

    Args:
        data: From :func:`input_fn` (the local endpoint may concatenate several requests' batches).
        model: From :func:`model_fn`.

    Called on a process's main thread, the forward pass runs on a helper thread instead: on a machine whose cores
    are busy it was measured 3-12x faster there (the main thread's OpenMP team busy-waits; setting
    ``OMP_WAIT_POLICY=PASSIVE`` before importing torch has the same effect).

    Returns:
        An :class:`InferenceOutput` with the logits on CPU.

    Raises:
        InvalidRequestError: ``k`` is larger than the number of breeds (``"bad_k"``) or the images' size does
            not match the model's input (``"bad_shape"``).
    """
    k = resolve_k(data.k, model.num_classes)
    batch = data.batch
    if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, model.crop, model.crop):
        raise request_error(f"input of shape {tuple(batch.shape)} does not fit the model's (N, 3, {model.crop}, "
                            f"{model.crop})", "bad_shape")
    batch = batch.to(model.device, non_blocking=True)
    if model.device.type == "cpu" and isinstance(model.module, torch.nn.Module):
        batch = batch.contiguous(memory_format=torch.channels_last)
    if threading.current_thread() is threading.main_thread():
        # Forward passes on a process's main thread ran 3-12x slower than on any other thread on this busy 2-core
        # machine: the main thread's OpenMP team busy-waits and fights the other processes for the cores
        # (OMP_WAIT_POLICY=PASSIVE set before torch loads cures it too, but a library cannot set it in time).
        # A thread of its own avoids it; the hand-off costs microseconds.
        logits = _forward_thread().submit(_forward, model.module, batch).result()
    else:
        logits = _forward(model.module, batch)
    return InferenceOutput(logits=logits.float().cpu(), k=k, labels=model.labels)


def _forward(module: Any, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # thread-local, so set on the thread that runs the module
        return module(batch)


_FORWARD_THREAD: list[ThreadPoolExecutor] = []
_FORWARD_LOCK = threading.Lock()


def _forward_thread() -> ThreadPoolExecutor:
    with _FORWARD_LOCK:
        if not _FORWARD_THREAD:
            _FORWARD_THREAD.append(ThreadPoolExecutor(1, thread_name_prefix="dogclf-forward"))
        return _FORWARD_THREAD[0]


def top_k(logits: torch.Tensor | np.ndarray, labels: BreedLabels, k: int) -> list[dict[str, Any]]:
    """The JSON-ready predictions for a ``(N, num_classes)`` batch of logits.

    Returns:
        One dict per row: the best breed's ``breed``, ``display_name``, ``index`` and ``probability`` (softmax),
        and ``top_k``, the ``k`` best as a list of dicts with those four keys, best first.
    """
    scores = torch.as_tensor(logits, dtype=torch.float32)
    probs = torch.softmax(scores, dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    names, displays = labels.names, labels.display_names
    out = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        ranked = [{"breed": names[i], "display_name": displays[i], "index": int(i), "probability": float(p)}
                  for p, i in zip(row_values, row_indices)]
        out.append({**ranked[0], "top_k": ranked})
    return out


def output_fn(prediction: InferenceOutput, accept: str | None) -> tuple[bytes, str]:
    """Serialise a prediction for the client's ``Accept``.

    Args:
        prediction: From :func:`predict_fn`.
        accept: The ``Accept`` header; ``None``, empty or ``*/*`` mean JSON. A list is tried in order.

    Returns:
        ``(body, content_type)``: JSON top-k breeds, or the raw float32 logits as ``.npy``.

    Raises:
        InvalidRequestError: nothing in ``accept`` is one of :data:`ACCEPT_TYPES` (406, ``"not_acceptable"``).
    """
    for item in (accept or "*/*").split(","):
        media, _ = _media_type(item)
        if media in ("", "*/*", "application/*", JSON_CONTENT_TYPE):
            doc = {"k": prediction.k, "predictions": top_k(prediction.logits, prediction.labels, prediction.k)}
            return json.dumps(doc).encode("utf-8"), JSON_CONTENT_TYPE
        if media == NPY_CONTENT_TYPE:
            buffer = io.BytesIO()
            np.save(buffer, prediction.logits.numpy().astype(np.float32), allow_pickle=False)
            return buffer.getvalue(), NPY_CONTENT_TYPE
    raise request_error(f"cannot answer with Accept {accept!r}; expected one of {', '.join(ACCEPT_TYPES)}",
                        "not_acceptable", 406)
