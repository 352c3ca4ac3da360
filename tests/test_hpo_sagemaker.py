"""HPOExperiment on SageMaker: the CreateHyperParameterTuningJob request (against moto in server mode) and the mapping of
ListTrainingJobsForHyperParameterTuningJob responses to trials_ (botocore's Stubber, which validates the recorded
responses against the real service model; moto lacks that call)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from dogclf.backends.sagemaker import SageMakerBackend
from dogclf.backends.sagemaker.tuning import build_tuner, list_trials, parameter_ranges
from dogclf.errors import ConfigError
from dogclf.hpo import Categorical, Continuous, HPOExperiment, Integer, SearchSpace
from dogclf.training import TrainingJobSpec

SEED_SPACE = {"lr": Continuous(0.001, 0.1), "batch-size": Categorical([32, 64, 128]), "epochs": Categorical([1, 2])}
UTC = dt.timezone.utc
T0 = dt.datetime(2023, 9, 17, 2, 40, 43, tzinfo=UTC)


def summary(n: int, suffix: str, lr: str, bs: str, epochs: str, status: str, value: float | None,
            minutes: int | None, created_s: int, reason: str | None = None) -> dict[str, Any]:
    """One TrainingJobSummaries entry, shaped as SageMaker returns it (the seed's tuning job)."""
    item: dict[str, Any] = {
        "TrainingJobName": f"pytorch-training-230917-0040-{n:03d}-{suffix}",
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/pytorch-training-230917-0040-"
                          f"{n:03d}-{suffix}",
        "TuningJobName": "pytorch-training-230917-0040",
        "CreationTime": T0 + dt.timedelta(seconds=created_s),
        "TrainingJobStatus": status,
        "TunedHyperParameters": {"lr": lr, "batch-size": f'"{bs}"', "epochs": f'"{epochs}"'},
    }
    if minutes is not None:
        item["TrainingStartTime"] = T0 + dt.timedelta(seconds=created_s + 60)
        item["TrainingEndTime"] = item["TrainingStartTime"] + dt.timedelta(minutes=minutes)
    if value is not None:
        item["FinalHyperParameterTuningJobObjectiveMetric"] = {"Type": "Minimize", "MetricName": "test_loss",
                                                               "Value": value}
        item["ObjectiveStatus"] = "Succeeded"
    if reason:
        item["FailureReason"] = reason
        item["ObjectiveStatus"] = "Failed"
    return item


PAGE_1 = [summary(3, "f603a2f7", "0.0501", "128", "2", "Completed", 1.2590999603271484, 20, 3),
          summary(2, "3ee3433d", "0.0010152583471663874", "64", "2", "Completed", 0.6565999984741211, 20, 1)]
PAGE_2 = [summary(1, "4120a907", "0.0947", "32", "1", "Completed", 3.228800058364868, 18, 0),
          summary(4, "0badf00d", "0.02", "64", "1", "Failed", None, 2, 5,
                  reason="AlgorithmError: ExecuteUserScriptError: CUDA out of memory"),
          summary(5, "5151beef", "0.003", "32", "2", "InProgress", None, None, 6)]


def offline_client() -> Any:
    """A sagemaker client pointed at a closed port: only a Stubber answers it."""
    import boto3

    return boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url="http://127.0.0.1:9")


def stubbed_client(tuning_job: str = "pytorch-training-230917-0040", describe: bool = False) -> tuple[Any, Any]:
    """A sagemaker client answering from recorded responses (any other call fails: nothing reaches a network)."""
    from botocore.stub import Stubber

    client = offline_client()
    stub = Stubber(client)
    if describe:
        stub.add_response("describe_hyper_parameter_tuning_job", describe_response(tuning_job),
                          {"HyperParameterTuningJobName": tuning_job})
    stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job",
                      {"TrainingJobSummaries": PAGE_1, "NextToken": "page-2"},
                      {"HyperParameterTuningJobName": tuning_job, "MaxResults": 100})
    stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": PAGE_2},
                      {"HyperParameterTuningJobName": tuning_job, "MaxResults": 100, "NextToken": "page-2"})
    return client, stub


