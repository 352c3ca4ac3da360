"""Fault injection, tuning: ``dogclf tune ... --parallel 2`` killed with SIGKILL mid-trial (fail point
``hpo.runner.progress``, in the tuning process), with the warm pool of worker processes and without it; then the
same command again.

What must survive: no process is left (pool workers, job processes, the entry points they run); every job folder's
``job.json`` says how its job ended, none claims to run; ``attach`` agrees. The same command again runs no finished
trial a second time, starts every interrupted one again *under its own name* (no ``-r2`` job), resumed from its
own last checkpoint, and ends with the trials, weights (tensor by tensor) and metric events of an uninterrupted run
of the same command.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from dogclf.backends.local import LocalBackend
from dogclf.data import make_synthetic_dataset
from dogclf.training.metrics import read_metric_events
from faultkit import (
    assert_killed_at,
    assert_ok,
    assert_same_weights,
    checkpoint_epoch,
    cli,
    processes_under,
    read_json,
    run,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

COMMON = ["--backbone", "resnet18", "--weights", "None", "--resize", "32", "--crop", "32", "--set", "batch_size=4",
          "--set", "num_workers=0", "--space", "lr=0.001..0.1:log", "--strategy", "random", "--seed", "3",
          "--parallel", "2", "--json"]


def _dataset(root: Path, train: int) -> Path:
    make_synthetic_dataset(root, n_classes=3, per_class={"train": train, "valid": 4, "test": 4}, image_size=32, seed=0)
    return root


def _tune(data: Path, root: Path, *extra: str, **kwargs):
    return cli("tune", data, "--root", root, "--name", "hk", *COMMON, *extra, **kwargs)


def _interrupted_then_resumed(tmp_path: Path, data: Path, epochs: int, extra: list[str], kill_at: int,
                              pool: bool) -> dict:
    """Run the command uninterrupted (reference), then killed at the ``kill_at``-th epoch the tuning process sees
    a running trial publish, then again; assert what survives and what the rerun gives. Returns timings."""
    args = [*extra, "--set", f"epochs={epochs}"]
    reference_root, root = tmp_path / "reference", tmp_path / "home"
    reference = _tune(data, reference_root, *args)
    assert_ok(reference)

    killed = _tune(data, root, *args, failpoints=f"hpo.runner.progress@{kill_at}")
    assert_killed_at(killed, "hpo.runner.progress")
    tuner = int(re.search(r"sending SIGKILL to process (\d+)", killed.stderr).group(1))
    # No orphan: the pool workers or job processes, and the entry points they ran, die with the tuning process.
    gone_s = wait_until(lambda: processes_under(root) == [])
    jobs = root / "jobs"
    state = read_json(root / "experiments" / "hk" / "experiment.json")
    interrupted = [t["job_name"] for t in state["trials"] if t["status"] == "InProgress"]
    finished = [t["job_name"] for t in state["trials"] if t["status"] == "Completed"]
    assert interrupted, "the kill came after every trial had ended: no trial was interrupted"
    assert {p.name for p in jobs.iterdir()} == set(interrupted + finished)
    # No job reported running once its process is gone: each killed job recorded, on its way out, why it ended.
    backend = LocalBackend(root)
    for name in interrupted:
        job = read_json(jobs / name / "job.json")
        assert job["status"] == "Failed" and f"(pid {tuner}) is gone" in job["result"]["failure_reason"], job
        assert backend.attach(name).status == "Failed" and job["caller_pid"] == tuner
    done_epochs = {name: checkpoint_epoch(jobs / name / "checkpoints" / "checkpoint.pt") for name in interrupted}
    assert max(done_epochs.values()) >= 1  # at least one trial has work to resume
    started = {name: read_json(jobs / name / "job.json")["started"] for name in finished}
    logs = {name: (jobs / name / "logs" / "train.log").stat().st_size for name in interrupted}

    began = time.monotonic()
    rerun = _tune(data, root, *args)
    recover_s = time.monotonic() - began
    assert_ok(rerun)
    assert processes_under(root) == []
    assert ("in pool worker" in rerun.stderr) is pool and ("in pool worker" in killed.stderr) is pool
    trials = read_json(root / "experiments" / "hk" / "experiment.json")["trials"]
    assert [t["status"] for t in trials] == ["Completed"] * len(trials)
    assert [t["job_name"] for t in trials] == [f"hk-{i:03d}" for i in range(1, len(trials) + 1)]
    assert {p.name for p in jobs.iterdir()} == {t["job_name"] for t in trials}  # no trial repeated as -r2
    assert {t["job_name"]: t["attempts"] for t in trials} == {
        t["job_name"]: 2 if t["job_name"] in interrupted else 1 for t in trials}
    for name in finished:  # not run again
        assert read_json(jobs / name / "job.json")["started"] == started[name]
    for name, epoch in done_epochs.items():  # resumed from its own checkpoint, in its own folder
        with open(jobs / name / "logs" / "train.log", encoding="utf-8") as fh:
            fh.seek(logs[name])
            log = fh.read()
        resumed = re.findall(r"resuming from checkpoint (\S+): epoch (\d+) of (\d+) done", log)
        assert resumed == ([(str(jobs / name / "checkpoints" / "checkpoint.pt"), str(epoch), str(epochs))]
                           if epoch else []), (name, epoch, resumed)
    # The same trials, weights and metric events as the uninterrupted command.
    expected = read_json(reference_root / "experiments" / "hk" / "experiment.json")["trials"]
    assert [(t["params"], t["objective"]) for t in trials] == [(t["params"], t["objective"]) for t in expected]
    for t in trials:
        mine, theirs = jobs / t["job_name"], reference_root / "jobs" / t["job_name"]
        assert_same_weights(mine / "model", theirs / "model")
        assert read_metric_events(mine / "output" / "data") == read_metric_events(theirs / "output" / "data")
    got, want = json.loads(rerun.stdout), json.loads(reference.stdout)
    assert (got["best_job"], got["best_params"]) == (want["best_job"], want["best_params"])
    return {"gone_s": gone_s, "recover_s": recover_s, "resumed_from": done_epochs}


def test_tune_killed_mid_trial_with_the_warm_pool(tmp_path):
    """Head-only trials on the feature cache run in the warm pool (trial 1 alone fills the cache, then two at
    once); the tuning process is killed at the 24th epoch it sees published, when trial 1 has ended and the two
    others run in the pool's workers."""
    data = _dataset(tmp_path / "data" / "dogImages", train=40)
    timings = _interrupted_then_resumed(tmp_path, data, epochs=20, extra=["--trials", "3"], kill_at=24, pool=True)
    print(f"FAULT tune-pool gone_s={timings['gone_s']:.2f} recover_s={timings['recover_s']:.1f} "
          f"resumed_from={timings['resumed_from']}")


