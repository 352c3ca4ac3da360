"""The training entry point, its metric lines and the job spec."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.data import make_synthetic_dataset
from dogclf.errors import ConfigError
from dogclf.models import ResNetBreedModel
from dogclf.models.testing import place_fake_weights
from dogclf.training import (
    METRIC_DEFINITIONS,
    Callback,
    TrainingConfig,
    TrainingJobResult,
    TrainingJobSpec,
    format_metric_line,
    parse_metric_line,
)
from dogclf.training import train as entry
from dogclf.training.metrics import read_metric_events
from faultkit import assert_same_weights

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "resnet18", "--batch-size", "8", "--resize", "40", "--crop", "32", "--num-workers", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "dogImages"
    make_synthetic_dataset(root, n_classes=4, per_class={"train": 6, "valid": 2, "test": 2}, image_size=40, seed=1)
    return root


@pytest.fixture
def job(tmp_path, monkeypatch):
    """An /opt/ml-like base folder and fake torchvision weights; returns the base folder."""
    base = tmp_path / "ml"
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DOGCLF_FEATURE_CACHE_DIR", raising=False)
    for var in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST", "SM_CHANNEL_TRAINING", "SM_MODEL_DIR",
                "SM_OUTPUT_DATA_DIR", "SM_OUTPUT_DIR", "SMDEBUG_CONFIG_FILE_PATH"):
        monkeypatch.delenv(var, raising=False)
    place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "torch")
    return base


def metric_lines(text: str) -> list[dict]:
    return [m for m in (parse_metric_line(line) for line in text.splitlines()) if m]


@pytest.fixture
def capsys(capsys, caplog):
    """stdout (metric lines) and the entry point's log records, read together as a job's log would be."""
    caplog.set_level(logging.INFO)
    capsys.caplog = caplog
    return capsys


def run_main(capsys, *argv: str) -> tuple[int, str]:
    capsys.caplog.clear()
    code = entry.main(list(argv))
    return code, capsys.readouterr().out + "\n" + capsys.caplog.text


# -- metric lines ------------------------------------------------------------------------------------------------
@given(st.dictionaries(st.sampled_from([d["Name"] for d in METRIC_DEFINITIONS]),
                       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
                       min_size=1), st.one_of(st.none(), st.integers(1, 500)))
@settings(max_examples=60, deadline=None)
def test_metric_lines_round_trip_through_the_regexes(metrics, epoch):
    line = format_metric_line(metrics, epoch=epoch)
    parsed = parse_metric_line(line)
    assert parsed.pop("epoch", None) == epoch
    assert parsed.keys() == metrics.keys()
    for name, value in metrics.items():
        assert math.isclose(parsed[name], value, abs_tol=1e-6)
        # Every definition is what SageMaker gets: exactly one capture group, matching only its own metric.
        regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
        assert re.compile(regex).groups == 1


def test_metric_regexes_do_not_confuse_names():
    assert parse_metric_line("test_loss=0.6566;") == {"test_loss": 0.6566}
    assert parse_metric_line("epoch=3; valid_loss=nan;")["epoch"] == 3
    assert parse_metric_line("no metrics here") is None


# -- spec --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp,match", [
    ({"lr": 0}, "lr"), ({"lr": -1e-3}, "lr"), ({"batch-size": 0}, "batch-size"), ({"batch_size": -4}, "batch-size"),
    ({"epochs": 0}, "epochs"), ({"backbone": "vgg16"}, "resnet50"), ({"freeze": "most"}, "last-block"),
    ({"optimizer": "lbfgs"}, "adam"), ({"weight-decay": -1}, "weight-decay"), ({"batch-size": 2.5}, "integer"),
    ({"lr": "fast"}, "number"), ({"batch_size": 8, "batch-size": 8}, "twice"), ({"lr": [1]}, "lr"),
])
def test_spec_rejects_bad_hyperparameters(hp, match):
    with pytest.raises(ConfigError, match=match):
        TrainingJobSpec.from_hyperparameters(hp, {"training": "/data"})


@pytest.mark.parametrize("kw,match", [
    (dict(channels={}), "channels"), (dict(channels={"valid": "/v"}), "train"),
    (dict(channels={"train": ""}), "train"), (dict(channels={"bad name": "/x"}), "bad name"),
    (dict(job_name="under_score"), "job_name"), (dict(instance_type="c5.large"), "instance_type"),
    (dict(instance_count=0), "instance_count"), (dict(metric_definitions=[{"Name": "x", "Regex": "x=(1)(2)"}]),
                                                 "one capture group"),
    (dict(max_run_s=0), "max_run_s"), (dict(max_wait_s=10, max_run_s=100), "max_wait_s"),
    (dict(environment={"A": 1}), "environment"), (dict(debugger_hook_config=[1]), "debugger_hook_config"),
])
def test_spec_rejects_bad_fields(kw, match):
    kw.setdefault("channels", {"training": "/data"})
    with pytest.raises(ConfigError, match=match):
        TrainingJobSpec({}, **kw)


def test_spec_is_typed_and_encodes_once_for_the_wire():
    spec = TrainingJobSpec({"weights": None}, {"train": "/t", "test": "/t2"},
                           {"batch_size": 64, "lr": 0.001, "deterministic": True}, job_name="trial-1")
    assert spec.training == TrainingConfig(batch_size=64, lr=0.001, deterministic=True)
    assert spec.model.weights is None and spec.params["batch_size"] == 64
    wire = spec.hyperparameters
    assert {k: wire[k] for k in ("batch-size", "lr", "weights", "deterministic")} == {
        "batch-size": "64", "lr": "0.001", "weights": "None", "deterministic": "true"}
    assert all(isinstance(v, str) for v in wire.values())
    # The wire decodes back to the same typed job: one encoder, one decoder.
    assert TrainingJobSpec.from_hyperparameters(wire, spec.channels, job_name="trial-1") == spec
    # The same spec from the CLI's spelling, a dict of typed values, or with_params: equal.
    assert spec.with_params({"batch-size": "32"}).training.batch_size == 32
    assert spec.with_params({"crop": 200}).model.preprocess.crop == 200
    with pytest.raises(ConfigError, match="unknown hyperparameter.*'bogus'"):
        spec.with_params({"bogus": 1})
    assert spec.metric_definitions == METRIC_DEFINITIONS and spec.metric_definitions is not METRIC_DEFINITIONS
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.job_name = "x"  # type: ignore[misc]
    result = TrainingJobResult("j", "Completed", {"test_loss": 1.0})
    assert TrainingJobResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# -- the entry point ---------------------------------------------------------------------------------------------
def test_entry_point_trains_tests_and_saves_the_artifact(dataset, job, capsys, monkeypatch):
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(dataset))
    monkeypatch.setenv("SM_MODEL_DIR", str(job / "model"))
    code, out = run_main(capsys, *SMALL, "--weights", "IMAGENET1K_V1", "--epochs", "2", "--lr", "0.01")
    assert code == 0, out
    lines = metric_lines(out)
    assert [m.get("epoch") for m in lines] == [1, 2, None, None]
    assert set(lines[0]) == {"epoch", "train_loss", "train_acc", "valid_loss", "valid_acc"}
    assert "test_loss" in lines[2] and "test_acc" in lines[3]
    assert re.search(r"^test_loss=[0-9.]+;$", out, re.M)
    assert "feature cache: ON" in out
    model = ResNetBreedModel.load(job / "model")
    assert model.labels_.folder_names == tuple(sorted(p.name for p in (dataset / "train").iterdir()))
    assert model.config.weights == "IMAGENET1K_V1" and model.config.preprocess.crop == 32
    saved = json.loads((job / "output" / "data" / "metrics.json").read_text())
    assert saved["metrics"]["test_loss"] == pytest.approx(lines[2]["test_loss"], abs=1e-6)
    assert (job / "checkpoints" / "checkpoint.pt").is_file()
    assert list((job / "checkpoints" / "features").glob("resnet18-*-train.pt"))
    # The entry point flushes denormals for speed during the run only: run in a caller's process, it must
    # hand the process back with IEEE subnormals intact (hypothesis and numpy depend on them).
    assert sys.float_info.min / 2 > 0.0


@pytest.mark.slow
def test_same_seed_same_result_and_other_seed_differs(dataset, job, capsys, tmp_path):
    def once(seed: str, where: str) -> list[dict]:
        code, out = run_main(capsys, *SMALL, "--weights", "None", "--epochs", "2", "--training", str(dataset),
                             "--seed", seed, "--checkpoint-dir", str(tmp_path / where),
                             "--model-dir", str(tmp_path / where / "m"), "--freeze", "last-block")
        assert code == 0, out
        return metric_lines(out)

    first, second, other = once("7", "a"), once("7", "b"), once("8", "c")
    assert first == second
    assert first != other


@pytest.mark.slow
def test_feature_cache_gives_the_same_training_as_the_full_network(dataset, job, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DOGCLF_FEATURE_CACHE_DIR", str(tmp_path / "shared-cache"))
    common = [*SMALL, "--weights", "IMAGENET1K_V1", "--epochs", "2", "--training", str(dataset), "--dropout", "0.2"]
    results = {}
    for mode in ("on", "off", "auto"):
        code, out = run_main(capsys, *common, "--feature-cache", mode, "--checkpoint-dir", str(tmp_path / mode),
                             "--model-dir", str(tmp_path / mode / "model"))
        assert code == 0, out
        results[mode] = (metric_lines(out), out)
    assert "feature cache miss" in results["on"][1]
    assert "feature cache: OFF" in results["off"][1]
    assert "feature cache hit" in results["auto"][1] and "feature cache miss" not in results["auto"][1]
    for a, b in zip(results["on"][0], results["off"][0]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=2e-4), k
    assert results["on"][0] == results["auto"][0]


class Recorder(Callback):
    def __init__(self, stop_after_epoch: int | None = None):
        self.calls: list[tuple] = []
        self.stop_after_epoch = stop_after_epoch
        self.loss_outputs: list[torch.Tensor] = []

    def on_train_begin(self, ctx):
        self.calls.append(("train_begin",))
        assert isinstance(ctx.loss_fn, torch.nn.CrossEntropyLoss)
        ctx.loss_fn.register_forward_hook(lambda m, i, o: self.loss_outputs.append(o.detach()))
        self.model, self.ctx = ctx.model, ctx

    def on_step_begin(self, ctx, mode, step):
        self.calls.append(("begin", mode, step))

    def on_step_end(self, ctx, info):
        self.calls.append(("end", info.mode, info.step, info.epoch))
        assert info.batch_size > 0 and info.loss >= 0 and info.data_time >= 0 and info.compute_time >= 0

    def on_epoch_end(self, ctx, epoch, metrics):
        self.calls.append(("epoch_end", epoch, sorted(metrics)))
        if self.stop_after_epoch == epoch:
            ctx.stop_training, ctx.stop_reason = True, "test stop"

    def on_train_end(self, ctx, metrics):
        self.calls.append(("train_end", sorted(metrics)))


@pytest.mark.parametrize("feature_cache", ["on", "off"])
def test_callbacks_see_the_loop_in_order_and_can_stop_it(dataset, job, capsys, monkeypatch, feature_cache):
    from dogclf.training.callbacks import callback_factories

    recorder = Recorder(stop_after_epoch=1)
    seen_hp = {}

    def make_callbacks(hyperparameters, output_data_dir):
        seen_hp.update(hyperparameters, output=output_data_dir)
        return [recorder]

    original = callback_factories.get("debug")
    callback_factories.register("debug", make_callbacks, overwrite=True)  # as a plug-in registers
    try:
        code, out = run_main(capsys, *SMALL, "--weights", "None", "--epochs", "3", "--training", str(dataset),
                             "--feature-cache", feature_cache, "--my-debug-option", "5")
    finally:
        callback_factories.register("debug", original, overwrite=True)
    assert code == 0, out
    assert seen_hp["my-debug-option"] == "5" and seen_hp["lr"] == "0.001" and seen_hp["batch-size"] == "8"
    assert recorder.ctx.training.batch_size == 8 and recorder.ctx.model_config.backbone == "resnet18"
    kinds = [c[0] for c in recorder.calls]
    assert kinds[0] == "train_begin" and kinds[-1] == "train_end"
    assert kinds.count("epoch_end") == 1  # stopped after epoch 1; test still ran
    assert [m.get("epoch") for m in metric_lines(out)] == [1, None, None]
    assert "training stopped early after epoch 1: test stop" in out
    train_steps = [c for c in recorder.calls if c[0] == "end" and c[1] == "train"]
    eval_steps = [c for c in recorder.calls if c[0] == "end" and c[1] == "eval"]
    assert [c[2] for c in train_steps] == list(range(3))  # 24 images / 8
    assert [c[2] for c in eval_steps] == list(range(2))  # one valid batch, one test batch
    # begin/end pairs alternate and every train step precedes the epoch's eval steps
    steps = [c for c in recorder.calls if c[0] in ("begin", "end")]
    assert all(a[0] == "begin" and b[0] == "end" and a[1:3] == b[1:3] for a, b in zip(steps[::2], steps[1::2]))
    assert recorder.calls.index(("epoch_end", 1, ["train_acc", "train_loss", "valid_acc", "valid_loss"])) \
        < recorder.calls.index(eval_steps[-1])
    assert recorder.calls[-1] == ("train_end", ["test_acc", "test_loss", "train_acc", "train_loss", "valid_acc",
                                                "valid_loss"])
    # The loss module ran for every step (a smdebug hook on it sees CrossEntropyLoss_output_0).
    assert len(recorder.loss_outputs) == len(train_steps) + len(eval_steps)
    expected = torch.nn.Linear if feature_cache == "on" else torch.nn.Module
    assert isinstance(recorder.model, expected)
    if feature_cache == "off":
        assert hasattr(recorder.model, "layer4")
    assert (job / "model" / "config.json").is_file()


@pytest.mark.parametrize("argv,match", [
    (["--labels", "dogimages-133"], "LabelMismatchError: label set 'dogimages-133' has 133 breeds"),
    (["--backbone", "resnet51"], "unknown backbone 'resnet51'"),
    (["--freeze", "some"], "unknown freeze policy 'some'"),
    (["--lr", "0"], "'lr' must be > 0"),
    (["--batch-size", "-1"], "'batch_size' (--batch-size) must be >= 1"),
    (["--optimizer", "rmsprop"], "'optimizer' is 'rmsprop'"),
    (["--feature-cache", "on", "--freeze", "full"], "feature_cache (--feature-cache) 'on' needs freeze='head'"),
])
def test_bad_input_fails_fast_with_a_clear_reason(dataset, job, capsys, argv, match):
    code, out = run_main(capsys, *SMALL, "--weights", "None", "--training", str(dataset), *argv)
    assert code == 2
    failure = (job / "output" / "failure").read_text()
    assert match in failure and match in out
    assert not (job / "model" / "config.json").exists()
    # Fast: refused before the network is built or an image decoded, and nothing written but the reason.
    assert "data: train=" not in out and "decoded" not in out and "feature cache" not in out
    assert not (job / "checkpoints").exists() and not (job / "output" / "data" / "metrics.jsonl").exists()


def test_data_problems_fail_fast(tmp_path, job, capsys):
    root = tmp_path / "d"
    (root / "train" / "001.Affenpinscher").mkdir(parents=True)
    (root / "test" / "001.Affenpinscher").mkdir(parents=True)
    code, out = run_main(capsys, *SMALL, "--training", str(root))
    assert code == 2 and "train channel" in out and "holds no images" in out
    code, out = run_main(capsys, *SMALL, "--training", str(tmp_path / "missing"))
    assert code == 2 and "DataNotFoundError" in out
    code, out = run_main(capsys, *SMALL, "--train", str(root / "train"))
    assert code == 2 and "no test data" in out


def test_corrupt_weights_and_checkpoint_fail_fast(dataset, job, capsys, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x00" * 100)
    code, out = run_main(capsys, *SMALL, "--training", str(dataset), "--weights", str(bad))
    assert code == 2 and "ArtifactError" in out and "corrupt" in out
    (job / "checkpoints").mkdir(parents=True, exist_ok=True)
    (job / "checkpoints" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    code, out = run_main(capsys, *SMALL, "--training", str(dataset), "--weights", "None")
    assert code == 2 and "checkpoint" in out and "corrupt" in out


@pytest.mark.slow
def test_resumes_after_kill_9_with_the_same_result(dataset, tmp_path, capsys, monkeypatch):
    """Run the entry point as a file (as SageMaker does), kill -9 it after its first checkpoint, start it again."""
    script = REPO / "dogclf" / "training" / "train.py"
    argv = [*SMALL, "--weights", "None", "--epochs", "4", "--training", str(dataset), "--freeze", "full",
            "--lr", "0.01"]

    def env_for(base: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "DOGCLF_FEATURE"))}
        env.update(SAGEMAKER_BASE_DIR=str(base), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return env

    # The uninterrupted reference runs in this process (saves a torch start-up; results must match across processes).
    for key, value in env_for(tmp_path / "ref").items():
        if key == "SAGEMAKER_BASE_DIR":
            monkeypatch.setenv(key, value)
    for var in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(var)
    code = entry.main(argv)
    reference = capsys.readouterr().out
    assert code == 0, reference
    expected = metric_lines(reference)

    base = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), *argv], env=env_for(base), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_part = []
    for line in proc.stdout:
        first_part.append(line)
        if "checkpoint saved: epoch 1" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(first_part)
    assert not (base / "model" / "config.json").exists()
    assert not list((base / "checkpoints").glob(".*tmp*"))

    resumed = subprocess.run([sys.executable, str(script), *argv], env=env_for(base), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    match = re.search(r"resuming from checkpoint .*: epoch (\d) of 4 done", resumed.stdout)
    assert match and int(match.group(1)) >= 1
    done = int(match.group(1))
    # Epochs before the checkpoint are replayed from it, not trained again; the outcome equals the uninterrupted run.
    assert resumed.stdout.count("checkpoint saved") == 4 - done
    assert metric_lines(resumed.stdout) == expected
    assert ResNetBreedModel.load(base / "model").labels_ == ResNetBreedModel.load(tmp_path / "ref" / "model").labels_
    # The same weights, tensor by tensor and bit for bit, and the same exact metrics and events (not rounded).
    assert assert_same_weights(base / "model", tmp_path / "ref" / "model") > 100
    out, ref = base / "output" / "data", tmp_path / "ref" / "output" / "data"
    assert read_metric_events(out) == read_metric_events(ref)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == \
        json.loads((ref / "metrics.json").read_text())["metrics"]


def test_decoding_on_the_fly_when_memory_is_short_trains_the_same(dataset, job, capsys, tmp_path, monkeypatch):
    common = [*SMALL, "--weights", "None", "--epochs", "1", "--training", str(dataset), "--freeze", "last-block",
              "--augment", "flip"]
    code, in_memory = run_main(capsys, *common, "--checkpoint-dir", str(tmp_path / "a"),
                               "--model-dir", str(tmp_path / "a" / "m"))
    assert code == 0 and "decoded 24 train images" in in_memory
    monkeypatch.setenv("DOGCLF_DECODE_CACHE_BYTES", "1000")
    code, lazy = run_main(capsys, *common, "--checkpoint-dir", str(tmp_path / "b"),
                          "--model-dir", str(tmp_path / "b" / "m"))
    assert code == 0 and "decoding on the fly" in lazy
    assert metric_lines(lazy) == metric_lines(in_memory)


def test_corrupt_image_is_named(tmp_path, job, capsys, dataset):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    victim = sorted((copy / "test").rglob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8\xff garbage")
    code, out = run_main(capsys, *SMALL, "--weights", "None", "--training", str(copy))
    assert code == 2 and "CorruptImageError" in out and victim.name in out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fold_batchnorm_computes_the_same_features_without_batchnorm(arch):
    import torchvision

    from dogclf.models import forward_features
    from dogclf.models.backbones.folding import fold_batchnorm

    torch.manual_seed(0)
    module = getattr(torchvision.models, arch)(weights=None)
    for m in module.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    module.eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = forward_features(module, x)
        for channels_last in (False, True):
            folded = fold_batchnorm(module, channels_last=channels_last)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
            inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            got = forward_features(folded, inp)
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())  # the original is untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
