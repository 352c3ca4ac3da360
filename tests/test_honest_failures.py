"""Failures are reported, never passed off as success: a SageMaker endpoint delete that AWS refuses, a tuning job
whose training jobs cannot be listed, a GPU query that fails.

AWS errors are real botocore error responses: the resources live on the moto server, and the refused call is
answered with an ``AccessDeniedException`` HTTP response that botocore parses as it would AWS's; the tuning
listing uses botocore's Stubber, which validates against the service model (moto lacks that call).
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from types import SimpleNamespace

import pytest

from dogclf.errors import BackendError, EndpointError
from dogclf.serving import CostWarning

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs):
        yield self.data


def deny(client, operation: str) -> None:
    """Answer ``operation`` with AWS's AccessDeniedException (HTTP 400) instead of sending it."""
    from botocore.awsrequest import AWSResponse

    body = json.dumps({"__type": "AccessDeniedException",
                       "message": f"User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
                                  f"sagemaker:{operation}"}).encode()

    def refuse(request, **kwargs):
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.1"}, _Body(body))

    client.meta.events.register(f"before-send.sagemaker.{operation}", refuse, unique_id=f"deny-{operation}")


def allow(client, operation: str) -> None:
    client.meta.events.unregister(f"before-send.sagemaker.{operation}", unique_id=f"deny-{operation}")


@pytest.fixture
def sm(aws):
    """A sagemaker client on moto holding endpoint ``ep`` with endpoint config ``ep-config`` and model ``ep-model``."""
    import boto3

    client = boto3.client("sagemaker")
    client.create_model(ModelName="ep-model", ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:"
                                                   "2.6-cpu-py312", "ModelDataUrl": "s3://b/model.tar.gz"})
    client.create_endpoint_config(EndpointConfigName="ep-config", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "ep-model", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    client.create_endpoint(EndpointName="ep", EndpointConfigName="ep-config")
    return client


def _left(client) -> dict[str, list[str]]:
    return {"endpoints": [e["EndpointName"] for e in client.list_endpoints()["Endpoints"]],
            "configs": [c["EndpointConfigName"] for c in client.list_endpoint_configs()["EndpointConfigs"]],
            "models": [m["ModelName"] for m in client.list_models()["Models"]]}


def _handle(client, owned: bool = True):
    from dogclf.backends.sagemaker.serving import SageMakerEndpoint

    return SageMakerEndpoint("ep", SimpleNamespace(sagemaker_client=client), owned=owned)


def test_a_refused_delete_raises_names_what_bills_and_keeps_the_handle_live(sm):
    deny(sm, "DeleteEndpoint")
    endpoint = _handle(sm)
    with pytest.raises(EndpointError) as info:
        endpoint.delete()
    message = str(info.value)
    assert "still running and billed" in message and "AccessDeniedException" in message
    assert "sagemaker:DeleteEndpoint" in message
    assert info.value.remaining == [("endpoint", "ep"), ("endpoint config", "ep-config"), ("model", "ep-model")]
    assert not endpoint.deleted and "live" in repr(endpoint)
    assert _left(sm) == {"endpoints": ["ep"], "configs": ["ep-config"], "models": ["ep-model"]}  # nothing touched
    with pytest.warns(CostWarning, match="'ep' is still running"):
        del endpoint, info  # the traceback holds the handle too
        gc.collect()

    allow(sm, "DeleteEndpoint")
    again = _handle(sm)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        again.delete()
        assert again.deleted
        del again
        gc.collect()
    assert _left(sm) == {"endpoints": [], "configs": [], "models": []}


def test_a_partly_refused_delete_retries_only_what_is_left(sm):
    deny(sm, "DeleteModel")
    endpoint = _handle(sm)
    with pytest.raises(EndpointError, match="the endpoint itself is gone") as info:
        endpoint.delete()
    assert info.value.remaining == [("model", "ep-model")] and "model 'ep-model'" in str(info.value)
    assert not endpoint.deleted
    assert _left(sm) == {"endpoints": [], "configs": [], "models": ["ep-model"]}
    allow(sm, "DeleteModel")
    sent = []
    sm.meta.events.register("before-call.sagemaker", lambda model, **kw: sent.append(model.name))
    endpoint.delete()
    assert endpoint.deleted and sent == ["DeleteModel"]
    assert _left(sm)["models"] == []


def test_a_refused_describe_raises_instead_of_guessing(sm):
    deny(sm, "DescribeEndpoint")
    deny(sm, "DeleteEndpoint")
    endpoint = _handle(sm, owned=False)
    with pytest.raises(EndpointError, match="describing it to find its endpoint config and models failed: "
                                            "AccessDeniedException"):
        endpoint.delete()
    assert not endpoint.deleted and _left(sm)["endpoints"] == ["ep"]


def test_parts_already_gone_count_as_deleted(sm, caplog):
    sm.delete_endpoint(EndpointName="ep")  # deleted elsewhere (the console, another handle)
    endpoint = _handle(sm)
    with caplog.at_level(logging.INFO, logger="dogclf.backends.sagemaker.serving"):
        endpoint.delete()
    assert endpoint.deleted and "already deleted" in caplog.text
    assert _left(sm) == {"endpoints": [], "configs": ["ep-config"], "models": ["ep-model"]}  # unknown to it
    never = _handle(sm)
    never.name = "never-existed"
    never.delete()
    assert never.deleted


# -- tuning: listing the training jobs ------------------------------------------------------------------------------
def test_a_failed_trial_listing_surfaces_its_cause(tmp_path, monkeypatch):
    """AccessDenied on ListTrainingJobsForHyperParameterTuningJob reaches the caller, instead of an experiment
    that later says it has no trial with an objective."""
    import boto3
    import sagemaker
    from botocore.stub import Stubber

    from dogclf.backends.sagemaker import SageMakerBackend
    from dogclf.hpo import Categorical, Continuous, HPOExperiment
    from dogclf.training import TrainingJobSpec

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path))
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", endpoint_url="http://127.0.0.1:9")
    stub = Stubber(client)
    stub.add_response("describe_hyper_parameter_tuning_job", {
        "HyperParameterTuningJobName": "seed-hpo",
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/seed-hpo",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "test_loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1}},
        "HyperParameterTuningJobStatus": "Completed", "CreationTime": 0,
        "TrainingJobStatusCounters": {}, "ObjectiveStatusCounters": {}}, {"HyperParameterTuningJobName": "seed-hpo"})
    stub.add_client_error("list_training_jobs_for_hyper_parameter_tuning_job",
                          service_error_code="AccessDeniedException", http_status_code=400,
                          service_message="User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
                                          "sagemaker:ListTrainingJobsForHyperParameterTuningJob")
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                                                           aws_secret_access_key="testing"),
                                sagemaker_client=client)
    backend = SageMakerBackend(role=ROLE, bucket="b", session=session)
    spec = TrainingJobSpec({"backbone": "resnet50"}, {"training": "s3://b/dogImages"})
    exp = HPOExperiment(spec, {"lr": Continuous(0.001, 0.1), "epochs": Categorical([1, 2])}, max_trials=3,
                        backend=backend, name="seed-hpo", seed=0)
    state = exp._new_state(backend, spec)  # as if run() had started the tuning job
    state.backend_state["tuning_job_name"] = "seed-hpo"
    state.save(exp.state_path)
    with stub, pytest.raises(BackendError) as info:
        HPOExperiment.attach("seed-hpo", backend=backend)
    stub.assert_no_pending_responses()
    message = str(info.value)
    assert "'seed-hpo'" in message and "status Completed" in message
    assert "AccessDeniedException" in message and "ListTrainingJobsForHyperParameterTuningJob" in message
    saved = json.loads(exp.state_path.read_text())
    assert saved["backend_state"]["status"] == "Completed"  # what was learnt is kept


