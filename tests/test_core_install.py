"""What a core install (torch, torchvision, NumPy, Pillow; no extras) does: label sets, the model artifact, the
in-process BreedPredictor and the training entry point without Debugger; what needs an extra says which.

Runs in the full test environment and, through ``tests/test_packaging.py``, in a venv that sees only the core's
distributions (plus pytest and hypothesis), with dogclf installed from the built wheel. Only core modules and
pytest are imported at module level. Where an optional module is installed it is hidden for the test (its
``sys.modules`` entries set to ``None``, so importing it fails as if it were absent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dogclf
from dogclf._extras import EXTRAS
from dogclf.errors import DogclfError, MissingExtraError

OPTIONAL_MODULES = sorted({m for _, modules in EXTRAS.values() for m in modules})

CORE_MODULES = ["dogclf", "dogclf.labels", "dogclf.models", "dogclf.serving", "dogclf.serving.handler",
                "dogclf.serving.predictor", "dogclf.serving.package", "dogclf.serving.endpoint", "dogclf.training",
                "dogclf.training.train", "dogclf.data", "dogclf.backends", "dogclf.backends.local",
                "dogclf.backends.sagemaker", "dogclf.hpo", "dogclf.debug", "dogclf.cli"]


@pytest.fixture
def hide(monkeypatch):
    """``hide("pandas", ...)``: make those modules (and their submodules) fail to import until the test ends."""

    def _hide(*names: str) -> None:
        for name in names:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")] + [name]:
                monkeypatch.setitem(sys.modules, key, None)

    return _hide


def _top_level_modules_after(*modules: str) -> set[str]:
    # the SageMaker inference toolkit (test extra; in the serving container) is optional to the handler: hide it
    code = ("import importlib, json, sys\nsys.modules['sagemaker_inference'] = None\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_modules_import_no_optional_module():
    # torch.hub imports tqdm when it is there: what the core's own dependencies load is not dogclf's doing
    baseline = _top_level_modules_after("torch", "torch.hub", "torchvision", "numpy", "PIL.Image")
    extra = (_top_level_modules_after(*CORE_MODULES) - baseline) & set(OPTIONAL_MODULES)
    assert not extra, f"imported on the core path: {sorted(extra)}"


def test_builtin_label_set_comes_from_package_data():
    from dogclf.labels import get_labels, list_labels

    labels = get_labels("dogimages-133")
    assert "dogimages-133" in list_labels() and len(labels) == 133
    assert labels.names[0] == "Affenpinscher" and labels.folder_name(70) == "071.German_shepherd_dog"
    data = Path(dogclf.__file__).parent / "labels" / "data" / "dogimages_133.txt"
    assert len(data.read_text("utf-8").split()) == 133


def test_artifact_round_trip_and_in_process_predictor(tmp_path):
    from dogclf.models import ResNetBreedModel
    from dogclf.serving import BreedPredictor
    from dogclf.serving.testing import make_artifact, synthetic_photo

    folder = make_artifact(tmp_path / "model", ["Beagle", "Pug", "Golden_retriever", "Dalmatian"], seed=3)
    assert {p.name for p in folder.iterdir()} >= {"model.pt", "labels.json", "config.json"}
    model = ResNetBreedModel.load(folder)
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(synthetic_photo(96, 80, seed=5))
    from PIL import Image

    with Image.open(photo) as image:
        logits = model.predict_logits(model.transform()(image.convert("RGB")).unsqueeze(0))[0]
    prediction = BreedPredictor(folder, k=2).predict(photo)
    probs = torch.softmax(logits, 0)
    assert prediction.index == int(logits.argmax())
    assert prediction.breed == model.labels_.names[prediction.index]
    assert [s.breed for s in prediction.top_k] == [model.labels_.names[i] for i in probs.topk(2).indices.tolist()]
    assert prediction.probability == pytest.approx(float(probs.max()), abs=2e-3)
    batch = BreedPredictor(folder).predict_batch([photo, photo.read_bytes()])
    assert [p.index for p in batch] == [prediction.index] * 2


def test_local_folder_and_zip_staging(tmp_path):
    import shutil

    from dogclf.data import DatasetStager, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_classes=3, per_class=2, image_size=32)
    staged = DatasetStager(data.root, tmp_path / "staged").run()
    assert set(staged.channels) == {"train", "valid", "test"}
    assert sorted(p.name for p in Path(staged.channels["train"]).iterdir()) == sorted(
        p.name for p in (Path(data.root) / "train").iterdir())
    archive = shutil.make_archive(str(tmp_path / "dogImages"), "zip", tmp_path / "data")
    from_zip = DatasetStager(archive, tmp_path / "from-zip").run()
    assert len(list(Path(from_zip.channels["test"]).rglob("*.jpg"))) == 3 * 2


@pytest.mark.slow
def test_training_entry_point_without_debugger(tmp_path):
    from dogclf.data import make_synthetic_dataset
    from dogclf.models import ResNetBreedModel

    data = make_synthetic_dataset(tmp_path / "data", n_classes=3, per_class={"train": 6, "valid": 2, "test": 2},
                                  image_size=48)
    # No job settings of the caller's (a Debugger configuration would ask for smdebug, which the core lacks).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "PYTHONPATH", "SMDEBUG_", "SMPROFILER_", "DOGCLF_DEBUG"))}
    env.update(SM_CHANNEL_TRAINING=str(data.root), SM_MODEL_DIR=str(tmp_path / "model"),
               SM_OUTPUT_DATA_DIR=str(tmp_path / "output"), SAGEMAKER_BASE_DIR=str(tmp_path / "opt_ml"),
               OMP_NUM_THREADS="1")
    args = ["--backbone", "resnet18", "--weights", "None", "--epochs", "1", "--batch-size", "6", "--resize", "40",
            "--crop", "32", "--num-workers", "0"]
    out = subprocess.run([sys.executable, "-m", "dogclf.training.train", *args], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "test_acc=" in out.stdout + out.stderr
    model = ResNetBreedModel.load(tmp_path / "model")
    assert len(model.labels_) == 3 and model.backbone == "resnet18"


# -- what needs an extra says which ---------------------------------------------------------------------------------
def _check(exc_info: pytest.ExceptionInfo, extra: str) -> None:
    exc = exc_info.value
    assert isinstance(exc, DogclfError) and isinstance(exc, ImportError) and exc.extra == extra
    assert f'pip install "dogclf[{extra}]"' in str(exc)
    assert exc.module.split(".")[0] in EXTRAS[extra][1] or exc.__cause__ is not None


def test_predict_folder_needs_report(hide, tmp_path):
    from dogclf.serving import BreedPredictor
    from dogclf.serving.testing import make_artifact, synthetic_photo

    hide("pandas")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(synthetic_photo())
    with pytest.raises(MissingExtraError) as info:
        BreedPredictor(make_artifact(tmp_path / "model")).predict_folder(tmp_path / "photos")
    _check(info, "report")
    assert str(info.value).startswith("dogclf's prediction table needs pandas")


def test_local_training_needs_local_before_any_job_folder(hide, tmp_path):
    from dogclf.backends import get_backend
    from dogclf.training import TrainingJobSpec

    hide("sagemaker_training")
    backend = get_backend("local", root=tmp_path / "home")
    with pytest.raises(MissingExtraError) as info:
        backend.train(TrainingJobSpec({"backbone": "resnet18"}, tmp_path, {"epochs": 1}))
    _check(info, "local")
    assert not (tmp_path / "home").exists()


def test_local_endpoint_needs_serve(hide, tmp_path):
    from dogclf.backends import get_backend

    hide("uvicorn", "starlette")
    with pytest.raises(MissingExtraError) as info:
        get_backend("local", root=tmp_path / "home").deploy(tmp_path / "model")
    _check(info, "serve")


def test_sagemaker_backend_needs_sagemaker(hide):
    from dogclf.backends import get_backend
    from dogclf.training import TrainingJobSpec

    hide("sagemaker")
    backend = get_backend("sagemaker", role="arn:aws:iam::123456789012:role/R", bucket="b", region="us-east-1")
    with pytest.raises(MissingExtraError) as info:
        backend.train(TrainingJobSpec({"backbone": "resnet18"}, "s3://b/data", {"epochs": 1}))
    _check(info, "sagemaker")


def test_debug_trainer_needs_debug_before_the_job(hide, tmp_path):
    from dogclf.debug import DebugTrainer
    from dogclf.training import TrainingJobSpec

    hide("smdebug")
    with pytest.raises(MissingExtraError) as info:
        DebugTrainer(TrainingJobSpec({"backbone": "resnet18"}, tmp_path, {"epochs": 1}), backend="local").fit()
    _check(info, "debug")


def test_url_and_s3_staging_need_http_and_s3(hide, tmp_path):
    from dogclf.data import DatasetStager
    from dogclf.data.fetch import download

    hide("requests", "boto3")
    with pytest.raises(MissingExtraError) as info:
        download("http://127.0.0.1:9/dogImages.zip", tmp_path / "d.zip")
    _check(info, "http")
    with pytest.raises(MissingExtraError) as info:
        DatasetStager("s3://bucket/dogImages", tmp_path / "staged").run()
    _check(info, "s3")
    assert not (tmp_path / "staged").exists()


def test_bayesian_search_and_cli_progress_need_tune_and_cli(hide):
    from dogclf.cli._common import _tqdm
    from dogclf.hpo import Categorical
    from dogclf.hpo.objective import Objective
    from dogclf.hpo.space import SearchSpace
    from dogclf.hpo.strategies import BayesianStrategy

    hide("optuna", "tqdm")
    with pytest.raises(MissingExtraError) as info:
        BayesianStrategy().suggest(SearchSpace({"epochs": Categorical([1, 2])}), [], 0, seed=0,
                                   objective=Objective("test_loss"))
    _check(info, "tune")
    with pytest.raises(MissingExtraError) as info:
        _tqdm()
    _check(info, "cli")


def test_an_installed_module_whose_own_import_is_missing_names_both(hide, tmp_path, monkeypatch):
    from dogclf._extras import require

    (tmp_path / "dogclf_fake_extra.py").write_text("import pandas\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hide("pandas")
    with pytest.raises(MissingExtraError) as info:
        require("report", "dogclf_fake_extra")
    message = str(info.value)
    assert message.startswith("dogclf's report and table support (plots, prediction tables) needs dogclf_fake_extra, "
                              "which failed to import")
    assert "pandas" in message and message.endswith('pip install "dogclf[report]"')
    assert info.value.module == "pandas" and info.value.name == "pandas"
    sys.modules.pop("dogclf_fake_extra", None)
    assert float(np.float32(1.5)) == 1.5  # the core is unaffected
