"""LocalBackend.train: real job processes through the sagemaker-training toolkit under an /opt/ml-style folder."""

from __future__ import annotations

import json
import os

import pytest

from dogclf.backends import get_backend
from dogclf.backends.local.training import attach
from dogclf.data import make_synthetic_dataset
from dogclf.errors import ConfigError, DataError, DataNotFoundError, DuplicateError, JobError, NotFoundError
from dogclf.models import ResNetBreedModel
from dogclf.models.testing import place_fake_weights
from dogclf.training import TrainingJobSpec, parse_metric_line
from faultkit import wait_until

HP = {"backbone": "resnet18", "weights": "IMAGENET1K_V1", "epochs": 2, "batch-size": 8, "resize": 40, "crop": 32,
      "lr": 0.01, "num-workers": 0}


def make_spec(hp, channels, **fields):
    """A spec from hyperparameters in the CLI's spelling."""
    return TrainingJobSpec.from_hyperparameters(hp, channels, **fields)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "dogImages"
    make_synthetic_dataset(root, n_classes=3, per_class={"train": 6, "valid": 2, "test": 2}, image_size=40, seed=2)
    return root


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return get_backend("local", root=tmp_path_factory.mktemp("dogclf-home"))


@pytest.fixture(autouse=True)
def torch_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "torch-home"
    if not (home / "hub").exists():
        place_fake_weights("resnet18", "IMAGENET1K_V1", home)
    monkeypatch.setenv("TORCH_HOME", str(home))


