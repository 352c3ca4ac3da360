"""Ship the inference handler inside ``model.tar.gz`` so a stock SageMaker PyTorch container serves it.

A stock container (``sagemaker-pytorch-inference``) has torch, torchvision, NumPy and Pillow but not dogclf, and it
cannot be assumed to reach PyPI. :func:`write_code_dir` therefore writes a self-sufficient ``code/`` folder: the
pure-Python ``dogclf`` package itself (its sources and data files, a few hundred kB; importing it is cheap and pulls
no SageMaker SDK) next to an ``inference.py`` that exports the four handler functions of
:mod:`dogclf.serving.handler` (its ``model_fn`` loads the runtime the archive was packed for). The container puts
``code/`` on ``sys.path``, so ``import dogclf`` finds the vendored copy, and the same handler runs there unchanged.

The ONNX runtimes need one package the container lacks: ``onnxruntime``, listed in ``code/requirements.txt``, which
the container installs with pip when it starts (an endpoint without access to PyPI or a mirror cannot serve them).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dogclf._source import copy_package_source
from dogclf.errors import ArtifactError

__all__ = ["INFERENCE_PY", "write_code_dir", "pack_artifact", "resolve_model_dir", "runtime_requirements"]

logger = logging.getLogger(__name__)

INFERENCE_PY = '''"""SageMaker entry point written by dogclf: the shared inference handler, serving the {runtime!r} runtime.

The ``dogclf`` package beside this file is a vendored copy of the library that wrote it (version {version}), so the
container needs no dogclf install. See dogclf.serving.handler for the request and response formats.
"""

from dogclf.serving.handler import input_fn, load_model, output_fn, predict_fn

__all__ = ["model_fn", "input_fn", "predict_fn", "output_fn"]

RUNTIME = {runtime!r}


def model_fn(model_dir):
    """Load the artifact for the {runtime!r} runtime (the toolkit passes the model folder only)."""
    return load_model(model_dir, RUNTIME)
'''


def runtime_requirements(runtime: str) -> list[str]:
    """The packages a stock SageMaker PyTorch container must install to serve ``runtime`` (``code/requirements.txt``
    lines): none for ``torch``; for the ONNX runtimes, ``onnxruntime`` pinned to the version installed here, the
    one the export's agreement was measured with.

    Raises:
        MissingExtraError: an ONNX runtime without onnxruntime installed here.
    """
    from dogclf.serving.runtimes import check_runtime, import_onnxruntime

    if check_runtime(runtime) == "torch":
        return []
    return [f"onnxruntime=={import_onnxruntime(runtime).__version__}"]


def write_code_dir(dest: str | os.PathLike[str], runtime: str = "torch") -> Path:
    """Write a self-sufficient SageMaker ``code/`` folder: ``inference.py`` plus a vendored ``dogclf`` package.

    Args:
        dest: The folder to fill (created; must not already hold an ``inference.py`` or ``dogclf``).
        runtime: The inference runtime ``inference.py`` serves; an ONNX runtime also writes ``requirements.txt``
            (``onnxruntime``, which the container installs when it starts; see :func:`runtime_requirements`).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: ``dest`` already has an ``inference.py`` or ``dogclf`` entry.
    """
    import dogclf

    requirements = runtime_requirements(runtime)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("inference.py", "dogclf"):
        if (out / name).exists():
            raise ArtifactError(f"code folder {str(out)!r} already has {name!r}; pass an empty folder")
    copy_package_source(out)
    (out / "inference.py").write_text(INFERENCE_PY.format(version=dogclf.__version__, runtime=runtime),
                                      encoding="utf-8")
    if requirements:
        (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    logger.debug("wrote SageMaker code folder with vendored dogclf %s (runtime %s) to %s", dogclf.__version__, runtime,
                 out)
    return out


def _is_model_object(artifact: Any) -> bool:
    return hasattr(artifact, "save") and hasattr(artifact, "module_")


def resolve_model_dir(artifact: Any, workdir: str | os.PathLike[str]) -> Path:
    """An unpacked artifact folder for ``artifact``, unpacking or saving into ``workdir`` when needed.

    Args:
        artifact: An artifact folder, a ``model.tar.gz``, or a built :class:`~dogclf.models.ResNetBreedModel`.
        workdir: Scratch folder owned by the caller; ``workdir/model`` is written when ``artifact`` is not a folder.

    Raises:
        ArtifactError: ``artifact`` is none of these, or the folder has no ``config.json``.
    """
    from dogclf.models import unpack

    target = Path(workdir) / "model"
    if _is_model_object(artifact):
        return Path(artifact.save(target))
    if not isinstance(artifact, (str, os.PathLike)):
        raise ArtifactError(f"artifact must be a folder, a model.tar.gz or a ResNetBreedModel, got "
                            f"{type(artifact).__name__}: {artifact!r:.80}")
    path = Path(artifact)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArtifactError(f"{str(path)!r} is not a dogclf model artifact folder (no config.json)")
        return path
    if path.is_file():
        unpack(path, target)
        if not (target / "config.json").is_file():
            raise ArtifactError(f"{str(path)!r} holds no dogclf model artifact at its root (no config.json)")
        return target
    raise ArtifactError(f"model artifact {str(path)!r} does not exist")


def pack_artifact(artifact: Any, tar_path: str | os.PathLike[str], *, runtime: str = "torch",
                  calibration: Any = None) -> Path:
    """Write ``model.tar.gz`` for a stock SageMaker PyTorch container: the artifact plus ``code/`` from
    :func:`write_code_dir`.

    Args:
        artifact: An artifact folder, a ``model.tar.gz`` (its own ``code/`` is replaced) or a built
            :class:`~dogclf.models.ResNetBreedModel`.
        tar_path: Where to write the archive (atomically).
        runtime: The inference runtime the archive serves. An ONNX runtime's export (made first if the artifact
            lacks it, see :func:`dogclf.serving.export.ensure_runtime`) and its manifest entry travel in the
            archive's ``runtimes/``.
        calibration: Training photos to calibrate ``onnx-int8`` with when the artifact has none recorded.

    Returns:
        ``tar_path`` as a :class:`~pathlib.Path`.

    Raises:
        AgreementError: the ONNX export disagrees with the eager model (nothing is written).
        RuntimeExportError: the ONNX export failed.
    """
    from dogclf._io import atomic_write_json
    from dogclf.models import pack
    from dogclf.serving.export import ensure_runtime
    from dogclf.serving.runtimes import CALIBRATION_FILE, MANIFEST_FILE, RUNTIME_FILES, read_manifest

    with tempfile.TemporaryDirectory(prefix="dogclf-pack-") as tmp:
        model_dir = resolve_model_dir(artifact, tmp)
        ensure_runtime(model_dir, runtime, calibration=calibration)
        clean = Path(tmp) / "clean"
        clean.mkdir()
        for name in ("model.pt", "labels.json", "config.json", CALIBRATION_FILE):
            if name != CALIBRATION_FILE or (model_dir / name).is_file():
                shutil.copy2(model_dir / name, clean / name)
        if runtime in RUNTIME_FILES:
            manifest = read_manifest(model_dir)
            manifest["runtimes"] = {runtime: manifest["runtimes"][runtime]}
            (clean / "runtimes").mkdir()
            shutil.copy2(model_dir / RUNTIME_FILES[runtime], clean / RUNTIME_FILES[runtime])
            atomic_write_json(clean / MANIFEST_FILE, manifest)
        code = write_code_dir(Path(tmp) / "code", runtime)
        return pack(clean, tar_path, code_dir=code)
