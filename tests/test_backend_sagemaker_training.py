"""SageMakerBackend.train against moto in server mode: what the CreateTrainingJob request carries."""

from __future__ import annotations

import tarfile

import boto3
import pytest

from dogclf.backends import get_backend
from dogclf.backends.sagemaker.training import attach, build_estimator
from dogclf.errors import ConfigError
from dogclf.training import METRIC_DEFINITIONS, TrainingJobSpec

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
HP = {"lr": 0.0010152583471663874, "batch-size": 64, "epochs": 2, "backbone": "resnet50", "weights": None}


def job(channels, hp=HP, **fields):
    """A spec from SageMaker-style hyperparameters (any spelling), as a tuning job's best one would be given."""
    return TrainingJobSpec.from_hyperparameters(hp, channels, **fields)


def sagemaker_session():
    import sagemaker

    return sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"))


@pytest.fixture
def backend(aws):
    boto3.client("s3").create_bucket(Bucket="dogclf-test")
    return get_backend("sagemaker", role=ROLE, bucket="dogclf-test", region="us-east-1")


def test_create_training_job_request(backend, tmp_path):
    local = tmp_path / "valid" / "001.Affenpinscher"
    local.mkdir(parents=True)
    (local / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    spec = job({"train": "s3://dogclf-test/dogImages/train", "valid": str(tmp_path / "valid"),
                "test": "s3://dogclf-test/dogImages/test"},
               job_name="dogclf-moto-1", instance_type="ml.c5.2xlarge",
                           checkpoint_uri="s3://dogclf-test/checkpoints/dogclf-moto-1", use_spot=True,
                           max_run_s=3600, environment={"DOGCLF_X": "1"})
    sent = []
    backend.session = sagemaker_session()
    backend.session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", lambda params, **kw: sent.append(dict(params)))
    result = backend.train(spec, logs=False)
    assert result.status == "Completed"  # moto completes jobs at once; this checks our reading of the answer

    desc = boto3.client("sagemaker").describe_training_job(TrainingJobName="dogclf-moto-1")
    hp = desc["HyperParameters"]
    # Each value is the spec's one wire string, JSON-encoded by the SDK as for every framework estimator.
    assert hp["lr"] == '"0.0010152583471663874"' and hp["batch-size"] == '"64"' and hp["backbone"] == '"resnet50"'
    assert hp["weights"] == '"None"'
    assert hp["sagemaker_program"] == '"dogclf/training/train.py"'
    assert hp["sagemaker_submit_directory"].startswith('"s3://dogclf-test/dogclf/training/')
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
    assert channels["train"] == "s3://dogclf-test/dogImages/train"
    assert channels["valid"] == "s3://dogclf-test/dogclf/data/dogclf-moto-1/valid"
    # moto answers DescribeTrainingJob with canned metric definitions: check those in the request it received.
    assert len(sent) == 1 and sent[0]["TrainingJobName"] == "dogclf-moto-1"
    assert sent[0]["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert sent[0]["EnableManagedSpotTraining"] is True
    assert sent[0]["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert sent[0]["CheckpointConfig"] == {"S3Uri": "s3://dogclf-test/checkpoints/dogclf-moto-1",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert sent[0]["Environment"] == {"DOGCLF_X": "1"}
    assert sent[0]["HyperParameters"] == hp
    assert "pytorch-training:2.5" in desc["AlgorithmSpecification"]["TrainingImage"]
    assert desc["ResourceConfig"]["InstanceType"] == "ml.c5.2xlarge" and desc["ResourceConfig"]["InstanceCount"] == 1
    assert desc["OutputDataConfig"]["S3OutputPath"] == "s3://dogclf-test/dogclf/training"
    assert desc["StoppingCondition"]["MaxRuntimeInSeconds"] == 3600
    assert result.model_artifact == desc["ModelArtifacts"]["S3ModelArtifacts"]

    s3 = boto3.client("s3")
    # The local channel was uploaded, and the job's code is the dogclf package with the entry point inside.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dogclf-test", Prefix="dogclf/data/")["Contents"]]
    assert keys == ["dogclf/data/dogclf-moto-1/valid/001.Affenpinscher/a.jpg"]
    source_key = hp["sagemaker_submit_directory"].strip('"').split("dogclf-test/", 1)[1]
    path = tmp_path / "sourcedir.tar.gz"
    s3.download_file("dogclf-test", source_key, str(path))
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert "dogclf/training/train.py" in names and "dogclf/models/_model.py" in names
    assert not any("__pycache__" in n for n in names)
    assert attach(backend, "dogclf-moto-1").job_name == "dogclf-moto-1"


def test_build_estimator_carries_spot_checkpoints_and_debugger_kwargs(backend):
    from dogclf.debug import DebuggerConfig

    debugger = DebuggerConfig(sagemaker_debugger=True, s3_output_path="s3://dogclf-test/debug")
    spec = job({"training": "s3://dogclf-test/dogImages"}, use_spot=True, max_run_s=1800,
               checkpoint_uri="s3://dogclf-test/ckpt", debugger=debugger)
    est = build_estimator(backend, spec)
    assert est.use_spot_instances and est.max_wait == 3600 and est.max_run == 1800
    assert est.checkpoint_s3_uri == "s3://dogclf-test/ckpt" and est.checkpoint_local_path == "/opt/ml/checkpoints"
    # SageMaker's own Debugger objects, built by the backend from the spec's DebuggerConfig.
    assert [r.name for r in est.rules] == ["LossNotDecreasing", "ProfilerReport"]
    assert est.debugger_hook_config.s3_output_path == "s3://dogclf-test/debug"
    assert est.framework_version == "2.5" and est.py_version == "py311"
    assert est.entry_point == "dogclf/training/train.py"
    assert est.metric_definitions == METRIC_DEFINITIONS
    plain = build_estimator(backend, job({"training": "s3://dogclf-test/d"}))
    assert plain.debugger_hook_config is False and not plain.use_spot_instances


def test_bad_specs_for_sagemaker(aws):
    spec = job({"training": "s3://b/d"})
    with pytest.raises(ConfigError, match="role"):
        build_estimator(get_backend("sagemaker", bucket="b", region="us-east-1"), spec)
    backend = get_backend("sagemaker", role=ROLE, bucket="b", region="us-east-1")
    with pytest.raises(ConfigError, match="s3://"):
        build_estimator(backend, job({"training": "s3://b/d"}, checkpoint_uri="/local/ckpt"))
    with pytest.raises(ConfigError, match="neither") as info:
        backend.train(job({"training": "/no/such/folder"}))
    assert "/no/such/folder" in str(info.value)  # the message names the bad channel


def test_debugger_jobs_ship_smdebug_requirements_and_plain_jobs_ship_none(backend):
    from pathlib import Path

    debug = job({"training": "s3://dogclf-test/d"}, {**HP, "dogclf-debug": "packed"})
    est = build_estimator(backend, debug)
    lines = (Path(est.source_dir) / "requirements.txt").read_text().split()
    assert "smdebug==1.0.34" in lines and "protobuf>=3.20,<=3.20.3" in lines and "psutil" in lines
    assert (Path(est.source_dir) / "dogclf" / "training" / "train.py").is_file()
    plain = build_estimator(backend, job({"training": "s3://dogclf-test/d"}))
    assert not (Path(plain.source_dir) / "requirements.txt").exists()
    custom = build_estimator(backend, debug, requirements=["smdebug==1.0.34"])
    assert (Path(custom.source_dir) / "requirements.txt").read_text().split() == ["smdebug==1.0.34"]
