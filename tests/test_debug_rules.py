"""Tensor rules (on smdebug's Rule API) and profiler rules: each one fires when it should and stays quiet otherwise.

Tensor-rule scenarios are real (tiny) training runs written by smdebug's hook through ``make_callbacks`` and read
back with ``create_trial``: a healthy run, a learning rate so high the loss diverges, random labels (flat loss),
zeroed gradients, memorised training batches (overfitting), imbalanced labels and a badly initialised layer.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from dogclf.debug import DebuggerConfig, RuleConfig
from dogclf.debug.rules import (ProfileData, ProfilerRule, TensorRule, evaluate_profile, evaluate_trial, get_rule,
                                list_rules, register_rule, unregister_rule)
from dogclf.errors import ConfigError, DuplicateError, PluginLoadError, UnknownRuleError

TENSOR_RULES = ["LossNotDecreasing", "Overfit", "VanishingGradient", "ExplodingTensor", "PoorWeightInitialization",
                "WeightUpdateRatio", "ClassImbalance"]
PROFILER_RULES = ["StepOutlier", "Dataloader", "CPUBottleneck", "IOBottleneck", "BatchSize", "LowGPUUtilization",
                  "GPUMemoryIncrease", "MaxInitializationTime"]


@contextlib.contextmanager
def job_env(root: Path, config: DebuggerConfig):
    """Lay out the config files a backend writes and point the environment at them, as the job process sees it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hook.json").write_text(json.dumps(config.hook_json()))
    env = {"SMDEBUG_CONFIG_FILE_PATH": str(root / "hook.json"), "DOGCLF_DEBUG": json.dumps(config.rules_json())}
    if config.profiler is not None:
        (root / "profiler.json").write_text(json.dumps(config.profiler.to_json()))
        env["SMPROFILER_CONFIG_PATH"] = str(root / "profiler.json")
    saved = {k: os.environ.get(k) for k in (*env, "SMPROFILER_CONFIG_PATH")}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train(root: Path, config: DebuggerConfig | None = None, **kw):
    from dogclf.debug import make_callbacks
    from dogclf.debug.testing import tiny_training

    config = config or DebuggerConfig(profiler=None, rules=("ClassImbalance",))
    with job_env(root / "config", config):
        callbacks = make_callbacks({"batch_size": 16, "num_workers": 0}, root / "out")
        ctx = tiny_training(callbacks, root / "out", **kw)
    return ctx, root / "out"


def _poor_model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    torch.nn.init.normal_(model[0].weight, std=1e-4)  # 10^6 times less variance than the next layer
    return model


