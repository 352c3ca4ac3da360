"""The local endpoint: a real HTTP server process on 127.0.0.1, dynamic batching, limits and bad requests."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from dogclf.errors import ArtifactError, ConfigError, EndpointError, InvalidRequestError, NotFittedError
from dogclf.serving import DeployConfig, EndpointDeployer, LocalEndpoint, ServerConfig, handler
from dogclf.serving.server import create_app
from dogclf.serving.testing import make_artifact, running_app, synthetic_photo

torch.set_num_threads(1)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("server") / "model")


# Every test of the endpoint runs against the eager runtime and ONNX Runtime (fp32; the export takes a few seconds
# on the tiny model and the synthetic check images). int8 serves through the same OnnxModule path.
RUNTIMES = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="needs dogclf[onnx]"))]


@pytest.fixture(scope="module", params=RUNTIMES)
def endpoint(artifact, request):
    deployer = EndpointDeployer(max_batch_size=8, max_delay_ms=40, max_request_bytes=2_000_000, workers=2,
                                intra_op_threads=1, runtime=request.param)
    ep = deployer.deploy(artifact)
    yield ep
    ep.delete()


def _post(ep, body, content_type="image/jpeg", **kwargs):
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
    return requests.post(f"{ep.url}/invocations", data=body, headers=headers, timeout=60, **kwargs)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_ping_and_a_good_request(endpoint, artifact):
    assert endpoint.url.startswith("http://127.0.0.1:")
    assert requests.get(f"{endpoint.url}/ping", timeout=10).status_code == 200
    body = synthetic_photo()
    response = _post(endpoint, body, params={"k": "2"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    (pred,) = response.json()["predictions"]
    assert pred["breed"] in endpoint.labels.names and len(pred["top_k"]) == 2
    # the two largest of the softmax of the model's logits, in order (computed here, in-process)
    model = handler.model_fn(artifact)
    logits = handler.predict_fn(handler.input_fn(body, "image/jpeg"), model).logits[0]
    probs = torch.softmax(logits.double(), dim=0)
    top = torch.topk(probs, 2)
    assert [p["index"] for p in pred["top_k"]] == top.indices.tolist()
    assert [p["probability"] for p in pred["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert pred["index"] == top.indices[0] and pred["probability"] == pytest.approx(top.values[0].item(), abs=1e-5)
    # all three classes: a whole distribution, summing to 1
    (full,) = _post(endpoint, body, params={"k": "3"}).json()["predictions"]
    assert sum(p["probability"] for p in full["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_responses_match_the_handler_in_process(endpoint, artifact):
    runtime = endpoint.stats()["runtime"]
    assert runtime == endpoint.config.runtime  # the runtime asked for, not a fallback
    model = handler.load_model(artifact, runtime)
    body = synthetic_photo(120, 80, seed=3)
    remote = np.load(io.BytesIO(_post(endpoint, body, headers={"Accept": "application/x-npy"}).content))
    local = handler.predict_fn(handler.input_fn(body, "image/jpeg"), model).logits.numpy()
    assert remote.shape == (1, 3) and np.allclose(remote, local, atol=1e-4)


def _gif():
    from PIL import Image

    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _bomb():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = [
    ("truncated jpeg", lambda: synthetic_photo(300, 200)[:2000], "image/jpeg", {}, 400, "corrupt_image"),
    ("corrupt png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", {}, 400, "corrupt_image"),
    ("zero bytes", lambda: b"", "image/jpeg", {}, 400, "empty_body"),
    ("not an image", lambda: b"hello world", "application/x-image", {}, 415, "unsupported_image"),
    ("decompression bomb", _bomb, "image/png", {}, 413, "image_too_large"),
    ("animated gif", _gif, "application/x-image", {}, 400, "animated_image"),
    ("unsupported content type", lambda: b"a,b\n1,2", "text/csv", {}, 415, "unsupported_content_type"),
    ("npy shape", lambda: _npy(np.zeros((2, 3, 32, 32), np.float32)), "application/x-npy", {}, 400, "bad_shape"),
    ("npy dtype", lambda: _npy(np.zeros((3, 224, 224), np.uint8)), "application/x-npy", {}, 400, "bad_dtype"),
    ("k too large", lambda: synthetic_photo(), "image/jpeg", {"params": {"k": "4"}}, 400, "bad_k"),
    ("k not a number", lambda: synthetic_photo(), "image/jpeg", {"params": {"k": "two"}}, 400, "bad_k"),
    ("unacceptable accept", lambda: synthetic_photo(), "image/jpeg", {"headers": {"Accept": "text/csv"}}, 406,
     "not_acceptable"),
    ("body over the limit", lambda: b"\xff\xd8\xff" + b"\x00" * 2_100_000, "image/jpeg", {}, 413,
     "payload_too_large"),
]


@pytest.mark.parametrize("name,make,content_type,extra,status,code", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(endpoint, name, make, content_type, extra, status,
                                                               code):
    response = _post(endpoint, make(), content_type, **extra)
    assert response.status_code == status, response.text
    doc = response.json()
    assert doc["error"] == code and doc["message"]
    good = _post(endpoint, synthetic_photo())
    assert good.status_code == 200 and good.json()["predictions"]


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("I;16", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
                                      ("L", "JPEG")])
def test_unusual_but_valid_images_are_served(endpoint, mode, fmt):
    response = _post(endpoint, synthetic_photo(50, 40, mode=mode, fmt=fmt), "image/png" if fmt == "PNG" else
                     "image/jpeg")
    assert response.status_code == 200, response.text


def test_concurrent_requests_are_each_answered_as_if_alone(endpoint, artifact):
    """16 requests from 8 threads: whichever of them share forward passes (that depends on timing; the merging
    itself is checked deterministically in test_queued_requests_share_forward_passes_in_order), each gets its own
    answer, the same as the handler gives in-process, and every image is counted once."""
    model = handler.model_fn(artifact)
    before = endpoint.stats()
    bodies = [synthetic_photo(64, 64, seed=i) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: endpoint.invoke(b, "image/jpeg", accept="application/x-npy"), bodies))
    after = endpoint.stats()
    for body, (answer, content_type) in zip(bodies, answers):
        expected = handler.predict_fn(handler.input_fn(body, "image/jpeg"), model).logits.numpy()
        assert content_type == "application/x-npy" and np.allclose(np.load(io.BytesIO(answer)), expected, atol=1e-4)
    assert after["images"] - before["images"] == 16
    assert 1 <= after["batches"] - before["batches"] <= 16 and after["queued"] == 0


def test_client_errors_are_typed(endpoint):
    with pytest.raises(InvalidRequestError) as info:
        endpoint.invoke(b"", "image/jpeg")
    assert info.value.status_code == 400 and info.value.code == "empty_body"
    body, content_type = endpoint.invoke(synthetic_photo(), "image/jpeg", accept="application/x-npy")
    assert content_type == "application/x-npy" and np.load(io.BytesIO(body)).shape == (1, 3)


def test_deploy_stop_and_idempotent_delete(artifact, tmp_path):
    from dogclf.models import pack

    tar = pack(artifact, tmp_path / "model.tar.gz")
    deployer = EndpointDeployer(port=0)
    with pytest.raises(NotFittedError):
        deployer.endpoint_
    with deployer.deploy(tar) as ep:
        assert deployer.endpoint_ is ep and ep.is_running and ep.ping()
        proc = ep._proc
        assert ep.invoke(synthetic_photo(), "image/png")[1] == "application/json"
    assert ep.deleted and not ep.is_running and proc.returncode is not None
    assert not ep.ping()
    ep.delete()  # idempotent
    with pytest.raises(EndpointError, match="deleted"):
        ep.invoke(synthetic_photo(), "image/jpeg")


def test_a_server_that_cannot_start_reports_its_log(tmp_path, artifact):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("labels.json", "config.json"):
        (broken / name).write_bytes((artifact / name).read_bytes())
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EndpointError, match="exited") as info:
        LocalEndpoint(broken, ServerConfig(), startup_timeout_s=60).start()
    assert "model.pt" in str(info.value)
    with pytest.raises(ArtifactError):
        LocalEndpoint(tmp_path / "missing").start()


@pytest.mark.parametrize("options", [{"max_batch_size": 0}, {"port": 70000}, {"max_delay_ms": -1},
                                     {"request_timeout_s": 0}, {"workers": "2"}, {"host": ""},
                                     {"initial_instance_count": 0}, {"instance_type": "m5.large"},
                                     {"endpoint_name": "bad name!"}, {"no_such_option": 1}])
def test_bad_deploy_options_are_refused(options):
    with pytest.raises(ConfigError):
        EndpointDeployer(**options).resolved_config()


def test_deploy_config_fields_and_server_overrides():
    config = EndpointDeployer(DeployConfig(instance_type="ml.c5.xlarge"), max_batch_size=16).resolved_config()
    assert config.instance_type == "ml.c5.xlarge" and config.server.max_batch_size == 16
    assert config.server.host == "127.0.0.1"


# -- in-thread app: timeouts and batching arithmetic ----------------------------------------------------------------
class _Slow(torch.nn.Module):
    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x):
        time.sleep(self.delay)
        return self.fc(x.mean(dim=(2, 3)))


def _served(delay):
    from dogclf.labels import BreedLabels

    return handler.ServedModel(module=_Slow(delay).eval(), labels=BreedLabels(["A", "B", "C"]))


def test_request_timeout_gives_504_and_the_server_recovers():
    app = create_app(_served(0.6), ServerConfig(request_timeout_s=0.3, max_delay_ms=0))
    npy = _npy(np.zeros((1, 3, 224, 224), np.float32))
    with running_app(app) as url:
        response = requests.post(f"{url}/invocations", data=npy, headers={"Content-Type": "application/x-npy"},
                                 timeout=30)
        assert response.status_code == 504 and response.json()["error"] == "timeout"
    app = create_app(_served(0.0), ServerConfig(request_timeout_s=60))
    with running_app(app) as url:
        response = requests.post(f"{url}/invocations", data=npy, headers={"Content-Type": "application/x-npy"},
                                 timeout=30)
        assert response.status_code == 200


class _Gated(torch.nn.Module):
    """Each forward pass waits for ``gate``; ``entered`` is set when one has started."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def forward(self, x):
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return self.fc(x.mean(dim=(2, 3)))


