"""The one image pipeline: training, the feature cache, the stager, the handler and the predictor all decode here.

From an encoded photo (a path, bytes or a file object), a PIL image, a NumPy array or a tensor to the model's input:

1. :func:`decode_image`: refuse what is not an image, is corrupt or too large; decode JPEGs at a reduced DCT scale
   when they are at least twice the needed size (:meth:`PIL.Image.Image.draft`); apply the EXIF orientation;
   convert to 8-bit RGB (:func:`to_rgb`: transparency onto white, 16-bit scaled, CMYK, palette and grey converted).
2. :func:`resize_crop`: resize the shorter side to ``preprocess.resize`` (bilinear by default), take the centre
   ``preprocess.crop`` square (torchvision's ``Resize`` and ``CenterCrop`` arithmetic).
3. :func:`to_uint8_chw`: a ``uint8`` tensor ``(3, crop, crop)``. Steps 1-3 are :func:`load_image`.
4. :func:`normalize` / :class:`Normalizer`: ``(x - 255 mean) / (255 std)`` in float32, on NumPy arrays (the
   handler) or tensors on any device (training). On the CPU both give the same bits (a test checks every pixel
   value).

Training calls ``load_image(path, preprocess)`` in its DataLoader workers and a :class:`Normalizer` on its device;
the inference handler calls the same :func:`load_image` and :func:`normalize`, so a photo reaches the network
with the same numbers at training and at serving time. :data:`PIPELINE` names this arithmetic for cache keys.

Example:
    >>> import numpy as np
    >>> pixels = load_image(np.full((300, 400, 3), 128, np.uint8), Preprocess(resize=64, crop=56))
    >>> tuple(pixels.shape), str(pixels.dtype), normalize(pixels.numpy()).dtype.name
    ((3, 56, 56), 'torch.uint8', 'float32')
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._contract import hyperparameter
from dogclf.errors import ConfigError, CorruptImageError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_PIXELS", "PIPELINE", "INTERPOLATIONS",
           "Preprocess", "is_image_file", "decode_image", "verify_image", "to_rgb", "resize_crop", "to_uint8_chw",
           "load_image", "normalize", "Normalizer", "preprocess_image", "collate", "ImageTransform"]

IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) treated as photos everywhere: staging, training, prediction of folders."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet normalisation the torchvision backbones were trained with."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet normalisation."""

MAX_IMAGE_PIXELS = int(os.environ.get("DOGCLF_MAX_IMAGE_PIXELS", 64_000_000))
"""Images with more pixels than this are refused before decoding (decompression-bomb guard); set
``DOGCLF_MAX_IMAGE_PIXELS`` to change it."""