@pytest.mark.slow
def test_job_runs_under_the_container_contract(backend, dataset):
    lines = []
    hook_config = {"LocalPath": "/opt/ml/output/tensors", "HookParameters": {"save_interval": "5"}}
    spec = make_spec(HP, {"training": str(dataset)}, job_name="contract-1",
               debugger_hook_config=hook_config, profiler_config={"ProfilingIntervalInMilliseconds": 500},
                           environment={"DOGCLF_TEST_MARKER": "yes"})
    result = backend.train(spec, on_log_line=lines.append)
    job = backend.root / "jobs" / "contract-1"

    assert result.status == "Completed" and result.failure_reason is None
    # The folder is laid out like /opt/ml, with what SageMaker writes there.
    config = job / "input" / "config"
    hp = json.loads((config / "hyperparameters.json").read_text())
    # As SageMaker writes it: each value JSON-encoded (the spec's wire string, then json.dumps by the SDK).
    assert hp["lr"] == '"0.01"' and hp["batch-size"] == '"8"' and json.loads(hp["sagemaker_program"]) == \
        "dogclf/training/train.py"
    assert {k: json.loads(v) for k, v in hp.items() if not k.startswith("sagemaker_")} == spec.hyperparameters
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]  # as SageMaker names it
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"training"}
    assert (job / "input" / "data" / "training").resolve() == dataset.resolve()
    assert json.loads((config / "debughookconfig.json").read_text())["LocalPath"] == str(job / "output" / "tensors")
    assert json.loads((config / "profilerconfig.json").read_text()) == {"ProfilingIntervalInMilliseconds": 500}
    assert (job / "code" / "dogclf" / "training" / "train.py").is_file()
    log = (job / "logs" / "train.log").read_text()
    assert f"SMDEBUG_CONFIG_FILE_PATH={config / 'debughookconfig.json'}" in log
    assert f"SMPROFILER_CONFIG_PATH={config / 'profilerconfig.json'}" in log
    # Logs streamed to the caller; the metrics are the events the job published (exact values), and the log's
    # metric lines (what SageMaker's regexes read) say the same to their 6 decimals.
    assert lines and "\n".join(lines) + "\n" == log
    events = [json.loads(line) for line in (job / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    assert result.metric_history == events
    assert [m.get("epoch") for m in events] == [1, 2, None, None, None]
    # The selection event repeats the best epoch's validation metrics: the job's last valid_* are the artifact's.
    best = min(events[:2], key=lambda e: e["valid_loss"])
    assert events[2] == {"best_epoch": best["epoch"], "valid_loss": best["valid_loss"], "valid_acc": best["valid_acc"]}
    assert result.metrics["test_loss"] == events[3]["test_loss"] and result.metrics["valid_acc"] == \
        best["valid_acc"]
    parsed = [m for m in map(parse_metric_line, lines) if m]
    assert [m.keys() for m in parsed] == [m.keys() for m in events]
    assert all(pytest.approx(e[k], abs=1e-6) == p[k] for p, e in zip(parsed, events) for k in e)
    assert result.log_path == str(job / "logs" / "train.log") and result.duration_s > 0
    model = ResNetBreedModel.load(result.model_artifact)
    assert len(model.labels_) == 3 and model.config.weights == "IMAGENET1K_V1"
    assert json.loads((job / "output" / "data" / "metrics.json").read_text())["metrics"]["test_loss"] == \
        pytest.approx(result.metrics["test_loss"], abs=1e-6)
    # Features landed in the backend's shared cache.
    assert list((backend.root / "cache" / "features").glob("resnet18-*-train.pt"))
    # attach rereads the same result; a completed name cannot run again.
    assert attach(backend, "contract-1") == result == backend.attach("contract-1")
    with pytest.raises(DuplicateError, match="attach"):
        backend.train(spec)

    # A second job on the same data reuses the cached backbone features (wait=False handle API).
    handle = backend.train(make_spec({**HP, "lr": 0.02}, {"training": str(dataset)}, job_name="contract-2"),
                           wait=False)
    assert handle.job_name == "contract-2" and handle.status in ("InProgress", "Completed")
    second = handle.wait(timeout=300)
    assert handle.status == "Completed" and handle.metrics == second.metrics
    assert "feature cache hit for train" in open(second.log_path).read()
    assert second.metrics != result.metrics


@pytest.mark.slow
def test_failed_job_reports_the_reason(backend, dataset):
    spec = make_spec({**HP, "labels": "dogimages-133"}, {"training": str(dataset)}, job_name="fails-1")
    with pytest.raises(JobError) as err:
        backend.train(spec)
    assert err.value.status == "Failed" and err.value.job_id == "fails-1"
    assert "LabelMismatchError" in err.value.reason and "133 breeds" in err.value.reason
    result = attach(backend, "fails-1")
    assert result.status == "Failed" and result.model_artifact is None and result.failure_reason == err.value.reason
    # Running it again is allowed (a failed job restarts in its folder); without raising, the result says Failed.
    again = backend.train(spec, raise_on_failure=False)
    assert again.status == "Failed" and "LabelMismatchError" in again.failure_reason


@pytest.mark.slow
def test_stop_a_running_job(backend, dataset):
    spec = make_spec({**HP, "epochs": 500, "feature-cache": "off", "freeze": "full"},
                           {"training": str(dataset)}, job_name="stopped-1")
    handle = backend.train(spec, wait=False)
    # Until its first epoch is published, however long that takes here (the job has 500 to run): it must not end.
    wait_until(lambda: handle.metric_history or handle.done(), timeout=600)
    assert not handle.done() and handle.status == "InProgress", handle.log_path.read_text()[-2000:]
    assert handle.metrics.get("train_loss") is not None
    handle.stop(grace_s=5)
    assert handle.status == "Stopped"
    with pytest.raises(JobError) as err:
        handle.wait()
    assert err.value.status == "Stopped"
    assert attach(backend, "stopped-1").status == "Stopped"
    assert live_group_members(handle.pid) == []


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies left to a non-reaping init do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def test_bad_channels_fail_before_any_process_starts(backend, tmp_path, dataset):
    (tmp_path / "empty" / "train" / "001.Affenpinscher").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        backend.train(make_spec(HP, {"training": str(tmp_path / "empty")}, job_name="empty-1"))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        backend.train(make_spec(HP, {"training": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="S3"):
        backend.train(make_spec(HP, {"training": "s3://bucket/dogImages"}))
    with pytest.raises(ConfigError, match="instance"):
        backend.train(make_spec(HP, {"training": str(dataset)}, instance_count=2))
    with pytest.raises(ConfigError, match="TrainingJobSpec"):
        backend.train({"lr": 1})
    assert not (backend.root / "jobs" / "empty-1").exists()
    with pytest.raises(NotFoundError, match="no local training job 'never-ran'"):
        attach(backend, "never-ran")


# -- job.json stays true: jobs whose process is gone, orphans, pids reused ---------------------------------------------
def _fake_job(backend, name: str, **fields) -> "os.PathLike":
    """A job folder as a killed or running job leaves it: ``job.json`` claiming InProgress, one metric event."""
    import time

    from dogclf.backends.local._jobstate import write_state

    base = backend.root / "jobs" / name
    (base / "output" / "data").mkdir(parents=True)
    (base / "output" / "data" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    write_state(base, {"job_name": name, "status": "InProgress", "started": time.time() - 5,
                       "spec_hyperparameters": {"lr": "0.01"}, **fields})
    return base


def _ended_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_job_whose_process_is_gone_reads_as_failed_and_job_json_says_so(backend):
    from dogclf.backends.local._jobstate import process_fields

    base = _fake_job(backend, "gone-1", **process_fields(_ended_pid()))
    result = attach(backend, "gone-1")
    assert result.status == "Failed" and "ended without recording a result" in result.failure_reason
    assert result.metrics == {"train_loss": 0.5} and result.hyperparameters == {"lr": "0.01"}
    state = json.loads((base / "job.json").read_text())
    assert state["status"] == "Failed" and state["result"] == result.to_dict()  # written back, not only reported


def test_an_orphaned_job_is_killed_with_its_group_when_read(backend):
    """A job process (leading its group, with a child in it) whose caller is gone: nobody reads its output or
    records its end, so reading it kills the whole group and records it as Failed."""
    import signal
    import subprocess
    import sys

    from dogclf._process import group_members
    from dogclf.backends.local._jobstate import process_fields

    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \
            "time.sleep(600)"
    job = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    try:
        wait_until(lambda: len(group_members(job.pid)) == 2)
        _fake_job(backend, "orphan-1", **process_fields(job.pid, caller=_ended_pid()))
        result = attach(backend, "orphan-1")
        assert result.status == "Failed" and "orphaned" in result.failure_reason
        assert group_members(job.pid) == []
        assert job.wait(10) == -signal.SIGKILL
    finally:
        if job.poll() is None:
            job.kill()


def test_a_running_job_is_not_started_twice_and_a_reused_pid_is_not_the_job(backend, dataset):
    import subprocess
    import sys

    from dogclf.backends.local._jobstate import process_fields

    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        _fake_job(backend, "busy-1", **process_fields(job.pid))  # its caller: this process, alive
        assert attach(backend, "busy-1").status == "InProgress"
        with pytest.raises(DuplicateError, match="is running"):
            backend.train(make_spec(HP, {"training": str(dataset)}, job_name="busy-1"))
        assert job.poll() is None  # a running job with a live caller is left alone
    finally:
        job.kill()
        job.wait()
    assert attach(backend, "busy-1").status == "Failed"  # gone now: no longer reported running
    # A pid that now names another process (this one, started at another time) is not the job: nothing is killed.
    _fake_job(backend, "reused-1", pid=os.getpid(), pid_start=1, caller_pid=os.getpid(), caller_start=1)
    assert attach(backend, "reused-1").status == "Failed"
