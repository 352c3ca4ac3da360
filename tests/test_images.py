"""dogclf.images: the one image pipeline training, the feature cache, the handler and the predictor share."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dogclf import images
from dogclf.errors import ConfigError, CorruptImageError, DataNotFoundError
from dogclf.images import IMAGE_SUFFIXES, Normalizer, Preprocess, load_image, normalize
from dogclf.serving.testing import synthetic_photo

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _torchvision(pre: Preprocess):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(pre.resize), transforms.CenterCrop(pre.crop), transforms.ToTensor(),
                               transforms.Normalize(list(pre.mean), list(pre.std))])


@st.composite
def preprocesses(draw):
    resize = draw(st.integers(1, 300))
    crop = draw(st.integers(1, resize))
    mean = tuple(draw(st.floats(0.0, 1.0)) for _ in range(3))
    std = tuple(draw(st.floats(0.05, 1.0)) for _ in range(3))
    return Preprocess(resize, crop, mean, std)


# every Pillow mode a photo arrives in, with a format that stores it
MODES = [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "JPEG"), ("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
         ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("1", "PNG"), ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"),
         ("RGB", "BMP"), ("RGB", "WEBP"), ("RGB", "TIFF")]


# -- shape, dtype and range for any size, mode and preprocessing ------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 400), height=st.integers(1, 400), mode_fmt=st.sampled_from(MODES),
       pre=preprocesses(), seed=st.integers(0, 5))
def test_any_photo_becomes_a_uint8_crop_and_a_bounded_float_input(width, height, mode_fmt, pre, seed):
    mode, fmt = mode_fmt
    data = synthetic_photo(width, height, mode=mode, fmt=fmt, seed=seed)
    pixels = load_image(data, pre)
    assert pixels.shape == (3, pre.crop, pre.crop) and pixels.dtype == torch.uint8 and pixels.is_contiguous()
    x = normalize(pixels.numpy(), pre)
    assert x.shape == (3, pre.crop, pre.crop) and x.dtype == np.float32 and np.isfinite(x).all()
    mean, std = np.array(pre.mean).reshape(3, 1, 1), np.array(pre.std).reshape(3, 1, 1)
    assert (x >= -mean / std - 1e-5).all() and (x <= (1 - mean) / std + 1e-5).all()


@pytest.mark.parametrize("mode,fmt", MODES)
def test_every_mode_decodes_to_rgb_of_the_same_size(mode, fmt):
    image = images.decode_image(synthetic_photo(40, 30, mode=mode, fmt=fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparency_goes_onto_white_and_16_bit_is_scaled_not_clipped():
    clear = _encode(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), "PNG")
    assert images.decode_image(clear).getpixel((0, 0)) == (255, 255, 255)
    half = _encode(Image.new("LA", (8, 8), (0, 128)), "PNG")
    assert images.decode_image(half).getpixel((0, 0)) == (127, 127, 127)  # black at half opacity over white
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([200, 0, 0] * 256)
    assert images.decode_image(_encode(palette, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)
    assert images.decode_image(_encode(palette, "PNG")).getpixel((0, 0)) == (200, 0, 0)
    gray = images.decode_image(synthetic_photo(256, 4, mode="I;16", fmt="PNG"))
    row = [gray.getpixel((x, 0))[0] for x in range(0, 256, 32)]
    assert row == sorted(row) and row[0] == 0 and 200 < row[-1] <= 255 and len(set(row)) == len(row)


# -- EXIF orientation ---------------------------------------------------------------------------------------------
ORIENTED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
            8: lambda a: np.rot90(a, 1)}


@settings(max_examples=30, deadline=None)
@given(orientation=st.sampled_from(sorted(ORIENTED)), width=st.integers(1, 40), height=st.integers(1, 40),
       seed=st.integers(0, 100))
def test_exif_orientation_turns_the_photo_upright(orientation, width, height, seed):
    stored = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    upright = np.asarray(images.decode_image(data))
    assert np.array_equal(upright, ORIENTED[orientation](stored))
    # an opened (not yet turned) PIL image is turned the same way; a turned one is not turned again
    opened = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(images.decode_image(opened)), upright)
    assert np.array_equal(np.asarray(images.decode_image(images.decode_image(opened))), upright)


def test_exif_orientation_of_a_jpeg_file(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "sideways.jpg"
    path.write_bytes(synthetic_photo(80, 40, fmt="JPEG", exif=exif.tobytes()))
    assert images.decode_image(path).size == (40, 80)
    red = load_image(path, Preprocess(40, 40))[0].float()  # the stored left-to-right gradient now runs down
    rows, columns = red.mean(dim=1), red.mean(dim=0)
    assert rows[-5:].mean() - rows[:5].mean() > 80 and abs(columns[-5:].mean() - columns[:5].mean()) < 30


# -- JPEG draft -----------------------------------------------------------------------------------------------------
def test_large_jpegs_are_decoded_at_a_reduced_scale_that_still_covers_the_resize():
    data = synthetic_photo(1200, 900, fmt="JPEG", quality=95)
    drafted = images.decode_image(data, draft_size=256)
    full = images.decode_image(data)
    assert full.size == (1200, 900)
    assert drafted.size[0] < 1200 and min(drafted.size) >= 256  # decoded at a reduced DCT scale
    pre = Preprocess()
    a = normalize(images.to_uint8_chw(images.resize_crop(drafted, 256, 224)).numpy(), pre)
    b = normalize(images.to_uint8_chw(images.resize_crop(full, 256, 224)).numpy(), pre)
    assert np.abs(a - b).mean() < 0.15  # same picture (random noise texture is the worst case)
    assert torch.equal(load_image(data, pre), images.to_uint8_chw(images.resize_crop(drafted, 256, 224)))


# -- equality with torchvision's eval transform ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 500), height=st.integers(1, 500), seed=st.integers(0, 10), pre=preprocesses())
def test_the_pipeline_equals_torchvisions_eval_transform(width, height, seed, pre):
    from dogclf.models import eval_transform

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    expected = _torchvision(pre)(image)
    ours = eval_transform(pre)(image)
    assert ours.shape == expected.shape == (3, pre.crop, pre.crop) and ours.dtype == torch.float32
    assert torch.allclose(ours, expected, atol=1e-5)
    png = _encode(image, "PNG")  # lossless: the encoded path sees the same pixels
    assert torch.allclose(torch.from_numpy(images.preprocess_image(png, pre)), expected, atol=1e-5)


# -- training and serving agree -------------------------------------------------------------------------------------
@settings(max_examples=256, deadline=None)
@given(mean=st.tuples(*[st.floats(0.0, 1.0)] * 3), std=st.tuples(*[st.floats(0.01, 2.0)] * 3))
def test_numpy_and_torch_normalisation_give_the_same_bits_for_every_pixel_value(mean, std):
    pre = Preprocess(mean=mean, std=std)
    every = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()  # each value in each channel
    on_numpy = normalize(every, pre)
    on_torch = Normalizer(pre)(torch.from_numpy(every)).numpy()
    assert on_numpy.dtype == on_torch.dtype == np.float32
    assert np.array_equal(on_numpy.view(np.uint32), on_torch.view(np.uint32))


def _training_input(path, pre: Preprocess) -> torch.Tensor:
    """What the training entry point feeds the network: load_image in a DataLoader worker, a Normalizer on the
    device, channels-last batches."""
    return Normalizer(pre, channels_last=True)(load_image(path, pre)[None])


def _served_input(data: bytes, pre: Preprocess) -> torch.Tensor:
    from dogclf.serving import handler

    handler._PREPROCESS["current"] = pre  # what model_fn publishes for the artifact
    try:
        return handler.input_fn(data, "application/x-image").batch
    finally:
        handler._PREPROCESS.pop("current", None)


@pytest.mark.parametrize("pre", [Preprocess(), Preprocess(resize=72, crop=64, mean=(0.5,) * 3, std=(0.2,) * 3)])
def test_training_decoding_equals_the_handlers_bit_for_bit(tmp_path, pre):
    exif = Image.Exif()
    exif[0x0112] = 8
    cases = {"big.jpg": synthetic_photo(1100, 700, fmt="JPEG", quality=90),
             "turned.jpg": synthetic_photo(300, 200, fmt="JPEG", exif=exif.tobytes()),
             "cmyk.jpg": synthetic_photo(600, 520, mode="CMYK", fmt="JPEG"),
             "grey.jpg": synthetic_photo(700, 600, mode="L", fmt="JPEG"),
             "alpha.png": synthetic_photo(90, 260, mode="RGBA", fmt="PNG"),
             "wide.tif": synthetic_photo(320, 240, mode="I;16", fmt="TIFF")}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert torch.equal(_training_input(path, pre), _served_input(data, pre)), name


def test_training_decoding_equals_the_handlers_on_real_photos(pet_images, seed_photos):
    photos = sorted(p for folder in (pet_images, seed_photos) for p in folder.iterdir() if images.is_image_file(p))
    assert len(photos) >= 40
    pre = Preprocess()
    for path in photos:
        assert torch.equal(_training_input(path, pre), _served_input(path.read_bytes(), pre)), path.name


# -- every kind of source -------------------------------------------------------------------------------------------
def test_every_kind_of_source_gives_the_same_pixels(tmp_path):
    data = synthetic_photo(150, 110, fmt="PNG", seed=4)
    path = tmp_path / "dog.PNG"
    path.write_bytes(data)
    pre = Preprocess(128, 112)
    expected = load_image(data, pre)
    image = Image.open(io.BytesIO(data))
    array = np.array(image.convert("RGB"))

    def sources():
        return [path, str(path), bytearray(data), memoryview(data), io.BytesIO(data), image, array,
                torch.from_numpy(array).permute(2, 0, 1), np.dstack([array, np.full(array.shape[:2], 255, np.uint8)])]

    for source in sources():
        assert torch.equal(load_image(source, pre), expected), type(source)
    grey = np.asarray(image.convert("L"))
    assert torch.equal(load_image(grey, pre), load_image(Image.fromarray(grey), pre))
    with ThreadPoolExecutor(2) as pool:
        batch = images.collate(sources(), pre, map_fn=pool.map)
    assert batch.shape == (9, 3, 112, 112) and batch.dtype == np.float32
    assert np.array_equal(batch, np.stack([normalize(expected.numpy(), pre)] * 9))


@pytest.mark.parametrize("source", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8),
                                    np.zeros((0, 4, 3), np.uint8), 12, None])
def test_sources_that_are_not_images_are_refused_with_a_config_error(source):
    with pytest.raises(ConfigError, match="cannot read an image"):
        images.decode_image(source)


# -- bad photos -----------------------------------------------------------------------------------------------------
def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


BAD = {
    "empty_image": lambda: b"",
    "unsupported_image": lambda: b"this is not an image at all",
    "corrupt_image": lambda: synthetic_photo(300, 200, fmt="JPEG")[:900],
    "image_too_large": lambda: _encode(Image.new("1", (12000, 12000)), "PNG"),
}


@pytest.mark.parametrize("code", sorted(BAD))
def test_bad_files_are_refused_naming_the_file_and_the_problem(tmp_path, code):
    path = tmp_path / f"{code}.jpg"
    path.write_bytes(BAD[code]())
    for check in (lambda: load_image(path), lambda: images.verify_image(path)):
        with pytest.raises(CorruptImageError) as info:
            check()
        assert info.value.code == code and info.value.paths == (str(path),) and str(path) in str(info.value)
    with pytest.raises(CorruptImageError) as info:
        load_image(BAD[code]())
    assert info.value.code == code and info.value.paths == ()


def test_animated_images_give_their_first_frame_unless_refused():
    data = _animated_gif()
    assert images.decode_image(data).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(CorruptImageError) as info:
        images.decode_image(data, allow_animated=False)
    assert info.value.code == "animated_image"


def test_pixel_limit_and_missing_files(tmp_path):
    data = synthetic_photo(100, 100, fmt="PNG")
    assert images.verify_image(data) == (100, 100)
    with pytest.raises(CorruptImageError, match="10000 pixels, over the limit of 9999"):
        images.decode_image(data, max_pixels=9999)
    with pytest.raises(DataNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_resize_options():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert images.resize_crop(image, 30, 30, interpolation="nearest").size == (30, 30)
    with pytest.raises(ConfigError, match="interpolation 'cubic'"):
        images.resize_crop(image, 30, 30, interpolation="cubic")
    with pytest.raises(ConfigError, match="crop 40 is larger than resize 30"):
        images.resize_crop(image, 30, 40)
    wide = load_image(image, Preprocess(40, 30), crop=40)  # training's resize-sized squares for random crops
    assert torch.equal(wide[:, 5:35, 5:35], load_image(image, Preprocess(40, 30)))


# -- one list of suffixes, one home of the ImageNet statistics ----------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(stem=st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=10),
       suffix=st.sampled_from(IMAGE_SUFFIXES + (".txt", ".json", ".jpg.part", "")), upper=st.booleans())
def test_image_files_are_known_by_suffix_in_any_case(stem, suffix, upper):
    name = stem + (suffix.upper() if upper else suffix)
    assert images.is_image_file(name) == (suffix in IMAGE_SUFFIXES)


def test_one_suffix_list_and_one_normalisation_everywhere():
    from dogclf.data import validate
    from dogclf.models import IMAGENET_MEAN, IMAGENET_STD
    from dogclf.models import Preprocess as ModelsPreprocess
    from dogclf.serving import handler, predictor

    assert ".tif" in IMAGE_SUFFIXES and ".tiff" in IMAGE_SUFFIXES and ".jpeg" in IMAGE_SUFFIXES
    assert validate.IMAGE_EXTENSIONS is IMAGE_SUFFIXES and predictor.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert ModelsPreprocess is Preprocess
    assert (IMAGENET_MEAN, IMAGENET_STD) == (images.IMAGENET_MEAN, images.IMAGENET_STD) == (Preprocess().mean,
                                                                                             Preprocess().std)
    assert (handler.ServedModel.mean, handler.ServedModel.std) == (images.IMAGENET_MEAN, images.IMAGENET_STD)
