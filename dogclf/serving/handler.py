"""The inference handler: ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``.

One module serves both backends unchanged. The local endpoint (:mod:`dogclf.serving.server`) calls these four
functions, and :func:`dogclf.serving.package.write_code_dir` ships this module as ``code/inference.py`` inside
``model.tar.gz`` so a stock SageMaker PyTorch inference container (``sagemaker-pytorch-inference``) calls them too.
Their signatures follow that toolkit: each may take an optional trailing ``context`` argument, which the toolkit
fills with the model-server context (request headers live in ``context.request_processor[0]``).

Requests (``Content-Type``):

* ``image/jpeg``, ``image/png``, ``application/x-image``: the raw bytes of one photo, decoded by
  :func:`dogclf.images.load_image`, the function the training entry point decodes with: the EXIF orientation is
  applied, the image converted to RGB (transparent pixels become white, 16-bit greyscale is scaled down, CMYK and
  palette images are converted), the shorter side resized to 256, the centre 224 cropped and the ImageNet
  normalisation applied (the sizes and statistics come from the artifact's ``config.json``). JPEGs are decoded at
  a reduced DCT scale (:meth:`PIL.Image.Image.draft`) when they are at least twice the needed size.
* ``application/x-npy``: a preprocessed float array of shape ``(3, 224, 224)`` or ``(N, 3, 224, 224)``, the seed
  notebook's way.
* ``application/json``: ``{"image": "<base64>"}``, ``{"images": ["<base64>", ...]}`` or
  ``{"instances": <nested list (N, 3, 224, 224)>}``, optionally with ``"k"``.

``k`` (how many breeds to return, default 5) comes from the JSON body's ``"k"``, else from the request: a ``k=3``
entry of the ``X-Amzn-SageMaker-Custom-Attributes`` header (SageMaker's way of passing per-request options; the
SageMaker endpoint handle sends it), or, on dogclf's own servers, the context's ``k`` (the local endpoint's
``?k=3`` query string, the ``k`` argument of an in-process call).

Responses (``Accept``): ``application/json`` (default) ``{"k": 5, "predictions": [{"breed", "display_name",
"index", "probability", "top_k": [...]}, ...]}`` with one entry per input image, or ``application/x-npy`` with the
raw ``(N, num_classes)`` float32 logits for old clients.

Bad requests raise :class:`~dogclf.errors.InvalidRequestError` (its ``status_code`` is 400, 406, 413 or 415); in the
SageMaker toolkit the raised error is also a ``BaseInferenceToolkitError``, so the container answers with that
status rather than 500.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dogclf.errors import ArtifactError
from dogclf.images import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_PIXELS, Preprocess
from dogclf.labels import BreedLabels
from dogclf.serving._request import (MAX_BATCH, b64_field, check_array, decode_npy, k_from_context, media_type,
                                     parse_k, photo_batch, request_error)

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
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    runtime: str = "torch"

    @property
    def num_classes(self) -> int:
        """Number of breeds the model scores."""
        return len(self.labels)

    @property
    def preprocess(self) -> Preprocess:
        """The artifact's preprocessing, as :mod:`dogclf.images` takes it."""
        return Preprocess(self.resize, self.crop, tuple(self.mean), tuple(self.std))  # type: ignore[arg-type]


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
        MissingExtraError: an ONNX runtime without onnxruntime installed.
        ConfigError: an unknown runtime.
    """
    from dogclf.models import BreedModel
    from dogclf.serving import runtimes

    runtimes.check_runtime(runtime)
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{str(folder)!r} is not a dogclf model artifact: config.json is missing")
    if runtime == "torch":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = BreedModel.load(folder, map_location=device)  # any registered backbone; old dogclf.model/1 too
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


def input_fn(request_body: bytes | str, content_type: str | None, context: Any = None) -> InferenceInput:
    """Decode and validate one request into preprocessed tensors.

    Args:
        request_body: The raw body (the SageMaker toolkit passes JSON bodies already decoded to ``str``).
        content_type: The request's ``Content-Type``; one of :data:`CONTENT_TYPES` (parameters are ignored).
        context: The model-server context (optional); its custom-attributes header may carry ``k``. dogclf's
            servers set two more attributes: ``served_model``, the model whose preprocessing applies (otherwise the
            last model :func:`model_fn` loaded in this process), and ``k``.

    Returns:
        An :class:`InferenceInput`.

    Raises:
        InvalidRequestError: the body, content type, image, array or ``k`` is not acceptable.
    """
    served = getattr(context, "served_model", None)  # dogclf's own servers name the model; SageMaker's cannot
    preprocess = served.preprocess if served is not None else _PREPROCESS.get("current") or Preprocess()
    crop = preprocess.crop
    media, _ = media_type(content_type)
    k = k_from_context(context)
    body = request_body.encode("utf-8") if isinstance(request_body, str) else bytes(request_body or b"")

    if media in IMAGE_CONTENT_TYPES:
        array = photo_batch([body], preprocess)
    elif media == NPY_CONTENT_TYPE:
        array = decode_npy(body, crop)
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
            array = photo_batch([b64_field(doc["image"], "JSON field image")], preprocess)
        elif key == "images":
            photos = doc["images"]
            if not isinstance(photos, list) or not photos:
                raise request_error("JSON field images must be a non-empty list of base64 strings", "bad_json")
            if len(photos) > MAX_BATCH:
                raise request_error(f"JSON field images holds {len(photos)} images; at most {MAX_BATCH}",
                                    "batch_too_large", 413)
            array = photo_batch((b64_field(item, f"images[{i}]") for i, item in enumerate(photos)), preprocess)
        else:
            try:
                array = np.asarray(doc[key], dtype=np.float32)
            except (ValueError, TypeError) as exc:
                raise request_error(f"JSON field {key} is not a rectangular array of numbers: {exc}",
                                    "bad_shape") from exc
            array = check_array(array, crop, f"JSON field {key}")
    elif not media:
        raise request_error(f"no Content-Type given; expected one of {', '.join(CONTENT_TYPES)}",
                            "unsupported_content_type", 415)
    else:
        raise request_error(f"unsupported Content-Type {content_type!r}; expected one of {', '.join(CONTENT_TYPES)}",
                            "unsupported_content_type", 415)
    return InferenceInput(batch=torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), k=k)


# input_fn has no model argument in SageMaker's contract, so model_fn publishes the preprocessing it needs here
# (dogclf's own servers pass the model on the context instead, so several models can share a process).
_PREPROCESS: dict[str, Preprocess] = {}


def _publish_preprocess(model: ServedModel) -> None:
    _PREPROCESS["current"] = model.preprocess


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
        media, _ = media_type(item)
        if media in ("", "*/*", "application/*", JSON_CONTENT_TYPE):
            doc = {"k": prediction.k, "predictions": top_k(prediction.logits, prediction.labels, prediction.k)}
            return json.dumps(doc).encode("utf-8"), JSON_CONTENT_TYPE
        if media == NPY_CONTENT_TYPE:
            buffer = io.BytesIO()
            np.save(buffer, prediction.logits.numpy().astype(np.float32), allow_pickle=False)
            return buffer.getvalue(), NPY_CONTENT_TYPE
    raise request_error(f"cannot answer with Accept {accept!r}; expected one of {', '.join(ACCEPT_TYPES)}",
                        "not_acceptable", 406)
