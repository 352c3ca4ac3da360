"""SageMaker serving: the packed model.tar.gz in SageMaker's stock handler, deployment on moto, the runtime client."""

from __future__ import annotations

import base64
import gc
import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from dogclf.backends import get_backend
from dogclf.errors import ConfigError, InvalidRequestError
from dogclf.serving import BreedPredictor, CostWarning, EndpointDeployer, handler, pack_artifact
from dogclf.serving.server import _Context
from dogclf.serving.testing import make_artifact, synthetic_photo

torch.set_num_threads(1)
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("sm") / "model")


# -- the packed artifact in SageMaker's own serving code ------------------------------------------------------------
STOCK_SCRIPT = (Path(__file__).resolve().parents[1] / "tools" / "stock_serve.py").read_text()
"""Serves requests through sagemaker-pytorch-inference's stock HandlerService with dogclf importable only from the
archive's code/ folder (as in the stock container); ``make compat`` runs the same script in the container's versions."""


def serve_with_stock_handler(model_dir, image, work, prelude: str = "") -> dict:
    """Run :data:`STOCK_SCRIPT` (after ``prelude``) on ``model_dir`` and ``image`` in a fresh interpreter in
    ``work``, with no PYTHONPATH; returns its JSON report after checking that dogclf came from the archive's code/."""
    script = work / "stock.py"
    script.write_text(prelude + STOCK_SCRIPT)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), str(model_dir), str(image)],
                            capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dogclf"].startswith(str(model_dir / "code"))
    return report


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_packed_artifact_served_by_the_stock_sagemaker_pytorch_handler(artifact, tmp_path, runtime):
    pytest.importorskip("sagemaker_pytorch_serving_container", reason="needs sagemaker-pytorch-inference (test extra)")
    if runtime != "torch":
        pytest.importorskip("onnxruntime", reason="needs dogclf[onnx]")
        from dogclf.models import copy_artifact

        artifact = copy_artifact(artifact, tmp_path / "artifact")  # the export goes into the folder it packs
    tar = pack_artifact(artifact, tmp_path / "model.tar.gz", runtime=runtime)
    with tarfile.open(tar) as archive:
        names = set(archive.getnames())
        archive.extractall(tmp_path / "opt_ml_model", filter="data")
    assert {"model.pt", "labels.json", "config.json", "code/inference.py", "code/dogclf/serving/handler.py"} <= names
    requirements = tmp_path / "opt_ml_model" / "code" / "requirements.txt"
    if runtime == "torch":
        assert not requirements.exists() and not any(n.startswith("runtimes/") for n in names)
    else:
        import onnxruntime

        assert {"runtimes/manifest.json", "runtimes/model.onnx"} <= names
        assert "runtimes/model.int8.onnx" not in names  # only the runtime served travels
        assert requirements.read_text().split() == [f"onnxruntime=={onnxruntime.__version__}"]
    image = tmp_path / "dog.jpg"
    image.write_bytes(synthetic_photo(120, 90, seed=7))
    report = serve_with_stock_handler(tmp_path / "opt_ml_model", image, tmp_path)
    assert report["runtime"] == runtime and report["module"] == ("ResNet" if runtime == "torch" else "OnnxModule")
    good, bad, npy = report["answers"]

    model = handler.load_model(tmp_path / "opt_ml_model", runtime)  # the same runtime, in this process
    assert model.runtime == runtime
    expected = handler.predict_fn(handler.input_fn(image.read_bytes(), "image/jpeg"), model).logits
    assert good["status"] == 200 and good["content_type"] == "application/json"
    doc = json.loads(bytes.fromhex(good["body"]))
    assert doc["k"] == 2 and doc["predictions"][0]["index"] == int(expected.argmax())
    assert bad["status"] == 400 and json.loads(bytes.fromhex(bad["body"]).decode().splitlines()[0])["error"] \
        == "empty_body"
    assert npy["status"] == 200 and npy["content_type"] == "application/x-npy"
    assert np.allclose(np.load(io.BytesIO(bytes.fromhex(npy["body"]))), expected.numpy(), atol=1e-4)


# -- deployment on moto ---------------------------------------------------------------------------------------------
def _recorded(moto_url: str) -> list[dict]:
    text = requests.get(f"{moto_url}/moto-api/recorder/download-recording", timeout=60).text
    decoder, entries, i = json.JSONDecoder(), [], 0
    while i < len(text):
        while i < len(text) and text[i] in "\n\r ":
            i += 1
        if i >= len(text):
            break
        entry, i = decoder.raw_decode(text, i)
        entries.append(entry)
    calls = []
    for entry in entries:
        target = (entry.get("headers") or {}).get("X-Amz-Target", "")
        if target.startswith("SageMaker."):
            body = entry.get("body") or ""
            body = base64.b64decode(body).decode() if entry.get("body_encoded") else body
            calls.append({"action": target.split(".", 1)[1], "body": json.loads(body or "{}")})
    return calls