def test_tune_killed_mid_trial_without_the_pool(tmp_path):
    """Without the feature cache each trial is a job process of its own (the toolkit's runner and the entry point
    under it); the tuning process is killed at the 3rd epoch it sees published, with both trials running."""
    data = _dataset(tmp_path / "data" / "dogImages", train=8)
    timings = _interrupted_then_resumed(tmp_path, data, epochs=5, pool=False, kill_at=3,
                                        extra=["--trials", "2", "--set", "feature_cache=off"])
    print(f"FAULT tune-jobs gone_s={timings['gone_s']:.2f} recover_s={timings['recover_s']:.1f} "
          f"resumed_from={timings['resumed_from']}")


def test_tuning_killed_right_after_starting_a_trial_loses_none(tmp_path):
    """The runner killed just after starting its 3rd trial's job (test_hpo's in-test backend, whose jobs are
    threads of the tuning process, resuming jobs like the local backend): every started trial is in the state file.
    The same run again starts the interrupted ones first, under their own names, then the rest; each trial runs to
    completion once and none is lost."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from pathlib import Path\nfrom test_hpo import FakeBackend, make\n"
              "backend = FakeBackend(Path(sys.argv[1]), delay=0.05)\nbackend.resumes_jobs = True\n"
              "make(Path(sys.argv[1]), backend=backend, max_trials=5, max_parallel=2).run()\n"
              "print(' '.join(spec.job_name for spec in backend.started))\n")
    killed = run([sys.executable, "-c", script, tmp_path], failpoints="hpo.runner.launched@3")
    assert_killed_at(killed, "hpo.runner.launched")
    trials = read_json(tmp_path / "experiments" / "exp" / "experiment.json")["trials"]
    assert [t["job_name"] for t in trials] == ["exp-001", "exp-002", "exp-003"] and trials[2]["status"] == "InProgress"
    interrupted = [t["job_name"] for t in trials if t["status"] == "InProgress"]

    again = run([sys.executable, "-c", script, tmp_path])
    assert_ok(again)
    started = again.stdout.split()
    assert started == [*interrupted, "exp-004", "exp-005"]
    trials = read_json(tmp_path / "experiments" / "exp" / "experiment.json")["trials"]
    assert [(t["job_name"], t["status"]) for t in trials] == [(f"exp-{i:03d}", "Completed") for i in range(1, 6)]
    assert [t["attempts"] for t in trials] == [2 if t["job_name"] in interrupted else 1 for t in trials]
