"""``make compat``: the training entry point and the inference handler on the versions SageMaker's containers run.

The SageMaker backend asks for the PyTorch training container 2.5 / py311 and the inference container 2.6 / py312
(``DEFAULT_FRAMEWORK_VERSION`` / ``DEFAULT_PY_VERSION`` in :mod:`dogclf.backends.sagemaker.training`,
:class:`dogclf.serving.DeployConfig`). This script builds a throwaway venv for each from PyPI's wheels (torch's
are CUDA builds with several GB of ``nvidia-*`` wheels; they run on the CPU here), cached under
``${XDG_CACHE_HOME:-~/.cache}/dogclf-compat`` keyed by the pinned requirements so a rerun installs nothing, and:

* **train** (torch 2.5.1, torchvision 0.20.1, Python 3.11; NumPy 1.26.4 and Pillow 9.5.0, the oldest the core
  allows or close to it): stages ``source_dir`` exactly as the SageMaker backend does
  (:func:`~dogclf.backends.sagemaker.training.stage_source_dir`), checks dogclf is not importable there otherwise,
  and runs ``python dogclf/training/train.py`` as a plain file, the way the container's toolkit does, on a small
  synthetic dataset with the ``SM_*`` environment: a head-only job on stand-in ImageNet weights (loaded through
  torchvision's cache, features cached) and a job that fine-tunes the last block with augmentation.
* **serve** (torch 2.6.0, torchvision 0.21.0, Python 3.12, sagemaker-pytorch-inference 2.0.25): packs the artifact
  the train step wrote (:func:`~dogclf.serving.pack_artifact`, which vendors dogclf into ``code/``) and serves a
  JPEG through the toolkit's stock ``HandlerService`` with dogclf importable only from ``code/``
  (``tools/stock_serve.py``); the answers must match this environment's handler on the same artifact.

Run by the dev venv's interpreter: ``python tools/compat.py`` (``--only train|serve``). Exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from venvs import cache_root, pinned_venv, tree_size  # noqa: E402


@dataclass(frozen=True)
class Target:
    name: str
    framework: str  # the SageMaker PyTorch container's framework_version
    python: str
    requirements: tuple[str, ...]

    @property
    def key(self) -> str:
        pins = dict(r.split("==") for r in self.requirements if "==" in r)
        return f"{self.name}-py{self.python}-torch{pins['torch']}-torchvision{pins['torchvision']}"


TARGETS = {
    "train": Target("train", "2.5", "3.11",
                    ("torch==2.5.1", "torchvision==0.20.1", "numpy==1.26.4", "Pillow==9.5.0")),
    # the stock handler imports pkg_resources, which setuptools 81 drops; Python 3.12 venvs have no setuptools
    "serve": Target("serve", "2.6", "3.12",
                    ("torch==2.6.0", "torchvision==0.21.0", "numpy", "Pillow", "sagemaker-pytorch-inference==2.0.25",
                     "setuptools<81")),
}


def log(message: str) -> None:
    print(f"[compat] {message}", flush=True)


def check_targets_match_the_backends() -> None:
    """The containers dogclf asks for must be the ones checked here."""
    from dogclf.backends.sagemaker.training import DEFAULT_FRAMEWORK_VERSION, DEFAULT_PY_VERSION
    from dogclf.serving import DeployConfig

    asked = {"train": (DEFAULT_FRAMEWORK_VERSION, DEFAULT_PY_VERSION),
             "serve": (DeployConfig().framework_version, DeployConfig().py_version)}
    for name, (framework, py) in asked.items():
        t = TARGETS[name]
        if (t.framework, "py" + t.python.replace(".", "")) != (framework, py):
            raise SystemExit(f"the {name} container is PyTorch {framework} / {py}, but tools/compat.py checks "
                             f"{t.framework} / py{t.python}: update TARGETS")


def find_python(version: str) -> str:
    """An interpreter for ``version`` (``3.12``): ``$DOGCLF_COMPAT_PYTHON<version>``, PATH, pyenv, /usr/bin."""
    env = os.environ.get(f"DOGCLF_COMPAT_PYTHON{version.replace('.', '_')}")
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [env] if env else []
    candidates += [shutil.which(f"python{version}"),
                   *sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True),
                   f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for c in filter(None, candidates):
        try:
            out = subprocess.run([c, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return c
    raise SystemExit(f"no Python {version} found (tried {', '.join(filter(None, candidates))}); "
                     f"set DOGCLF_COMPAT_PYTHON{version.replace('.', '_')}")


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-4000:]}\n"
                         f"{out.stderr[-4000:]}")
    return out


# -- the training container ------------------------------------------------------------------------------------
def check_training(py: Path, work: Path) -> tuple[Path, dict]:
    from dogclf.backends.sagemaker.training import ENTRY_POINT, stage_source_dir
    from dogclf.data import make_synthetic_dataset
    from dogclf.models import ResNetBreedModel
    from dogclf.models.testing import place_fake_weights

    source = stage_source_dir(work / "source")  # what the estimator uploads as source_dir (no requirements.txt)
    outside = run([py, "-c", "import importlib.util; print(importlib.util.find_spec('dogclf') is None)"], cwd=work)
    assert outside.stdout.strip() == "True", "dogclf is importable in the training venv without the source_dir"
    versions = json.loads(run([py, "-c", "import json, sys, torch, torchvision, numpy, PIL; print(json.dumps({"
                               "'python': sys.version.split()[0], 'torch': torch.__version__, 'torchvision': "
                               "torchvision.__version__, 'numpy': numpy.__version__, 'Pillow': PIL.__version__}))"],
                              cwd=work).stdout)
    data = make_synthetic_dataset(work / "data", n_classes=4, per_class={"train": 12, "valid": 4, "test": 4},
                                  image_size=64)
    torch_home = work / "torch_home"
    place_fake_weights("resnet18", "IMAGENET1K_V1", torch_home, calibrate_batchnorm=True)
    jobs = {
        "head": ["--backbone", "resnet18", "--weights", "IMAGENET1K_V1", "--freeze", "head", "--epochs", "2",
                 "--batch-size", "8", "--lr", "0.01", "--resize", "72", "--crop", "64", "--seed", "1"],
        "last-block": ["--backbone", "resnet18", "--weights", "IMAGENET1K_V1", "--freeze", "last-block",
                       "--augment", "crop-flip", "--epochs", "1", "--batch-size", "8", "--resize", "72", "--crop",
                       "64", "--optimizer", "sgd", "--num-workers", "1"],
    }
    timings = {}
    for name, args in jobs.items():
        base = work / f"opt_ml-{name}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(SM_CHANNEL_TRAINING=str(data.root), SM_MODEL_DIR=str(base / "model"),
                   SM_OUTPUT_DATA_DIR=str(base / "output" / "data"), SAGEMAKER_BASE_DIR=str(base),
                   TORCH_HOME=str(torch_home), OMP_NUM_THREADS="1")
        started = time.perf_counter()
        out = run([py, ENTRY_POINT, *args], cwd=source, env=env, timeout=900)  # as the toolkit runs a .py entry
        timings[name] = time.perf_counter() - started
        text = out.stdout + out.stderr
        for metric in ("train_loss=", "valid_acc=", "test_loss=", "test_acc="):
            assert metric in text, f"the {name} job printed no {metric}:\n{text[-3000:]}"
        model = ResNetBreedModel.load(base / "model")  # written by torch 2.5.1, read by this torch
        assert len(model.labels_) == 4 and model.backbone == "resnet18"
        log(f"train: {name} job ok in {timings[name]:.1f} s (" +
            "; ".join(line.strip() for line in text.splitlines() if line.startswith("test_acc=")) + ")")
    return work / "opt_ml-head" / "model", {"versions": versions, "jobs_s": timings}


# -- the inference container -----------------------------------------------------------------------------------
def check_serving(py: Path, work: Path, artifact: Path | None) -> dict:
    import numpy as np

    from dogclf.serving import handler, pack_artifact
    from dogclf.serving.testing import make_artifact, synthetic_photo

    if artifact is None:
        artifact = make_artifact(work / "artifact", ["Beagle", "Pug", "Golden_retriever", "Dalmatian"], seed=2)
    tar = pack_artifact(artifact, work / "model.tar.gz")
    model_dir = work / "opt_ml_model"
    with tarfile.open(tar) as archive:
        archive.extractall(model_dir, filter="data")
    image = work / "dog.jpg"
    image.write_bytes(synthetic_photo(120, 90, seed=7))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    out = run([py, HERE / "stock_serve.py", model_dir, image], cwd=work, env=env, timeout=600)
    seconds = time.perf_counter() - started
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dogclf"].startswith(str(model_dir / "code")), report["dogclf"]
    good, empty, npy = report["answers"]

    model = handler.model_fn(artifact)
    logits = handler.predict_fn(handler.input_fn(image.read_bytes(), "image/jpeg"), model).logits
    assert good["status"] == 200 and good["content_type"] == "application/json", good
    doc = json.loads(bytes.fromhex(good["body"]))
    assert doc["k"] == 2 and doc["predictions"][0]["index"] == int(logits.argmax()), doc
    assert empty["status"] == 400 and b"empty_body" in bytes.fromhex(empty["body"]), empty
    assert npy["status"] == 200 and npy["content_type"] == "application/x-npy", npy["content_type"]
    theirs = np.load(io.BytesIO(bytes.fromhex(npy["body"])))
    assert np.allclose(theirs, logits.numpy(), atol=1e-3), (theirs, logits)
    log(f"serve: stock HandlerService answered 200 (top breed {doc['predictions'][0]['breed']!r}), 400 for an "
        f"empty body, and .npy logits within 1e-3 of torch {__import__('torch').__version__}'s, in {seconds:.1f} s")
    return {"versions": report["versions"], "serve_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(TARGETS), help="check one container only")
    args = parser.parse_args(argv)
    check_targets_match_the_backends()
    started = time.perf_counter()
    summary: dict[str, dict] = {}
    cache = cache_root()
    with tempfile.TemporaryDirectory(prefix="dogclf-compat-") as tmp:
        work = Path(tmp)
        artifact = None
        for name in ("train", "serve"):
            if args.only and args.only != name:
                continue
            target = TARGETS[name]
            py, times = pinned_venv(find_python(target.python), target.requirements, target.key, cache=cache)
            summary[name] = {"setup": times, "venv_gb": round(tree_size(py.parent.parent) / 1e9, 2)}
            (work / name).mkdir()
            if name == "train":
                artifact, result = check_training(py, work / name)
            else:
                result = check_serving(py, work / name, artifact)
            summary[name].update(result)
    total = time.perf_counter() - started
    for name, s in summary.items():
        v = s["versions"]
        log(f"{name}: Python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, numpy {v['numpy']}, "
            f"Pillow {v['Pillow']}; venv {s['venv_gb']} GB, download {s['setup']['download_s']:.0f} s, "
            f"install {s['setup']['install_s']:.0f} s")
    log(f"ok in {total:.0f} s (cache: {cache})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