@pytest.mark.slow
def test_deploy_on_moto_sends_the_expected_requests_and_delete_removes_everything(aws, artifact, tmp_path,
                                                                                 monkeypatch):
    import boto3
    from moto.moto_api import recorder

    # The in-thread moto server's recorder writes to ./moto_recording by default; keep it out of the checkout.
    monkeypatch.setattr(recorder, "_location", str(tmp_path / "moto_recording"))
    requests.post(f"{aws}/moto-api/recorder/reset-recording", timeout=10)
    requests.post(f"{aws}/moto-api/recorder/start-recording", timeout=10)
    try:
        backend = get_backend("sagemaker", role=ROLE, bucket="dogclf-serving-test")
        deployer = EndpointDeployer(endpoint_name="dogclf-test-endpoint", wait_poll_s=0.2, backend=backend)
        endpoint = deployer.deploy(artifact)
    finally:
        requests.post(f"{aws}/moto-api/recorder/stop-recording", timeout=10)
    calls = _recorded(aws)
    by_action = {}
    for call in calls:
        by_action.setdefault(call["action"], call["body"])  # the first of each
    model = by_action["CreateModel"]
    assert model["ModelName"] == "dogclf-test-endpoint" and model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert "pytorch-inference:2.6-cpu-py312" in container["Image"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert container["ModelDataUrl"].startswith("s3://dogclf-serving-test/")
    (variant,) = by_action["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert variant["ModelName"] == "dogclf-test-endpoint"
    assert by_action["CreateEndpoint"] == {**by_action["CreateEndpoint"], "EndpointName": "dogclf-test-endpoint",
                                           "EndpointConfigName": by_action["CreateEndpointConfig"]
                                           ["EndpointConfigName"]}

    # The model archive SageMaker would unpack into /opt/ml/model: artifact at the root, code/ self-sufficient.
    bucket, key = container["ModelDataUrl"][len("s3://"):].split("/", 1)
    data = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = set(archive.getnames())
    assert {"model.pt", "labels.json", "config.json", "code/inference.py", "code/dogclf/serving/handler.py",
            "code/dogclf/models/_model.py"} <= names

    sm = boto3.client("sagemaker")
    assert sm.describe_endpoint(EndpointName="dogclf-test-endpoint")["EndpointStatus"] == "InService"
    assert endpoint.labels.names == ("Beagle", "Pug", "Golden_retriever")
    assert endpoint.sdk_predictor.endpoint_name == "dogclf-test-endpoint"
    assert endpoint.sdk_predictor.content_type == "application/x-image"
    assert endpoint.sdk_predictor.accept == ("application/json",)
    from dogclf.backends.sagemaker.serving import SageMakerEndpoint
    from dogclf.errors import EndpointError

    attached = SageMakerEndpoint.attach("dogclf-test-endpoint", endpoint.session)
    assert not attached.owned
    with pytest.raises(EndpointError, match="no-such-endpoint"):
        SageMakerEndpoint.attach("no-such-endpoint", endpoint.session)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        attached.delete()  # finds the config and model from the endpoint itself
        with endpoint:
            pass  # leaving the block deletes: what is already gone is skipped
        endpoint.delete()  # idempotent
        del endpoint, attached
        gc.collect()
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []


def test_deploy_without_a_role_is_refused(artifact):
    with pytest.raises(ConfigError, match="role"):
        EndpointDeployer(backend="sagemaker").deploy(artifact)


def test_cost_warning_when_a_live_endpoint_handle_is_collected():
    from dogclf.backends.sagemaker.serving import SageMakerEndpoint

    with pytest.warns(CostWarning, match="still running"):
        SageMakerEndpoint("dogclf-forgotten", session=object())
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        SageMakerEndpoint("dogclf-kept", session=object()).keep()
        SageMakerEndpoint("dogclf-attached", session=object(), owned=False)
        gc.collect()


# -- the runtime client's requests, answered by the handler in-process ----------------------------------------------
class _HandlerRuntime:
    """A sagemaker-runtime client whose InvokeEndpoint validates its parameters against the real API model and
    answers through the handler, as the container does (moto's invoke_endpoint cannot take binary bodies)."""

    def __init__(self, model):
        import boto3

        self.model = model
        self.requests = []
        self._api = boto3.client("sagemaker-runtime", region_name="us-east-1").meta.service_model

    def invoke_endpoint(self, **params):
        from botocore.exceptions import ClientError
        from botocore.validate import validate_parameters

        validate_parameters(params, self._api.operation_model("InvokeEndpoint").input_shape)
        self.requests.append(params)
        headers = {"Content-Type": params["ContentType"], "Accept": params.get("Accept", "*/*")}
        if "CustomAttributes" in params:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = params["CustomAttributes"]
        try:
            data = handler.input_fn(params["Body"], params["ContentType"], _Context(headers))
            body, content_type = handler.output_fn(handler.predict_fn(data, self.model), headers["Accept"])
        except InvalidRequestError as exc:
            message = json.dumps({"error": exc.code, "message": str(exc)})
            raise ClientError({"Error": {"Code": "ModelError", "Message": "Received client error"},
                               "OriginalStatusCode": exc.status_code, "OriginalMessage": message},
                              "InvokeEndpoint") from None
        return {"Body": io.BytesIO(body), "ContentType": content_type}


def test_sagemaker_endpoint_requests_answered_by_the_handler(artifact):
    from dogclf.backends.sagemaker.serving import SageMakerEndpoint

    model = handler.model_fn(artifact)
    runtime = _HandlerRuntime(model)
    endpoint = SageMakerEndpoint("dogclf-ep", session=None, owned=False, runtime_client=runtime,
                                 labels=model.labels)
    body = synthetic_photo(100, 80, seed=2)
    predictor = BreedPredictor(endpoint, k=2)
    remote = predictor.predict(body)
    local = BreedPredictor(artifact, k=2).predict(body)
    assert remote.index == local.index and remote.probability == pytest.approx(local.probability, abs=1e-5)
    sent = runtime.requests[-1]
    assert sent == {"EndpointName": "dogclf-ep", "Body": body, "ContentType": "image/jpeg",
                    "Accept": "application/json", "CustomAttributes": "k=2"}
    logits, content_type = endpoint.invoke(body, "image/jpeg", accept="application/x-npy")
    assert content_type == "application/x-npy" and np.load(io.BytesIO(logits)).shape == (1, 3)
    with pytest.raises(InvalidRequestError) as info:
        endpoint.invoke(b"not an image", "image/jpeg")
    assert info.value.status_code == 415 and info.value.code == "unsupported_image"


@pytest.mark.slow
def test_deploy_an_s3_training_output_repacks_it_with_the_code(aws, artifact, tmp_path):
    import boto3

    from dogclf.models import pack

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dogclf-training-output")
    s3.upload_file(str(pack(artifact, tmp_path / "model.tar.gz")), "dogclf-training-output", "job/output/model.tar.gz")
    backend = get_backend("sagemaker", role=ROLE, bucket="dogclf-training-output")
    endpoint = EndpointDeployer(endpoint_name="dogclf-from-s3", wait_poll_s=0.2, backend=backend).deploy(
        "s3://dogclf-training-output/job/output/model.tar.gz")
    with endpoint:
        container = boto3.client("sagemaker").describe_model(ModelName="dogclf-from-s3")["PrimaryContainer"]
        assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
        assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
        assert container["ModelDataUrl"] != "s3://dogclf-training-output/job/output/model.tar.gz"  # a repacked copy
        bucket, key = container["ModelDataUrl"][len("s3://"):].split("/", 1)
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as archive:
            names = set(archive.getnames())
        assert {"model.pt", "labels.json", "config.json", "code/inference.py",
                "code/dogclf/serving/handler.py"} <= names


def test_deploy_an_s3_training_output_with_the_onnx_runtime_exports_and_packs_it(aws, artifact, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs dogclf[onnx]")
    import boto3
    import onnxruntime

    from dogclf.models import pack

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dogclf-training-output")
    s3.upload_file(str(pack(artifact, tmp_path / "model.tar.gz")), "dogclf-training-output", "job/output/model.tar.gz")
    backend = get_backend("sagemaker", role=ROLE, bucket="dogclf-training-output")
    endpoint = EndpointDeployer(endpoint_name="dogclf-onnx-from-s3", wait_poll_s=0.2, runtime="onnx",
                                backend=backend).deploy("s3://dogclf-training-output/job/output/model.tar.gz")
    with endpoint:
        container = boto3.client("sagemaker").describe_model(ModelName="dogclf-onnx-from-s3")["PrimaryContainer"]
        assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
        bucket, key = container["ModelDataUrl"][len("s3://"):].split("/", 1)
        assert key.startswith("dogclf/endpoints/dogclf-onnx-from-s3/")  # downloaded, exported, packed, uploaded
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as archive:
            names = set(archive.getnames())
            inference = archive.extractfile("code/inference.py").read().decode()
            requirements = archive.extractfile("code/requirements.txt").read().decode()
    assert {"model.pt", "runtimes/model.onnx", "runtimes/manifest.json", "code/inference.py"} <= names
    assert "RUNTIME = 'onnx'" in inference
    assert requirements.split() == [f"onnxruntime=={onnxruntime.__version__}"]
