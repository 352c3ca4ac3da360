"""Train-time augmentation and test-time augmentation on decoded ``uint8`` image batches.

Images are decoded once into ``uint8`` tensors in memory (:mod:`dogclf.training.data`): at the crop size, or at
the resize size when the augmentation crops at random (``crop``, ``crop-flip``, ``rrc``, ``rrc-flip``,
``trivialaugment``; see :func:`decode_size`). :class:`Augmenter` then works per batch:

* ``flip``, ``crop``, ``crop-flip``: a horizontal flip per image, and one random ``crop``-sized window per batch
  (the entry point's augmentations before the recipe, drawn exactly as before);
* ``rrc``, ``rrc-flip``: torchvision's ``transforms.v2.RandomResizedCrop`` (area ``rrc_scale``..1 of the image,
  aspect 3/4..4/3), per image, and flips;
* ``trivialaugment``: RandomResizedCrop, flip and ``transforms.v2.TrivialAugmentWide`` per image (the timm and
  torchvision reference recipes).

The v2 transforms run on the ``uint8`` tensors themselves (no PIL round trip). They draw from torch's global
generator, so each batch runs them under :func:`torch.random.fork_rng`, each image seeded from one draw of the
run's data generator and its place in the batch: the augmentation is the same for the same seed (and for any
number of processes sharing the batch), a resumed run draws what an uninterrupted one would, and the global
generator (dropout) is left alone.

Evaluation takes the centre ``crop`` (images decoded larger) and, with ``tta='flip'``, also its mirror image;
:func:`average_views` averages the views' probabilities. Mind the data: a flip that mirrors a class into another
(the synthetic set's diagonal stripes) makes ``flip`` augmentations and flip TTA harmful.
"""

from __future__ import annotations

from typing import Any

from dogclf.training.config import AUGMENTATIONS

__all__ = ["RANDOM_CROPS", "Augmenter", "average_views", "decode_size"]

RANDOM_CROPS = ("crop", "crop-flip", "rrc", "rrc-flip", "trivialaugment")
"""Augmentations that crop at random, for which images are decoded at the resize size."""
_FLIPS = ("flip", "crop-flip", "rrc-flip", "trivialaugment")


def decode_size(augment: str, preprocess: Any) -> int:
    """The side images are decoded at: ``preprocess.resize`` for random crops, else ``preprocess.crop``."""
    return preprocess.resize if augment in RANDOM_CROPS else preprocess.crop


class Augmenter:
    """Augments ``uint8`` image batches ``(B, 3, S, S)`` for training and makes the views evaluation runs.

    Args:
        augment: One of :data:`~dogclf.training.config.AUGMENTATIONS`.
        crop: The side the network sees.
        rrc_scale: The smallest area of a RandomResizedCrop, as a fraction of the image.
        tta: ``"none"`` or ``"flip"``.
    """

    def __init__(self, augment: str = "none", crop: int = 224, rrc_scale: float = 0.35, tta: str = "none") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        self.augment, self.crop, self.rrc_scale, self.tta = augment, crop, rrc_scale, tta
        self._per_image: Any = None

    def _transform(self) -> Any:
        if self._per_image is None:
            from torchvision.transforms import v2

            steps: list[Any] = [v2.RandomResizedCrop(self.crop, scale=(self.rrc_scale, 1.0), antialias=True)]
            if self.augment == "trivialaugment":
                steps.append(v2.TrivialAugmentWide())
            self._per_image = v2.Compose(steps)
        return self._per_image

    def train(self, x: Any, generator: Any, part: slice | None = None, batch_size: int | None = None) -> Any:
        """An augmented ``crop``-sized ``uint8`` batch, drawn from ``generator``.

        In a job of several processes ``x`` is this process's ``part`` of a global batch of ``batch_size``
        images: the random draws are made for the whole batch (each image's own seed for the per-image
        transforms) and the part's are applied, so every image is augmented as it would be in one process.
        """
        import torch

        augment, crop = self.augment, self.crop
        if augment == "none":
            return self.center(x)
        total = batch_size if batch_size is not None else x.shape[0]
        first = (part.start or 0) if part is not None else 0
        mine = slice(first, first + x.shape[0])
        if augment in ("crop", "crop-flip"):
            i, j = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=generator))
            x = x[:, :, i:i + crop, j:j + crop]
        elif augment in ("rrc", "rrc-flip", "trivialaugment"):
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            transform = self._transform()
            images = []
            with torch.random.fork_rng(devices=[]):
                for k, image in enumerate(x):
                    torch.manual_seed(seed + first + k)  # the image's place in the global batch
                    images.append(transform(image))
            x = torch.stack(images)
        if augment in _FLIPS:
            flip = torch.rand(total, generator=generator)[mine] < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def center(self, x: Any) -> Any:
        """The centre ``crop`` of a batch decoded larger (unchanged when it already has that size)."""
        if x.shape[-1] == self.crop:
            return x
        off = (x.shape[-1] - self.crop) // 2
        return x[:, :, off:off + self.crop, off:off + self.crop]

    def views(self, x: Any) -> list[Any]:
        """The batches evaluation runs the network on: the centre crop, and its mirror image with ``tta='flip'``."""
        x = self.center(x)
        return [x, x.flip(-1)] if self.tta == "flip" else [x]


def average_views(logits: list[Any]) -> Any:
    """The network's outputs for several views of the same images as one output: the logits themselves for one
    view; for several, the log of the views' mean probabilities (cross-entropy of that is the negative log of the
    mean probability of the true class, and its argmax is the averaged prediction)."""
    import torch

    if len(logits) == 1:
        return logits[0]
    probs = torch.stack([t.float().softmax(-1) for t in logits]).mean(0)
    return probs.clamp_min(1e-12).log()
