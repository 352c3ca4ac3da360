"""The training recipe through the entry point: honest selection, early stopping, fine-tune phases, label smoothing,
resuming a fine-tune, mixed precision, the learning-rate finder and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dogclf.data import make_synthetic_dataset
from dogclf.errors import DataError
from dogclf.images import Preprocess, load_image, normalize
from dogclf.models import ResNetBreedModel
from dogclf.models.testing import place_fake_weights
from dogclf.training import Callback, TrainingJobSpec, lr_find, parse_metric_line
from dogclf.training import train as entry
from dogclf.training.callbacks import callback_factories

SMALL = ["--backbone", "resnet18", "--batch-size", "8", "--resize", "40", "--crop", "32", "--num-workers", "0"]
# On this data, a random resnet18's head trained at lr 0.1 is best on validation at epoch 4 of 5 (and at epoch 2
# of 3 when stopped with patience 1): the loop is deterministic on CPU, and each test checks its premise.
PEAKS_EARLY = [*SMALL, "--weights", "None", "--lr", "0.1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "dogImages"
    make_synthetic_dataset(root, n_classes=4, per_class={"train": 6, "valid": 2, "test": 2}, image_size=40, seed=1)
    return root


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("DOGCLF_FEATURE_CACHE_DIR", "SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST",
                "SM_CHANNEL_TRAINING", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR"):
        monkeypatch.delenv(var, raising=False)
    place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "torch")
    return tmp_path


@pytest.fixture
def capsys(capsys, caplog):
    caplog.set_level(logging.INFO)
    capsys.caplog = caplog
    return capsys


def run(capsys, where: Path, *argv: str) -> tuple[int, str, list[dict]]:
    """The entry point with its own model, output and checkpoint folders under ``where``."""
    capsys.caplog.clear()
    code = entry.main([*argv, "--model-dir", str(where / "model"), "--output-data-dir", str(where / "out"),
                       "--checkpoint-dir", str(where / "ckpt")])
    out = capsys.readouterr().out + "\n" + capsys.caplog.text
    return code, out, [m for m in (parse_metric_line(line) for line in out.splitlines()) if m]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model" / "model.pt", weights_only=True)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_artifact_holds_the_best_validation_epoch_not_the_last(dataset, job, capsys):
    code, out, lines = run(capsys, job / "best", *PEAKS_EARLY, "--training", str(dataset), "--epochs", "5")
    assert code == 0, out
    epochs = [m for m in lines if "epoch" in m]
    best = min(epochs, key=lambda m: m["valid_loss"])
    assert best["epoch"] < 5, "premise: validation peaks before the last epoch"
    selection = next(m for m in lines if "best_epoch" in m)
    assert selection == {"best_epoch": best["epoch"], "valid_loss": best["valid_loss"],
                         "valid_acc": best["valid_acc"]}
    summary = json.loads((job / "best" / "out" / "metrics.json").read_text())
    assert summary["best_epoch"] == summary["model_epoch"] == best["epoch"] and summary["epochs_done"] == 5
    assert summary["metrics"]["valid_loss"] == pytest.approx(best["valid_loss"], abs=1e-6)
    assert summary["hyperparameters"]["select"] == "best"
    # select=last keeps today's behaviour: the last epoch's weights, no selection line.
    code, out, last_lines = run(capsys, job / "last", *PEAKS_EARLY, "--training", str(dataset), "--epochs", "5",
                                "--select", "last")
    assert code == 0, out
    assert not any("best_epoch" in m for m in last_lines)
    assert [m for m in last_lines if "epoch" in m] == epochs  # the same training either way
    # The best artifact is exactly what a run that stops at the best epoch holds, and not the last epoch's.
    code, out, _ = run(capsys, job / "short", *PEAKS_EARLY, "--training", str(dataset), "--epochs",
                       str(int(best["epoch"])), "--select", "last")
    assert code == 0, out
    assert same(weights(job / "best"), weights(job / "short"))
    assert not same(weights(job / "best"), weights(job / "last"))
    # Only the test split's numbers differ between the two artifacts: it reports, it never selects.
    assert lines[-2]["test_loss"] != last_lines[-2]["test_loss"]


def test_early_stopping_stops_after_the_patience_and_keeps_the_best(dataset, job, capsys):
    code, out, lines = run(capsys, job / "es", *PEAKS_EARLY, "--training", str(dataset), "--epochs", "8",
                           "--patience", "1")
    assert code == 0, out
    epochs = [m for m in lines if "epoch" in m]
    best = min(epochs, key=lambda m: m["valid_loss"])
    assert len(epochs) == best["epoch"] + 1 < 8  # one epoch without improvement, then it stopped
    selection = next(m for m in lines if "best_epoch" in m)
    assert selection["stopped_epoch"] == len(epochs) and selection["best_epoch"] == best["epoch"]
    assert "early stopping: valid_loss has not improved for 1 epochs (patience 1" in out
    assert [p.name for p in (job / "es" / "ckpt").glob("best-epoch-*.pt")] == [f"best-epoch-{int(best['epoch'])}.pt"]


class StepSpy(Callback):
    """Records, for every training step, the epoch, which parameters train and each stage's rate."""

    def __init__(self):
        self.epoch, self.steps = 1, []

    def on_step_begin(self, ctx, mode, step):
        if mode == "train":
            trains = sorted({n.split(".")[0] for n, p in ctx.model.named_parameters() if p.requires_grad})
            rates = {}
            for g in ctx.optimizer.param_groups:
                rates.setdefault(g["stage"], g["lr"])
            self.steps.append((self.epoch, trains, rates, ctx.loss_fn.label_smoothing))

    def on_epoch_end(self, ctx, epoch, metrics):
        self.epoch = epoch + 1


