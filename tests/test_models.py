"""ResNetBreedModel: config validation, weight loading through torchvision's cache, freeze policies, artifacts."""

from __future__ import annotations

import dataclasses

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf.errors import ArtifactError, ConfigError, DogclfError, NotFittedError, UnknownLabelSetError, \
    UnsafeArchiveError
from dogclf.labels import BreedLabels, get_labels
from dogclf.models import (
    BACKBONES,
    FREEZE_POLICIES,
    ModelConfig,
    ResNetBreedModel,
    eval_transform,
    forward_features,
    pack,
    unpack,
)
from dogclf.models.testing import fake_weights_path, place_fake_weights

torch.set_num_threads(1)
LABELS = ["Beagle", "Pug", "Boxer"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def small(**kw):
    kw.setdefault("backbone", "resnet18")
    kw.setdefault("weights", None)
    return ResNetBreedModel(LABELS, **kw)


# -- config ----------------------------------------------------------------------------------------------------
@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in BACKBONES))
@settings(max_examples=30, deadline=None)
def test_unknown_backbone_names_value_and_choices(name):
    with pytest.raises(ConfigError) as err:
        ResNetBreedModel(LABELS, backbone=name, weights=None)
    assert repr(name) in str(err.value) and "resnet50" in str(err.value)


@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in FREEZE_POLICIES))
@settings(max_examples=30, deadline=None)
def test_unknown_freeze_names_value_and_choices(name):
    with pytest.raises(ConfigError) as err:
        ResNetBreedModel(LABELS, backbone="resnet18", weights=None, freeze=name)
    assert repr(name) in str(err.value) and "'last-block'" in str(err.value)


@pytest.mark.parametrize("kw", [dict(weights="IMAGENET1K_V2"),  # resnet18 has only V1
                                dict(weights="IMAGENET9K"), dict(dropout=1.0), dict(dropout=-0.1),
                                dict(dropout="0.5")])
def test_bad_config_values(kw):
    with pytest.raises(ConfigError):
        ResNetBreedModel(LABELS, **{"backbone": "resnet18", "weights": None, **kw})


def test_config_is_frozen_and_init_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ResNetBreedModel("no-such-label-set", backbone="resnet50", weights="IMAGENET1K_V2")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.backbone = "resnet18"  # type: ignore[misc]
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "x")
    with pytest.raises(UnknownLabelSetError):
        model.build()


def test_config_round_trips_through_its_json_document():
    cfg = ModelConfig(backbone="resnet34", weights="IMAGENET1K_V1", freeze="last-block", dropout=0.25)
    doc = json.loads(json.dumps(cfg.to_dict(7)))
    assert doc["format"] == "dogclf.model/2" and doc["num_classes"] == 7
    assert doc["preprocess"] == {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
    assert doc["backbone_info"] == {"family": "resnet", "feature_dim": 512, "head": "fc",
                                    "module": "dogclf.models.backbones.resnet"}
    assert ModelConfig.from_dict(doc) == (cfg, 7)


# -- building --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["dogimages-133", get_labels("dogimages-133"), LABELS])
def test_head_has_one_output_per_label(labels):
    model = ResNetBreedModel(labels, backbone="resnet18", weights=None).build()
    assert model.module_.fc.out_features == len(model.labels_)
    assert isinstance(model.labels_, BreedLabels)


def test_named_weights_load_through_torchvision_cache(torch_home):
    ckpt = place_fake_weights("resnet18", "IMAGENET1K_V1", torch_home, seed=3)
    assert ckpt == fake_weights_path("resnet18", "IMAGENET1K_V1", torch_home)
    assert ckpt.name == "resnet18-f37072fd.pth" and ckpt.parent == torch_home / "hub" / "checkpoints"
    expected = torch.load(ckpt, weights_only=True)
    model = small(weights="IMAGENET1K_V1").build()
    got = model.module_.state_dict()
    assert torch.equal(got["conv1.weight"], expected["conv1.weight"])
    assert torch.equal(got["layer4.1.bn2.running_var"], expected["layer4.1.bn2.running_var"])
    assert got["fc.weight"].shape == (3, 512)  # the 1000-class fc was dropped


def test_missing_cached_weights_is_a_clear_error(torch_home, monkeypatch):
    # No checkpoint in the cache and no network: the error names the weights and the cache folder.
    import torch.hub

    def no_download(url, dst, *a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(ArtifactError) as err:
        small(weights="IMAGENET1K_V1").build()
    assert "IMAGENET1K_V1" in str(err.value) and str(torch_home) in str(err.value)


def test_local_checkpoint_path(tmp_path):
    src = small().build()
    path = tmp_path / "backbone.pth"
    torch.save(src.module_.state_dict(), path)
    model = small(weights=str(path)).build()
    for k, v in src.module_.state_dict().items():
        assert torch.equal(model.module_.state_dict()[k], v), k


def test_corrupt_local_checkpoint(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="corrupt"):
        small(weights=str(path)).build()
    with pytest.raises(ArtifactError, match="does not exist"):
        small(weights=str(tmp_path / "missing.pth")).build()


@pytest.mark.parametrize("freeze,trainable", [("head", {"fc"}), ("last-block", {"fc", "layer4"}),
                                              ("full", {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4",
                                                        "fc"})])
def test_freeze_policies(freeze, trainable):
    model = small(freeze=freeze, dropout=0.5).build()
    seen = {name.split(".")[0] for name, p in model.module_.named_parameters() if p.requires_grad}
    assert seen == trainable
    module = model.set_train_mode()
    assert module.fc.training
    assert module.layer1.training == (freeze == "full")
    assert isinstance(module.fc[0], torch.nn.Dropout) and module.fc[0].p == 0.5


def test_forward_features_feed_the_head():
    model = small().build()
    model.module_.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model.module_.fc(forward_features(model.module_, x)), model.module_(x), atol=1e-5)


@given(st.integers(40, 400), st.integers(40, 400), st.sampled_from(["RGB", "L"]))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_transform_gives_normalised_centre_crop(w, h, mode):
    img = Image.new(mode, (w, h), color=128 if mode == "L" else (124, 116, 104))
    out = small().transform()(img.convert("RGB"))
    assert out.shape == (3, 224, 224)
    # (124,116,104)/255 is ~ the ImageNet mean, so it normalises to ~0.
    if mode == "RGB":
        assert out.abs().max() < 0.02
    assert eval_transform({"resize": 64, "crop": 32, "mean": [0, 0, 0], "std": [1, 1, 1]})(img.convert("RGB")).shape \
        == (3, 32, 32)


# -- artifacts -------------------------------------------------------------------------------------------------
def test_save_load_round_trip_predicts_the_same(tmp_path):
    model = small(dropout=0.3, freeze="last-block").build()
    path = model.save(tmp_path / "artifact")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "labels.json", "model.pt"]
    config = json.loads((path / "config.json").read_text())
    assert config["num_classes"] == 3 and config["freeze"] == "last-block" and config["dropout"] == 0.3
    assert BreedLabels.from_json((path / "labels.json").read_text()).names == tuple(LABELS)
    loaded = ResNetBreedModel.load(path)
    assert not loaded.module_.training and loaded.freeze == "last-block"
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.predict_logits(x), model.predict_logits(x))