def test_queued_requests_share_forward_passes_in_order():
    """While one pass runs, requests of 2, 1, 3 and 1 images queue (in that order, checked through /stats); then
    they take exactly two passes of at most 4 images, in arrival order ([2, 1] as the 3 does not fit, then
    [3, 1]), and every request gets its own rows: the same as running it alone. No timing is involved."""
    from dogclf.labels import BreedLabels

    module = _Gated().eval()
    model = handler.ServedModel(module=module, labels=BreedLabels(["A", "B", "C"]))
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(n, 3, 224, 224)).astype(np.float32) for n in (1, 2, 1, 3, 1)]
    with torch.no_grad():
        expected = [module(torch.from_numpy(a)).numpy() for a in arrays]
    app = create_app(model, ServerConfig(max_batch_size=4, max_delay_ms=0))
    with running_app(app) as url, ThreadPoolExecutor(5) as pool:
        def send(a):
            r = requests.post(f"{url}/invocations", data=_npy(a), timeout=120,
                              headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
            assert r.status_code == 200, r.text
            return np.load(io.BytesIO(r.content))

        def stats():
            return requests.get(f"{url}/stats", timeout=30).json()

        module.gate.clear()
        module.entered.clear()
        futures = [pool.submit(send, arrays[0])]
        deadline = time.monotonic() + 120  # bounds for a hung server, not timing claims
        while not module.entered.wait(0.01):  # the first pass runs (and waits at the gate) with its one image
            assert not futures[0].done(), futures[0].result()
            assert time.monotonic() < deadline
        for queued, array in enumerate(arrays[1:], 1):
            futures.append(pool.submit(send, array))
            deadline = time.monotonic() + 120
            while stats()["queued"] != queued:
                assert not futures[-1].done(), futures[-1].result()
                assert time.monotonic() < deadline, stats()
                time.sleep(0.01)
        module.gate.set()
        got = [f.result() for f in futures]
        final = stats()
    for g, e in zip(got, expected):
        assert g.shape == e.shape and np.allclose(g, e, atol=1e-5)
    assert (final["batches"], final["images"], final["queued"]) == (3, 8, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()
    except FileNotFoundError:
        return False


@pytest.mark.faults
def test_server_stops_when_the_process_that_started_it_is_killed(artifact):
    import os
    import signal
    import subprocess
    import sys

    script = (f"import os\nfrom dogclf.serving import EndpointDeployer\n"
              f"ep = EndpointDeployer(backend='local').deploy({str(artifact)!r})\n"
              f"print(ep.pid, ep.log_path.parent, flush=True)\nos.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid, workdir = done.stdout.split()
    pid = int(pid)
    deadline = time.monotonic() + 30  # a bound for a hung server, not a timing claim (it polls every second)
    while (_alive(pid) or os.path.exists(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the orphaned server kept running after its parent was killed")
    assert not os.path.exists(workdir)  # and it removed its temporary folder (model, log) on its way out


def test_server_command_line_options_become_a_server_config(monkeypatch, artifact):
    from dogclf.serving import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda model_dir, config, sock=None: seen.update(dir=model_dir, config=config))
    argv = [str(artifact), "--port", "8081", "--max-batch-size", "16", "--max-delay-ms", "2.5", "--no-batching",
            "--request-timeout-s", "30", "--config", '{"workers": 3}']
    assert server.main(argv) == 0
    config = seen["config"]
    assert seen["dir"] == str(artifact)
    assert (config.port, config.max_batch_size, config.max_delay_ms, config.batching, config.request_timeout_s,
            config.workers, config.host) == (8081, 16, 2.5, False, 30.0, 3, "127.0.0.1")