def with_callback(callback: Callback):
    class Registered:
        def __enter__(self):
            callback_factories.register("recipe-test", lambda hp, out: [callback], overwrite=True)

        def __exit__(self, *exc):
            callback_factories.unregister("recipe-test")
    return Registered()


def test_fine_tune_trains_the_head_first_then_everything_with_lower_rates_for_early_stages(dataset, job, capsys):
    spy = StepSpy()
    with with_callback(spy):
        code, out, lines = run(capsys, job / "ft", *SMALL, "--weights", "IMAGENET1K_V1", "--training", str(dataset),
                               "--freeze", "full", "--freeze-epochs", "1", "--epochs", "3", "--schedule", "onecycle",
                               "--lr", "0.01", "--label-smoothing", "0.2")
    assert code == 0, out
    head, rest = [s for s in spy.steps if s[0] == 1], [s for s in spy.steps if s[0] > 1]
    assert len(head) == 3 and len(rest) == 6  # 24 images / 8 per step
    assert all(trains == ["fc"] for _, trains, _, _ in head)
    assert all(trains == ["bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"] for _, trains, _, _ in rest)
    order = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    for _, _, rates, _ in rest:
        assert [rates[s] for s in order] == sorted(rates[s] for s in order)
        assert rates["head"] / rates["stem"] == pytest.approx(100)  # lr_mult auto: 100 for a fine-tune
    head_rates = [rates["head"] for _, _, rates, _ in rest]
    assert len(set(head_rates)) == 6 and max(head_rates) <= 0.01  # stepped every batch, peaking at lr
    assert "feature cache: ON (the first 1 head-only epochs" in out  # the head phase ran on cached features
    assert "phase train, epochs 2-3: freeze policy 'full'" in out
    assert {s[3] for s in spy.steps} == {0.2}
    summary = json.loads((job / "ft" / "out" / "metrics.json").read_text())
    assert summary["settings"] == {"optimizer": "adamw", "weight_decay": 0.01, "lr_mult": 100.0,
                                   "batchnorm": "frozen"}