SCENARIOS = {
    "healthy": {},
    "diverging": {"lr": 1e4},
    "flat": {"flat": True, "lr": 0.0},
    "zeroed_gradients": {"zero_grad": True},
    "memorising": {"flat": True, "train_batches": 2},
    "imbalanced": {"imbalance": 0.95},
    "poor_init": {"model": _poor_model},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each scenario trains once (lazily) and is shared by the rule tests."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            kw = dict(SCENARIOS[name])
            if callable(kw.get("model")):
                kw["model"] = kw["model"]()
            _, out = train(tmp_path_factory.mktemp(name), **kw)
            cache[name] = out / "tensors"
        return cache[name]

    return get


def finding(runs, scenario: str, rule: str, **params):
    (f,) = evaluate_trial(runs(scenario), [RuleConfig(rule, params)])
    assert f.rule == rule and f.kind == "tensor"
    return f


# -- tensor rules: (scenario that fires it, scenario where it stays quiet, parameters) ------------------------------
CASES = [
    ("LossNotDecreasing", "flat", "healthy", {}),
    ("LossNotDecreasing", "diverging", "healthy", {}),
    ("Overfit", "memorising", "healthy", {}),
    ("VanishingGradient", "zeroed_gradients", "healthy", {}),
    ("ExplodingTensor", "diverging", "healthy", {}),
    ("PoorWeightInitialization", "poor_init", "healthy", {}),
    ("WeightUpdateRatio", "diverging", "healthy", {}),
    ("WeightUpdateRatio", "zeroed_gradients", "healthy", {}),
    ("ClassImbalance", "imbalanced", "healthy", {"samples": 200}),
]


@pytest.mark.slow
@pytest.mark.parametrize("rule, fires, quiet, params", CASES)
def test_tensor_rule_fires_and_stays_quiet(runs, rule, fires, quiet, params):
    hit = finding(runs, fires, rule, **params)
    assert hit.triggered and hit.trigger_count >= 1 and hit.first_step is not None, hit
    assert hit.datapoints >= hit.trigger_count and hit.evidence and hit.recommendation and hit.description
    calm = finding(runs, quiet, rule, **params)
    assert not calm.triggered and calm.trigger_count == 0 and calm.datapoints > 0, calm


@pytest.mark.slow
def test_evidence_names_the_culprits(runs):
    assert "CrossEntropyLoss_output_0" in finding(runs, "diverging", "ExplodingTensor").evidence["tensors"]
    vanishing = finding(runs, "zeroed_gradients", "VanishingGradient").evidence["tensors"]
    assert all(name.startswith("gradient/") and value == 0.0 for name, value in vanishing.items())
    poor = finding(runs, "poor_init", "PoorWeightInitialization").evidence
    assert poor["variance_ratio"] > 1e4
    imbalance = finding(runs, "imbalanced", "ClassImbalance", samples=200).evidence
    assert imbalance["most_frequent"] == 0 and imbalance["imbalance_ratio"] > 10
    updates = finding(runs, "zeroed_gradients", "WeightUpdateRatio").evidence["ratios"]
    assert set(updates.values()) == {0.0}


@pytest.mark.slow
def test_parameters_change_the_verdict(runs):
    assert finding(runs, "healthy", "VanishingGradient", threshold=1e6).triggered
    assert not finding(runs, "flat", "LossNotDecreasing", diff_percent=0.0, increase_threshold_percent=1e9,
                       num_steps=1000).triggered
    assert finding(runs, "healthy", "LossNotDecreasing", mode="GLOBAL", num_steps=1, diff_percent=50).triggered
    assert not finding(runs, "diverging", "ExplodingTensor", tensor_regex="^gradient/NoSuchLayer").triggered


@pytest.mark.slow
def test_in_process_rule_stops_training(tmp_path):
    config = DebuggerConfig(profiler=None, rule_interval=5,
                            rules=(RuleConfig("ExplodingTensor", stop_training=True), "LossNotDecreasing"))
    ctx, out = train(tmp_path, config, lr=1e4, epochs=3)
    assert ctx.stop_training and ctx.stop_reason.startswith("rule ExplodingTensor triggered at step")
    steps = json.loads((out / "debug" / "steps.json").read_text())
    assert sum(s["mode"] == "train" for s in steps) < 3 * 20  # it did stop early
    written = json.loads((out / "debug" / "rules.json").read_text())
    assert written["stopped_by"] == ctx.stop_reason
    by_rule = {f["rule"]: f for f in written["findings"]}
    assert by_rule["ExplodingTensor"]["triggered"] and "LossNotDecreasing" in by_rule


@pytest.mark.slow
def test_in_process_rules_without_stop_let_training_finish(tmp_path):
    config = DebuggerConfig(profiler=None, rule_interval=3, rules=("ExplodingTensor",))
    ctx, out = train(tmp_path, config, lr=1e4, epochs=2)
    assert not ctx.stop_training
    written = json.loads((out / "debug" / "rules.json").read_text())
    assert written["stopped_by"] is None and written["findings"][0]["triggered"]


# -- registry ---------------------------------------------------------------------------------------------------
def test_builtins_are_registered_by_kind():
    assert set(list_rules("tensor")) >= set(TENSOR_RULES)
    assert set(list_rules("profiler")) >= set(PROFILER_RULES)
    assert get_rule("Overfit").defaults == {"tensor_regex": None, "use_losses_collection": True, "patience": 1,
                                            "ratio_threshold": 0.1, "start_step": 0}
    with pytest.raises(UnknownRuleError, match="unknown rule 'Overfitt'.*Overfit"):
        get_rule("Overfitt")
    with pytest.raises(ConfigError, match="kind"):
        list_rules("weird")


def test_builtins_are_declared_in_the_entry_point_group():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="dogclf.rules")}
    if not eps:
        pytest.skip("dogclf is not installed with its entry points (pip install -e .)")
    for name in TENSOR_RULES + PROFILER_RULES:
        assert eps[name].endswith(f":{name}")
        assert get_rule(name).__name__ == name