# -- the system monitor's GPU queries -------------------------------------------------------------------------------
def test_no_gpu_is_not_a_failed_gpu_query(tmp_path, caplog):
    """On this CPU machine CUDA reports no GPU: zero GPUs, no warning, no error recorded."""
    import torch

    from dogclf.debug.profiling import SystemMonitor, gpu_facts

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with caplog.at_level(logging.WARNING):
        assert gpu_facts() == {"gpu_count": 0}
        monitor = SystemMonitor(tmp_path)
        assert monitor._gpu() == {} and monitor.gpu_errors == {}
    assert caplog.records == []


def test_a_failing_gpu_query_is_reported_once_not_counted_as_no_gpu(tmp_path, monkeypatch, caplog):
    """CUDA says a GPU is there but asking it fails (here for real: this machine has no driver): the cause is
    logged once as a warning and recorded; the GPU count is unknown, not zero."""
    import torch

    from dogclf.debug.profiling import SystemMonitor, gpu_facts
    from dogclf.debug.report import build_report

    if torch.cuda.is_available():
        pytest.skip("this machine has a working GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="dogclf.debug.callbacks"):
        facts = gpu_facts()
        monitor = SystemMonitor(tmp_path, interval_millis=10)
        samples = [monitor._gpu() for _ in range(3)]
    assert facts["gpu_count"] is None and facts["gpu_error"]
    assert samples == [{}, {}, {}] and set(monitor.gpu_errors) == {"memory"}
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 2  # one for the count, one (not three) for the samples
    assert facts["gpu_error"].split(":")[0] in warnings_logged[0].getMessage()
    debug = tmp_path / "debug"
    monitor.debug_dir = debug
    monitor._thread = SimpleNamespace(join=lambda timeout: None)  # stop() writes system.json
    monitor.stop()
    written = json.loads((debug / "system.json").read_text())
    assert written["gpu_errors"]["memory"] == monitor.gpu_errors["memory"]
    # the report says "unknown" with the cause, where it used to say 0 GPUs
    (debug / "meta.json").write_text(json.dumps({"cpu_count": 2, **facts}))
    (debug / "steps.json").write_text(json.dumps([
        {"mode": "train", "step": i, "epoch": 1, "loss": 1.0, "batch_size": 4, "data_time": 0.01,
         "compute_time": 0.1, "start": float(i), "end": i + 0.11} for i in range(4)]))
    html = build_report(tmp_path).html_path.read_text()
    assert f"2 / unknown (the query failed: {facts['gpu_error']}" in html.replace("&#x27;", "'").replace("&quot;", '"')
