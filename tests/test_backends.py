from __future__ import annotations

import sys
import textwrap

import pytest

from dogclf.backends import Backend, get_backend, list_backends
from dogclf.backends.local import LocalBackend
from dogclf.backends.sagemaker import SageMakerBackend
from dogclf.errors import BackendLoadError, ConfigError, DogclfError, UnknownBackendError


def _install_plugin(tmp_path, monkeypatch, name: str, target: str, module_source: str) -> None:
    """Register a backend exactly as a third-party distribution does: a dist-info folder with entry_points.txt."""
    module = target.split(":")[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(module_source))
    dist = tmp_path / "thirdparty_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[dogclf.backends]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_registered_through_entry_points():
    assert {"local", "sagemaker"} <= set(list_backends())
    assert isinstance(get_backend("local"), LocalBackend)
    assert isinstance(get_backend("sagemaker", role="arn:aws:iam::1:role/x"), SageMakerBackend)


def test_default_is_local_and_env_overrides(monkeypatch):
    monkeypatch.delenv("DOGCLF_BACKEND", raising=False)
    assert get_backend().name == "local"
    monkeypatch.setenv("DOGCLF_BACKEND", "sagemaker")
    assert get_backend().name == "sagemaker"


def test_options_reach_the_constructor(tmp_path):
    backend = get_backend("local", root=tmp_path)
    assert backend.root == tmp_path
    assert not any(tmp_path.iterdir()), "constructing a backend must not touch the disk"


def test_backend_objects_pass_through():
    backend = LocalBackend()
    assert get_backend(backend) is backend
    assert isinstance(backend, Backend) and isinstance(SageMakerBackend(), Backend)
    with pytest.raises(ConfigError, match="only when the backend is given by name"):
        get_backend(backend, root="/tmp")
    with pytest.raises(ConfigError, match="got int"):
        get_backend(42)  # type: ignore[arg-type]


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'kubernetes'.*'local', 'sagemaker'") as info:
        get_backend("kubernetes")
    assert isinstance(info.value, KeyError)


def test_third_party_backend_registers_like_the_builtins(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "fake", "thirdparty_backend:FakeBackend", """
        class FakeBackend:
            name = "fake"
            def __init__(self, region="here"):
                self.region = region
            def train(self, spec, **kwargs):
                return ("trained", spec)
            def deploy(self, artifact, **kwargs):
                return ("deployed", artifact)
    """)
    assert "fake" in list_backends()
    backend = get_backend("fake", region="there")
    assert backend.region == "there" and isinstance(backend, Backend)
    assert backend.train("spec") == ("trained", "spec")


def test_broken_plugins_give_clear_errors(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "broken", "broken_backend:Missing", """
        import math
        class Incomplete:
            name = "incomplete"
    """)
    with pytest.raises(BackendLoadError, match="'broken' .entry point broken_backend:Missing.*failed to load"):
        get_backend("broken")
    (tmp_path / "thirdparty_backend-0.1.dist-info" / "entry_points.txt").write_text(
        "[dogclf.backends]\nincomplete = broken_backend:Incomplete\n")
    with pytest.raises(BackendLoadError, match=r"missing \['train', 'deploy'\]") as info:
        get_backend("incomplete")
    assert isinstance(info.value, DogclfError) and isinstance(info.value, ImportError)
    with pytest.raises(BackendLoadError, match="could not be created"):
        get_backend("local", no_such_option=1)


def test_local_root_is_made_absolute_at_construction(tmp_path, monkeypatch):
    # Jobs run in other working directories (the toolkit's SAGEMAKER_BASE_DIR, child processes): a relative
    # root must keep meaning the folder it named when the backend was made.
    monkeypatch.chdir(tmp_path)
    backend = LocalBackend("backend-root")
    assert backend.root == tmp_path / "backend-root" and backend.root.is_absolute()
    assert not (tmp_path / "backend-root").exists()