def test_documented_aws_parameters():
    assert get_rule("LossNotDecreasing").defaults == {"tensor_regex": None, "use_losses_collection": True,
                                                      "num_steps": 10, "diff_percent": 0.1,
                                                      "increase_threshold_percent": 5.0, "mode": None}
    assert get_rule("VanishingGradient").defaults == {"threshold": 1e-7}
    assert get_rule("ExplodingTensor").defaults == {"collection_names": None, "tensor_regex": None, "only_nan": False}
    assert get_rule("PoorWeightInitialization").defaults == {"activation_inputs_regex": None, "threshold": 10.0,
                                                             "distribution_range": 0.001, "patience": 5, "steps": 10}
    assert get_rule("WeightUpdateRatio").defaults == {"num_steps": None, "large_threshold": 10.0,
                                                      "small_threshold": 1e-8, "epsilon": 1e-9}
    assert get_rule("ClassImbalance").defaults["threshold_imbalance"] == 10.0
    assert get_rule("StepOutlier").defaults == {"threshold": 3.0, "mode": None, "n_outliers": 10, "stddev": 3.0}
    assert get_rule("CPUBottleneck").defaults == {"threshold": 50.0, "cpu_threshold": 90.0, "gpu_threshold": 10.0,
                                                  "patience": 1000}
    assert get_rule("MaxInitializationTime").defaults == {"threshold": 20.0}


@pytest.mark.slow
def test_user_rule_registered_by_name_runs_like_a_builtin(runs):
    import numpy as np

    @register_rule("HeadWeightsLarge")
    class HeadWeightsLarge(TensorRule):
        """Fires when any weight exceeds ``limit`` in absolute value."""

        defaults = {"limit": 10.0}

        def check(self, step):
            names = self.names_at(step, regex=r"weight$")
            if not names:
                return None
            biggest = max(float(np.abs(self.value(n, step)).max()) for n in names)
            return {"max_abs": biggest} if biggest > self.parameters["limit"] else False

    try:
        assert "HeadWeightsLarge" in list_rules("tensor")
        assert finding(runs, "diverging", "HeadWeightsLarge").triggered
        assert not finding(runs, "healthy", "HeadWeightsLarge").triggered
        with pytest.raises(DuplicateError, match="already registered"):
            register_rule("HeadWeightsLarge", type("Other", (HeadWeightsLarge,), {}))
        with pytest.raises(ConfigError, match="has no parameter"):
            finding(runs, "healthy", "HeadWeightsLarge", limt=1)
    finally:
        unregister_rule("HeadWeightsLarge")
    with pytest.raises(UnknownRuleError):
        get_rule("HeadWeightsLarge")


