"""make_callbacks as the entry point uses it, the offline report, DebugTrainer end to end (fake and local backend)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dogclf.debug import DebuggerConfig, ProfilerConfig, RuleConfig
from dogclf.errors import EmptyTrialError, OutputExistsError
from dogclf.training import TrainingJobSpec

from test_debug_rules import PROFILER_RULES, TENSOR_RULES, job_env, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiled")
    config = DebuggerConfig(profiler=ProfilerConfig(system_monitor_interval_millis=50, profile_start_step=2,
                                                    profile_num_steps=2))
    ctx, out = train(root, config, epochs=2, train_steps=15)
    return out


def test_make_callbacks_is_empty_without_configuration(tmp_path, monkeypatch):
    from dogclf.debug import make_callbacks

    for key in ("SMDEBUG_CONFIG_FILE_PATH", "SMPROFILER_CONFIG_PATH", "DOGCLF_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    assert make_callbacks({}, tmp_path) == []
    assert not any(tmp_path.iterdir())


def test_existing_tensor_folder_is_a_clear_error_not_prepared_collections(tmp_path):
    from dogclf.debug import make_callbacks

    (tmp_path / "out" / "tensors").mkdir(parents=True)
    (tmp_path / "out" / "tensors" / "stale.txt").write_text("from an earlier run")
    with job_env(tmp_path / "config", DebuggerConfig(profiler=None)):
        with pytest.raises(OutputExistsError, match="already exists and is not empty") as info:
            make_callbacks({}, tmp_path / "out")
    assert "prepared_collections" not in str(info.value)
    assert isinstance(info.value, FileExistsError)
    assert (tmp_path / "out" / "tensors" / "stale.txt").read_text() == "from an earlier run"  # nothing lost


def test_bad_job_configuration_fails_before_training(tmp_path, monkeypatch):
    from dogclf.debug import make_callbacks
    from dogclf.errors import ConfigError, UnknownRuleError

    # monkeypatch's own context inside job_env's: each puts back what it found, in the right order (the other way
    # round monkeypatch would restore job_env's value after job_env removed it, leaking it into later tests).
    with job_env(tmp_path / "c1", DebuggerConfig(profiler=None)), monkeypatch.context() as mp:
        mp.setenv("DOGCLF_DEBUG", json.dumps({"rules": ["NoSuchRule"]}))
        with pytest.raises(UnknownRuleError, match="NoSuchRule"):
            make_callbacks({}, tmp_path / "o1")
        mp.setenv("DOGCLF_DEBUG", "{not json")
        with pytest.raises(ConfigError, match="not valid JSON"):
            make_callbacks({}, tmp_path / "o1")
        Path(os.environ["SMDEBUG_CONFIG_FILE_PATH"]).write_text("[1, 2]")
        mp.setenv("DOGCLF_DEBUG", "{}")
        with pytest.raises(ConfigError, match="JSON object"):
            make_callbacks({}, tmp_path / "o1")
    assert "DOGCLF_DEBUG" not in os.environ


def test_smdebugs_own_profiler_is_kept_off(tmp_path, monkeypatch):
    from dogclf.debug import make_callbacks

    sm = {"ProfilingIntervalInMilliseconds": 500,
          "ProfilingParameters": {"DetailedProfilingConfig": "{\"StartStep\": 3, \"NumSteps\": 1}"}}
    path = tmp_path / "profilerconfig.json"
    path.write_text(json.dumps(sm))
    monkeypatch.setenv("SMPROFILER_CONFIG_PATH", str(path))
    monkeypatch.delenv("SMDEBUG_CONFIG_FILE_PATH", raising=False)
    monkeypatch.delenv("DOGCLF_DEBUG", raising=False)
    callbacks = make_callbacks({}, tmp_path / "out")
    names = [type(c).__name__ for c in callbacks]
    assert names == ["StepTimer", "SystemMonitor", "TorchProfilerCallback", "RuleCallback"]
    assert callbacks[2].start_step == 3 and callbacks[2].num_steps == 1
    safe = json.loads(Path(os.environ["SMPROFILER_CONFIG_PATH"]).read_text())
    assert safe["DisableProfiler"] is True and Path(os.environ["SMPROFILER_CONFIG_PATH"]) != path


@pytest.mark.slow
def test_job_writes_everything_the_report_needs(profiled_run):
    debug = profiled_run / "debug"
    steps = json.loads((debug / "steps.json").read_text())
    assert sum(s["mode"] == "train" for s in steps) == 30 and sum(s["mode"] == "eval" for s in steps) == 8
    assert all(s["data_time"] >= 0 and s["compute_time"] > 0 for s in steps)
    system = json.loads((debug / "system.json").read_text())
    assert system["interval_millis"] == 50 and len(system["samples"]) >= 2
    sample = system["samples"][0]
    assert {"cpu", "cpu_per_core", "memory", "iowait", "disk_read", "net_recv"} <= set(sample)
    assert len(sample["cpu_per_core"]) == os.cpu_count()
    trace = json.loads((debug / "trace.json").read_text())
    assert trace["traceEvents"]
    top = json.loads((debug / "top_operators.json").read_text())
    assert top["steps"] == 2 and any(op["name"].startswith("aten::") for op in top["operators"])
    meta = json.loads((debug / "meta.json").read_text())
    assert meta["first_step"] >= meta["train_begin"] and meta["cpu_count"] == os.cpu_count()
    rules = json.loads((debug / "rules.json").read_text())
    assert {f["rule"] for f in rules["findings"]} == set(TENSOR_RULES) | set(PROFILER_RULES)


@pytest.mark.slow
def test_report_is_offline_html_with_pngs(profiled_run, tmp_path):
    from dogclf.debug import build_report

    report = build_report(profiled_run, tmp_path / "r" / "report.html", summary={"job name": "tiny"})
    page = report.html_path.read_text()
    assert report.html_path == tmp_path / "r" / "report.html"
    # renders without network: every image is a data URI, nothing is fetched
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3
    assert set(report.images) == {"loss", "system", "step_durations"}
    for png in report.images.values():
        assert png.read_bytes().startswith(PNG_MAGIC) and png.parent == report.html_path.parent
    # the step statistics the seed's ProfilerReport shows
    assert list(report.step_stats) == ["mean", "max", "p99", "p95", "p50", "min"]
    s = report.step_stats
    assert s["min"] <= s["p50"] <= s["p95"] <= s["p99"] <= s["max"] and s["min"] <= s["mean"] <= s["max"]
    for key in ("mean", "max", "p99", "p95", "p50", "min", "Step Durations in [s]"):
        assert f"<th>{key}</th>" in page
    # loss on two step axes, from the Debugger tensors
    assert len(report.loss["TRAIN"][0]) == 30 and len(report.loss["EVAL"][0]) == 8
    steps = json.loads((profiled_run / "debug" / "steps.json").read_text())
    assert report.loss["TRAIN"][1][:3] == pytest.approx([s["loss"] for s in steps if s["mode"] == "train"][:3])
    # rules table: every rule with its count, datapoints and parameters
    assert {f.rule for f in report.findings} == set(TENSOR_RULES) | set(PROFILER_RULES)
    for f in report.findings:
        assert f">{f.rule}</td>" in page
    assert "Number of times rule triggered" in page and "num_steps:10" in page
    assert "aten::" in page and "tiny" in page and "waiting for data" in page
    assert report.finding("Dataloader").triggered  # 0 workers on this machine's cores
    assert report.finding("Dataloader").rule in report.triggered


@pytest.mark.slow
def test_report_on_a_run_without_tensors_or_with_nothing(tmp_path):
    from dogclf.debug import build_report

    with pytest.raises(EmptyTrialError):
        build_report(tmp_path)
    _, out = train(tmp_path / "prof-only", DebuggerConfig(profiler=ProfilerConfig(profile_num_steps=0)),
                   epochs=1, train_steps=5)
    import shutil

    shutil.rmtree(out / "tensors")
    report = build_report(out)
    assert report.loss == {} and report.step_stats and "No data for train and eval loss" in \
        report.html_path.read_text()


class InProcessBackend:
    """A backend that runs the tiny loop in this process, under the job contract (config files + env)."""

    name = "inprocess"
    delivers_debugger_config = True  # it writes the spec's hook and profiler configs for the job, as SageMaker does

    def __init__(self, root: Path, **train_kw) -> None:
        self.root = root
        self.train_kw = train_kw
        self.specs = []

    def train(self, spec, **kwargs):
        from dogclf.debug import make_callbacks
        from dogclf.debug.testing import tiny_training
        from dogclf.training.spec import TrainingJobResult

        self.specs.append(spec)
        job = self.root / (spec.job_name or "job")
        config = job / "input" / "config"
        config.mkdir(parents=True)
        env = dict(spec.environment)
        (config / "debughookconfig.json").write_text(json.dumps(spec.debugger_hook_config))
        env["SMDEBUG_CONFIG_FILE_PATH"] = str(config / "debughookconfig.json")
        if spec.profiler_config:
            (config / "profilerconfig.json").write_text(json.dumps(spec.profiler_config))
            env["SMPROFILER_CONFIG_PATH"] = str(config / "profilerconfig.json")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            out = job / "output" / "data"
            ctx = tiny_training(make_callbacks(dict(spec.hyperparameters), out), out, **self.train_kw)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        return TrainingJobResult(job_name=spec.job_name or "job", status="Completed",
                                 metrics={"test_loss": 0.5}, output_dir=str(out),
                                 failure_reason=ctx.stop_reason, hyperparameters=dict(spec.hyperparameters))

    def deploy(self, artifact, **kwargs):
        raise NotImplementedError


@pytest.mark.slow
def test_debug_trainer_fit_then_report(tmp_path):
    from dogclf.debug import DebugTrainer

    backend = InProcessBackend(tmp_path / "jobs", lr=1e4)
    config = DebuggerConfig(rules=(RuleConfig("ExplodingTensor", stop_training=True), "LossNotDecreasing"),
                            profiler=ProfilerConfig(profile_num_steps=1), rule_interval=5)
    spec = TrainingJobSpec({"backbone": "resnet18"}, tmp_path, {"lr": 0.1, "batch_size": 16, "epochs": 2})
    trainer = DebugTrainer(spec, config, backend=backend, job_name="tiny-diverging")
    assert trainer.fit() is trainer
    assert backend.specs[0].debugger_hook_config["CollectionConfigurations"][0]["CollectionName"] == "model_weights"
    assert trainer.result_.job_name == "tiny-diverging"
    assert trainer.report_.stopped_by and "ExplodingTensor" in trainer.report_.stopped_by
    assert "ExplodingTensor" in trainer.report_.triggered
    assert [f.rule for f in trainer.findings_][:2] == ["ExplodingTensor", "LossNotDecreasing"]
    assert trainer.trial_path_.endswith("tensors")
    page = trainer.report_.html_path.read_text()
    assert "Training was stopped early" in page and "tiny-diverging" in page
    copy = trainer.report(tmp_path / "elsewhere" / "copy.html")
    assert copy.read_text() == page
    assert (tmp_path / "elsewhere" / "copy-loss.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_debug_trainer_reports_failed_jobs(tmp_path):
    from dogclf.debug import DebugTrainer
    from dogclf.errors import JobError
    from dogclf.training.spec import TrainingJobResult

    class Failing(InProcessBackend):
        def train(self, spec, **kwargs):
            return TrainingJobResult(job_name="bad", status="Failed", failure_reason="AlgorithmError: boom")

    with pytest.raises(JobError, match="boom") as info:
        DebugTrainer(TrainingJobSpec({"backbone": "resnet18"}, tmp_path), backend=Failing(tmp_path)).fit()
    assert info.value.status == "Failed" and info.value.job_id == "bad"


@pytest.mark.slow
def test_local_backend_entry_point_end_to_end(tmp_path, monkeypatch):
    """The real entry point under the local backend's /opt/ml contract writes a trial the report reads back."""
    from dogclf.backends.local import LocalBackend
    from dogclf.data import make_synthetic_dataset
    from dogclf.debug import DebugTrainer
    from dogclf.models.testing import place_fake_weights

    data = tmp_path / "dogImages"
    make_synthetic_dataset(data, n_classes=3, per_class={"train": 6, "valid": 2, "test": 2}, image_size=40, seed=1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "torch")
    config = DebuggerConfig(rule_interval=2, profiler=ProfilerConfig(system_monitor_interval_millis=100,
                                                                     profile_start_step=1, profile_num_steps=1))
    spec = TrainingJobSpec({"backbone": "resnet18", "weights": "IMAGENET1K_V1", "resize": 40, "crop": 32}, data,
                           {"lr": 0.01, "batch_size": 4, "epochs": 2, "num_workers": 0})
    trainer = DebugTrainer(spec, config, backend=LocalBackend(root=tmp_path / "home"), job_name="debug-e2e")
    try:
        trainer.fit()
    except Exception as exc:  # show the job's log on failure
        log = next((tmp_path / "home").rglob("*.log"), None)
        raise AssertionError(f"{exc}\n{log.read_text()[-4000:] if log else ''}") from exc
    report = trainer.report_
    # The job summary shows the epoch selection next to the metrics, and the recipe's hyperparameters.
    html = Path(report.html_path).read_text()
    assert "best_epoch" in html and "label-smoothing" in html and "freeze-epochs" in html
    assert trainer.result_.metrics["best_epoch"] in (1.0, 2.0)
    assert report.loss["TRAIN"][0] == list(range(len(report.loss["TRAIN"][0]))) and len(report.loss["TRAIN"][0]) == 10
    assert report.loss.get("EVAL")
    names = {f.rule for f in report.findings}
    assert names == set(TENSOR_RULES) | set(PROFILER_RULES)
    out = Path(trainer.result_.output_dir)
    assert (out / "tensors" / "training_job_end.ts").exists()
    assert (out / "debug" / "trace.json").is_file() and (out / "debug" / "rules.json").is_file()
    from dogclf.debug import open_trial

    trial = open_trial(out / "tensors")
    assert "CrossEntropyLoss_output_0" in trial.tensor_names()
    assert any(n.startswith("gradient/") for n in trial.tensor_names())
