"""The inference handler: decoding, preprocessing, validation and the four SageMaker functions."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf.errors import InvalidRequestError
from dogclf.serving import handler
from dogclf.serving.server import _Context
from dogclf.serving.testing import make_artifact, synthetic_photo

torch.set_num_threads(1)
# The decompression-bomb case is over Pillow's warning threshold too; the handler refuses it either way.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("handler") / "model")


@pytest.fixture(scope="module")
def model(artifact):
    return handler.model_fn(artifact)


# -- preprocessing: the handler decodes with dogclf.images (tests/test_images.py), as training does ---------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 500), height=st.integers(1, 500), seed=st.integers(0, 10),
       fmt=st.sampled_from(["JPEG", "PNG"]))
def test_image_requests_are_preprocessed_as_training_decodes_and_as_torchvision(width, height, seed, fmt):
    from torchvision import transforms

    from dogclf.images import Normalizer, Preprocess, load_image

    data = synthetic_photo(width, height, fmt=fmt, seed=seed)
    served = handler.input_fn(data, "image/jpeg").batch
    assert served.shape == (1, 3, 224, 224) and served.dtype == torch.float32
    trained = Normalizer(Preprocess())(load_image(data, Preprocess())[None])  # the training entry point's path
    assert torch.equal(served, trained)
    if fmt == "PNG":  # lossless, so torchvision sees the same pixels (JPEGs here are decoded at a reduced scale)
        reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        assert torch.allclose(served[0], reference(Image.open(io.BytesIO(data)).convert("RGB")), atol=1e-5)


def test_the_artifact_preprocessing_applies(tmp_path, monkeypatch):
    from dogclf.models import ResNetBreedModel

    monkeypatch.setattr(handler, "_PREPROCESS", {})  # model_fn publishes its model's; the other tests use the default

    path = ResNetBreedModel(["a", "b"], backbone="resnet18", weights=None,
                            preprocess={"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
                            ).build().save(tmp_path / "m")
    small = handler.model_fn(path)
    out = handler.input_fn(synthetic_photo(90, 80), "image/png", _Context({}, small))
    assert out.batch.shape == (1, 3, 64, 64)
    assert handler.input_fn(synthetic_photo(90, 80), "image/png").batch.shape == (1, 3, 64, 64)  # SageMaker's way
    assert float(out.batch.min()) >= -2.0 - 1e-6 and float(out.batch.max()) <= 2.0 + 1e-6  # (x - 0.5) / 0.25


# -- bad images -------------------------------------------------------------------------------------------------
def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def _bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 Mpx, a few kB compressed
    return buffer.getvalue()


BAD_IMAGES = {
    "empty_body": lambda: b"",
    "unsupported_image": lambda: b"this is not an image at all",
    "corrupt_image": lambda: synthetic_photo(200, 150, fmt="PNG")[:400],
    "image_too_large": _bomb_png,
    "animated_image": _animated_gif,
}


@pytest.mark.parametrize("code", sorted(BAD_IMAGES))
def test_bad_images_raise_4xx_naming_the_problem(code):
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(BAD_IMAGES[code](), "image/jpeg")
    assert info.value.code == code and 400 <= info.value.status_code < 500


def test_truncated_jpeg_is_refused():
    data = synthetic_photo(300, 200, fmt="JPEG")
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(data[: len(data) // 2], "image/jpeg")
    assert info.value.code == "corrupt_image" and "truncated" in str(info.value)


# -- content types, arrays, JSON, k ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(
    lambda t: t.split(";")[0].strip().lower() not in handler.CONTENT_TYPES))
def test_unknown_content_types_get_415(content_type):
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(b"\x00\x01", content_type)
    assert info.value.status_code == 415 and info.value.code == "unsupported_content_type"


@given(st.sampled_from(["image/jpeg", "IMAGE/JPEG", "image/jpeg; charset=binary", " application/x-image ",
                        "image/png"]))
@settings(max_examples=10, deadline=None)
def test_content_type_parameters_and_case_are_ignored(content_type):
    out = handler.input_fn(synthetic_photo(), content_type)
    assert tuple(out.batch.shape) == (1, 3, 224, 224)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=5))
def test_npy_with_the_wrong_shape_is_refused(shape):
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(_npy(np.zeros(shape, np.float32)), "application/x-npy")
    assert info.value.code == "bad_shape" and "(3, 224, 224)" in str(info.value)


@pytest.mark.parametrize("body,code", [
    (_npy(np.zeros((3, 224, 224), np.int64)), "bad_dtype"),
    (_npy(np.full((1, 3, 224, 224), np.nan, np.float32)), "bad_array"),
    (b"\x93NUMPY garbage", "bad_npy"),
    (_npy(np.array([{"a": 1}], dtype=object)), "bad_npy"),
])
def test_bad_npy_bodies(body, code):
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(body, "application/x-npy")
    assert info.value.code == code


def test_npy_and_json_instances_accept_one_or_many_images():
    one = np.random.default_rng(0).normal(size=(3, 224, 224)).astype(np.float32)
    assert handler.input_fn(_npy(one), "application/x-npy").batch.shape == (1, 3, 224, 224)
    many = np.stack([one, one * 0.5]).astype(np.float64)
    assert handler.input_fn(_npy(many), "application/x-npy").batch.dtype == torch.float32
    doc = {"instances": one[None].tolist(), "k": 2}
    out = handler.input_fn(json.dumps(doc), "application/json")
    assert out.k == 2 and torch.allclose(out.batch[0], torch.from_numpy(one))


def test_json_base64_images():
    b64 = base64.b64encode(synthetic_photo()).decode()
    assert handler.input_fn(json.dumps({"image": b64}), "application/json").batch.shape[0] == 1
    doc = json.dumps({"images": [b64, "data:image/jpeg;base64," + b64]}).encode()
    assert handler.input_fn(doc, "application/json").batch.shape[0] == 2


@pytest.mark.parametrize("body", ["", "[1, 2]", "{not json", '{"image": 5}', '{"image": "@@@"}', '{"images": []}',
                                  '{"nothing": 1}', '{"image": "", "images": []}'])
def test_bad_json_bodies(body):
    with pytest.raises(InvalidRequestError) as info:
        handler.input_fn(body, "application/json")
    assert 400 <= info.value.status_code < 500


def _positive_int_text(text: str) -> bool:
    """What a request may spell k as: decimal digits (any script's), an optional ``+``, spaces around, >= 1."""
    return re.fullmatch(r"\s*\+?\d{1,9}\s*", text) is not None and int(text) >= 1


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.booleans(), st.text(max_size=6).filter(lambda t: not _positive_int_text(t)),
                 st.floats(allow_nan=True).filter(lambda f: not (f == f and f.is_integer() and f >= 1))))
