"""From a decoded photo to the model's input: the preprocessing, resize and crop, normalisation, transforms."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dogclf._contract import hyperparameter
from dogclf.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

from dogclf.images._decode import decode_image, to_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PIPELINE", "INTERPOLATIONS", "Preprocess", "resize_crop",
           "to_uint8_chw", "load_image", "normalize", "Normalizer", "preprocess_image", "collate", "ImageTransform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet normalisation the torchvision backbones were trained with."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet normalisation."""

PIPELINE = "dogclf.images/1: pil draft>=resize, exif orientation, rgb (alpha on white), short side, centre crop"
"""Names the decode arithmetic; part of feature-cache keys, so changing the pipeline invalidates cached features."""

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
"""Resampling filters :func:`resize_crop` takes (Pillow's, by name)."""


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
