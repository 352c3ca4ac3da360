"""Data-parallel jobs on the local backend: N processes under torchrun (gloo), SageMaker's torch_distributed contract.

The proofs of issue 17, on the synthetic set with resnet18 at 32 px, each against one process with the same global
batch size (4: batches of 4, 4, 4, 3 of the 15 train images; two processes take 2 + 2 images, 2 + 1 of the last)
and seed:

* the head trained on images (random flips drawn for the global batch, DDP over the whole network): the same
  metrics and weights to float rounding, ``TIGHT`` (observed ~1e-7), over 3 epochs, also after ``kill -9`` of one
  rank and a resume; the loss is convex in the head, so rounding does not grow;
* full fine-tuning with ``batchnorm="frozen"`` (eval-mode BatchNorm: the same on any number of processes;
  ``SyncBatchNorm``, the other exact choice, needs GPUs): one epoch, ``LOOSE``. Observed ~1e-7 as well, but a
  ReLU input within rounding of 0 switches sides between the two runs now and then (seen once in a sweep of
  learning rates: weights 3e-5 apart after an epoch), and the difference then grows with training: a tolerance
  that still tells frozen BatchNorm from batch statistics (0.1 and more apart here) without flaking;
* the head-only feature cache is computed in shares, one per process, and gathered.

SGD: Adam divides each step by the running gradient size, which turns rounding in near-zero gradients into steps of
about ``lr`` (Adam runs agree to about ``lr``, not to 1e-6).
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from dogclf.backends import get_backend
from dogclf.data import make_synthetic_dataset
from dogclf.errors import ConfigError
from dogclf.models.testing import place_fake_weights
from dogclf.training import Distribution, TrainingJobSpec
from dogclf.training import train as entry
from dogclf.training.metrics import read_metric_events

TIGHT = 1e-5
LOOSE = 1e-3

COMMON = {"backbone": "resnet18", "weights": "IMAGENET1K_V1", "resize": 40, "crop": 32, "batch-size": 4,
          "optimizer": "sgd", "num-workers": 0, "augment": "flip"}
HEAD = {**COMMON, "freeze": "head", "lr": 0.01, "epochs": 3}
FULL = {**COMMON, "freeze": "full", "batchnorm": "frozen", "lr": 0.001, "epochs": 1}
CACHED = {**COMMON, "freeze": "head", "augment": "none", "lr": 0.01, "epochs": 2}


def make_spec(hp, dataset, **fields):
    return TrainingJobSpec.from_hyperparameters(hp, {"training": str(dataset)}, **fields)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "dogImages"
    make_synthetic_dataset(root, n_classes=3, per_class={"train": 5, "valid": 2, "test": 2}, image_size=40, seed=2)
    return root


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch-home")
    place_fake_weights("resnet18", "IMAGENET1K_V1", home, calibrate_batchnorm=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


def run_in_process(base: Path, hp: dict, dataset: Path, cache: Path | None = None) -> dict:
    """One process of the entry point, here (saves an interpreter start); returns its metrics.json."""
    argv = [f"--{k}={v}" for k, v in hp.items()] + ["--training", str(dataset)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGEMAKER_BASE_DIR", str(base))
        for var in [k for k in os.environ if k.startswith("SM_") or k in ("RANK", "WORLD_SIZE")]:
            mp.delenv(var)
        if cache is not None:
            mp.setenv("DOGCLF_FEATURE_CACHE_DIR", str(cache))
        else:
            mp.delenv("DOGCLF_FEATURE_CACHE_DIR", raising=False)
        assert entry.main(argv) == 0
    doc = json.loads((base / "output" / "data" / "metrics.json").read_text())
    doc["events"] = read_metric_events(base / "output" / "data")  # what a job's metric_history holds
    return doc


def one_process(tmp_path_factory, dataset, hp):
    base = tmp_path_factory.mktemp("one-process")
    return run_in_process(base, hp, dataset), torch.load(base / "model" / "model.pt")


@pytest.fixture(scope="module")
def head_reference(tmp_path_factory, dataset, torch_home):
    """The one-process job the head-on-images jobs are compared with."""
    return one_process(tmp_path_factory, dataset, HEAD)


@pytest.fixture(scope="module")
def full_reference(tmp_path_factory, dataset, torch_home):
    """The one-process full fine-tune."""
    return one_process(tmp_path_factory, dataset, FULL)


def assert_same_training(result, reference, tolerance):
    """Every metric event and every weight (BatchNorm statistics included) within ``tolerance``."""
    doc, weights = reference
    expected = doc["events"]  # per-epoch metrics, the selection, test loss and accuracy
    assert expected[-2:] == [{"test_loss": doc["metrics"]["test_loss"]}, {"test_acc": doc["metrics"]["test_acc"]}]
    assert [e.get("epoch") for e in result.metric_history] == [e.get("epoch") for e in expected]
    for got, want in zip(result.metric_history, expected):
        assert got.keys() == want.keys(), (got, want)
        assert all(got[k] == pytest.approx(want[k], abs=tolerance) for k in want), (got, want)
    trained = torch.load(Path(result.model_artifact) / "model.pt")
    assert trained.keys() == weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(trained[key].float(), value.float(), rtol=0, atol=tolerance, msg=key)


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return ["X", "0", "0"]


def live(pid: int) -> bool:
    """Whether a process runs (a zombie left to a non-reaping init does not)."""
    return _stat(pid)[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and live(int(p)) and _stat(int(p))[2] == str(pgid)]


@pytest.mark.slow
def test_two_processes_fine_tune_what_one_process_fine_tunes(tmp_path, dataset, full_reference):
    backend = get_backend("local", root=tmp_path / "home", processes=2)
    lines: list[str] = []
    result = backend.train(make_spec(FULL, dataset, job_name="ddp-2"), on_log_line=lines.append)
    assert result.status == "Completed"
    assert_same_training(result, full_reference, LOOSE)
    job = tmp_path / "home" / "jobs" / "ddp-2"
    # The toolkit started torchrun as SageMaker's container does, and the job folder says so.
    hp = json.loads((job / "input" / "config" / "hyperparameters.json").read_text())
    assert json.loads(hp["sagemaker_torch_distributed_enabled"]) is True
    assert json.loads(hp["sagemaker_mpi_num_of_processes_per_host"]) == 2
    config = json.loads((job / "input" / "config" / "resourceconfig.json").read_text())
    assert config["hosts"] == ["algo-1"] and config["current_host"] == "algo-1"
    assert any("rank 1 of 2" in line and "gloo on cpu" in line for line in lines)
    # Rank 0 alone publishes: one metric line per event, and the summary knows the job's size.
    assert sum(line.startswith("epoch=") for line in lines) == 1
    assert json.loads((job / "output" / "data" / "metrics.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_kill_9_of_one_rank_fails_cleanly_and_the_job_resumes(tmp_path, dataset, head_reference):
    backend = get_backend("local", root=tmp_path / "home")
    spec = make_spec({**HEAD, "log-interval": 1}, dataset, job_name="ddp-killed",
                     distribution=Distribution(processes_per_host=2))
    pids: dict[int, int] = {}
    killed: list[int] = []

    def watch(line: str) -> None:
        found = re.search(r"\] rank (\d) of 2 .*pid (\d+)", line)
        if found:
            pids[int(found.group(1))] = int(found.group(2))
        # Rank 0 has finished the first step of epoch 2; epoch 2 needs rank 1 for each of its 4 steps.
        if "epoch 2 step 5:" in line and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    handle = backend.train(spec, wait=False, on_log_line=watch)
    failed = handle.wait(raise_on_failure=False)
    assert killed and failed.status == "Failed"
    job = tmp_path / "home" / "jobs" / "ddp-killed"
    reason = (job / "output" / "failure").read_text()
    assert reason.startswith(f"rank 1 of 2 (pid {pids[1]}) was killed by SIGKILL") and failed.failure_reason == reason
    # Torn down: no rank, nor anything of the job's process group, still runs.
    assert not any(live(pid) for pid in pids.values())
    assert group_members(handle.pid) == []
    assert not (job / "model" / "config.json").exists()
    done = torch.load(job / "checkpoints" / "checkpoint.pt")["epoch"]
    assert 1 <= done < 3 and [e["epoch"] for e in failed.metric_history] == list(range(1, done + 1))

    # Started again, it resumes from the last checkpoint and ends where the uninterrupted run ends.
    resumed = backend.train(spec)
    log = Path(resumed.log_path).read_text()
    assert re.search(rf"resuming from checkpoint .*: epoch {done} of 3 done", log)
    assert log.count("checkpoint saved: epoch") == 3  # the killed run's and the resumed run's, none twice
    assert_same_training(resumed, head_reference, TIGHT)


@pytest.mark.slow
def test_head_only_features_are_computed_in_shares_and_gathered(tmp_path, dataset, torch_home):
    backend = get_backend("local", root=tmp_path / "home", processes=2)
    lines: list[str] = []
    result = backend.train(make_spec(CACHED, dataset, job_name="ddp-head"), on_log_line=lines.append)
    assert result.status == "Completed"
    # Each process ran the backbone on its half of every split: 1/2 of the passes each.
    for rank, span in ((0, r"8 of 15 backbone features \(images 0-7\)"),
                       (1, r"7 of 15 backbone features \(images 8-14\)")):
        assert any(re.search(rf"\[rank {rank}/2\] feature cache miss for train: computed {span}", line)
                   for line in lines), rank
    cache = tmp_path / "home" / "cache" / "features"
    [train] = cache.glob("resnet18-*-train.pt")
    assert len(torch.load(train)["features"]) == 15
    # One process on the gathered cache: every split is a hit (no file rewritten), and the head trains to the same
    # metrics.
    written = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    doc = run_in_process(tmp_path / "one", CACHED, dataset, cache=cache)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == written and len(written) == 3
    assert doc["world_size"] == 1 and doc["feature_cache"] is True
    assert len(result.metric_history) == len(doc["events"]) == 5  # 2 epochs, the selection, test loss and accuracy
    for got, want in zip(result.metric_history, doc["events"]):
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=TIGHT) for k in want), \
            (got, want)


def test_bad_distributions_fail_before_any_process_starts(tmp_path, dataset):
    with pytest.raises(ConfigError, match="processes must be an int >= 1 .*got 0"):
        get_backend("local", root=tmp_path, processes=0)
    with pytest.raises(ConfigError, match="processes_per_host must be an int >= 1 .*got 0"):
        make_spec(FULL, dataset, distribution={"processes_per_host": 0})
    with pytest.raises(ConfigError, match="instance_count must be a positive int, got 0"):
        make_spec(FULL, dataset, instance_count=0)
    backend = get_backend("local", root=tmp_path / "home", processes=3)
    with pytest.raises(ConfigError, match=r"batch_size \(--batch-size\) 4 is not divisible by the world size 3"):
        backend.train(make_spec(FULL, dataset, job_name="odd"))
    with pytest.raises(ConfigError, match="runs one instance; spec.instance_count is 2"):
        backend.train(make_spec(FULL, dataset, instance_count=2, distribution=Distribution(processes_per_host=2)))
    on_cpu = {**FULL, "device": "cpu"}
    for hp, match in (({**on_cpu, "batchnorm": "sync"}, "batchnorm 'sync' with device 'cpu' cannot run"),):
        with pytest.raises(ConfigError, match=match):
            make_spec(hp, dataset, distribution=Distribution(processes_per_host=2))
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        with pytest.raises(ConfigError, match="batchnorm 'sync' with 2 local processes needs a GPU for each"):
            get_backend("local", root=tmp_path / "home", processes=2).train(
                make_spec({**FULL, "batchnorm": "sync"}, dataset, job_name="sync"))
        with pytest.raises(ConfigError, match="device 'cuda' with 2 local processes needs a GPU for each"):
            get_backend("local", root=tmp_path / "home", processes=2).train(
                make_spec({**FULL, "device": "cuda"}, dataset, job_name="cuda"))
    assert not (tmp_path / "home" / "jobs").exists()


RECIPE = {**COMMON, "freeze": "full", "freeze-epochs": 1, "epochs": 2, "augment": "rrc-flip", "batchnorm": "frozen",
          "schedule": "onecycle", "label-smoothing": 0.1, "tta": "flip", "clip-grad": 1.0, "select": "best",
          "lr": 0.005}


@pytest.mark.slow
def test_two_processes_run_the_recipe_as_one_does(tmp_path, tmp_path_factory, dataset, torch_home):
    """The recipe's parts under DistributedDataParallel: a head-only phase then the whole network (wrapped again
    at the switch), per-image RandomResizedCrop and flips drawn for the global batch, the one-cycle schedule,
    gradient clipping of the all-reduced gradient, label smoothing, flip TTA at evaluation and best-epoch
    selection (rank 0 alone writes the best weights file)."""
    reference = one_process(tmp_path_factory, dataset, RECIPE)
    backend = get_backend("local", root=tmp_path / "home", processes=2)
    result = backend.train(make_spec(RECIPE, dataset, job_name="ddp-recipe"))
    assert result.status == "Completed"
    assert_same_training(result, reference, LOOSE)
    assert result.metrics["best_epoch"] == reference[0]["metrics"]["best_epoch"]
