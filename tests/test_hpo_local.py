"""HPOExperiment on the real local backend: every trial a separate training job of the shared entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dogclf.backends.local import LocalBackend
from dogclf.backends.local.tuning import uses_feature_cache
from dogclf.data import make_synthetic_dataset
from dogclf.errors import ConfigError
from dogclf.hpo import Categorical, Continuous, HPOExperiment
from dogclf.training import TrainingJobSpec

pytestmark = pytest.mark.slow

# Tiny and fast: resnet18 from random weights on 32-pixel synthetic images, one DataLoader process.
MODEL = {"backbone": "resnet18", "weights": None, "resize": 36, "crop": 32}
TRAINING = {"num_workers": 0, "lr": 0.01, "epochs": 2, "seed": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hpo-data") / "dogImages"
    make_synthetic_dataset(root, n_classes=3, per_class={"train": 4, "valid": 2, "test": 2}, image_size=32, seed=0)
    return root


def test_trials_run_as_separate_jobs_sharing_the_feature_cache(tmp_path: Path, dataset: Path) -> None:
    backend = LocalBackend(tmp_path / "home")
    spec = TrainingJobSpec(MODEL, dataset, TRAINING)
    assert uses_feature_cache(spec)
    # A grid, so that we know which trials fail: dropout 1.5 is refused when the trial's job is made.
    exp = HPOExperiment(spec, {"dropout": Categorical([0.0, 1.5]), "batch_size": Categorical([4, 8])},
                        "test_loss", strategy="grid", max_trials=10, max_parallel=2, backend=backend, name="grid")
    exp.run()
    df = exp.trials_
    assert df["status"].tolist() == ["Completed", "Completed", "Failed", "Failed"]
    failed = df[df["status"] == "Failed"]
    assert failed["dropout"].eq(1.5).all()
    assert failed["failure_reason"].str.contains("dropout").all()
    jobs = backend.root / "jobs"
    done = df[df["status"] == "Completed"]
    for _, row in done.iterrows():
        job = json.loads((jobs / row["job_name"] / "job.json").read_text())   # each trial has its own job folder
        assert job["spec_hyperparameters"]["batch-size"] == str(row["batch_size"])
        assert job["spec_hyperparameters"]["backbone"] == "resnet18"
    assert not any((jobs / n).exists() for n in failed["job_name"])  # refused before a job folder was made
    # Head-only trials ran in a warm pool: at most max_parallel worker processes served the jobs.
    pids = {json.loads((jobs / n / "job.json").read_text())["pid"] for n in done["job_name"]}
    assert 1 <= len(pids) <= 2
    for _, row in done.iterrows():
        result = json.loads((jobs / row["job_name"] / "job.json").read_text())["result"]
        assert row["objective"] == pytest.approx(result["metrics"]["test_loss"])
        assert [h["epoch"] for h in exp.state_.trial(int(row.name)).history] == [1, 2]
    # The first job computed the backbone features; the second only fitted a head on them.
    logs = [(jobs / name / "logs" / "train.log").read_text() for name in done["job_name"]]
    assert "feature cache miss" in logs[0] and "feature cache miss" not in logs[1]
    assert "feature cache hit" in logs[1]
    assert exp.best_params_["dropout"] == 0.0
    fig = exp.plot(tmp_path / "hpo.png")
    assert (tmp_path / "hpo.png").stat().st_size > 10_000 and len(fig.axes) == 3

    final = exp.train_best()
    assert final.status == "Completed" and final.job_name == "grid-best"
    config = json.loads((Path(final.model_artifact) / "config.json").read_text())
    assert config["backbone"] == "resnet18"
    assert final.hyperparameters["batch-size"] == str(exp.best_params_["batch_size"])

    # Without the feature cache every trial is a fresh job process, and the same hyperparameters give the same
    # result as in the pool (the entry point is deterministic on CPU).
    plain_spec = spec.with_params({"feature_cache": "off"})
    assert not uses_feature_cache(plain_spec)
    plain = HPOExperiment(plain_spec, {"dropout": Categorical([0.0]), "batch_size": Categorical([4])}, "test_loss",
                          strategy="grid", backend=backend, name="plain").run()
    row = plain.trials_.iloc[0]
    assert row["status"] == "Completed"
    assert json.loads((jobs / row["job_name"] / "job.json").read_text())["pid"] not in pids
    assert "feature cache: OFF" in (jobs / row["job_name"] / "logs" / "train.log").read_text()
    assert row["objective"] == pytest.approx(df.loc[0, "objective"], rel=1e-4)

    # Attaching from elsewhere sees the same results; running again starts no job.
    again = HPOExperiment.attach("grid", backend=LocalBackend(tmp_path / "home"))
    assert again.trials_.equals(df)
    before = sorted(p.name for p in jobs.iterdir())
    HPOExperiment(spec, {"dropout": Categorical([0.0, 1.5]), "batch_size": Categorical([4, 8])}, "test_loss",
                  strategy="grid", max_trials=10, max_parallel=2, backend=backend, name="grid").run()
    assert sorted(p.name for p in jobs.iterdir()) == before


def test_bad_spec_values_in_the_space_fail_the_trial_not_the_experiment(tmp_path: Path, dataset: Path) -> None:
    spec = TrainingJobSpec(MODEL, dataset, TRAINING)
    exp = HPOExperiment(spec, {"optimizer": Categorical(["rmsprop-typo"])}, strategy="grid",
                        backend=LocalBackend(tmp_path / "home"), name="bad").run()
    row = exp.trials_.iloc[0]
    assert row["status"] == "Failed" and "could not start" in row["failure_reason"]
    assert "rmsprop-typo" in row["failure_reason"]
    with pytest.raises(ConfigError, match="must be a dogclf.training.TrainingJobSpec, a model"):
        HPOExperiment({"lr": 0.1}, {"lr": Continuous(0.001, 0.1)})