PIPELINE = "dogclf.images/1: pil draft>=resize, exif orientation, rgb (alpha on white), short side, centre crop"
"""Names the decode arithmetic; part of feature-cache keys, so changing the pipeline invalidates cached features."""

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
"""Resampling filters :func:`resize_crop` takes (Pillow's, by name)."""

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the short side, centre-crop, normalise.

    Stored in every artifact's ``config.json`` (``"preprocess"``), so serving uses what training used.

    Attributes:
        resize: Length the shorter image side is resized to.
        crop: Side of the square centre crop taken after resizing.
        mean: Per-channel mean subtracted after scaling pixels to ``[0, 1]``.
        std: Per-channel standard deviation divided by.
        interpolation: The resize filter, one of :data:`INTERPOLATIONS` (training and serving both use it).

    Raises ConfigError when a value is out of range or of the wrong type; the message names it.
    """

    resize: int = hyperparameter(256, "short side images are resized to", ge=1)
    crop: int = hyperparameter(224, "side of the centre crop fed to the network", ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"preprocess {name} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ConfigError(f"preprocess crop {self.crop} is larger than resize {self.resize}")
        for name in ("mean", "std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"preprocess {name} must be three numbers (one per RGB channel), got {value!r}")
            if name == "std" and any(v <= 0 for v in value):
                raise ConfigError(f"preprocess std values must be positive, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocess interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, "
                              f"got {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"resize": 256, "crop": 224, "mean": [...], "std": [...], "interpolation": ...}``."""
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict` (a missing ``interpolation`` is bilinear, as ``dogclf.model/1`` artifacts
        were); raises :class:`~dogclf.errors.ConfigError` on unknown keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"preprocess must be a dict, got {data!r:.100}")
        unknown = sorted(set(data) - {"resize", "crop", "mean", "std", "interpolation"})
        if unknown:
            raise ConfigError(f"unknown preprocess keys {unknown}; expected resize, crop, mean, std, interpolation")
        return cls(**data)

    @classmethod
    def coerce(cls, value: Preprocess | dict[str, Any] | None) -> Preprocess:
        """A :class:`Preprocess` from itself, its dict form, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, cls):
            return value
        raise ConfigError(f"preprocess must be a Preprocess, a dict or None, got {value!r:.100}")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of the :data:`IMAGE_SUFFIXES` (any case); the file itself is not opened."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_SUFFIXES


# -- decoding ----------------------------------------------------------------------------------------------------
def _known_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _fail(message: str, code: str, path: str | None) -> CorruptImageError:
    named = f"cannot decode image {path!r}: {message}" if path is not None else message
    return CorruptImageError(named, [path] if path is not None else [], code=code)


def _open(source: Any, max_pixels: int | None, allow_animated: bool, what: str | None
          ) -> tuple[Image.Image, str | None]:
    """``Image.open`` with the checks (readable, has pixels, not too large, not animated unless allowed), and the
    source's path if it is a file."""
    from PIL import Image, UnidentifiedImageError

    data, path = _read(source)
    what = what or ("the file" if path is not None else "the image data")
    max_pixels = max_pixels or MAX_IMAGE_PIXELS
    if not data:
        raise _fail(f"{what} is empty; expected the bytes of a JPEG, PNG, GIF, BMP, TIFF or WebP image",
                    "empty_image", path)
    try:
        # Pillow itself refuses images over 2x Image.MAX_IMAGE_PIXELS at open; max_pixels below is ours.
        # (No warnings.catch_warnings here: it is not thread-safe, and the server decodes on several threads.)
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        known = _known_format(data)
        if known:
            raise _fail(f"{what} starts like a {known} file but Pillow cannot read it: the {known} data is corrupt",
                        "corrupt_image", path) from exc
        raise _fail(f"{what} ({len(data)} bytes, starting {data[:8]!r}) is not an image Pillow can read; expected "
                    "JPEG, PNG, GIF, BMP, TIFF or WebP", "unsupported_image", path) from exc
    except Image.DecompressionBombError as exc:
        raise _fail(f"image refused as a possible decompression bomb: {exc}", "image_too_large", path) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise _fail(f"the image header is corrupt: {exc}", "corrupt_image", path) from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise _fail(f"the image has no pixels ({width}x{height})", "corrupt_image", path)
    if width * height > max_pixels:
        raise _fail(f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                    "(a possible decompression bomb)", "image_too_large", path)
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and not allow_animated:
        raise _fail(f"the image is animated ({image.format}, {frames} frames); send one still frame",
                    "animated_image", path)
    return image, path


def _load(image: Image.Image, path: str | None) -> None:
    """Decode the pixels (and the EXIF block exif_transpose reads); truncated or damaged data is refused."""
    from PIL import Image

    try:
        image.load()
        image.getexif()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _fail(f"the {image.format or 'image'} data is truncated or corrupt: {exc}", "corrupt_image",
                    path) from exc


def _read(source: Any) -> tuple[bytes, str | None]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            return Path(path).read_bytes(), path
        except FileNotFoundError:
            from dogclf.errors import DataNotFoundError

            raise DataNotFoundError(f"image file {path!r} does not exist") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    name = getattr(source, "name", None)
    return source.read(), name if isinstance(name, str) else None


def _from_array(array: Any) -> Image.Image:
    """A PIL image from a NumPy ``(H, W[, 1|3|4])`` uint8/uint16/bool array or a ``(C, H, W)`` tensor."""
    import numpy as np
    from PIL import Image

    if type(array).__module__.startswith("torch"):
        if array.ndim == 3:
            array = array.permute(1, 2, 0)
        array = array.detach().cpu().numpy()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    kinds = {(2, np.dtype(np.uint8)): "L", (2, np.dtype(np.uint16)): "I;16", (2, np.dtype(np.bool_)): "1"}
    mode = kinds.get((array.ndim, array.dtype))
    if array.ndim == 3 and array.dtype == np.uint8 and array.shape[2] in (3, 4):
        mode = "RGB" if array.shape[2] == 3 else "RGBA"
    if mode is None or min(array.shape[:2], default=0) < 1:
        raise ConfigError(f"cannot read an image from an array of shape {tuple(array.shape)} and dtype {array.dtype};"
                          " expected uint8 (H, W), (H, W, 3) or (H, W, 4) (a tensor: (C, H, W)), uint16 or bool "
                          "(H, W)")
    return Image.fromarray(np.ascontiguousarray(array), mode)


def decode_image(source: Any, *, draft_size: int | None = None, max_pixels: int | None = None,
                 allow_animated: bool = True, what: str | None = None) -> Image.Image:
    """Decode one photo into an upright 8-bit RGB PIL image.

    Args:
        source: A path, encoded bytes, a binary file object, a PIL image, a NumPy array ``(H, W[, 3|4])`` (uint8;
            uint16 or bool ``(H, W)``) or a uint8 tensor ``(C, H, W)``.
        draft_size: The smallest side the caller needs (the resize target): JPEGs are decoded at the largest DCT
            reduction that keeps both sides ``>= draft_size``. ``None`` decodes at full size.
        max_pixels: Refuse encoded images with more pixels (default :data:`MAX_IMAGE_PIXELS`).
        allow_animated: Take the first frame of an animated image; ``False`` refuses it (``"animated_image"``).
        what: How messages name encoded data (``"the body"``); default ``"the file"`` for a path, else
            ``"the image data"``.

    Returns:
        An RGB image with the EXIF orientation applied, transparency composited onto white, 16/32-bit
        greyscale scaled to 8 bits and CMYK, palette, greyscale and bilevel images converted.

    Raises:
        CorruptImageError: the data cannot be decoded; its ``code`` says why: ``"empty_image"``,
            ``"unsupported_image"`` (not an image), ``"corrupt_image"`` (truncated or damaged),
            ``"image_too_large"`` (over ``max_pixels``) or ``"animated_image"``. For a path the message and
            ``paths`` name the file.
        DataNotFoundError: a path that does not exist.
        ConfigError: an array or object that is not an image.
    """
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source) or source)
    if hasattr(source, "__array_interface__") or type(source).__module__.startswith("torch"):
        return to_rgb(_from_array(source))
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(source, "read"):
        raise ConfigError(f"cannot read an image from {type(source).__name__}; expected a path, bytes, a file "
                          "object, a PIL image, a NumPy array or a tensor")
    image, path = _open(source, max_pixels, allow_animated, what)
    if draft_size and image.format == "JPEG":
        image.draft(image.mode, (draft_size, draft_size))  # only scales: the mode stays
    _load(image, path)
    return to_rgb(ImageOps.exif_transpose(image) or image)


def verify_image(source: Any, *, max_pixels: int | None = None) -> tuple[int, int]:
    """Check that an encoded image decodes completely, cheaply; returns its ``(width, height)``.

    The checks of :func:`decode_image` (so what passes here also decodes for training and serving); JPEGs are
    decoded at 1/8 scale, which still reads every byte of the entropy-coded data, so truncated files are caught
    at a fraction of the cost of a full decode.

    Raises:
        CorruptImageError: as :func:`decode_image`.
    """
    image, path = _open(source, max_pixels, True, None)
    size = image.size
    if image.format == "JPEG":
        image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
    _load(image, path)
    return size


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency onto white, 16/32-bit greyscale scaled (not clipped)."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if mode == "F" and array.max(initial=0) <= 1.0:
            peak = 1.0
        array = np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# -- geometry ----------------------------------------------------------------------------------------------------
def _resampling(interpolation: str) -> Any:
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}; choose one of "
                          f"{', '.join(map(repr, INTERPOLATIONS))}")
    return getattr(Image.Resampling, interpolation.upper())


def resize_crop(image: Image.Image, resize: int, crop: int, *, interpolation: str = "bilinear") -> Image.Image:
    """Resize the shorter side to ``resize``, then take the centre ``crop`` x ``crop`` square.

    The arithmetic of torchvision's ``Resize(resize)`` and ``CenterCrop(crop)`` on a PIL image: the longer side
    becomes ``int(resize * long / short)``, the crop's corner is ``round((size - crop) / 2)``.

    Raises:
        ConfigError: ``crop > resize`` (torchvision would pad; the short side is ``resize`` and the long side longer).
    """
    if crop > resize:
        raise ConfigError(f"crop {crop} is larger than resize {resize}; the centre crop must fit the resized image")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _resampling(interpolation))
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_uint8_chw(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a contiguous ``uint8`` tensor ``(3, H, W)``."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(to_rgb(image), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_image(source: Any, preprocess: Preprocess | dict[str, Any] | None = None, *, crop: int | None = None,
               interpolation: str | None = None, max_pixels: int | None = None, allow_animated: bool = True,
               what: str | None = None) -> torch.Tensor:
    """Decode, orient, convert, resize and centre-crop one photo: the model's input before normalisation.

    Training and serving both call this, so they see the same pixels (JPEG draft at ``preprocess.resize``,
    resize with ``preprocess.interpolation``, centre crop).

    Args:
        source: Anything :func:`decode_image` reads (a path, bytes, a file object, a PIL image, an array, a tensor).
        preprocess: The artifact's :class:`Preprocess` (or its dict form); ``None`` for the defaults.
        crop: Crop side instead of ``preprocess.crop`` (training keeps ``resize``-sized squares for random crops).
        interpolation: One of :data:`INTERPOLATIONS` instead of ``preprocess.interpolation``.
        max_pixels, allow_animated, what: As for :func:`decode_image`.

    Returns:
        A contiguous ``uint8`` tensor ``(3, crop, crop)``; :func:`normalize` or a :class:`Normalizer` makes it the
        network's float input.

    Raises:
        CorruptImageError: as :func:`decode_image`; for a path the message and ``paths`` name the file.
    """
    pre = Preprocess.coerce(preprocess)
    image = decode_image(source, draft_size=pre.resize, max_pixels=max_pixels, allow_animated=allow_animated,
                         what=what)
    return to_uint8_chw(resize_crop(image, pre.resize, pre.crop if crop is None else crop,
                                    interpolation=interpolation or pre.interpolation))


# -- normalisation -----------------------------------------------------------------------------------------------
def _scale(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``255 * mean`` and ``255 * std`` as float32 ``(3, 1, 1)``, rounded as torch rounds ``tensor(m) * 255.0``."""
    import numpy as np

    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    return m, s


class Normalizer:
    """Turns ``uint8`` images ``(3, H, W)`` or ``(N, 3, H, W)`` into normalised float32 on a device.

    ``x -> (x - 255 mean) / (255 std)``: one correctly rounded float32 subtraction and division, so NumPy and CPU
    tensors give the same bits (checked for every pixel value; IEEE arithmetic on CUDA should too, unchecked);
    :func:`normalize` is this on NumPy arrays, or on tensors where they are.

    Args:
        mean: Per-channel mean (a :class:`Preprocess` may be passed instead, then ``std`` is taken from it).
        std: Per-channel standard deviation.
        device: Where batches go (``"cpu"``, ``"cuda"``, a :class:`torch.device`).
        channels_last: Return 4-d batches in channels-last memory format (faster convolutions).
    """

    def __init__(self, mean: Sequence[float] | Preprocess = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: Any = "cpu", channels_last: bool = False) -> None:
        import torch

        if isinstance(mean, Preprocess):
            mean, std = mean.mean, mean.std
        m, s = _scale(mean, std)
        self.mean = torch.from_numpy(m).to(device)
        self.std = torch.from_numpy(s).to(device)
        self.device, self.channels_last = torch.device(device), channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a ``uint8`` (or float pixel-valued) tensor; moved to the device first."""
        import torch

        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


def normalize(images: Any, preprocess: Preprocess | dict[str, Any] | None = None) -> Any:
    """Normalise ``uint8`` images ``(3, H, W)`` or ``(N, 3, H, W)``: a NumPy array in, float32 NumPy out (no torch
    work, for the handler's worker threads); a tensor in, a float32 tensor out on its device.

    Same arithmetic, same bits as :class:`Normalizer` on the CPU.
    """
    import numpy as np

    pre = Preprocess.coerce(preprocess)
    if isinstance(images, np.ndarray):
        m, s = _scale(pre.mean, pre.std)
        out = images.astype(np.float32)
        out -= m
        out /= s
        return out
    return Normalizer(pre.mean, pre.std, device=images.device)(images)


def preprocess_image(source: Any, preprocess: Preprocess | dict[str, Any] | None = None, **options: Any
                     ) -> np.ndarray:
    """:func:`load_image` then :func:`normalize`: the float32 ``(3, crop, crop)`` NumPy array the network takes.

    ``options`` go to :func:`load_image`.
    """
    return normalize(load_image(source, preprocess, **options).numpy(), preprocess)


def collate(sources: Iterable[Any], preprocess: Preprocess | dict[str, Any] | None = None, *,
            map_fn: Callable[..., Iterable[Any]] = map, **options: Any) -> np.ndarray:
    """Decode many photos into one normalised float32 batch ``(N, 3, crop, crop)``.

    ``map_fn`` maps :func:`load_image` (given ``preprocess`` and ``options``) over ``sources``: :func:`map`, or
    ``executor.map`` to decode on threads (Pillow releases the GIL).

    Raises:
        CorruptImageError: an image does not decode (the first failure).
        ConfigError: ``sources`` is empty.
    """
    import numpy as np

    pixels = [t.numpy() for t in map_fn(lambda s: load_image(s, preprocess, **options), sources)]
    if not pixels:
        raise ConfigError("collate() needs at least one image")
    return normalize(np.stack(pixels), preprocess)


class ImageTransform:
    """The deterministic eval transform as one callable: photo in, normalised float32 tensor ``(3, crop, crop)``.

    Works where a torchvision transform does (``ImageFolder(root, transform=ImageTransform(pre))``) and takes
    everything :func:`load_image` does. Equal to torchvision's ``Resize``, ``CenterCrop``, ``ToTensor``,
    ``Normalize`` on RGB images to float32 rounding.

    Args:
        preprocess: The :class:`Preprocess` (or its dict form; ``None`` for the defaults).
        interpolation: One of :data:`INTERPOLATIONS` instead of ``preprocess.interpolation``.
    """

    def __init__(self, preprocess: Preprocess | dict[str, Any] | None = None, *,
                 interpolation: str | None = None) -> None:
        self.preprocess = Preprocess.coerce(preprocess)
        self.interpolation = interpolation

    def __call__(self, source: Any) -> torch.Tensor:
        """The normalised ``(3, crop, crop)`` tensor for one photo."""
        return normalize(load_image(source, self.preprocess, interpolation=self.interpolation), self.preprocess)
