"""Data-parallel jobs on SageMaker: the CreateTrainingJob and CreateHyperParameterTuningJob requests a spec with a
Distribution sends (against moto in server mode), and what SageMaker's torch_distributed cannot run."""

from __future__ import annotations

import json

import boto3
import pytest

from dogclf.backends import get_backend
from dogclf.backends.sagemaker.distribution import (
    GPUS_PER_INSTANCE,
    check_distribution,
    distribution_from_hyperparameters,
)
from dogclf.errors import ConfigError
from dogclf.hpo import Categorical, Continuous, HPOExperiment, Integer
from dogclf.training import Distribution, TrainingJobSpec

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = {"training": "s3://dogclf-test/dogImages"}


def spec(**fields):
    training = fields.pop("training", {"batch_size": 64, "lr": 0.01})
    return TrainingJobSpec({"backbone": "resnet50", "weights": "IMAGENET1K_V2"}, DATA, training, **fields)


@pytest.fixture
def backend(aws, tmp_path, monkeypatch):
    import sagemaker

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path / "home"))
    boto3.client("s3").create_bucket(Bucket="dogclf-test")
    sent: dict[str, list] = {"CreateTrainingJob": [], "CreateHyperParameterTuningJob": []}
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"))
    for name, calls in sent.items():
        session.sagemaker_client.meta.events.register(f"provide-client-params.sagemaker.{name}",
                                                      lambda params, calls=calls, **kw: calls.append(dict(params)))
    # moto lacks ListTrainingJobsForHyperParameterTuningJob: answered as for a tuning job with no training job yet
    from botocore.awsrequest import AWSResponse

    session.sagemaker_client.meta.events.register(
        "before-call.sagemaker.ListTrainingJobsForHyperParameterTuningJob",
        lambda **kw: (AWSResponse("moto", 200, {}, None), {"TrainingJobSummaries": []}))
    b = get_backend("sagemaker", role=ROLE, bucket="dogclf-test", region="us-east-1", session=session)
    b.sent = sent
    return b


def test_two_multi_gpu_instances_send_torch_distributed(backend):
    job = spec(job_name="ddp-2x4", instance_type="ml.g5.12xlarge", instance_count=2, distribution=Distribution())
    assert check_distribution(job) == (4, 8)        # 4 A10G per instance: 8 processes of 8 images each
    result = backend.train(job, logs=False)
    assert result.status == "Completed"
    [req] = backend.sent["CreateTrainingJob"]
    assert req["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert req["ResourceConfig"]["InstanceCount"] == 2
    hp = req["HyperParameters"]
    # What SageMaker's PyTorch container reads to start torchrun on every instance (one process per GPU).
    assert hp["sagemaker_torch_distributed_enabled"] == "true"
    assert hp["sagemaker_instance_type"] == '"ml.g5.12xlarge"'
    assert "sagemaker_mpi_num_of_processes_per_host" not in hp
    # The user's batch size stays the global one; the entry point splits it.
    assert hp["batch-size"] == '"64"' and hp["batchnorm"] == '"auto"'
    # SDK 2.257 accepts torch_distributed only with a full framework version: 2.5.1, the image of "2.5".
    image = req["AlgorithmSpecification"]["TrainingImage"]
    assert "pytorch-training:2.5.1-gpu-py311" in image
    desc = boto3.client("sagemaker").describe_training_job(TrainingJobName="ddp-2x4")
    assert desc["ResourceConfig"]["InstanceCount"] == 2
    assert distribution_from_hyperparameters(desc["HyperParameters"]) == Distribution()


def test_processes_per_host_travels_as_the_toolkits_hyperparameter(backend):
    from dogclf.backends.sagemaker.training import build_estimator

    job = spec(instance_type="ml.p4d.24xlarge", distribution=Distribution(processes_per_host=4))
    est = build_estimator(backend, job)
    assert est.distribution == {"torch_distributed": {"enabled": True}} and est.framework_version == "2.5.1"
    hp = est.hyperparameters()
    assert json.loads(hp["sagemaker_mpi_num_of_processes_per_host"]) == "4"
    assert distribution_from_hyperparameters(hp) == Distribution(processes_per_host=4)
    plain = build_estimator(backend, spec(instance_type="ml.g5.12xlarge"))
    assert plain.distribution in (None, {}) and plain.framework_version == "2.5"
    assert "sagemaker_torch_distributed_enabled" not in plain.hyperparameters()
    assert distribution_from_hyperparameters(plain.hyperparameters()) is None


@pytest.mark.parametrize("fields, training, match", [
    ({"instance_type": "ml.c5.2xlarge", "distribution": Distribution()}, None, "'ml.c5.2xlarge'.*GPU instances"),
    ({"instance_type": "ml.g5.12xlarge", "instance_count": 3, "distribution": Distribution()}, {"batch_size": 64},
     "batch_size .* 64 is not divisible by the world size 12"),
    ({"instance_type": "ml.g5.2xlarge", "distribution": Distribution(processes_per_host=2)}, None,
     "processes_per_host 2 on instance_type 'ml.g5.2xlarge', which has 1 GPU"),
    ({"instance_type": "ml.g9.huge", "distribution": Distribution()}, None, "'ml.g9.huge' has an unknown number"),
])
def test_what_sagemaker_cannot_run_fails_before_anything_is_sent(backend, fields, training, match):
    job = spec(**fields, **({"training": training} if training else {}))
    with pytest.raises(ConfigError, match=match):
        backend.train(job, logs=False)
    assert backend.sent["CreateTrainingJob"] == []
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket="dogclf-test")  # nothing uploaded


@pytest.mark.slow
def test_the_tuner_takes_the_distribution(backend):
    job = spec(instance_type="ml.g5.12xlarge", instance_count=2, distribution=Distribution(), training={"lr": 0.01})
    space = {"lr": Continuous(0.001, 0.1, scale="log"), "batch_size": Categorical([32, 64, 128])}
    HPOExperiment(job, space, "test_loss", max_trials=2, backend=backend, name="ddp-hpo").run()
    [req] = backend.sent["CreateHyperParameterTuningJob"]
    definition = req["TrainingJobDefinition"]
    resources = definition.get("HyperParameterTuningResourceConfig") or definition["ResourceConfig"]
    assert resources["InstanceType"] == "ml.g5.12xlarge" and resources["InstanceCount"] == 2
    static = definition["StaticHyperParameters"]
    assert static["sagemaker_torch_distributed_enabled"] == "true" and "batch-size" not in static
    assert "pytorch-training:2.5.1-gpu-py311" in definition["AlgorithmSpecification"]["TrainingImage"]
    # Every batch size the tuner may pick must split over the 8 processes.
    for i, (bad, match) in enumerate(((Categorical([32, 36]), "36 is not divisible by the world size 8"),
                                      (Integer(16, 128), "Categorical"))):
        with pytest.raises(ConfigError, match=match):
            HPOExperiment(job, {"batch_size": bad}, "test_loss", max_trials=2, backend=backend, name=f"bad-{i}").run()
    assert len(backend.sent["CreateHyperParameterTuningJob"]) == 1


def test_the_multi_gpu_table_names_real_instance_types():
    multi = {t: n for t, n in GPUS_PER_INSTANCE.items() if n > 1}
    assert multi["ml.g5.12xlarge"] == 4 and multi["ml.p4d.24xlarge"] == 8 and multi["ml.g5.48xlarge"] == 8
    from sagemaker.fw_utils import _is_gpu_instance

    assert all(_is_gpu_instance(t) for t in GPUS_PER_INSTANCE)  # the SDK's own test for torch_distributed