def test_register_rule_rejects_non_rules_and_plugins_load_from_entry_points(monkeypatch):
    from importlib.metadata import EntryPoint

    import dogclf._registry as registry_mod
    import dogclf.debug.rules as rules_mod

    with pytest.raises(ConfigError, match="must subclass"):
        register_rule("Nope", dict)
    module = type(os)("dogclf_test_rule_plugin")

    class SlowSteps(ProfilerRule):
        defaults = {"limit": 1.0}

        def analyse(self, data):
            for i, s in enumerate(data.steps):
                self.datapoints += 1
                if s["compute_time"] > self.parameters["limit"]:
                    self._fire(i, {"compute_time": s["compute_time"]})

    module.SlowSteps = SlowSteps
    monkeypatch.setitem(__import__("sys").modules, "dogclf_test_rule_plugin", module)
    eps = [EntryPoint("SlowSteps", "dogclf_test_rule_plugin:SlowSteps", "dogclf.rules"),
           EntryPoint("Broken", "dogclf_no_such_module:Rule", "dogclf.rules")]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps if group == "dogclf.rules" else [])
    monkeypatch.setattr(rules_mod._RULES, "_entries", dict(rules_mod._RULES._entries))  # restored afterwards
    rules_mod._RULES.refresh()
    try:
        assert "SlowSteps" in list_rules("profiler") and "Broken" not in list_rules()
        with pytest.raises(PluginLoadError, match="'Broken' .entry point dogclf_no_such_module:Rule"):
            get_rule("Broken")
        data = ProfileData(steps=[{"mode": "train", "step": 0, "data_time": 0.0, "compute_time": 2.0}])
        (f,) = evaluate_profile(data, ["SlowSteps"])
        assert f.triggered and f.evidence["compute_time"] == 2.0
    finally:
        unregister_rule("SlowSteps")