def test_label_smoothing_trains_but_validation_reports_plain_cross_entropy(dataset, job, capsys):
    class Modes(Callback):
        seen: set = set()

        def on_step_begin(self, ctx, mode, step):
            self.seen.add((mode, ctx.loss_fn.label_smoothing))

    spy = Modes()
    with with_callback(spy):
        code, out, lines = run(capsys, job / "ls", *SMALL, "--weights", "IMAGENET1K_V1", "--training", str(dataset),
                               "--epochs", "2", "--label-smoothing", "0.3", "--freeze", "last-block",
                               "--tta", "flip")
    assert code == 0, out
    assert spy.seen == {("train", 0.3), ("eval", 0.0)}
    # The selection line's valid_loss is the plain cross-entropy of the saved artifact on the validation photos
    # (with flip TTA: the mean probability of the photo and its mirror image).
    model = ResNetBreedModel.load(job / "ls" / "model")
    pre = Preprocess(resize=40, crop=32)
    photos = sorted((dataset / "valid").rglob("*.jpg"))
    x = torch.from_numpy(normalize(torch.stack([load_image(p, pre) for p in photos]).numpy(), pre))
    y = torch.tensor([model.labels_.folder_names.index(p.parent.name) for p in photos])
    probs = (model.predict_logits(x).softmax(-1) + model.predict_logits(x.flip(-1)).softmax(-1)) / 2
    expected = float(-probs[torch.arange(len(y)), y].log().mean())
    assert next(m for m in lines if "best_epoch" in m)["valid_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_resuming_mid_fine_tune_reproduces_the_uninterrupted_run(dataset, job, capsys):
    argv = [*SMALL, "--weights", "IMAGENET1K_V1", "--training", str(dataset), "--freeze", "full", "--freeze-epochs",
            "1", "--epochs", "3", "--schedule", "cosine", "--warmup-epochs", "0.5", "--label-smoothing", "0.1",
            "--augment", "rrc", "--lr", "0.01", "--clip-grad", "1.0"]
    code, out, reference = run(capsys, job / "ref", *argv)
    assert code == 0, out

    class Crash(Callback):
        """Kills the job at the first step of epoch 3, after epoch 2's checkpoint (inside the unfrozen phase)."""

        def __init__(self):
            self.epochs = 0

        def on_epoch_end(self, ctx, epoch, metrics):
            self.epochs = epoch

        def on_step_begin(self, ctx, mode, step):
            if self.epochs == 2 and mode == "train":
                raise RuntimeError("simulated kill")

    with with_callback(Crash()):
        code, out, _ = run(capsys, job / "resumed", *argv)
    assert code == 1 and "simulated kill" in out
    assert not (job / "resumed" / "model" / "config.json").exists()
    code, out, resumed = run(capsys, job / "resumed", *argv)
    assert code == 0, out
    assert "resuming from checkpoint" in out and "epoch 2 of 3 done" in out
    assert out.count("checkpoint saved") == 1  # only epoch 3 trained again
    assert resumed == reference
    assert same(weights(job / "resumed"), weights(job / "ref"))


def test_mixed_precision_bf16_trains_on_the_cpu(dataset, job, capsys):
    code, out, lines = run(capsys, job / "amp", *SMALL, "--weights", "IMAGENET1K_V1", "--training", str(dataset),
                           "--freeze", "last-block", "--epochs", "1", "--amp", "bf16", "--augment", "rrc-flip")
    assert code == 0, out
    assert "amp bf16" in out
    assert all(v == v and abs(v) < 1e6 for m in lines for v in m.values())  # finite numbers
    assert json.loads((job / "amp" / "out" / "metrics.json").read_text())["precision"] == "bf16"
    assert ResNetBreedModel.load(job / "amp" / "model").module_.fc.weight.dtype == torch.float32


def test_bad_input_fails_before_training_naming_the_value(dataset, job, capsys, tmp_path):
    cases = [
        (["--freeze", "full", "--freeze-epochs", "2", "--epochs", "2"],
         "freeze_epochs (--freeze-epochs) 2 would unfreeze"),
        (["--warmup-epochs", "2", "--epochs", "2"], "warmup_epochs (--warmup-epochs) 2 is longer than the run"),
        (["--patience", "0"], "'patience' must be >= 1, got 0"),
        (["--label-smoothing", "1"], "'label_smoothing' (--label-smoothing) must be < 1, got 1.0"),
    ]
    for argv, message in cases:
        code, out, lines = run(capsys, job / "bad", *SMALL, "--weights", "None", "--training", str(dataset), *argv)
        assert code == 2 and message in out and not lines, argv
        assert not (job / "bad" / "ckpt").exists()
    # Early stopping needs a validation channel: refused before training.
    code, out, lines = entry.main([*SMALL, "--weights", "None", "--train", str(dataset / "train"), "--test",
                                   str(dataset / "test"), "--patience", "2", "--model-dir", str(tmp_path / "m")]), \
        capsys.readouterr().out + capsys.caplog.text, None
    assert code == 2 and "patience (--patience) 2 needs a validation channel" in out
    assert "epoch=" not in out


def test_lr_find_on_a_job_writes_the_plot_and_refuses_an_empty_split(dataset, job, tmp_path):
    spec = TrainingJobSpec({"backbone": "resnet18", "weights": "IMAGENET1K_V1", "resize": 40, "crop": 32},
                           dataset, {"batch_size": 8, "num_workers": 0})
    result = lr_find(spec, num_it=25, plot=tmp_path / "lr.png")
    assert len(result.lrs) == len(result.losses) <= 25 and result.lrs == sorted(result.lrs)
    assert result.lrs[0] == pytest.approx(1e-7) and 1e-7 <= result.suggestion <= 10
    assert set(result.suggestions) == {"valley", "minimum", "steep"}
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.plot_path == str(tmp_path / "lr.png")
    empty = tmp_path / "empty"
    for split in ("train", "valid", "test"):
        (empty / split / "001.Affenpinscher").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train channel '.*empty/train' holds no images"):
        lr_find(TrainingJobSpec({"backbone": "resnet18", "weights": None}, empty), num_it=5)


def test_lr_find_from_the_command_line(dataset, job, tmp_path, capsys):
    from dogclf.cli import main

    code = main(["lr-find", str(dataset), "--backbone", "resnet18", "--weights", "None", "--resize", "40", "--crop",
                 "32", "--set", "batch_size=8", "--set", "num_workers=0", "--num-it", "12", "--plot",
                 str(tmp_path / "lr.png"), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out[out.index("{"):])
    assert data["suggestion"] in data["lrs"] and (tmp_path / "lr.png").is_file()
    assert main(["lr-find", str(dataset), "--weights", "None", "--num-it", "1"]) == 1
    assert "num_it must be an int >= 2, got 1" in capsys.readouterr().err
