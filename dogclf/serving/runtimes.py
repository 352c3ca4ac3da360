"""Inference runtimes: which engine runs the network behind the handler, and how many threads it gets.

* ``torch`` (the default): the eager PyTorch module in channels-last memory format.
* ``onnx``: the model exported to ONNX (fp32) and run by ONNX Runtime's CPU execution provider.
* ``onnx-int8``: that ONNX model with static int8 quantization (QDQ format, per-channel weights), calibrated on
  photos recorded in the artifact.

The ONNX files are made once, by :func:`dogclf.serving.export.export_runtimes` (at the end of training, or on the
first deploy of an artifact), and checked against the eager fp32 model there; an endpoint only loads them and needs
``onnxruntime`` alone (``pip install 'dogclf[onnx]'``), not the exporter. They live in the artifact folder::

    runtimes/manifest.json      what was exported, from which model.pt, with which versions and measured agreement
    runtimes/model.onnx         the "onnx" runtime's model
    runtimes/model.int8.onnx    the "onnx-int8" runtime's model
    calibration.npz             the recorded calibration photos (see dogclf.serving.export)

This module is the serving side: it loads an exported model into an ONNX Runtime session and plans threads. It
imports neither the exporter nor ``onnx``.

Measured for the eager path and not kept (ResNet50, batch 4, two shared cores, against eager's 8-9 images/s):
``torch.compile`` 10-12 images/s after a 29 s compile in every server process; oneDNN graph fusion
(``torch.jit.enable_onednn_fusion``) 12-14 and ``torch.jit.freeze`` 10; ``torch.jit.optimize_for_inference``
10-19 (noisy). All are TorchScript or compile-time bets for at most the fp32 ONNX Runtime's speed, while int8 ran
28-40 images/s; the ``torch`` runtime stays the plain eager module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf.errors import ArtifactError, ConfigError

__all__ = [
    "RUNTIMES",
    "DEFAULT_RUNTIME",
    "AGREEMENT_THRESHOLDS",
    "MANIFEST_FILE",
    "RUNTIME_FILES",
    "CALIBRATION_FILE",
    "check_runtime",
    "import_onnxruntime",
    "read_manifest",
    "read_config",
    "file_sha256",
    "OnnxModule",
    "load_onnx_module",
    "open_session",
    "plan_threads",
    "available_cpus",
    "int8_isa",
]

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8")
"""The inference runtimes an endpoint can run."""
DEFAULT_RUNTIME = "torch"
"""The runtime used when none is chosen: the eager PyTorch module."""
AGREEMENT_THRESHOLDS = {"onnx": 0.99, "onnx-int8": 0.97}
"""The smallest top-1 agreement with the eager fp32 model an exported runtime must reach to be accepted."""
MANIFEST_FILE = "runtimes/manifest.json"
"""Where an artifact records its exported runtimes (relative to the artifact folder)."""
RUNTIME_FILES = {"onnx": "runtimes/model.onnx", "onnx-int8": "runtimes/model.int8.onnx"}
"""Each exported runtime's model file, relative to the artifact folder."""
CALIBRATION_FILE = "calibration.npz"
"""The recorded calibration photos, relative to the artifact folder."""
MANIFEST_FORMAT = "dogclf.runtimes/1"
"""The ``format`` value of ``runtimes/manifest.json``."""

def check_runtime(runtime: Any) -> str:
    """Validate a runtime name.

    Returns:
        ``runtime`` unchanged.

    Raises:
        ConfigError: it is not one of :data:`RUNTIMES`.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(repr(r) for r in RUNTIMES)}")
    return str(runtime)


def import_onnxruntime(runtime: str = "onnx") -> Any:
    """Import ``onnxruntime`` for ``runtime``.

    Raises:
        MissingExtraError: it is not installed (the message names the extra to install).
    """
    return require("onnx", "onnxruntime", f"inference runtime {runtime!r}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's ``runtimes/manifest.json``, or an empty manifest when it has none.

    Raises:
        ArtifactError: the manifest exists but is not a ``dogclf.runtimes/1`` document.
    """
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "runtimes": {}}
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("runtimes"), dict):
        raise ArtifactError(f"{str(path)!r} is not a {MANIFEST_FORMAT} manifest")
    return doc


def read_config(model_dir: str | os.PathLike[str]) -> tuple[Any, Any]:
    """An artifact's :class:`~dogclf.models.ModelConfig` and :class:`~dogclf.labels.BreedLabels`, without its weights.

    Raises:
        ArtifactError: ``config.json`` or ``labels.json`` is missing or unreadable.
    """
    from dogclf.labels import BreedLabels
    from dogclf.models import CONFIG_FILE, LABELS_FILE, ModelConfig

    folder = Path(model_dir)
    try:
        config, _ = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text("utf-8")))
        return config, BreedLabels.load(folder / LABELS_FILE)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{str(folder)!r} has an unreadable {CONFIG_FILE} or {LABELS_FILE}: {exc}") from exc


