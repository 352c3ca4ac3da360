"""Make an artifact's ONNX runtimes: record calibration photos, export, quantize, and check agreement.

:func:`export_runtimes` runs once per artifact, where torch is (at the end of training, or on the first deploy of
the artifact from dogclf): it exports the eager model with torch's ONNX exporter (``torch.onnx.export(...,
dynamo=True)``), quantizes it to int8 with ONNX Runtime's ``quantize_static``, runs every exported model and the
eager fp32 model on the same photos, and keeps an export only when its top-1 breed agrees with the eager model's
on at least :data:`~dogclf.serving.runtimes.AGREEMENT_THRESHOLDS` of them (99 % for ``onnx``, 97 % for
``onnx-int8``). A refused export raises :class:`~dogclf.errors.AgreementError` with the measured figures and is not
written; nothing falls back to another runtime.

Calibration photos are recorded in the artifact as ``calibration.npz``: up to 256 training photos (spread over the
class folders), each resized and centre-cropped as the endpoint would (shorter side 256, crop 224) and stored as a
quality-90 JPEG of the crop, about 10-25 kB each (3-6 MB for 256). They calibrate the int8 activation ranges and are
the photos the agreement is measured on. The arrays are ``jpeg`` (every JPEG's bytes, concatenated, uint8),
``offsets`` (int64, N + 1), ``names`` (the source file names) and ``crop``/``resize``.

Needs ``torch``, ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install 'dogclf[onnx]'``).
"""

from __future__ import annotations

import io
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dogclf._extras import require
from dogclf._io import atomic_write, atomic_write_json
from dogclf.errors import (
    AgreementError,
    ArtifactError,
    ConfigError,
    DataNotFoundError,
    DogclfError,
    RuntimeExportError,
)
from dogclf.serving.runtimes import (
    AGREEMENT_THRESHOLDS,
    CALIBRATION_FILE,
    MANIFEST_FILE,
    RUNTIME_FILES,
    available_cpus,
    check_runtime,
    file_sha256,
    import_onnxruntime,
    int8_isa,
    open_session,
    read_config,
    read_manifest,
)

__all__ = ["Agreement", "export_runtimes", "ensure_runtime", "record_calibration", "load_calibration",
           "CALIBRATION_COUNT", "EXPORTERS"]

logger = logging.getLogger(__name__)

CALIBRATION_COUNT = 256
"""How many photos :func:`record_calibration` keeps by default."""
EXPORTERS = ("dynamo", "torchscript")
"""torch's ONNX exporters: ``torch.onnx.export(dynamo=True)`` (the default) or the older TorchScript one."""
QUANTIZATION = {"format": "QDQ", "per_channel": True, "reduce_range": False, "activations": "uint8",
                "weights": "int8", "calibration": "MinMax"}
"""The static quantization settings (recorded in the manifest). Per-tensor weights and percentile calibration
were measured too (ResNet50): per-tensor lost more agreement, percentile calibration was 7x slower and no better."""
_SYNTHETIC_CHECK_IMAGES = 32
_CHUNK = 16


# -- calibration photos ---------------------------------------------------------------------------------------
def _preprocess_of(folder: Path) -> Any:
    return read_config(folder)[0].preprocess


def _calibration_files(source: str | os.PathLike[str] | Sequence[Any], count: int, seed: int) -> list[Any]:
    """Up to ``count`` photos from ``source``, taken in turn from each class folder (a seeded order within each)."""
    from dogclf.data.validate import IMAGE_EXTENSIONS

    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise DataNotFoundError(f"calibration photos {str(root)!r} do not exist; expected a folder of training "
                                    "photos (a dataset root with train/, a split folder, or any folder of images)")
        if root.is_file():
            return [root]
        if (root / "train").is_dir():
            root = root / "train"
        items: list[Any] = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not items:
            raise DataNotFoundError(f"no photos ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r} to calibrate on")
    elif isinstance(source, np.ndarray) and source.ndim == 4:
        items = list(source)
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        items = list(source)
    else:
        raise ConfigError(f"calibration must be a folder of photos, a list of photo paths or bytes, or a uint8 "
                          f"array (N, H, W, 3); got {type(source).__name__}")
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(str(Path(item).parent) if isinstance(item, (str, os.PathLike)) else "", []).append(item)
    rng = np.random.default_rng(seed)
    order = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items())]
    picked: list[Any] = []
    for rank in range(max(len(group) for group in order)):
        picked += [group[rank] for group in order if rank < len(group)]
    return picked[:count]


