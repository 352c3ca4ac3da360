"""Decoding photos: refuse what is not an image, is corrupt or too large; orient, convert to 8-bit RGB."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import ConfigError, CorruptImageError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "is_image_file", "decode_image", "verify_image", "to_rgb"]

IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) treated as photos everywhere: staging, training, prediction of folders."""

MAX_IMAGE_PIXELS = int(os.environ.get("DOGCLF_MAX_IMAGE_PIXELS", 64_000_000))
"""Images with more pixels than this are refused before decoding (decompression-bomb guard); set
``DOGCLF_MAX_IMAGE_PIXELS`` to change it."""

_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


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
