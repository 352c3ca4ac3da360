""":class:`BreedPredictor`: breeds from photos, through an endpoint or in-process."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogclf import images
from dogclf._extras import require
from dogclf._io import atomic_path
from dogclf.errors import ConfigError, DataNotFoundError, DogclfError, NotFittedError, UnknownBreedError
from dogclf.images import IMAGE_SUFFIXES

__all__ = ["BreedScore", "Prediction", "BreedPredictor", "IMAGE_SUFFIXES", "true_breed_of"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_NPY = "application/x-npy"
_FOLDER_RE = re.compile(r"^\d{3,}\.(.+)$")


@dataclass(frozen=True)
class BreedScore:
    """One breed and its probability.

    Attributes:
        breed: The breed as the label set names it (``"Golden_retriever"``).
        display_name: For people (``"Golden retriever"``).
        index: The breed's output index.
        probability: Softmax probability in ``[0, 1]``.
    """

    breed: str
    display_name: str
    index: int
    probability: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreedScore:
        """From the handler's JSON form (``breed``, ``display_name``, ``index``, ``probability``)."""
        return cls(str(data["breed"]), str(data["display_name"]), int(data["index"]), float(data["probability"]))


@dataclass(frozen=True)
class Prediction(BreedScore):
    """The most likely breed of one photo (its :class:`BreedScore`) and the ``k`` best.

    Attributes:
        breed: The most likely breed.
        display_name: Its display name.
        index: Its output index.
        probability: Its softmax probability.
        top_k: The ``k`` most likely breeds, best first (``top_k[0]`` is the breed above).
    """

    top_k: tuple[BreedScore, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        """From one entry of the handler's JSON ``predictions`` list."""
        best = BreedScore.from_dict(data)
        return cls(best.breed, best.display_name, best.index, best.probability,
                   tuple(BreedScore.from_dict(item) for item in data["top_k"]))

    def __str__(self) -> str:
        return f"{self.display_name} ({self.probability:.1%})"


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:6] == b"\x93NUMPY":
        return _NPY
    return "application/x-image"


