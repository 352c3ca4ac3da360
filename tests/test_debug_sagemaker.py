"""DebugTrainer on the SageMaker backend, against moto: what CreateTrainingJob carries, with and without Debugger."""

from __future__ import annotations

import json

import boto3
import pytest

from dogclf.debug import DebuggerConfig, DebugTrainer, ProfilerConfig, RuleConfig
from dogclf.debug.callbacks import HYPERPARAMETER, decode_settings, encode_settings
from dogclf.training import TrainingJobSpec

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
HP = {"lr": 0.001, "batch-size": 64, "epochs": 2, "backbone": "resnet50"}


def spec_of(channels):
    return TrainingJobSpec.from_hyperparameters(HP, channels)


@pytest.fixture
def backend(aws):
    import sagemaker

    from dogclf.backends import get_backend

    boto3.client("s3").create_bucket(Bucket="dogclf-debug-test")
    b = get_backend("sagemaker", role=ROLE, bucket="dogclf-debug-test", region="us-east-1")
    b.session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"))
    return b


def _send(backend, spec):
    sent = []
    backend.session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", lambda params, **kw: sent.append(dict(params)))
    backend.train(spec, logs=False)
    assert len(sent) == 1
    return sent[0]


def test_settings_pack_small_and_round_trip():
    cfg = DebuggerConfig(rules=(RuleConfig("Overfit", {"patience": 2}, stop_training=True),))
    settings = dict(cfg.rules_json(), hook=cfg.hook_json(), profiler=cfg.profiler.to_json())
    packed = encode_settings(settings)
    assert packed.startswith("z1:") and len(packed) < 2500 and all(c.isalnum() or c in "-_=:" for c in packed)
    assert decode_settings(packed) == json.loads(json.dumps(settings))
    assert decode_settings(json.dumps({"rules": []})) == {"rules": []}


def test_without_debugger_everything_travels_in_one_hyperparameter(backend, tmp_path):
    config = DebuggerConfig(profiler=ProfilerConfig(profile_start_step=2, profile_num_steps=2))
    trainer = DebugTrainer(spec_of("s3://dogclf-debug-test/dogImages"), config, backend=backend,
                           job_name="dogclf-debug-moto-1")
    spec = trainer.build_spec(backend)
    assert spec.debugger_hook_config is None and spec.profiler_config is None and spec.environment == {}
    request = _send(backend, spec)
    # no Debugger options: the job runs on accounts where Debugger is closed
    assert not request.get("DebugHookConfig") and not request.get("DebugRuleConfigurations")
    assert not request.get("ProfilerRuleConfigurations")
    assert all(len(v) <= 512 for v in (request.get("Environment") or {}).values())
    packed = request["HyperParameters"][HYPERPARAMETER]
    assert len(packed) <= 2500
    settings = decode_settings(json.loads(packed))  # the SDK JSON-encodes hyperparameter values
    assert [c["CollectionName"] for c in settings["hook"]["CollectionConfigurations"]][:4] == [
        "model_weights", "model_gradients", "biases_values", "LossOutput"]
    assert settings["profiler"]["DogclfProfiler"] == {"Enabled": True, "StartStep": 2, "NumSteps": 2}
    assert [r["name"] for r in settings["rules"]][0] == "LossNotDecreasing"


