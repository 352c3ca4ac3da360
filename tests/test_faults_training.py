"""Fault injection, training jobs: the entry point killed with SIGKILL at a fail point (:mod:`dogclf._faults`)
mid-epoch, mid-checkpoint-write and mid-feature-cache, and a Debugger job killed mid-epoch; then the same job again.

Each case states what survives the kill and asserts that the job started again ends as an uninterrupted run of the
same spec does: the same final weights (tensor by tensor, bit for bit), the same metrics and metric events (each
epoch once), and for the Debugger job the same trial (steps, tensor names, values), rule findings and step list.
The fail points are armed in the job's environment (``spec.environment``); tiny resnet18 jobs at 32 px on
synthetic data. ``pytest -m faults`` runs these with the other fault cases.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dogclf._faults import ENV
from dogclf.backends.local import LocalBackend
from dogclf.data import make_synthetic_dataset
from dogclf.errors import JobError
from dogclf.training import TrainingJobSpec
from dogclf.training.metrics import read_metric_events
from faultkit import (
    assert_ok,
    assert_same_weights,
    checkpoint_epoch,
    cli,
    processes_under,
    read_json,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EPOCHS = 3
MODEL = {"backbone": "resnet18", "weights": None, "resize": 36, "crop": 32}
TRAINING = {"epochs": EPOCHS, "batch_size": 4, "num_workers": 0, "lr": 0.001}
STEPS_PER_EPOCH = 6  # 24 train images, batches of 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-training") / "dogImages"
    make_synthetic_dataset(root, n_classes=3, per_class={"train": 8, "valid": 2, "test": 2}, image_size=36, seed=0)
    return root


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> LocalBackend:
    return LocalBackend(tmp_path_factory.mktemp("faults-home"))


@pytest.fixture(scope="module")
def full(dataset) -> TrainingJobSpec:
    """A full fine-tune (every weight, BatchNorm statistics and Adam's state change; no feature cache)."""
    return TrainingJobSpec({**MODEL, "freeze": "full"}, dataset, TRAINING)


@pytest.fixture(scope="module")
def full_reference(backend, full):
    return backend.train(full.with_params({}, job_name="full-reference"))


def _armed(spec: TrainingJobSpec, failpoints: str, job_name: str) -> TrainingJobSpec:
    return spec.with_params({}, job_name=job_name, environment={**spec.environment, ENV: failpoints})


def _killed(backend: LocalBackend, spec: TrainingJobSpec, failpoints: str, job_name: str) -> Path:
    """Run the job with ``failpoints`` armed: it fails, killed by SIGKILL at that point, and leaves no process."""
    with pytest.raises(JobError) as err:
        backend.train(_armed(spec, failpoints, job_name))
    job = backend.root / "jobs" / job_name
    point = failpoints.split("@")[0]
    assert err.value.status == "Failed" and "killed by SIGKILL" in err.value.reason, err.value.reason
    assert f"fail point {point} hit" in (job / "logs" / "train.log").read_text()
    # No job reported running once its process is gone: job.json and attach say Failed; nothing left running.
    assert read_json(job / "job.json")["status"] == "Failed"
    assert backend.attach(job_name).status == "Failed"
    assert processes_under(job) == []
    assert not (job / "model" / "config.json").exists()  # no model from a job that did not finish
    return job


def _rerun(backend: LocalBackend, spec: TrainingJobSpec, job_name: str) -> tuple[object, str, float]:
    """The same job again (fail points disarmed): its result, what it logged this time, and how long it took."""
    log = backend.root / "jobs" / job_name / "logs" / "train.log"
    before = log.stat().st_size
    started = time.monotonic()
    result = backend.train(spec.with_params({}, job_name=job_name))
    seconds = time.monotonic() - started
    with open(log, encoding="utf-8") as fh:
        fh.seek(before)
        return result, fh.read(), seconds


def _assert_same_as(result, reference) -> None:
    """Completed with the uninterrupted run's weights, metrics and metric events (each epoch once, in order)."""
    assert result.status == "Completed" and reference.status == "Completed"
    assert assert_same_weights(Path(result.model_artifact), Path(reference.model_artifact)) > 100  # every tensor
    assert result.metrics == reference.metrics
    assert result.metric_history == reference.metric_history
    # each epoch once, then the best-epoch selection, test loss, test accuracy
    assert [e.get("epoch") for e in result.metric_history] == [*range(1, EPOCHS + 1), None, None, None]
    assert "best_epoch" in result.metric_history[EPOCHS]
    summary = read_json(Path(result.output_dir) / "metrics.json")
    assert summary["metrics"] == read_json(Path(reference.output_dir) / "metrics.json")["metrics"]


def test_job_killed_mid_epoch_resumes_to_the_same_weights(backend, full, full_reference):
    """Killed at its 8th train step (the 2nd of epoch 2; epoch 1's checkpoint is taken): the job is Failed,
    saying so, with epoch 1's checkpoint, epoch 1's metric event and no model. Started again under its name it
    resumes from that checkpoint (epoch 2 is not counted twice) and ends as an uninterrupted run."""
    job = _killed(backend, full, f"training.loop.step@{STEPS_PER_EPOCH + 2}", "mid-epoch")
    assert checkpoint_epoch(job / "checkpoints" / "checkpoint.pt") == 1
    assert [e["epoch"] for e in read_metric_events(job / "output" / "data")] == [1]

    result, log, seconds = _rerun(backend, full, "mid-epoch")
    assert f"checkpoints/checkpoint.pt: epoch 1 of {EPOCHS} done" in log
    assert [f"checkpoint saved: epoch {e}" in log for e in range(1, EPOCHS + 1)] == [False, True, True]
    _assert_same_as(result, full_reference)
    assert processes_under(job) == []
    print(f"FAULT train-mid-epoch recover_s={seconds:.1f}")


def test_job_killed_mid_checkpoint_write_keeps_the_last_checkpoint(backend, full, full_reference):
    """Killed half-way through writing epoch 2's checkpoint: ``checkpoint.pt`` is still epoch 1's, whole; the
    unfinished write is a hidden temporary file that is not a checkpoint. Started again, the job removes it,
    resumes from epoch 1 and ends as an uninterrupted run."""
    import torch

    reference_size = (Path(full_reference.output_dir).parents[1] / "checkpoints" / "checkpoint.pt").stat().st_size
    mib = reference_size >> 20
    assert mib >= 8  # a full resnet18 with Adam's state: a write long enough to die in the middle of
    job = _killed(backend, full, f"training.checkpoint.write@{mib + mib // 2}", "mid-checkpoint")
    checkpoints = job / "checkpoints"
    assert checkpoint_epoch(checkpoints / "checkpoint.pt") == 1  # loads: the previous checkpoint, whole
    (partial,) = checkpoints.glob(".checkpoint.pt.tmp-*")
    partial_size = partial.stat().st_size
    assert (mib // 2 - 1) << 20 <= partial_size < reference_size
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        torch.load(partial, map_location="cpu", weights_only=True)
    assert [e["epoch"] for e in read_metric_events(job / "output" / "data")] == [1, 2]  # published, not saved

    result, log, seconds = _rerun(backend, full, "mid-checkpoint")
    assert f"removed {partial}, a checkpoint write that was killed midway" in log
    assert f"checkpoints/checkpoint.pt: epoch 1 of {EPOCHS} done" in log
    assert list(checkpoints.glob(".checkpoint.pt.tmp-*")) == []
    _assert_same_as(result, full_reference)
    print(f"FAULT train-mid-checkpoint recover_s={seconds:.1f} partial_mib={partial_size >> 20}")


def test_job_killed_mid_feature_cache_fill(tmp_path, dataset):
    """Head-only training on the shared feature cache, killed while the backbone fills the cache for the valid
    split (after the train split's file was written): the cache holds the train split's file, whole, and nothing
    under another split's name. Started again, the job reads the train features from the cache, computes the
    others, and ends as an uninterrupted run that computed them all."""
    import torch

    head = TrainingJobSpec({**MODEL, "freeze": "head"}, dataset, TRAINING)
    reference = LocalBackend(tmp_path / "reference").train(head.with_params({}, job_name="head"))
    backend = LocalBackend(tmp_path / "home")
    cache = backend.root / "cache" / "features"
    job = _killed(backend, head, f"training.features.batch@{STEPS_PER_EPOCH + 1}", "head")  # valid's 1st batch
    (train_file,) = cache.iterdir()  # no valid/test file, no temporary file
    assert train_file.name.endswith("-train.pt")
    cached = torch.load(train_file, map_location="cpu", weights_only=True)
    assert cached["features"].shape[0] == len(cached["labels"]) == 24
    assert not list((job / "checkpoints").glob("checkpoint.pt*"))  # no epoch ran

    result, log, seconds = _rerun(backend, head, "head")
    assert "feature cache hit for train" in log
    assert "feature cache miss for valid" in log and "feature cache miss for test" in log
    assert sorted(p.name.rsplit("-", 1)[1] for p in cache.iterdir()) == ["test.pt", "train.pt", "valid.pt"]
    _assert_same_as(result, reference)
    print(f"FAULT train-mid-feature-cache recover_s={seconds:.1f}")


# -- a Debugger job: `dogclf train --job-name NAME` ------------------------------------------------------------------
@pytest.fixture(scope="module")
def debug_args(dataset, backend) -> list:
    return ["train", dataset, "--root", backend.root, "--backbone", "resnet18", "--weights", "None", "--resize", "36",
            "--crop", "32", "--set", f"epochs={EPOCHS}", "--set", "batch_size=4", "--set", "num_workers=0", "--json"]


@pytest.fixture(scope="module")
def debug_reference(debug_args) -> dict:
    run = cli(*debug_args, "--job-name", "debug-reference")
    assert_ok(run)
    return json.loads(run.stdout)


def _trial_steps(tensors: Path) -> list[int]:
    return sorted(int(p.name[:12]) for p in tensors.glob("index/*/*.json"))


def _assert_same_debugger_output(got: dict, expected: dict) -> None:
    """The same trial (steps per mode, tensor names, every value), rule findings, step list and metrics."""
    import numpy as np
    from smdebug import modes

    from dogclf.debug import open_trial

    assert got["status"] == expected["status"] == "Completed"
    assert got["metrics"] == expected["metrics"] and got["rules_triggered"] == expected["rules_triggered"]
    assert_same_weights(Path(got["artifact"]), Path(expected["artifact"]))
    out, ref = Path(got["output_dir"]), Path(expected["output_dir"])
    a, b = open_trial(out / "tensors"), open_trial(ref / "tensors")
    assert a.steps() == b.steps() and len(a.steps()) > 2 * STEPS_PER_EPOCH
    assert [a.steps(mode=m) for m in (modes.TRAIN, modes.EVAL)] == [b.steps(mode=m) for m in (modes.TRAIN, modes.EVAL)]
    assert a.tensor_names() == b.tensor_names()
    for name in b.tensor_names():
        assert a.tensor(name).steps() == b.tensor(name).steps(), name
        for step in b.tensor(name).steps():
            assert np.array_equal(a.tensor(name).value(step), b.tensor(name).value(step)), (name, step)
    collections = "tensors/collections/000000000/worker_0_collections.json"
    assert read_json(out / collections) == read_json(ref / collections)
    assert read_json(out / "debug" / "rules.json") == read_json(ref / "debug" / "rules.json")

    def steps(folder: Path) -> list[tuple]:  # the step list without its timings
        return [(s["mode"], s["step"], s["epoch"], s["loss"], s["batch_size"])
                for s in json.loads((folder / "debug" / "steps.json").read_text())]

    assert steps(out) == steps(ref)
    assert Path(got["report"]).is_file()


def test_debugger_job_killed_mid_epoch_restarts_with_the_same_trial_and_report(backend, debug_args, debug_reference):
    """`dogclf train --job-name dbg` whose job is killed at its 8th train step (epoch 2): the command fails saying
    the job was killed; the trial holds the steps before the kill, some written after the last checkpoint. The same
    command again resumes the job from epoch 1's checkpoint and its trial at the checkpoint's step (later steps are
    written again, not twice), and reports what an uninterrupted run reports."""
    killed = cli(*debug_args, "--job-name", "dbg", failpoints=f"training.loop.step@{STEPS_PER_EPOCH + 2}")
    assert killed.returncode == 1 and "killed by SIGKILL" in killed.stderr, killed.tail()
    job = backend.root / "jobs" / "dbg"
    tensors = job / "output" / "data" / "tensors"
    first = STEPS_PER_EPOCH + 2  # epoch 1: 6 train and 2 valid steps, one forward pass each
    assert checkpoint_epoch(job / "checkpoints" / "checkpoint.pt") == 1
    assert max(_trial_steps(tensors)) >= first  # steps after the checkpoint were written
    assert (tensors / "claim.smd").exists()  # smdebug's claim, left by the killed process
    assert read_json(job / "job.json")["status"] == "Failed" and processes_under(job) == []

    started = time.monotonic()
    again = cli(*debug_args, "--job-name", "dbg")
    seconds = time.monotonic() - started
    assert_ok(again)
    log = (job / "logs" / "train.log").read_text()
    assert f"epoch 1 of {EPOCHS} done" in log and f"continues at step {first}: kept {first} saved steps" in log
    assert not (tensors / "claim.smd").exists()
    _assert_same_debugger_output(json.loads(again.stdout), debug_reference)
    print(f"FAULT debug-mid-epoch recover_s={seconds:.1f}")


def test_debugger_job_killed_before_its_first_checkpoint_starts_over(backend, debug_args, debug_reference):
    """Killed at its 3rd train step, before any checkpoint: the same command again removes the killed start's
    trial (it is the job's own; another folder would be refused) and runs the job from the start."""
    killed = cli(*debug_args, "--job-name", "dbg-early", failpoints="training.loop.step@3")
    assert killed.returncode == 1 and "killed by SIGKILL" in killed.stderr, killed.tail()
    job = backend.root / "jobs" / "dbg-early"
    assert checkpoint_epoch(job / "checkpoints" / "checkpoint.pt") == 0
    assert _trial_steps(job / "output" / "data" / "tensors")

    started = time.monotonic()
    again = cli(*debug_args, "--job-name", "dbg-early")
    seconds = time.monotonic() - started
    assert_ok(again)
    assert "ended before its first checkpoint; removed it, the job starts over" in \
        (job / "logs" / "train.log").read_text()
    _assert_same_debugger_output(json.loads(again.stdout), debug_reference)
    print(f"FAULT debug-before-checkpoint recover_s={seconds:.1f}")