@dataclass(frozen=True)
class _Encoded:
    """An input as a request body: encoded photo bytes, or preprocessed float pixels as ``.npy``."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class _Decoded:
    """A decoded photo (PIL image, uint8 array or tensor): handed to :mod:`dogclf.images` as it is in-process,
    sent losslessly as PNG to an endpoint."""

    image: Any

    def encoded(self) -> _Encoded:
        buffer = io.BytesIO()
        images.decode_image(self.image).save(buffer, format="PNG", compress_level=1)
        return _Encoded(buffer.getvalue(), "image/png")


def _prepare(x: Any) -> _Encoded | _Decoded:
    """What to send for one input."""
    import numpy as np
    from PIL import Image

    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise DataNotFoundError(f"image file {str(path)!r} does not exist")
        data = path.read_bytes()
        return _Encoded(data, _sniff(data))
    if isinstance(x, (bytes, bytearray, memoryview)):
        data = bytes(x)
        return _Encoded(data, _sniff(data))
    if isinstance(x, Image.Image):
        return _Decoded(x)
    if type(x).__module__.startswith("torch"):
        if not x.is_floating_point():
            if x.dtype.is_signed or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[0] not in (1, 3, 4)):
                raise ConfigError(f"cannot predict from a tensor of shape {tuple(x.shape)} and dtype {x.dtype}; "
                                  "expected a preprocessed float (3, H, W)/(N, 3, H, W) tensor or a uint8 "
                                  "(C, H, W) image")
            return _Decoded(x)
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f" and x.ndim in (3, 4) and x.shape[-3] == 3:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
            return _Encoded(buffer.getvalue(), _NPY)
        if x.dtype == np.uint8 and (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (3, 4))):
            return _Decoded(x)
        raise ConfigError(f"cannot predict from an array of shape {x.shape} and dtype {x.dtype}; expected a "
                          "preprocessed float (3, H, W)/(N, 3, H, W) array or a uint8 (H, W[, 3|4]) image")
    raise ConfigError(f"cannot predict from {type(x).__name__}; expected a path, bytes, a PIL image, a NumPy array "
                      "or a torch tensor")


def true_breed_of(path: str | os.PathLike[str], labels: Any) -> str | None:
    """The true breed of a photo when its location says it, as ``labels`` names it; else ``None``.

    Recognised: the dogImages layout (a parent folder such as ``071.German_shepherd_dog``) and a file name that
    starts with the breed (``Golden_retriever_05182.jpg``; the longest ``_``-separated prefix that is a breed wins).
    """
    p = Path(path)
    match = _FOLDER_RE.match(p.parent.name)
    candidates = [match.group(1)] if match else []
    parts = p.stem.split("_")
    candidates += ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]
    for candidate in candidates:
        try:
            return labels.names[labels.index(candidate)]
        except (UnknownBreedError, KeyError, ValueError):
            continue
    return None


class BreedPredictor:
    """Predict dog breeds from photos.

    Args:
        source: An endpoint handle (from :meth:`EndpointDeployer.deploy <dogclf.serving.EndpointDeployer.deploy>`,
            local or SageMaker), or a model to run in this process without any endpoint: an artifact folder, a
            ``model.tar.gz`` or a built :class:`~dogclf.models.ResNetBreedModel`.
        k: How many breeds each :class:`Prediction` lists (``top_k``); ``None`` for the handler's default (5, at
            most the number of breeds).
        labels: The label set used to read true breeds from file names in :meth:`predict_folder`; defaults to the
            model's (in-process), the endpoint's when it knows it, else ``"dogimages-133"``.
        batch_size: Images per forward pass in-process.
        concurrency: Requests in flight at once against an endpoint (its server batches them).
        runtime: In-process only: the inference runtime, ``"torch"`` (default), ``"onnx"`` or ``"onnx-int8"`` (see
            :class:`~dogclf.serving.InProcessEndpoint`; an endpoint's runtime is chosen when it is deployed).
        calibration: In-process only: training photos to calibrate ``onnx-int8`` with when the artifact has none.

    After :meth:`predict_folder`, :attr:`table_`, :attr:`confusion_matrix_` and :attr:`most_confused_` hold its
    results.
    """

    def __init__(self, source: Any, *, k: int | None = None, labels: Any = None, batch_size: int = 16,
                 concurrency: int = 4, runtime: str | None = None, calibration: Any = None) -> None:
        self.source = source
        self.runtime = runtime
        self.calibration = calibration
        self.k = k
        self.labels = labels
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._endpoint: Any = None
        self._results: dict[str, Any] = {}

    # -- plumbing ---------------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> Any:
        """The endpoint requests go to (an :class:`~dogclf.serving.InProcessEndpoint` for a model source)."""
        from dogclf.serving.endpoint import Endpoint, InProcessEndpoint

        if self._endpoint is None:
            if isinstance(self.source, Endpoint):
                if self.runtime is not None or self.calibration is not None:
                    raise ConfigError(f"runtime={self.runtime!r} and calibration apply to in-process prediction; "
                                      f"endpoint {self.source.name!r} serves the runtime it was deployed with")
                self._endpoint = self.source
            else:
                self._endpoint = InProcessEndpoint(self.source, runtime=self.runtime or "torch",
                                                   calibration=self.calibration)
        return self._endpoint

    def _k(self, k: int | None) -> int | None:
        k = self.k if k is None else k
        if k is None:
            return None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}")
        return k

    def _label_set(self) -> Any:
        from dogclf.labels import get_labels, BreedLabels
        from dogclf.models import resolve_labels
        from dogclf.serving.endpoint import InProcessEndpoint

        if self.labels is not None:
            return self.labels if isinstance(self.labels, BreedLabels) else resolve_labels(self.labels)
        endpoint = self.endpoint
        if isinstance(endpoint, InProcessEndpoint):
            return endpoint.model.labels
        return getattr(endpoint, "labels", None) or get_labels("dogimages-133")

    def _invoke(self, body: bytes, content_type: str, k: int | None) -> list[Prediction]:
        import json

        payload, _ = self.endpoint.invoke(body, content_type, accept=_JSON, k=k)
        return [Prediction.from_dict(item) for item in json.loads(payload)["predictions"]]

    def _predict_many(self, xs: Sequence[Any], k: int | None, errors: list[Exception | None] | None = None
                      ) -> list[list[Prediction] | None]:
        """Predictions per input (a list, since an ``(N, 3, H, W)`` array holds N images). With ``errors`` given,
        failures are recorded there (``None`` result) instead of raised. Inputs are read and decoded a chunk at a
        time, so a large folder never sits in memory at once."""
        from dogclf.serving.endpoint import InProcessEndpoint

        chunk = max(64, 4 * self.batch_size, 4 * self.concurrency)
        if len(xs) > chunk:
            results_all: list[list[Prediction] | None] = []
            errors_all: list[Exception | None] = []
            for start in range(0, len(xs), chunk):
                part_errors: list[Exception | None] | None = [] if errors is not None else None
                results_all += self._predict_many(xs[start:start + chunk], k, part_errors)
                errors_all += part_errors or []
            if errors is not None:
                errors[:] = errors_all
            return results_all

        def guarded(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except (DogclfError, OSError, ValueError) as exc:
                if errors is None:
                    raise
                return exc

        prepared = [guarded(_prepare, x) for x in xs]
        results: list[Any] = [None] * len(xs)
        todo = [i for i, item in enumerate(prepared) if not isinstance(item, Exception)]
        workers = max(1, min(self.concurrency, len(todo)))
        with ThreadPoolExecutor(workers, thread_name_prefix="dogclf-predict") as pool:
            if isinstance(self.endpoint, InProcessEndpoint):
                self._predict_in_process(prepared, todo, k, results, guarded, pool)
            else:
                def send(item: _Encoded | _Decoded) -> list[Prediction]:
                    request = item.encoded() if isinstance(item, _Decoded) else item
                    return self._invoke(request.body, request.content_type, k)

                for i, out in zip(todo, pool.map(lambda i: guarded(send, prepared[i]), todo)):
                    results[i] = out
        for i, item in enumerate(prepared):
            if isinstance(item, Exception):
                results[i] = item
        if errors is not None:
            errors[:] = [r if isinstance(r, Exception) else None for r in results]
            return [None if isinstance(r, Exception) else r for r in results]
        return results

    def _predict_in_process(self, prepared: list[Any], todo: list[int], k: int | None, results: list[Any],
                            guarded: Any, pool: ThreadPoolExecutor) -> None:
        """Encoded inputs go through the handler's ``input_fn`` (its checks, as an endpoint would), decoded photos
        straight to :func:`dogclf.images.collate`; both on ``pool``'s threads, then forward passes of about
        ``batch_size`` images with ``k`` passed as it is."""
        import torch

        from dogclf.serving import handler
        from dogclf.serving.server import _Context

        model = self.endpoint.model
        k = handler.resolve_k(k, model.num_classes)
        context = _Context({}, model)

        def batch_of(item: _Encoded | _Decoded) -> torch.Tensor:
            if isinstance(item, _Decoded):
                return torch.from_numpy(images.collate([item.image], model.preprocess))
            return handler.input_fn(item.body, item.content_type, context).batch

        inputs: dict[int, Any] = dict(zip(todo, pool.map(lambda i: guarded(batch_of, prepared[i]), todo)))
        ready = [i for i in todo if not isinstance(inputs[i], Exception)]
        for i in todo:
            if isinstance(inputs[i], Exception):
                results[i] = inputs[i]
        # Group whole inputs into forward passes of about batch_size images.
        start = 0
        while start < len(ready):
            group, size = [], 0
            while start < len(ready) and (not group or size + len(inputs[ready[start]]) <= self.batch_size):
                group.append(ready[start])
                size += len(inputs[ready[start]])
                start += 1
            batch = torch.cat([inputs[i] for i in group])
            output = handler.predict_fn(handler.InferenceInput(batch=batch, k=k), model)
            rows = handler.top_k(output.logits, model.labels, k)
            offset = 0
            for i in group:
                n = len(inputs[i])
                results[i] = [Prediction.from_dict(row) for row in rows[offset:offset + n]]
                offset += n

    # -- public API -------------------------------------------------------------------------------------------------
    def predict(self, x: Any, k: int | None = None) -> Prediction:
        """The breed of one photo.

        Args:
            x: A file path, encoded image bytes (JPEG, PNG, ...), a decoded photo (a PIL image, a uint8
                ``(H, W[, 3|4])`` array or a uint8 ``(C, H, W)`` tensor: used as it is in-process, sent as lossless
                PNG to an endpoint), or a preprocessed float ``(3, 224, 224)`` array or tensor
                (``(1, 3, 224, 224)`` too).
            k: How many breeds ``top_k`` lists (default: the predictor's ``k``).

        Raises:
            InvalidRequestError: the endpoint (or the in-process handler) refused the input, e.g. a corrupt image.
            ConfigError: ``x`` is not a supported kind of input, or holds several images (use
                :meth:`predict_batch`).
        """
        predictions = self._predict_many([x], self._k(k))[0]
        if len(predictions) != 1:
            raise ConfigError(f"predict() takes one image, got {len(predictions)}; use predict_batch()")
        return predictions[0]

    def predict_batch(self, xs: Iterable[Any], k: int | None = None) -> list[Prediction]:
        """Predictions for many photos, one per image (an ``(N, 3, H, W)`` array counts as N images).

        In-process, images share forward passes of ``batch_size``; against an endpoint, ``concurrency`` requests
        are in flight at once so the server's dynamic batching can merge them.
        """
        results = self._predict_many(list(xs), self._k(k))
        return [prediction for group in results for prediction in group]

    def predict_folder(self, folder: str | os.PathLike[str], gallery_dir: str | os.PathLike[str] | None = None,
                       *, k: int | None = None, recursive: bool = True) -> Any:
        """Predict every photo under ``folder``; optionally write annotated copies; return a table.

        True breeds are read from the dogImages layout (``.../071.German_shepherd_dog/x.jpg``) or a file-name prefix
        (``Golden_retriever_05182.jpg``); photos without one (``cat_01.jpg``) get ``None``. A photo that cannot be
        read is reported in the ``error`` column; the others are still predicted.

        Args:
            folder: The folder of photos.
            gallery_dir: Where to write annotated copies named ``predicted_<Breed>_<file>`` (the seed's
                ``results_inference`` naming): the photo, upright, with the top breeds written on it.
            k: Breeds per photo in ``top_k``.
            recursive: Also look in sub-folders.

        Returns:
            A :class:`pandas.DataFrame`, one row per photo: ``file`` (relative path), ``true_breed``, ``breed``,
            ``display_name``, ``index``, ``probability``, ``correct`` (``None`` when the true breed is unknown),
            ``top_k`` (breed names), ``error`` and ``annotated`` (the gallery file). Also stored as
            :attr:`table_`, with :attr:`confusion_matrix_` and :attr:`most_confused_`.

        Raises:
            DataNotFoundError: ``folder`` does not exist or holds no photos.
        """
        pd = require("report", "pandas", "prediction table")

        root = Path(folder)
        if not root.is_dir():
            raise DataNotFoundError(f"folder {str(root)!r} does not exist")
        pattern = root.rglob("*") if recursive else root.glob("*")
        files = sorted(p for p in pattern if p.is_file() and images.is_image_file(p))
        if not files:
            raise DataNotFoundError(f"folder {str(root)!r} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
        k = self._k(k)
        labels = self._label_set()
        errors: list[Exception | None] = []
        results = self._predict_many(files, k, errors)
        gallery = Path(gallery_dir) if gallery_dir is not None else None
        if gallery is not None:
            gallery.mkdir(parents=True, exist_ok=True)
        rows = []
        for path, result, error in zip(files, results, errors):
            rel = path.relative_to(root)
            true = true_breed_of(path, labels)
            row: dict[str, Any] = {"file": rel.as_posix(), "true_breed": true, "breed": None, "display_name": None,
                                   "index": None, "probability": None, "correct": None, "top_k": None,
                                   "error": f"{type(error).__name__}: {error}" if error is not None else None,
                                   "annotated": None}
            if result:
                pred = result[0]
                row.update(breed=pred.breed, display_name=pred.display_name, index=pred.index,
                           probability=pred.probability, top_k=[s.breed for s in pred.top_k],
                           correct=None if true is None else pred.breed == true)
                if gallery is not None:
                    name = "_".join(rel.parts)
                    target = gallery / f"predicted_{pred.breed.replace(' ', '_')}_{name}"
                    try:
                        _annotate(path, pred, target)
                        row["annotated"] = str(target)
                    except (OSError, DogclfError) as exc:
                        logger.warning("could not write annotated copy of %s: %s", path, exc)
            rows.append(row)
        table = pd.DataFrame(rows)
        known = table[table["true_breed"].notna() & table["breed"].notna()]
        if len(known):
            confusion = pd.crosstab(known["true_breed"], known["breed"], rownames=["true"], colnames=["predicted"])
            mistakes = known[known["true_breed"] != known["breed"]]
            pairs = mistakes.groupby(["true_breed", "breed"]).size().sort_values(ascending=False, kind="stable")
            most_confused = [(t, p, int(n)) for (t, p), n in pairs.items()]
        else:
            confusion, most_confused = None, []
        self._results = {"table_": table, "confusion_matrix_": confusion, "most_confused_": most_confused}
        logger.info("predicted %d photos under %s (%d errors)", len(table), root, int(table["error"].notna().sum()))
        return table

    def _result(self, name: str) -> Any:
        if name not in self._results:
            raise NotFittedError(f"BreedPredictor.{name} is set by predict_folder(); call it first")
        return self._results[name]

    @property
    def table_(self) -> Any:
        """The last :meth:`predict_folder` table."""
        return self._result("table_")

    @property
    def confusion_matrix_(self) -> Any:
        """True x predicted counts of the last :meth:`predict_folder` (``None`` without true breeds)."""
        return self._result("confusion_matrix_")

    @property
    def most_confused_(self) -> list[tuple[str, str, int]]:
        """``(true, predicted, count)`` of the last :meth:`predict_folder`'s mistakes, most frequent first."""
        return self._result("most_confused_")

    def __repr__(self) -> str:
        return f"BreedPredictor({self.source!r}, k={self.k})"


def _annotate(src: Path, prediction: Prediction, target: Path) -> Path:
    """Write ``src`` upright with the top breeds on a banner to ``target`` (atomically)."""
    from PIL import ImageDraw, ImageFont

    image = images.decode_image(src)
    width, height = image.size
    size = max(12, min(width, height) // 18)
    try:
        font: Any = ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType
        font = ImageFont.load_default()
    lines = [f"{s.display_name} {s.probability:.0%}" for s in prediction.top_k[:3]]
    draw = ImageDraw.Draw(image, "RGBA")
    line_h = size + size // 3
    draw.rectangle((0, 0, width, line_h * len(lines) + size // 2), fill=(0, 0, 0, 150))
    for i, line in enumerate(lines):
        draw.text((size // 2, size // 4 + i * line_h), line, fill=(255, 255, 0) if i == 0 else (255, 255, 255),
                  font=font)
    suffix = target.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
           ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, "PNG")
    if fmt == "PNG" and suffix not in (".png",):
        target = target.with_suffix(".png")
    with atomic_path(target, fsync=False) as tmp:
        image.save(tmp, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return target