def int8_isa() -> str:
    """The int8 dot-product instructions this CPU has: ``"vnni"`` (AVX512-VNNI or AVX-VNNI), ``"avx2"`` or
    ``"other"``. Without VNNI, ONNX Runtime's u8s8 kernels can saturate and drift further from fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text("utf-8", "replace")
    except OSError:
        return "other"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    return "avx2" if "avx2" in flags else "other"


class OnnxModule:
    """An ONNX Runtime session that the handler calls like a ``torch.nn.Module``: a float32 batch tensor
    ``(N, 3, H, W)`` in, the logits tensor ``(N, num_classes)`` out.

    Args:
        session: The ``onnxruntime.InferenceSession``.
        runtime: The runtime name (``"onnx"`` or ``"onnx-int8"``).
        path: The model file it was loaded from.
        intra_op_threads: The session's intra-op threads (reported by the server's ``/stats``).

    ``session.run`` releases the GIL, so decoding threads keep running during a forward pass.
    """

    def __init__(self, session: Any, runtime: str, path: Path, intra_op_threads: int | None = None) -> None:
        self.session = session
        self.runtime = runtime
        self.path = path
        self.intra_op_threads = intra_op_threads
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import torch

        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)

    def eval(self) -> OnnxModule:
        """No-op (an exported model is always in inference mode); returns ``self``."""
        return self

    def __repr__(self) -> str:
        return f"OnnxModule(runtime={self.runtime!r}, path={str(self.path)!r})"


def load_onnx_module(model_dir: str | os.PathLike[str], runtime: str, *, intra_op_threads: int | None = None,
                     spinning: bool = False) -> OnnxModule:
    """Load an artifact's exported ``runtime`` model into an ONNX Runtime CPU session.

    Args:
        model_dir: The artifact folder.
        runtime: ``"onnx"`` or ``"onnx-int8"``.
        intra_op_threads: Threads one forward pass uses; ``None`` takes as many as torch would
            (``torch.get_num_threads()``, which honours ``OMP_NUM_THREADS``).
        spinning: Let idle intra-op threads busy-wait for the next pass. Off by default: on a small instance the
            request decoding threads share the cores, and spinning threads take their time.

    Raises:
        MissingExtraError: onnxruntime is not installed.
        ArtifactError: the artifact has no accepted export for ``runtime``, or it was exported from another
            ``model.pt`` than the one beside it (stale).
    """
    check_runtime(runtime)
    if runtime == "torch":
        raise ConfigError("load_onnx_module serves the ONNX runtimes; the torch runtime loads with handler.model_fn")
    import_onnxruntime(runtime)
    folder = Path(model_dir)
    entry = read_manifest(folder)["runtimes"].get(runtime)
    path = folder / RUNTIME_FILES[runtime]
    if entry is None or not path.is_file():
        raise ArtifactError(f"artifact {str(folder)!r} has no exported {runtime!r} model ({RUNTIME_FILES[runtime]}); "
                            "deploy it with dogclf (EndpointDeployer(runtime=...) exports on first deploy) or call "
                            "dogclf.serving.export.export_runtimes on the artifact folder")
    weights = folder / "model.pt"
    if weights.is_file() and entry.get("source_sha256") not in (None, file_sha256(weights)):
        raise ArtifactError(f"the {runtime!r} model in {str(folder)!r} was exported from another model.pt (stale); "
                            "export it again (dogclf.serving.export.export_runtimes(..., force=True))")
    agreement = entry.get("agreement") or {}
    threshold = AGREEMENT_THRESHOLDS[runtime]
    if float(agreement.get("top1_agreement", -1.0)) < threshold:
        raise ArtifactError(f"the {runtime!r} model in {str(folder)!r} records a top-1 agreement of "
                            f"{agreement.get('top1_agreement')!r}, below the {threshold:.0%} required")
    checked_isa = entry.get("checked_on", {}).get("int8_isa")
    if runtime == "onnx-int8" and checked_isa == "vnni" and int8_isa() != "vnni":
        logger.warning("the onnx-int8 model's agreement (%.2f%%) was measured on a CPU with VNNI; this CPU has none, "
                       "where int8 kernels can saturate: check its predictions here", 100 * agreement["top1_agreement"])
    return open_session(path, runtime, intra_op_threads=intra_op_threads, spinning=spinning)


def open_session(path: str | os.PathLike[str], runtime: str = "onnx", *, intra_op_threads: int | None = None,
                 spinning: bool = False) -> OnnxModule:
    """An :class:`OnnxModule` on the ONNX model file ``path`` (CPU provider, all graph optimisations, sequential
    execution, one inter-op thread), without the artifact checks of :func:`load_onnx_module`.

    Raises:
        MissingExtraError: onnxruntime is not installed.
    """
    ort = import_onnxruntime(runtime)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or _torch_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logger.info("loaded %s (%s, onnxruntime %s, %d intra-op threads)", path, runtime, ort.__version__,
                options.intra_op_num_threads)
    return OnnxModule(session, runtime, Path(path), options.intra_op_num_threads)


def _torch_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(runtime: str, *, intra_op_threads: int | None = None, workers: int | None = None,
                 cpus: int | None = None) -> tuple[int | None, int]:
    """Split the instance's CPUs between the forward pass (intra-op threads) and request decoding (workers).

    Measured on 2 vCPUs (like ml.m5.large) serving ResNet50 int8 with dynamic batching and 8 clients: a forward
    pass is most of a request's CPU time, so it gets every core (2 intra-op threads: 19-27 requests/s, 1: 12-14);
    the workers, which decode and preprocess photos and otherwise wait, fill the gaps between passes (2 or 3
    workers served alike), and ONNX Runtime's threads do not spin there (:func:`open_session`; spinning: 7.5
    requests/s against 12.8, interleaved runs).

    Args:
        runtime: The runtime served.
        intra_op_threads: An explicit choice, kept; ``None`` picks.
        workers: An explicit choice, kept; ``None`` picks.
        cpus: CPUs to plan for; :func:`available_cpus` by default.

    Returns:
        ``(intra_op_threads, workers)``. For the ``torch`` runtime an unset ``intra_op_threads`` stays ``None``
        (torch's own default, one thread per core).
    """
    check_runtime(runtime)
    cpus = cpus or available_cpus()
    if workers is None:
        workers = max(2, cpus // 2)
    if intra_op_threads is None and runtime != "torch":
        intra_op_threads = cpus
    return intra_op_threads, workers