def test_the_job_side_reads_the_packed_hyperparameter(tmp_path, monkeypatch):
    from dogclf.debug import make_callbacks

    for key in ("SMDEBUG_CONFIG_FILE_PATH", "SMPROFILER_CONFIG_PATH", "DOGCLF_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    cfg = DebuggerConfig(rule_interval=7)
    packed = encode_settings(dict(cfg.rules_json(), hook=cfg.hook_json(), profiler=cfg.profiler.to_json()))
    callbacks = make_callbacks({HYPERPARAMETER: packed}, tmp_path / "out")
    names = [type(c).__name__ for c in callbacks]
    assert names == ["HookCallback", "StepTimer", "SystemMonitor", "TorchProfilerCallback", "RuleCallback"]
    assert callbacks[0].out_dir == tmp_path / "out" / "tensors" and callbacks[-1].interval == 7


def test_with_debugger_the_estimator_gets_the_seeds_objects(backend):
    config = DebuggerConfig(sagemaker_debugger=True, s3_output_path="s3://dogclf-debug-test/debug")
    spec = DebugTrainer(spec_of("s3://dogclf-debug-test/dogImages"), config, backend=backend,
                        job_name="dogclf-debug-moto-2").build_spec(backend)
    request = _send(backend, spec)
    hook = request["DebugHookConfig"]
    assert hook["S3OutputPath"] == "s3://dogclf-debug-test/debug"
    colls = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    assert colls["LossOutput"]["include_regex"] == "CrossEntropyLoss_output_0"
    assert colls["model_weights"] == {"train.save_interval": "5", "eval.save_interval": "1",
                                      "include_regex": "^(?!gradient).*weight"}
    rules = request["DebugRuleConfigurations"]
    assert [r["RuleConfigurationName"] for r in rules] == ["LossNotDecreasing"]
    assert rules[0]["RuleParameters"]["rule_to_invoke"] == "LossNotDecreasing"
    profiler_rules = request["ProfilerRuleConfigurations"]
    assert [r["RuleParameters"]["rule_to_invoke"] for r in profiler_rules] == ["ProfilerReport"]
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert "ProfilingParameters" not in request["ProfilerConfig"]  # no FrameworkProfile on torch 2.x
    assert HYPERPARAMETER in request["HyperParameters"]  # the in-process rules run regardless


@pytest.mark.slow
def test_trial_reads_back_from_s3(aws, tmp_path):
    """create_trial on an s3:// URI (smdebug's S3 trial) through dogclf's open_trial and evaluate_trial."""
    from test_debug_rules import train

    from dogclf.debug import open_trial
    from dogclf.debug.rules import evaluate_trial
    from dogclf.errors import EmptyTrialError

    _, out = train(tmp_path, lr=1e4, epochs=1, train_steps=10, eval_steps=2)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dogclf-trials")
    for path in (out / "tensors").rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "dogclf-trials", f"job-1/debug-output/{path.relative_to(out / 'tensors')}")
    trial = open_trial("s3://dogclf-trials/job-1/debug-output")
    assert "CrossEntropyLoss_output_0" in trial.tensor_names()
    (finding,) = evaluate_trial(trial, ["ExplodingTensor"])
    assert finding.triggered
    with pytest.raises(EmptyTrialError, match="no Debugger tensors"):
        open_trial("s3://dogclf-trials/nothing-here")
    with pytest.raises(EmptyTrialError, match="cannot read"):
        open_trial("s3://no-such-bucket-dogclf/x")


from hypothesis import given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=20)


@hsettings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), _json, max_size=5))
def test_packed_settings_round_trip_any_json_object(data):
    packed = encode_settings(data)
    assert packed.isascii() and " " not in packed and '"' not in packed
    assert decode_settings(packed) == data


@pytest.mark.slow
def test_fit_reads_a_sagemaker_style_output_from_s3(aws, tmp_path, monkeypatch):
    """A job whose output data folder comes back as s3://.../output/output.tar.gz (as on SageMaker)."""
    import tarfile

    from test_debug_rules import train

    from dogclf.training.spec import TrainingJobResult

    _, out = train(tmp_path / "job", DebuggerConfig(profiler=ProfilerConfig(profile_num_steps=1)), lr=1e4,
                   epochs=1, train_steps=12, eval_steps=2)
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for child in out.iterdir():
            tar.add(child, arcname=child.name)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dogclf-out")
    s3.upload_file(str(archive), "dogclf-out", "training/sm-job-1/output/output.tar.gz")
    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path / "home"))

    from dogclf.backends.sagemaker import SageMakerBackend

    class S3Backend(SageMakerBackend):
        """SageMaker's backend, whose job has already run: only its output (on the moto server) is real."""

        def train(self, spec, **kwargs):
            return TrainingJobResult(job_name="sm-job-1", status="Completed",
                                     output_dir="s3://dogclf-out/training/sm-job-1/output")

        def debugger_tensors(self, result):
            raise AssertionError("dogclf's own tensors are in the output: nothing to look up")

    backend = S3Backend(role="arn:aws:iam::123456789012:role/x", region="us-east-1")
    trainer = DebugTrainer(spec_of("s3://dogclf-out/dogImages"), backend=backend).fit()
    local = tmp_path / "home" / "outputs" / "sm-job-1"
    assert (local / "tensors").is_dir() and (local / "debug" / "steps.json").is_file()
    assert trainer.report_.html_path == local / "report" / "debug-report.html"
    assert "ExplodingTensor" in trainer.report_.triggered and trainer.report_.loss["TRAIN"]
