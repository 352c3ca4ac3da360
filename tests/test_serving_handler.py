"""The inference handler: decoding, preprocessing, validation and the four SageMaker functions."""

from __future__ import annotations

import base64
import io
import json

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


def _torchvision(image: Image.Image) -> torch.Tensor:
    from dogclf.models import eval_transform

    return eval_transform()(image)


# -- preprocessing ----------------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 500), height=st.integers(1, 500), seed=st.integers(0, 10))
def test_preprocess_matches_torchvision_eval_transform(width, height, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    ours = torch.from_numpy(handler.preprocess_image(image))
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert torch.allclose(ours, _torchvision(image), atol=1e-5)


def test_draft_decoding_of_large_jpegs_stays_close_to_a_full_decode():
    data = synthetic_photo(1200, 900, fmt="JPEG", quality=95)
    drafted = handler.decode_image(data, draft_size=256)
    full = handler.decode_image(data)
    assert full.size == (1200, 900)
    assert drafted.size[0] < 1200 and min(drafted.size) >= 256  # decoded at a reduced DCT scale
    a, b = handler.preprocess_image(drafted), handler.preprocess_image(full)
    assert np.abs(a - b).mean() < 0.15  # same picture (normalised units; random noise texture is the worst case)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = synthetic_photo(80, 40, fmt="JPEG", exif=exif.tobytes())
    image = handler.decode_image(data)
    assert image.size == (40, 80)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("L", "PNG"),
                                      ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG"), ("RGB", "BMP"),
                                      ("RGB", "WEBP"), ("RGB", "TIFF")])
def test_image_modes_become_rgb(mode, fmt):
    image = handler.decode_image(synthetic_photo(40, 30, mode=mode, fmt=fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparent_pixels_become_white_and_16_bit_is_scaled_not_clipped():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert handler.decode_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)
    gray = handler.decode_image(synthetic_photo(256, 4, mode="I;16", fmt="PNG"))
    row = [gray.getpixel((x, 0))[0] for x in range(0, 256, 32)]
    assert row == sorted(row) and row[0] == 0 and 200 < row[-1] <= 255 and len(set(row)) == len(row)


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


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.booleans(), st.text(max_size=6).filter(lambda t: not t.strip().isdigit()
                                                                                        or int(t) < 1),
                 st.floats(allow_nan=True).filter(lambda f: not (f == f and f.is_integer() and f >= 1))))
def test_invalid_k_is_refused(value):
    with pytest.raises(InvalidRequestError) as info:
        handler.parse_k(value)
    assert info.value.code == "bad_k"


def test_k_from_headers_json_and_range(model):
    body = synthetic_photo()
    ctx = _Context({"X-Amzn-SageMaker-Custom-Attributes": "trace=1, k=2"})
    assert handler.input_fn(body, "image/jpeg", ctx).k == 2
    assert handler.input_fn(body, "image/jpeg", _Context({"X-Dogclf-K": "3"})).k == 3
    assert handler.input_fn(body, "image/jpeg").k is None
    out = handler.predict_fn(handler.input_fn(body, "image/jpeg"), model)
    assert out.k == 3  # default 5, capped at the model's 3 breeds
    with pytest.raises(InvalidRequestError) as info:
        handler.predict_fn(handler.input_fn(body, "image/jpeg", _Context({"x-dogclf-k": "4"})), model)
    assert info.value.code == "bad_k" and "3 breeds" in str(info.value)


# -- model_fn / predict_fn / output_fn ---------------------------------------------------------------------------
def test_predictions_match_the_module_and_serialise_as_json_or_npy(artifact, model):
    from dogclf.models import ResNetBreedModel

    reference = ResNetBreedModel.load(artifact)
    body = synthetic_photo(90, 70)
    data = handler.input_fn(body, "image/jpeg", _Context({"x-dogclf-k": "2"}))
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
