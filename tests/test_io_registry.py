"""The atomic-write helper and the registry helper every extension point uses."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, strategies as st

from dogclf._io import atomic_path, atomic_write, atomic_write_json
from dogclf._registry import Registry
from dogclf.errors import ConfigError, DuplicateError, NotFoundError, PluginLoadError


def test_atomic_write_bytes_text_and_stream(tmp_path):
    assert atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "t.txt", "héllo").read_text("utf-8") == "héllo"
    assert atomic_write(tmp_path / "s.bin", lambda fh: fh.write(b"xyz")).read_bytes() == b"xyz"
    atomic_write_json(tmp_path / "j.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "s.bin", "t.txt"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def broken(fh):
        fh.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
            raise KeyError("stop")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]


@given(st.binary(max_size=4096))
def test_atomic_write_round_trips_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rt") / "f"
    assert atomic_write(path, data).read_bytes() == data


def test_registry_register_get_list_unregister():
    reg: Registry = Registry("colour")
    reg.register("red", "#f00")

    @reg.register("green")
    def green():
        return "#0f0"

    @reg.register
    def blue():
        return "#00f"

    assert reg.get("red") == "#f00" and reg.get("green")() == "#0f0" and reg.get("blue")() == "#00f"
    assert reg.names() == ["blue", "green", "red"] and reg.names("g*") == ["green"]
    with pytest.raises(DuplicateError, match="'red' is already registered"):
        reg.register("red", "#e00")
    reg.register("red", "#e00", overwrite=True)
    assert reg.get("red") == "#e00"
    reg.unregister("red")
    with pytest.raises(NotFoundError, match=r"unknown colour 'red'.*registered: 'blue', 'green'"):
        reg.get("red")
    with pytest.raises(NotFoundError, match="did you mean 'green'"):
        reg.get("gren")
    with pytest.raises(ConfigError):
        reg.register("", 1)


def test_registry_lazy_entries_load_once_and_failures_name_the_source():
    calls = []
    reg: Registry = Registry("thing")
    reg.register_lazy("a", lambda: calls.append(1) or "A", source="builtin a")
    assert calls == [] and "a" in reg
    assert reg.get("a") == "A" and reg.get("a") == "A" and calls == [1]

    def boom():
        raise ImportError("no module named 'nothing'")

    reg.register_lazy("b", boom, source="pkg.mod:B")
    with pytest.raises(PluginLoadError, match=r"thing 'b' \(pkg.mod:B\) failed to load: ImportError"):
        reg.get("b")


def test_registry_reads_its_entry_point_group():
    reg: Registry = Registry("backend", group="dogclf.backends")
    assert {"local", "sagemaker"} <= set(reg.names())
    assert reg.source("local") and "dogclf.backends.local:LocalBackend" in reg.source("local")
    assert reg.get("local").__name__ == "LocalBackend"
    reg.register("local", "mine", overwrite=True)  # in-process registration wins
    assert reg.get("local") == "mine"


def test_registry_refresh_finds_plugins_installed_later(monkeypatch):
    from importlib.metadata import EntryPoint

    import dogclf._registry as registry_mod

    found = [EntryPoint("first", "json:dumps", "dogclf.test-kind")]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: list(found))
    reg: Registry = Registry("thing", group="dogclf.test-kind")
    assert reg.names() == ["first"]
    found.append(EntryPoint("later", "json:loads", "dogclf.test-kind"))
    assert reg.names() == ["first"]  # read once ...
    reg.register("mine", 1)
    reg.refresh()  # ... until asked again; what is registered stays
    assert reg.names() == ["first", "later", "mine"] and reg.get("later") is json.loads
