"""Shared fixtures. Tests that need ``../shared`` skip with a reason when it is absent (a user's own clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# Tests share 2 cores (and with CI helpers); training jobs they start inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


_JOB_ENVIRONMENT = ("DOGCLF_DEBUG", "SMDEBUG_CONFIG_FILE_PATH", "SMPROFILER_CONFIG_PATH")


@pytest.fixture(autouse=True)
def _no_job_environment_leaks(request):
    """Fail a test that leaves a job's Debugger settings in the environment: later training in this process (and
    the jobs it starts) would pick them up and ask for Debugger support they never meant to."""
    before = {k: os.environ.get(k) for k in _JOB_ENVIRONMENT}
    yield
    after = {k: os.environ.get(k) for k in _JOB_ENVIRONMENT}
    if after != before:
        for k, v in before.items():  # put it back so one leak fails one test, not every later one
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pytest.fail(f"{request.node.nodeid} changed the job environment: {before} -> {after}", pytrace=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the project; skips the test when it is not there."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"needs ../shared beside the project ({SHARED} not found)")
    return SHARED


@pytest.fixture(scope="session")
def pet_images(shared_dir: Path) -> Path:
    """40 real photos (30 dogs of 16 dogImages breeds, 10 non-dogs)."""
    return shared_dir / "data" / "pet_images"


@pytest.fixture(scope="session")
def seed_photos(shared_dir: Path) -> Path:
    """The seven photos the seed notebook sent to its endpoint."""
    return shared_dir / "seed" / "test-photos-of-dogs"


# -- AWS, emulated: moto in server mode on 127.0.0.1 (a real HTTP endpoint, never a mocked client object) --------
@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A moto server on 127.0.0.1 for the whole session; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path_factory):
    """Point boto3 and the SageMaker SDK at the moto server with fake credentials; state is reset after the test.

    Yields the endpoint URL. SDK telemetry is switched off through ``SAGEMAKER_USER_CONFIG_OVERRIDE``.
    """
    import requests

    config = tmp_path_factory.mktemp("sagemaker-config") / "config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    for key, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config.parent / "no-such-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config.parent / "no-such-aws-credentials"))
    yield moto_server
    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
