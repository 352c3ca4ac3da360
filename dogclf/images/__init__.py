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

from dogclf.images._decode import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, decode_image, is_image_file, to_rgb, verify_image
from dogclf.images._preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    PIPELINE,
    ImageTransform,
    Normalizer,
    Preprocess,
    collate,
    load_image,
    normalize,
    preprocess_image,
    resize_crop,
    to_uint8_chw,
)

__all__ = ["IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_PIXELS", "PIPELINE", "INTERPOLATIONS",
           "Preprocess", "is_image_file", "decode_image", "verify_image", "to_rgb", "resize_crop", "to_uint8_chw",
           "load_image", "normalize", "Normalizer", "preprocess_image", "collate", "ImageTransform"]