def test_invalid_k_is_refused(value):
    with pytest.raises(InvalidRequestError) as info:
        handler.parse_k(value)
    assert info.value.code == "bad_k"


def test_k_from_custom_attributes_context_json_and_range(model):
    body = synthetic_photo()
    ctx = _Context({"X-Amzn-SageMaker-Custom-Attributes": "trace=1, k=2"})
    assert handler.input_fn(body, "image/jpeg", ctx).k == 2
    assert handler.input_fn(body, "image/jpeg", _Context({}, k=3)).k == 3  # dogclf's servers pass k as it is
    assert handler.input_fn(body, "image/jpeg", _Context({"X-Dogclf-K": "2"})).k is None  # no made-up header
    assert handler.input_fn(body, "image/jpeg").k is None
    doc = json.dumps({"image": base64.b64encode(body).decode(), "k": 1})
    assert handler.input_fn(doc, "application/json", _Context({}, k=3)).k == 1  # the body is more specific
    out = handler.predict_fn(handler.input_fn(body, "image/jpeg"), model)
    assert out.k == 3  # default 5, capped at the model's 3 breeds
    with pytest.raises(InvalidRequestError) as info:
        handler.predict_fn(handler.input_fn(body, "image/jpeg", _Context({}, k=4)), model)
    assert info.value.code == "bad_k" and "3 breeds" in str(info.value)


# -- model_fn / predict_fn / output_fn ---------------------------------------------------------------------------
def test_predictions_match_the_module_and_serialise_as_json_or_npy(artifact, model):
    from dogclf.models import ResNetBreedModel

    reference = ResNetBreedModel.load(artifact)
    body = synthetic_photo(90, 70)
    data = handler.input_fn(body, "image/jpeg", _Context({}, k=2))
    out = handler.predict_fn(data, model)
    with torch.inference_mode():
        expected = reference.module_.eval()(data.batch)
    assert torch.allclose(out.logits, expected, atol=1e-4)

    payload, content_type = handler.output_fn(out, "application/json")
    doc = json.loads(payload)
    assert content_type == "application/json" and doc["k"] == 2
    (pred,) = doc["predictions"]
    probs = torch.softmax(expected, 1)[0]
    best = int(probs.argmax())
    assert pred["index"] == best and pred["breed"] == reference.labels_.names[best]
    assert pred["probability"] == pytest.approx(float(probs[best]), abs=1e-5)
    assert [p["index"] for p in pred["top_k"]] == probs.argsort(descending=True)[:2].tolist()
    assert pred["top_k"][0]["display_name"] == reference.labels_.display_name(best)

    payload, content_type = handler.output_fn(out, "application/x-npy; q=1, application/json")
    assert content_type == "application/x-npy"
    assert np.allclose(np.load(io.BytesIO(payload)), expected.numpy(), atol=1e-4)
    assert handler.output_fn(out, "*/*")[1] == "application/json"
    with pytest.raises(InvalidRequestError) as info:
        handler.output_fn(out, "text/csv")
    assert info.value.status_code == 406


def test_model_fn_refuses_a_folder_without_artifact(tmp_path):
    from dogclf.errors import ArtifactError

    with pytest.raises(ArtifactError, match="config.json"):
        handler.model_fn(tmp_path)