def record_calibration(artifact_dir: str | os.PathLike[str], source: Any, *, count: int = CALIBRATION_COUNT,
                       quality: int = 90, seed: int = 0) -> Path:
    """Record calibration photos in the artifact as ``calibration.npz`` (replacing any recorded before).

    Args:
        artifact_dir: The artifact folder (its ``config.json`` gives the resize and crop).
        source: Training photos: a dataset root (its ``train/`` is used), a split folder or any folder of images
            (searched recursively), a list of photo paths or encoded bytes, or a uint8 array ``(N, H, W, 3)``.
        count: How many photos to keep, taken in turn from each class folder.
        quality: JPEG quality of the stored crops.
        seed: Seed of the order within each class folder.

    Returns:
        The path of ``calibration.npz``.

    Raises:
        DataNotFoundError: ``source`` does not exist or holds no readable photo.
        ConfigError: ``source`` is of an unsupported kind, or ``count`` is not a positive int.
    """
    from PIL import Image

    from dogclf import images

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be a positive int, got {count!r}")
    folder = Path(artifact_dir)
    pre = _preprocess_of(folder)
    blobs, names, skipped = [], [], []
    for item in _calibration_files(source, count, seed):
        name = Path(item).name if isinstance(item, (str, os.PathLike)) else f"image-{len(names) + len(skipped)}"
        try:
            if isinstance(item, np.ndarray):
                source: Any = np.asarray(item, dtype=np.uint8)
            else:
                source = bytes(item) if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes()
            # The endpoint's own decode, resize and crop (dogclf.images), before normalisation.
            crop = images.load_image(source, pre).numpy().transpose(1, 2, 0)
        except (DogclfError, OSError, ValueError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        buffer = io.BytesIO()
        Image.fromarray(crop, "RGB").save(buffer, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        names.append(name)
    if skipped:
        logger.warning("skipped %d unreadable calibration photos, e.g. %s", len(skipped), skipped[0])
    if not blobs:
        raise DataNotFoundError(f"none of the calibration photos could be read ({skipped[:3]})")
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    path = folder / CALIBRATION_FILE
    atomic_write(path, lambda fh: np.savez(fh, jpeg=np.concatenate(blobs), offsets=offsets, names=np.array(names),
                                           crop=np.int64(pre.crop), resize=np.int64(pre.resize)))
    logger.info("recorded %d calibration photos (%.1f MB) in %s", len(blobs), path.stat().st_size / 1e6, path)
    return path


def load_calibration(artifact_dir: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """The recorded calibration photos, normalised as the endpoint normalises them.

    Returns:
        ``(images, names)``: float32 ``(N, 3, crop, crop)`` and the source file names.

    Raises:
        DataNotFoundError: the artifact has no ``calibration.npz``.
        ArtifactError: it is corrupt, or was recorded for another crop size than the model's.
    """
    from dogclf import images

    folder = Path(artifact_dir)
    pre = _preprocess_of(folder)
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        raise DataNotFoundError(f"artifact {str(folder)!r} has no recorded calibration photos ({CALIBRATION_FILE})")
    try:
        with np.load(path, allow_pickle=False) as doc:
            jpeg, offsets, names, crop = doc["jpeg"], doc["offsets"], [str(n) for n in doc["names"]], int(doc["crop"])
        if crop != pre.crop:
            raise ArtifactError(f"{str(path)!r} holds {crop}px crops but the model takes {pre.crop}px; record the "
                                "calibration photos again")
        # The stored crops are the model's input size: decoded as they are (resize = crop), then normalised.
        crops = images.Preprocess(resize=pre.crop, crop=pre.crop, mean=pre.mean, std=pre.std)
        batch = [images.normalize(images.load_image(jpeg[a:b].tobytes(), crops).numpy(), crops)
                 for a, b in zip(offsets[:-1], offsets[1:])]
    except (KeyError, ValueError, OSError, DogclfError) as exc:
        raise ArtifactError(f"{str(path)!r} is not a readable calibration record: {exc}") from exc
    return np.stack(batch), names


def _synthetic_images(preprocess: Any) -> np.ndarray:
    from dogclf import images
    from dogclf.data.synthetic import synthetic_image

    rng = np.random.default_rng(0)
    crop = preprocess.crop
    crops = images.Preprocess(resize=crop, crop=crop, mean=preprocess.mean, std=preprocess.std)
    return np.stack([images.normalize(images.load_image(synthetic_image(i, crop, rng), crops).numpy(), crops)
                     for i in range(_SYNTHETIC_CHECK_IMAGES)])


# -- agreement --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    """How closely an exported runtime follows the eager fp32 model on the same images.

    Attributes:
        runtime: ``"onnx"`` or ``"onnx-int8"``.
        images: How many images were compared.
        top1_agreement: Fraction whose top-1 breed is the eager model's.
        max_abs_logit_diff: Largest absolute difference of any logit.
        threshold: The smallest ``top1_agreement`` accepted for this runtime.
        source: Which images (e.g. ``"256 recorded calibration photos"``).
    """

    runtime: str
    images: int
    top1_agreement: float
    max_abs_logit_diff: float
    threshold: float
    source: str

    @property
    def passed(self) -> bool:
        """Whether ``top1_agreement`` reaches ``threshold``."""
        return self.top1_agreement >= self.threshold

    @classmethod
    def measure(cls, runtime: str, reference: np.ndarray, logits: np.ndarray, source: str) -> Agreement:
        """Compare ``logits`` with the eager model's ``reference`` logits (both ``(N, num_classes)``)."""
        return cls(runtime=runtime, images=int(len(reference)),
                   top1_agreement=float(np.mean(reference.argmax(1) == logits.argmax(1))),
                   max_abs_logit_diff=float(np.abs(reference - logits).max()),
                   threshold=AGREEMENT_THRESHOLDS[runtime], source=source)

    def check(self) -> Agreement:
        """Return ``self`` if it passed.

        Raises:
            AgreementError: it did not; the message carries the measured figures.
        """
        if not self.passed:
            raise AgreementError(
                f"the {self.runtime!r} export is refused: its top-1 breed agrees with the eager fp32 model's on "
                f"{self.top1_agreement:.2%} of {self.images} {self.source} (max |logit diff| "
                f"{self.max_abs_logit_diff:.4g}), below the {self.threshold:.0%} required; serve it with "
                "runtime='torch' (or 'onnx' for an int8 refusal)", runtime=self.runtime,
                top1_agreement=self.top1_agreement, threshold=self.threshold,
                max_abs_logit_diff=self.max_abs_logit_diff, images=self.images)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as recorded in the manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Agreement:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in ("runtime", "images", "top1_agreement", "max_abs_logit_diff", "threshold",
                                           "source")})


def _run(forward: Any, images: np.ndarray) -> np.ndarray:
    import torch

    return np.concatenate([np.asarray(forward(torch.from_numpy(images[i:i + _CHUNK])), dtype=np.float32)
                           for i in range(0, len(images), _CHUNK)])


def _eager_logits(served: Any, images: np.ndarray) -> np.ndarray:
    from dogclf.serving import handler

    return _run(lambda batch: handler.predict_fn(handler.InferenceInput(batch=batch, k=1), served).logits.numpy(),
                images) if len(images) else np.zeros((0, served.num_classes), np.float32)


# -- export -----------------------------------------------------------------------------------------------------
def _import_exporter() -> None:
    require("onnx", "onnx", "ONNX export")  # torch's exporters and the quantizer need it
    require("onnx", "onnxscript", "ONNX export")  # the dynamo exporter needs it


def _export_fp32(module: Any, crop: int, dest: Path, exporter: str) -> dict[str, Any]:
    import contextlib

    import onnx
    import torch

    example = torch.zeros(2, 3, crop, crop)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    # torch's dynamo exporter reports its progress on stdout; a library keeps stdout clean.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({0: batch},), **names)
            program.save(str(dest))
        else:
            torch.onnx.export(module, (example,), str(dest), dynamo=False, opset_version=17, **names,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    logger.debug("torch.onnx.export said: %s", said.getvalue().strip())
    proto = onnx.load(str(dest), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"exporter": exporter, "opset": opset}


class _Reader:
    """Feeds calibration images to ``quantize_static`` in chunks."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + _CHUNK]
        self.start += _CHUNK
        return {"input": np.ascontiguousarray(chunk)}


def _quantize(fp32: Path, dest: Path, images: np.ndarray) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dest.with_name(f"prepared-{dest.name}")
    quant_pre_process(str(fp32), str(prepared))  # shape inference and graph fusions (Conv+BatchNorm) first
    quantize_static(str(prepared), str(dest), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink(missing_ok=True)
    return {**QUANTIZATION, "calibration_images": int(len(images))}


def _is_current(entry: dict[str, Any] | None, folder: Path, runtime: str, source_sha: str) -> bool:
    """Whether ``entry`` is an accepted export of this ``model.pt`` whose file is there."""
    return bool(entry) and entry.get("source_sha256") == source_sha and (folder / RUNTIME_FILES[runtime]).is_file() \
        and entry["agreement"]["top1_agreement"] >= AGREEMENT_THRESHOLDS[runtime]


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_runtimes(artifact_dir: str | os.PathLike[str], runtimes: str | Iterable[str] = ("onnx", "onnx-int8"), *,
                    calibration: Any = None, force: bool = False, exporter: str = "dynamo",
                    calibration_count: int = CALIBRATION_COUNT) -> dict[str, Agreement]:
    """Export, quantize and check an artifact's ONNX runtimes, writing them into the artifact folder.

    Runtimes already exported from the same ``model.pt`` (and accepted) are kept as they are unless ``force``.
    Each new export is compared with the eager fp32 model on the recorded calibration photos (without any, the
    ``onnx`` export is compared on 32 synthetic pattern images) and written only when it agrees.

    Args:
        artifact_dir: The artifact folder (``model.pt``, ``labels.json``, ``config.json``).
        runtimes: Runtime names (``"torch"`` needs nothing and is ignored).
        calibration: Training photos to record (see :func:`record_calibration`) when the artifact has none
            recorded, or to replace them with ``force=True``. ``onnx-int8`` needs recorded or given photos.
        force: Export again even when up to date (and re-record ``calibration`` when given).
        exporter: One of :data:`EXPORTERS`.
        calibration_count: How many calibration photos to record.

    Returns:
        The :class:`Agreement` of each runtime, by name.

    Raises:
        MissingExtraError: onnx, onnxscript or onnxruntime is not installed.
        RuntimeExportError: the export or the quantization failed, or ``onnx-int8`` has no calibration photos.
        AgreementError: an export disagrees with the eager model beyond its threshold (an accepted ``onnx`` export
            is kept when ``onnx-int8`` is refused).
        ArtifactError: ``artifact_dir`` is not an artifact.
    """
    from dogclf.models import BreedModel
    from dogclf.serving import handler

    wanted = list(dict.fromkeys(check_runtime(r) for r in ([runtimes] if isinstance(runtimes, str) else runtimes)))
    wanted = [r for r in wanted if r != "torch"]
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    folder = Path(artifact_dir)
    if not (folder / "config.json").is_file() or not (folder / "model.pt").is_file():
        raise ArtifactError(f"{str(folder)!r} is not a dogclf model artifact folder (model.pt, config.json)")
    if not wanted:
        return {}
    import_onnxruntime(wanted[0])
    _import_exporter()
    if calibration is not None and (force or not (folder / CALIBRATION_FILE).is_file()):
        record_calibration(folder, calibration, count=calibration_count)
    manifest = read_manifest(folder)
    source_sha = file_sha256(folder / "model.pt")
    done = {r: Agreement.from_dict(manifest["runtimes"][r]["agreement"]) for r in wanted
            if not force and _is_current(manifest["runtimes"].get(r), folder, r, source_sha)}
    todo = [r for r in wanted if r not in done]
    if not todo:
        return done
    if (folder / CALIBRATION_FILE).is_file():
        images, _ = load_calibration(folder)
        source = f"recorded calibration photos ({CALIBRATION_FILE})"
    elif "onnx-int8" in todo:
        raise RuntimeExportError(f"runtime 'onnx-int8' needs calibration photos and artifact {str(folder)!r} has "
                                 "none recorded: pass calibration=<a folder of training photos> (EndpointDeployer("
                                 "calibration=...), dogclf deploy --calibration DIR) or record them at the end of "
                                 "training")
    else:
        images, source = _synthetic_images(_preprocess_of(folder)), "synthetic pattern images (no calibration photos)"
    started = time.monotonic()
    served = handler.model_fn(folder)
    reference = _eager_logits(served, images)
    threads = available_cpus()

    def commit(runtime: str, path: Path, info: dict[str, Any]) -> Path:
        target = folder / RUNTIME_FILES[runtime]
        os.replace(path, target)
        manifest["runtimes"][runtime] = {
            **info, "file": RUNTIME_FILES[runtime], "bytes": target.stat().st_size, "sha256": file_sha256(target),
            "source_sha256": source_sha, "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checked_on": {"machine": platform.machine(), "int8_isa": int8_isa()}}
        atomic_write_json(folder / MANIFEST_FILE, manifest)
        done[runtime] = agreement = Agreement.from_dict(info["agreement"])
        logger.info("exported %s for %s: top-1 agreement %.2f%% on %d images, max |logit diff| %.3g (%.0f s)", runtime,
                    folder, 100 * agreement.top1_agreement, agreement.images, agreement.max_abs_logit_diff,
                    time.monotonic() - started)
        return target

    (folder / "runtimes").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=folder / "runtimes") as tmp:
        fp32 = folder / RUNTIME_FILES["onnx"]
        fp32_info = {k: v for k, v in (manifest["runtimes"].get("onnx") or {}).items() if k in ("exporter", "opset")}
        if "onnx" in todo or not _is_current(manifest["runtimes"].get("onnx"), folder, "onnx", source_sha):
            fp32 = Path(tmp) / "model.onnx"
            module = BreedModel.load(folder).module_.eval()  # any registered backbone
            try:
                fp32_info = _export_fp32(module, served.crop, fp32, exporter)
            except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
                raise RuntimeExportError(f"torch.onnx.export ({exporter}) failed for {str(folder)!r}: "
                                         f"{type(exc).__name__}: {str(exc)[:500]}") from exc
            # Checked even when only onnx-int8 is wanted: int8 is quantized from this model.
            agreement = Agreement.measure("onnx", reference, _run(open_session(fp32, "onnx", intra_op_threads=threads),
                                                                  images), source).check()
            if "onnx" in todo:
                fp32 = commit("onnx", fp32, {**fp32_info, "quantization": None, "agreement": agreement.to_dict()})
        if "onnx-int8" in todo:
            path = Path(tmp) / "model.int8.onnx"
            try:
                quantization = _quantize(fp32, path, images)
            except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many kinds
                raise RuntimeExportError(f"int8 quantization failed for {str(folder)!r}: {type(exc).__name__}: "
                                         f"{str(exc)[:500]}") from exc
            agreement = Agreement.measure("onnx-int8", reference, _run(open_session(
                path, "onnx-int8", intra_op_threads=threads), images), source).check()
            commit("onnx-int8", path, {**fp32_info, "quantization": quantization, "agreement": agreement.to_dict()})
    return {r: done[r] for r in wanted}


def ensure_runtime(artifact_dir: str | os.PathLike[str], runtime: str, *, calibration: Any = None) -> \
        Agreement | None:
    """Make sure the artifact folder holds an accepted, current export for ``runtime`` (exporting it if not).

    Returns:
        Its :class:`Agreement`, or ``None`` for the ``torch`` runtime (nothing to export).

    Raises:
        The errors of :func:`export_runtimes`.
    """
    if check_runtime(runtime) == "torch":
        return None
    return export_runtimes(artifact_dir, [runtime], calibration=calibration)[runtime]