def test_empty_or_missing_trial_is_a_clear_error(tmp_path):
    from dogclf.errors import EmptyTrialError

    with pytest.raises(EmptyTrialError, match="does not exist"):
        evaluate_trial(tmp_path / "nope", ["Overfit"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyTrialError, match="no Debugger tensors"):
        evaluate_trial(tmp_path / "empty", ["Overfit"])
    assert issubclass(EmptyTrialError, FileNotFoundError)


# -- profiler rules on synthetic figures ---------------------------------------------------------------------------
def _steps(durations, data_time=0.0):
    return [{"mode": "train", "step": i, "data_time": data_time, "compute_time": d, "batch_size": 32}
            for i, d in enumerate(durations)]


def _system(n, cpu=20.0, gpu=None, gpu_memory=None, iowait=0.0, memory_ramp=0.0):
    out = []
    for i in range(n):
        s = {"t": float(i), "cpu": cpu, "cpu_per_core": [cpu, cpu], "memory": 30.0, "iowait": iowait}
        if gpu is not None:
            s["gpu"] = gpu
            s["gpu_memory"] = (gpu_memory or 0.0) + memory_ramp * i
        out.append(s)
    return out


PROFILER_CASES = [
    ("StepOutlier", {"n_outliers": 1}, ProfileData(steps=_steps([0.1] * 60 + [5.0, 6.0])),
     ProfileData(steps=_steps([0.1, 0.11, 0.09] * 20))),
    ("Dataloader", {}, ProfileData(steps=_steps([0.1]), meta={"cpu_count": 8, "num_workers": 1}),
     ProfileData(steps=_steps([0.1]), meta={"cpu_count": 8, "num_workers": 8})),
    ("CPUBottleneck", {"patience": 0}, ProfileData(system=_system(20, cpu=99.0)),
     ProfileData(system=_system(20, cpu=40.0))),
    ("IOBottleneck", {"patience": 0}, ProfileData(system=_system(20, iowait=80.0)),
     ProfileData(system=_system(20, iowait=2.0))),
    ("BatchSize", {"patience": 0, "window": 10}, ProfileData(system=_system(20, cpu=10.0, gpu=15.0, gpu_memory=10.0)),
     ProfileData(system=_system(20, cpu=10.0, gpu=95.0, gpu_memory=80.0))),
    ("LowGPUUtilization", {"patience": 0, "window": 10}, ProfileData(system=_system(20, gpu=20.0)),
     ProfileData(system=_system(20, gpu=90.0))),
    ("GPUMemoryIncrease", {"patience": 0, "window": 5}, ProfileData(system=_system(20, gpu=50.0, memory_ramp=3.0)),
     ProfileData(system=_system(20, gpu=50.0, gpu_memory=40.0))),
    ("MaxInitializationTime", {}, ProfileData(meta={"process_start": 0.0, "first_step": 30 * 60.0}),
     ProfileData(meta={"process_start": 0.0, "first_step": 60.0})),
]


@pytest.mark.parametrize("rule, params, fires, quiet", PROFILER_CASES, ids=[c[0] for c in PROFILER_CASES])
def test_profiler_rule_fires_and_stays_quiet(rule, params, fires, quiet):
    (hit,) = evaluate_profile(fires, [RuleConfig(rule, params)])
    assert hit.triggered and hit.trigger_count >= 1 and hit.kind == "profiler" and hit.evidence, hit
    (calm,) = evaluate_profile(quiet, [RuleConfig(rule, params)])
    assert not calm.triggered and calm.datapoints > 0, calm


def test_dataloader_rule_skips_cached_feature_training():
    data = ProfileData(steps=_steps([0.1]), meta={"cpu_count": 8, "num_workers": 0, "feature_cache": True})
    (f,) = evaluate_profile(data, ["Dataloader"])
    assert f.datapoints == 0 and not f.triggered


def test_gpu_rules_have_no_datapoints_without_a_gpu():
    data = ProfileData(system=_system(3000, cpu=99.0))
    for f in evaluate_profile(data, ["BatchSize", "LowGPUUtilization", "GPUMemoryIncrease"]):
        assert f.datapoints == 0 and not f.triggered
    (cpu,) = evaluate_profile(data, ["CPUBottleneck"])  # default patience 1000 skips the first samples
    assert cpu.datapoints == 2000 and cpu.triggered


def test_profiler_rule_parameters_are_checked():
    with pytest.raises(ConfigError, match="has no parameter"):
        evaluate_profile(ProfileData(), [RuleConfig("StepOutlier", {"sigma": 3})])
    with pytest.raises(ConfigError, match="must not exceed"):
        evaluate_profile(ProfileData(), [RuleConfig("Dataloader", {"min_threshold": 300})])
    with pytest.raises(ConfigError, match="tensor rule"):
        evaluate_profile(ProfileData(), ["Overfit"])


def test_findings_round_trip_through_json(runs=None):
    data = ProfileData(steps=_steps([0.1] * 60 + [5.0, 6.0]))
    (f,) = evaluate_profile(data, [RuleConfig("StepOutlier", {"n_outliers": 1})])
    again = type(f).from_dict(json.loads(json.dumps(f.to_dict())))
    assert again == f


@pytest.mark.slow
def test_frozen_parameters_are_saved_once_and_not_judged_by_weight_update_ratio(tmp_path):
    import torch

    def frozen_first_layer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        for p in model[0].parameters():
            p.requires_grad = False
        return model

    _, once = train(tmp_path / "once", epochs=1, train_steps=16, eval_steps=2, model=frozen_first_layer())
    _, always = train(tmp_path / "always", DebuggerConfig(profiler=None, rules=(), frozen_weights="always"),
                      epochs=1, train_steps=16, eval_steps=2, model=frozen_first_layer())
    from dogclf.debug import open_trial

    t_once, t_always = open_trial(once / "tensors"), open_trial(always / "tensors")
    assert t_once.tensor("Sequential_0.weight").steps() == [0]  # frozen: its first save step only
    assert len(t_always.tensor("Sequential_0.weight").steps()) > 1
    assert t_once.tensor("Sequential_2.weight").steps() == t_always.tensor("Sequential_2.weight").steps()
    (f,) = evaluate_trial(t_always, ["WeightUpdateRatio"])
    assert not f.triggered and f.datapoints > 0  # the frozen layer never updates, and is not judged
    with pytest.raises(ConfigError, match="frozen_weights"):
        DebuggerConfig(frozen_weights="never")
