"""Debugger configuration: validation, smdebug/SageMaker JSON shapes, SageMaker Debugger objects."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.debug import CollectionConfig, DebuggerConfig, ProfilerConfig, RuleConfig, seed_collections
from dogclf.errors import ConfigError, DogclfError, UnknownRuleError


def test_seed_collections_match_the_seed_notebook():
    colls = {c.name: c for c in seed_collections()}
    assert list(colls) == ["model_weights", "model_gradients", "biases_values", "LossOutput"]
    for name in ("model_weights", "model_gradients", "biases_values"):
        assert colls[name].interval("train") == 5 and colls[name].interval("eval") == 1
    assert colls["LossOutput"].include_regex() == "CrossEntropyLoss_output_0"
    assert colls["LossOutput"].interval("train") == colls["LossOutput"].interval("eval") == 1


def test_hook_json_is_smdebugs_format_and_smdebug_parses_it(tmp_path):
    cfg = DebuggerConfig()
    data = cfg.hook_json(local_path=str(tmp_path / "t"), s3_path="s3://b/p")
    assert data["LocalPath"] == str(tmp_path / "t") and data["S3Path"] == "s3://b/p"
    entries = {e["CollectionName"]: e["CollectionParameters"] for e in data["CollectionConfigurations"]}
    assert entries["model_weights"]["include_regex"] == "^(?!gradient).*weight"
    assert entries["model_weights"]["train.save_interval"] == "5"
    assert "loss_inputs" in entries  # ClassImbalance is configured by default and needs the loss inputs
    path = tmp_path / "hook.json"
    path.write_text(json.dumps(data))
    from smdebug import modes
    from smdebug.pytorch import Hook

    hook = Hook.create_from_json_file(str(path))
    assert hook.out_dir == str(tmp_path / "t")
    weights = hook.get_collection("model_weights")
    assert weights.save_config.get_save_config(modes.TRAIN).save_interval == 5
    assert weights.save_config.get_save_config(modes.EVAL).save_interval == 1
    assert "CrossEntropyLoss_output_0" in hook.get_collection("LossOutput").include_regex
    hook.close()


def test_no_class_imbalance_no_loss_inputs():
    cfg = DebuggerConfig(rules=("LossNotDecreasing",))
    assert [c.name for c in cfg.effective_collections()] == [c.name for c in seed_collections()]


@pytest.mark.parametrize("name, params, match", [
    ("model_weightz", {}, "unknown collection 'model_weightz'"),
    ("weights", {"save_interval": "0"}, "save_interval='0' must be >= 1"),
    ("weights", {"train.save_interval": -3}, "must be >= 1"),
    ("weights", {"eval.save_interval": "five"}, "not an integer"),
    ("weights", {"save_intervall": "5"}, "unknown parameter"),
    ("mine", {"include_regex": "([unclosed"}, "does not compile"),
    ("weights", {"reductions": "mean,median"}, "unknown reduction"),
    ("", {}, "non-empty"),
])
def test_bad_collections_are_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match) as info:
        CollectionConfig(name, params)
    assert isinstance(info.value, DogclfError) and isinstance(info.value, ValueError)


@settings(max_examples=40, deadline=None)
@given(train=st.integers(-5, 500), eval_=st.integers(-5, 500), as_str=st.booleans())
def test_intervals_accepted_iff_at_least_one(train, eval_, as_str):
    params = {"train.save_interval": str(train) if as_str else train, "eval.save_interval": eval_}
    if train >= 1 and eval_ >= 1:
        c = CollectionConfig("weights", params)
        assert (c.interval("train"), c.interval("eval")) == (train, eval_)
        assert c.to_hook_json()["CollectionParameters"]["train.save_interval"] == str(train)
    else:
        with pytest.raises(ConfigError):
            CollectionConfig("weights", params)


def test_custom_collection_with_regex_and_config_is_frozen():
    c = CollectionConfig("head", {"include_regex": "fc.*", "save_interval": 2})
    assert c.to_hook_json() == {"CollectionName": "head",
                                "CollectionParameters": {"include_regex": "fc.*", "save_interval": "2"}}
    with pytest.raises(TypeError):
        c.parameters["save_interval"] = "3"  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.name = "other"  # type: ignore[misc]


def test_debugger_config_validation():
    with pytest.raises(ConfigError, match="more than once"):
        DebuggerConfig(collections=(CollectionConfig("weights"), CollectionConfig("weights")))
    with pytest.raises(ConfigError, match="rule_interval"):
        DebuggerConfig(rule_interval=0)
    with pytest.raises(ConfigError, match="s3://"):
        DebuggerConfig(s3_output_path="/local")
    with pytest.raises(ConfigError, match="CollectionConfig"):
        DebuggerConfig(collections=("weights",))  # type: ignore[arg-type]
    cfg = DebuggerConfig(rules=("Overfit", {"name": "LossNotDecreasing", "parameters": {"num_steps": 5}}))
    assert cfg.rules[1] == RuleConfig("LossNotDecreasing", {"num_steps": 5})
    with pytest.raises(ConfigError, match="unknown keys"):
        RuleConfig.coerce({"name": "Overfit", "params": {}})


def test_profiler_config_round_trips_and_reads_sagemakers_format():
    p = ProfilerConfig(system_monitor_interval_millis=250, profile_start_step=2, profile_num_steps=4)
    data = p.to_json()
    assert data["ProfilingIntervalInMilliseconds"] == 250 and data["DisableProfiler"] is True
    assert ProfilerConfig.from_json(json.loads(json.dumps(data))) == p
    sm = {"ProfilingIntervalInMilliseconds": 500,
          "ProfilingParameters": {"DetailedProfilingConfig": "{\"StartStep\": 7, \"NumSteps\": 2}"}}
    assert ProfilerConfig.from_json(sm) == ProfilerConfig(500, True, 7, 2)
    for bad in (0, 10, True, "500"):
        with pytest.raises(ConfigError, match="system_monitor_interval_millis"):
            ProfilerConfig(system_monitor_interval_millis=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="profile_num_steps"):
        ProfilerConfig(profile_num_steps=-1)


def test_sagemaker_debugger_objects_have_the_seeds_request_shape():
    from dogclf.backends.sagemaker.debugger import sagemaker_debugger_kwargs

    kw = sagemaker_debugger_kwargs(DebuggerConfig(s3_output_path="s3://bucket/debug"))
    hook = kw["debugger_hook_config"]._to_request_dict()
    assert hook["S3OutputPath"] == "s3://bucket/debug"
    colls = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    assert colls["LossOutput"] == {"include_regex": "CrossEntropyLoss_output_0", "train.save_interval": "1",
                                   "eval.save_interval": "1"}
    assert colls["model_gradients"]["train.save_interval"] == "5"
    tensor_rules = [r for r in kw["rules"] if type(r).__name__ == "Rule"]
    profiler_rules = [r for r in kw["rules"] if type(r).__name__ == "ProfilerRule"]
    assert [r.name for r in tensor_rules] == ["LossNotDecreasing"]
    assert tensor_rules[0].rule_parameters["rule_to_invoke"] == "LossNotDecreasing"
    assert [r.name for r in profiler_rules] == ["ProfilerReport"]
    assert profiler_rules[0].rule_parameters["rule_to_invoke"] == "ProfilerReport"
    prof = kw["profiler_config"]._to_request_dict()
    assert prof["ProfilingIntervalInMilliseconds"] == 500 and not prof.get("DisableProfiler")
    assert "ProfilingParameters" not in prof  # no FrameworkProfile: smdebug's framework profiler fails on torch 2.x


def test_sagemaker_rule_parameters_pass_through_and_unknown_rules_fail():
    from dogclf.backends.sagemaker.debugger import sagemaker_debugger_kwargs

    cfg = DebuggerConfig(rules=(RuleConfig("Overfit", {"patience": 3}),), sagemaker_rules=("Overfit",), profiler=None)
    kw = sagemaker_debugger_kwargs(cfg)
    assert kw["rules"][0].rule_parameters["patience"] == "3"
    assert kw["profiler_config"]._to_request_dict().get("DisableProfiler") is True
    with pytest.raises(ConfigError, match="no built-in rule 'MyRule'"):
        sagemaker_debugger_kwargs(DebuggerConfig(sagemaker_rules=("MyRule",)))


def test_debug_trainer_builds_the_spec_without_running_anything(tmp_path):
    from dogclf.debug import DebugTrainer
    from dogclf.errors import NotFittedError

    from dogclf.training import TrainingJobSpec

    job = TrainingJobSpec({"backbone": "resnet18"}, tmp_path, {"lr": 0.01, "batch_size": 8, "epochs": 1},
                          environment={"EXTRA": "1"})
    trainer = DebugTrainer(job, DebuggerConfig(rules=(RuleConfig("Overfit", stop_training=True),)),
                           backend="local")
    assert not any(tmp_path.iterdir())
    spec = trainer.build_spec()
    assert spec.training == job.training and spec.model == job.model
    assert spec.debugger_hook_config["CollectionConfigurations"][0]["CollectionName"] == "model_weights"
    assert spec.profiler_config["ProfilingIntervalInMilliseconds"] == 500
    debug = json.loads(spec.environment["DOGCLF_DEBUG"])
    assert debug["rules"] == [{"name": "Overfit", "parameters": {}, "stop_training": True}]
    assert spec.environment["EXTRA"] == "1" and spec.debugger is trainer.config
    with pytest.raises(NotFittedError):
        trainer.report_
    with pytest.raises(NotFittedError):
        trainer.report(tmp_path / "r.html")
    with pytest.raises(UnknownRuleError, match="NoSuchRule"):
        DebugTrainer(job, DebuggerConfig(rules=("NoSuchRule",))).build_spec()
    with pytest.raises(ConfigError, match="has no parameter"):
        DebugTrainer(job, DebuggerConfig(rules=(RuleConfig("Overfit", {"patiense": 2}),))).build_spec()
    with pytest.raises(ConfigError, match="TrainingJobSpec, or a model with data="):
        DebugTrainer({"lr": 0.01}).build_spec()


def test_debug_trainer_on_sagemaker_backend_gets_estimator_kwargs(tmp_path):
    from dogclf.backends.sagemaker import SageMakerBackend
    from dogclf.debug import DebugTrainer

    from dogclf.models import ModelConfig

    backend = SageMakerBackend(role="arn:aws:iam::123456789012:role/x", bucket="b", region="us-east-1")
    model = ModelConfig(backbone="resnet18")
    spec = DebugTrainer(model, DebuggerConfig(sagemaker_debugger=True), data="s3://b/dogImages",
                        training={"lr": 0.01}, backend=backend).build_spec(backend)
    assert spec.debugger.sagemaker_debugger and spec.training.lr == 0.01 and spec.model == model
    assert spec.debugger_hook_config is not None and "dogclf-debug" in spec.hyperparameters
    assert spec.profiler_config is None and "DOGCLF_DEBUG" not in spec.environment
    off = DebugTrainer(model, data="s3://b/dogImages", backend=backend).build_spec(backend)
    assert not off.debugger.sagemaker_debugger and off.debugger_hook_config is None