def test_truncated_model_pt_is_an_artifact_error(tmp_path):
    path = small().build().save(tmp_path / "a")
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt"):
        ResNetBreedModel.load(path)


@pytest.mark.parametrize("missing", ["model.pt", "labels.json", "config.json"])
def test_missing_artifact_part(tmp_path, missing):
    path = small().build().save(tmp_path / "a")
    (path / missing).unlink()
    with pytest.raises(ArtifactError, match=missing):
        ResNetBreedModel.load(path)


def test_artifact_label_count_mismatch(tmp_path):
    path = small().build().save(tmp_path / "a")
    BreedLabels(["A", "B"]).save(path / "labels.json")
    with pytest.raises(ArtifactError, match="2 breeds"):
        ResNetBreedModel.load(path)


def test_state_dict_for_other_backbone_is_refused(tmp_path):
    path = small().build().save(tmp_path / "a")
    config = json.loads((path / "config.json").read_text())
    config["backbone"] = "resnet34"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="does not fit"):
        ResNetBreedModel.load(path)


def test_pack_and_load_model_tar_gz(tmp_path):
    code = tmp_path / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    (code / "__pycache__" / "x.pyc").write_bytes(b"x")
    model = small().build()
    tar_path = model.pack(tmp_path / "out" / "model.tar.gz", code_dir=code)
    with tarfile.open(tar_path) as tar:
        names = set(tar.getnames())
    assert {"model.pt", "labels.json", "config.json", "code/inference.py"} <= names
    assert not any("__pycache__" in n for n in names)
    loaded = ResNetBreedModel.load(tar_path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded.predict_logits(x), model.predict_logits(x))
    dest = unpack(tar_path, tmp_path / "unpacked")
    assert (dest / "code" / "inference.py").read_text().startswith("def model_fn")


def _tar_with(tmp_path: Path, add) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        add(tar)
    return path


def _member(name, type_=tarfile.REGTYPE, linkname=""):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = type_
        info.linkname = linkname
        data = b"x" if type_ == tarfile.REGTYPE else b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)
    return add


@pytest.mark.parametrize("add", [
    _member("/etc/evil"), _member("../evil"), _member("code/../../evil"),
    _member("link", tarfile.SYMTYPE, "/etc/passwd"), _member("hard", tarfile.LNKTYPE, "config.json"),
    _member("dev", tarfile.CHRTYPE), _member("fifo", tarfile.FIFOTYPE),
], ids=["absolute", "dotdot", "nested-dotdot", "symlink", "hardlink", "device", "fifo"])
def test_unsafe_archives_are_refused_before_extraction(tmp_path, add):
    evil = _tar_with(tmp_path, add)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        unpack(evil, dest)
    assert not dest.exists()
    with pytest.raises(UnsafeArchiveError):
        ResNetBreedModel.load(evil)
    assert issubclass(UnsafeArchiveError, DogclfError)


def test_not_a_tar_is_an_artifact_error(tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ArtifactError):
        ResNetBreedModel.load(bad)


def test_pack_function_refuses_code_clash(tmp_path):
    path = small().build().save(tmp_path / "a")
    (path / "code").mkdir()
    (tmp_path / "c").mkdir()
    with pytest.raises(ArtifactError, match="code"):
        pack(path, tmp_path / "m.tar.gz", code_dir=tmp_path / "c")
    assert not (tmp_path / "m.tar.gz").exists()
    assert not any(p.name.startswith(".m.tar.gz") for p in tmp_path.iterdir())
    os.rmdir(path / "code")


def test_fake_weights_with_calibrated_batchnorm(tmp_path):
    plain = torch.load(place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "a"), weights_only=True)
    calibrated = torch.load(place_fake_weights("resnet18", "IMAGENET1K_V1", tmp_path / "b", calibrate_batchnorm=True),
                            weights_only=True)
    assert torch.equal(plain["conv1.weight"], calibrated["conv1.weight"])  # same seed, same random init
    assert torch.all(plain["bn1.running_var"] == 1)
    assert not torch.allclose(calibrated["bn1.running_var"], plain["bn1.running_var"])