def test_list_trials_maps_recorded_responses() -> None:
    client, stub = stubbed_client()
    with stub:
        trials = list_trials(client, "pytorch-training-230917-0040", SearchSpace(SEED_SPACE))
    stub.assert_no_pending_responses()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.status for t in trials] == ["Completed", "Completed", "Completed", "Failed", "InProgress"]
    assert [t.objective for t in trials[:3]] == pytest.approx([3.2288, 0.6566, 1.2591], abs=1e-4)
    assert trials[1].params == {"lr": pytest.approx(0.0010152583471663874), "batch_size": 64, "epochs": 2}
    assert isinstance(trials[1].params["batch_size"], int)  # typed back from SageMaker's JSON strings
    assert [t.duration_s for t in trials[:3]] == [18 * 60, 20 * 60, 20 * 60]
    assert trials[3].failure_reason.endswith("CUDA out of memory") and trials[3].objective is None
    assert trials[4].duration_s is None and trials[4].ended is None
    assert trials[0].job_name == "pytorch-training-230917-0040-001-4120a907"


def test_trials_and_best_from_a_sagemaker_tuning_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment attached to a SageMaker tuning job reads its trials through the backend."""
    import boto3
    import sagemaker

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path))
    client, stub = stubbed_client("seed-hpo", describe=True)
    stub.activate()
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                                                           aws_secret_access_key="testing"),
                                sagemaker_client=client)
    backend = SageMakerBackend(role="arn:aws:iam::123456789012:role/SageMakerRole", bucket="b", session=session)
    spec = TrainingJobSpec({"backbone": "resnet50"}, {"training": "s3://b/dogImages"})
    exp = HPOExperiment(spec, SEED_SPACE, max_trials=3, backend=backend, name="seed-hpo", seed=0)
    state = exp._new_state(backend, spec)  # as if run() had started the tuning job
    state.backend_state["tuning_job_name"] = "seed-hpo"
    state.save(exp.state_path)
    again = HPOExperiment.attach("seed-hpo", backend=backend)
    stub.assert_no_pending_responses()
    df = again.trials_
    assert df["status"].tolist() == ["Completed", "Completed", "Completed", "Failed", "InProgress"]
    assert again.best_params_ == {"lr": pytest.approx(0.0010152583471663874), "batch_size": 64, "epochs": 2}
    assert again.best_trial_.job_name.endswith("002-3ee3433d")
    assert again.state_.backend_state["status"] == "InProgress"
    table = again.jobs_table()
    assert table["Training Duration"].tolist()[-3:] == ["20 minute(s)", "20 minute(s)", "18 minute(s)"]


def describe_response(name: str) -> dict[str, Any]:
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{name}",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "test_loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1},
        },
        "HyperParameterTuningJobStatus": "InProgress",
        "CreationTime": T0,
        "TrainingJobStatusCounters": {"Completed": 3, "InProgress": 1, "RetryableError": 0,
                                      "NonRetryableError": 1, "Stopped": 0},
        "ObjectiveStatusCounters": {"Succeeded": 3, "Pending": 1, "Failed": 1},
    }


def test_parameter_ranges_keep_scaling_types() -> None:
    ranges = parameter_ranges(SearchSpace({"lr": Continuous(0.001, 0.1, scale="log"), "layers": Integer(1, 4),
                                           "batch-size": Categorical([32, 64]), "amp": Categorical([True, False])}))
    assert ranges["lr"].as_tuning_range("lr") == {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1",
                                                  "ScalingType": "Logarithmic"}
    assert ranges["layers"].as_tuning_range("layers")["ScalingType"] == "Linear"
    assert ranges["batch-size"].values == ["32", "64"] and ranges["amp"].values == ["true", "false"]


# -- CreateHyperParameterTuningJob against moto in server mode ------------------------------------------------------
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture
def sm_backend(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SageMakerBackend, list]:
    import boto3
    import sagemaker

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path / "home"))
    boto3.client("s3").create_bucket(Bucket="dogclf-test")
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"))
    sent: list[dict] = []
    session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateHyperParameterTuningJob",
        lambda params, **kw: sent.append(dict(params)))
    # moto lacks ListTrainingJobsForHyperParameterTuningJob: answer it as SageMaker does for a tuning job that has
    # started no training job yet (an error there is no longer swallowed; see test_honest_failures.py)
    from botocore.awsrequest import AWSResponse

    session.sagemaker_client.meta.events.register(
        "before-call.sagemaker.ListTrainingJobsForHyperParameterTuningJob",
        lambda **kw: (AWSResponse("moto", 200, {}, None), {"TrainingJobSummaries": []}))
    return SageMakerBackend(role=ROLE, bucket="dogclf-test", region="us-east-1", session=session), sent


def seed_experiment(backend: SageMakerBackend, **kwargs: Any) -> HPOExperiment:
    spec = TrainingJobSpec({"backbone": "resnet50", "weights": "IMAGENET1K_V2"}, "s3://dogclf-test/dogImages",
                           {"lr": 0.05, "epochs": 1}, instance_type="ml.c5.2xlarge")
    space = {"lr": Continuous(0.001, 0.1, scale="log"), "batch-size": Categorical([32, 64, 128]),
             "epochs": Categorical([1, 2])}
    kwargs = {"max_trials": 3, "max_parallel": 2, "early_stopping": "auto", "name": "seed-hpo", "seed": 7,
              **kwargs}
    return HPOExperiment(spec, space, "test_loss", backend=backend, **kwargs)


@pytest.mark.slow
def test_create_tuning_job_request(sm_backend: tuple[SageMakerBackend, list]) -> None:
    import boto3

    from dogclf.training import METRIC_DEFINITIONS

    backend, sent = sm_backend
    exp = seed_experiment(backend).run()
    assert len(sent) == 1
    req = sent[0]
    assert req["HyperParameterTuningJobName"] == "seed-hpo"
    cfg = req["HyperParameterTuningJobConfig"]
    assert cfg["Strategy"] == "Bayesian"
    assert cfg["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "test_loss"}
    assert cfg["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 2}
    assert cfg["TrainingJobEarlyStoppingType"] == "Auto"
    assert cfg["RandomSeed"] == 7
    ranges = cfg["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1",
                                                    "ScalingType": "Logarithmic"}]
    cats = {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]}
    assert cats == {"batch-size": ['"32"', '"64"', '"128"'], "epochs": ['"1"', '"2"']}  # JSON, as frameworks take
    assert ranges.get("IntegerParameterRanges", []) == []
    job = req["TrainingJobDefinition"]
    static = job["StaticHyperParameters"]
    assert static["backbone"] == '"resnet50"' and static["weights"] == '"IMAGENET1K_V2"'
    assert not {"lr", "batch-size", "epochs"} & set(static)      # tuned names are not static
    assert static["sagemaker_program"] == '"dogclf/training/train.py"'
    metrics = {d["Name"]: d["Regex"] for d in job["AlgorithmSpecification"]["MetricDefinitions"]}
    assert metrics == {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    resources = job.get("HyperParameterTuningResourceConfig") or job["ResourceConfig"]  # the SDK sends the former
    assert resources["InstanceType"] == "ml.c5.2xlarge" and resources["InstanceCount"] == 1
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]] == ["s3://dogclf-test/dogImages"]
    # moto accepted it, and the experiment remembers its tuning job.
    desc = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="seed-hpo")
    assert desc["HyperParameterTuningJobName"] == "seed-hpo"
    assert exp.state_.backend_state["tuning_job_name"] == "seed-hpo"
    # Running it again attaches to the tuning job instead of creating another.
    seed_experiment(backend).run()
    assert len(sent) == 1


@pytest.mark.slow
def test_custom_objective_regex_and_grid_strategy(sm_backend: tuple[SageMakerBackend, list]) -> None:
    from dogclf.hpo import Objective

    backend, sent = sm_backend
    spec = TrainingJobSpec({"backbone": "resnet18"}, {"training": "s3://dogclf-test/dogImages"})
    HPOExperiment(spec, {"batch-size": Categorical([32, 64]), "optimizer": Categorical(["adam", "sgd"])},
                  Objective("top1", regex=r"top1 accuracy: ([0-9.]+)", direction="maximize"), strategy="grid",
                  max_trials=10, backend=backend, name="grid-hpo").run()
    cfg = sent[0]["HyperParameterTuningJobConfig"]
    assert cfg["Strategy"] == "Grid" and cfg["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 4  # the grid's size
    assert cfg["TrainingJobEarlyStoppingType"] == "Off"
    assert cfg["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "top1"}
    metrics = {d["Name"]: d["Regex"] for d in sent[0]["TrainingJobDefinition"]["AlgorithmSpecification"]
               ["MetricDefinitions"]}
    assert metrics["top1"] == r"top1 accuracy: ([0-9.]+)" and "test_loss" in metrics


def test_strategy_without_sagemaker_equivalent(sm_backend: tuple[SageMakerBackend, list]) -> None:
    from dogclf.hpo import Strategy

    class Mine(Strategy):
        name = "mine"

        def suggest(self, space, trials, number, *, seed, objective):
            return None

    backend, sent = sm_backend
    exp = seed_experiment(backend, strategy=Mine(), name="mine")
    state = exp._new_state(backend, exp._base_spec())
    with pytest.raises(ConfigError, match="no SageMaker equivalent"):
        build_tuner(backend, exp._base_spec(), state)
    assert sent == []


def seed_tuning_description(name: str) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob of the seed's tuning job, as SageMaker returns it (framework estimator:
    categorical values and static hyperparameters JSON-encoded)."""
    desc = describe_response(name)
    desc["HyperParameterTuningJobConfig"]["ParameterRanges"] = {
        "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Auto"}],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ['"32"', '"64"', '"128"']},
                                       {"Name": "epochs", "Values": ['"1"', '"2"']}],
    }
    desc["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = "Off"
    desc["TrainingJobDefinition"] = {
        "StaticHyperParameters": {"backbone": '"resnet50"', "sagemaker_program": '"hpo.py"',
                                  "sagemaker_submit_directory": '"s3://seed-bucket/pytorch-training/source.tar.gz"',
                                  "sagemaker_region": '"us-east-1"'},
        "AlgorithmSpecification": {
            "TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.0.0-cpu-py310",
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "test_loss", "Regex": r"Testing Loss: ([0-9\.]+)"}]},
        "RoleArn": ROLE,
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://seed-bucket/dogImages", "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://seed-bucket/"},
        "ResourceConfig": {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
    }
    return desc


