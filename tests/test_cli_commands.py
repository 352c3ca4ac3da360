"""The ``dogclf`` subcommands: --help everywhere, exit codes, one-line errors, and real runs on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dogclf.cli import build_parser, main, parse_assignments, parse_space
from dogclf.errors import ConfigError

COMMANDS = ["stage", "tune", "train", "lr-find", "report", "deploy", "predict", "labels", "backends"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dogclf {command}")
    assert "--help" in out


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command}" in out


@pytest.mark.parametrize("argv", [
    [],                                                   # no command
    ["stage", "--on-corrupt", "ignore", "x"],             # not a choice
    ["tune"],                                             # no data, no --attach
    ["predict"],                                          # no photos
    ["predict", "photos"],                                # no model, no endpoint
    ["predict", "model", "photos", "--endpoint", "e"],    # both
    ["train", "data", "--backend", "sagemaker"],          # no role
    ["tune", "data", "--trials", "three"],                # not an int
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: dogclf" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["stage", "/no/such/folder", "/tmp/x"], "/no/such/folder"),
    (["tune", "/no/such/dataset"], "/no/such/dataset"),
    (["train", "/no/such/dataset", "--params", "/no/such.json"], "/no/such"),
    (["report", "no-such-job", "--root", "/no/such/root"], "no-such-job"),
    (["tune", "/tmp", "--space", "lr=0.1..oops"], "lr=0.1..oops"),
])
def test_dogclf_errors_are_one_line_with_exit_1(argv, needle, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dogclf: error: ") and err.count("\n") == 1 and needle in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback():
    from dogclf.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError):
        main(["--debug", "stage", "/no/such/folder", "/tmp/x"])


def test_console_script_exit_codes():
    run = lambda *a: subprocess.run([sys.executable, "-m", "dogclf.cli", *a], capture_output=True, text=True)  # noqa
    assert run("labels", "list").returncode == 0
    assert run("labels", "find", "no such breed").returncode == 1
    assert run("frobnicate").returncode == 2


def test_parse_space_forms():
    space = parse_space(["lr=0.001..0.1:log", "epochs=int:1..3", "batch-size=32,64,128", "opt=adam,sgd"])
    assert (space["lr"].low, space["lr"].high, space["lr"].scale) == (0.001, 0.1, "log")
    assert (space["epochs"].low, space["epochs"].high) == (1, 3)
    assert list(space["batch-size"].values) == [32, 64, 128]
    assert list(space["opt"].values) == ["adam", "sgd"]
    with pytest.raises(ConfigError, match="NAME=SPEC"):
        parse_space(["lr"])
    with pytest.raises(ConfigError):
        parse_space(["lr=0.1..0.01"])  # inverted range: the hpo package's own check


@given(low=st.floats(1e-6, 1e3), width=st.floats(1e-3, 1e3), log=st.booleans())
def test_parse_space_round_trips_ranges(low, width, log):
    high = low + width
    text = f"lr={low!r}..{high!r}" + (":log" if log else "")
    r = parse_space([text])["lr"]
    assert (r.low, r.high, r.scale) == (low, high, "log" if log else "linear")


@given(st.dictionaries(st.from_regex(r"[a-z][a-z\-]{0,10}", fullmatch=True), st.integers(-10**6, 10**6),
                       max_size=5))
def test_parse_assignments_types_numbers(values):
    assert parse_assignments([f"{k}={v}" for k, v in values.items()]) == values


def test_parse_assignments_rejects_missing_equals():
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_assignments(["lr"])
    assert parse_assignments(["weights=None", "flag=true", "lr=1e-3"]) == {"weights": "None", "flag": True,
                                                                            "lr": 0.001}


@pytest.fixture
def tiny_dataset(tmp_path):
    from dogclf.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "src", n_classes=3, per_class={"train": 4, "valid": 2, "test": 2},
                                  image_size=32)


def test_stage_and_labels_for_real(tiny_dataset, tmp_path, capsys):
    target = tmp_path / "staged"
    assert main(["stage", str(tiny_dataset.root), str(target), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == {"train": 12, "valid": 6, "test": 6} and data["breeds"] == 3
    assert Path(data["manifest"]).is_file() and sorted(data["channels"]) == ["test", "train", "valid"]
    assert sorted(p.name for p in (target / "train").iterdir()) == sorted(tiny_dataset.counts["train"])
    # staging the same source again is a no-op
    assert main(["stage", str(tiny_dataset.root), str(target)]) == 0
    assert capsys.readouterr().out.startswith("already staged 24 images of 3 breeds")
    # the staged folders' names are breeds of the registered label set
    folder = sorted(p.name for p in (target / "train").iterdir())[1]
    assert main(["labels", "find", folder.split(".", 1)[1].replace("_", " ")]) == 0
    assert json.loads(capsys.readouterr().out)["folder"] == folder
    assert main(["labels", "list", "dogimages-*"]) == 0
    assert capsys.readouterr().out.startswith("dogimages-133\t133 breeds")


@pytest.mark.slow
def test_tune_train_report_predict_on_tiny_data(tiny_dataset, tmp_path, capsys, seed_photos_or_none, monkeypatch):
    # --weights IMAGENET1K_V1 goes through torchvision's real loading path; a random checkpoint stands in for the
    # download in torchvision's cache (the jobs inherit TORCH_HOME)
    from dogclf.models.testing import place_fake_weights

    place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    env_root = tmp_path / "backend"
    staged = tmp_path / "staged"
    assert main(["stage", str(tiny_dataset.root), str(staged)]) == 0
    small = ["--root", str(env_root), "--backbone", "resnet18", "--weights", "IMAGENET1K_V1", "--resize", "36",
             "--crop", "32", "--set", "num-workers=0"]
    best = tmp_path / "best.json"
    assert main(["--quiet", "tune", str(staged), *small, "--space", "lr=0.001..0.1:log", "--space",
                 "batch-size=4,8", "--trials", "1", "--name", "cli-test", "--out", str(best)]) == 0
    tuned = json.loads(best.read_text())
    assert 0.001 <= tuned["best_params"]["lr"] <= 0.1 and tuned["best_params"]["batch_size"] in (4, 8)
    assert tuned["best_hyperparameters"]["batch-size"] == str(tuned["best_params"]["batch_size"])  # the wire
    capsys.readouterr()

    assert main(["--quiet", "train", str(staged), *small, "--params", str(best), "--set", "epochs=1",
                 "--job-name", "cli-train", "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "Completed" and float(job["hyperparameters"]["lr"]) == tuned["best_params"]["lr"]
    assert Path(job["artifact"], "model.pt").is_file() and Path(job["report"]).is_file()
    assert json.loads(Path(job["artifact"], "config.json").read_text())["weights"] == "IMAGENET1K_V1"

    report = tmp_path / "again" / "report.html"
    assert main(["--quiet", "report", "cli-train", "--root", str(env_root), "--out", str(report), "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["report"] == str(report) and "Rules summary" in report.read_text()

    photos = seed_photos_or_none or tiny_dataset.split_dir("test")
    gallery, table = tmp_path / "gallery", tmp_path / "predictions.csv"
    assert main(["--quiet", "predict", job["artifact"], str(photos), "--gallery", str(gallery), "--csv",
                 str(table), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    n_photos = sum(1 for p in Path(photos).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(rows) == n_photos == len(list(gallery.iterdir()))
    assert all(r["breed"] in ("Affenpinscher", "Afghan_hound", "Airedale_terrier") for r in rows)


@pytest.fixture
def seed_photos_or_none():
    folder = Path(__file__).resolve().parents[2] / "shared" / "seed" / "test-photos-of-dogs"
    return folder if folder.is_dir() else None


def test_parser_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        assert p.description, name


@pytest.fixture
def small_artifact(tmp_path):
    from dogclf.models import ResNetBreedModel

    model = ResNetBreedModel(["Beagle", "Pug", "Boxer"], backbone="resnet18", weights=None,
                             preprocess={"resize": 40, "crop": 32}).build()
    return model.save(tmp_path / "model")


@pytest.mark.slow
def test_deploy_serves_then_deletes_and_predict_through_a_temporary_endpoint(small_artifact, tmp_path, capsys):
    import urllib.request

    from PIL import Image

    assert main(["--quiet", "deploy", str(small_artifact), "--duration", "0", "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[: out.index("}") + 1])
    assert info["backend"] == "local" and info["url"].startswith("http://127.0.0.1:")
    assert f"endpoint {info['endpoint']} deleted" in out
    with pytest.raises(OSError):  # the server is gone
        urllib.request.urlopen(info["url"] + "/ping", timeout=2)

    photo = tmp_path / "Pug_0001.jpg"
    Image.new("RGB", (50, 40), (120, 90, 60)).save(photo)
    assert main(["--quiet", "predict", str(small_artifact), str(photo), "--deploy", "-k", "2", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["breed"] in ("Beagle", "Pug", "Boxer") and len(pred["top_k"]) == 2
    assert 0 < pred["probability"] <= 1