def test_attach_to_a_tuning_job_started_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local state: attach() rebuilds the experiment from DescribeHyperParameterTuningJob, then lists its jobs."""
    import boto3
    import sagemaker
    from botocore.stub import Stubber

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path))
    name = "pytorch-training-230917-0040"
    client = offline_client()
    stub = Stubber(client)
    stub.add_response("describe_hyper_parameter_tuning_job", seed_tuning_description(name),
                      {"HyperParameterTuningJobName": name})
    stub.add_response("describe_hyper_parameter_tuning_job", seed_tuning_description(name),
                      {"HyperParameterTuningJobName": name})
    stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job",
                      {"TrainingJobSummaries": PAGE_1 + PAGE_2},
                      {"HyperParameterTuningJobName": name, "MaxResults": 100})
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                                                           aws_secret_access_key="testing"),
                                sagemaker_client=client)
    backend = SageMakerBackend(role=ROLE, bucket="b", session=session)
    with stub:
        exp = HPOExperiment.attach(name, backend=backend)
    stub.assert_no_pending_responses()
    assert exp.space == SearchSpace({"lr": Continuous(0.001, 0.1), "batch-size": Categorical([32, 64, 128]),
                                     "epochs": Categorical([1, 2])})
    assert exp.objective.metric == "test_loss" and exp.objective.direction == "minimize"
    assert exp.objective.regex == r"Testing Loss: ([0-9\.]+)"   # the tuning job's own regex
    assert exp.max_trials == 3 and exp.max_parallel == 1 and exp.strategy.name == "bayesian"
    spec = exp._base_spec()
    assert spec.model.backbone == "resnet50" and spec.channels == {"training": "s3://seed-bucket/dogImages"}
    assert exp.best_params_ == {"lr": pytest.approx(0.0010152583471663874), "batch_size": 64, "epochs": 2}
    assert len(exp.trials_) == 5
    assert (tmp_path / "experiments" / name / "experiment.json").is_file()   # remembered for next time
