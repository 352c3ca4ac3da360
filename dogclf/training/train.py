"""The training entry point: one script that runs unchanged in a SageMaker PyTorch container and on the local backend.

It follows the SageMaker training-container contract:

* hyperparameters arrive as command-line options (``--lr 0.001 --batch-size 64 --epochs 2 ...``; ``_`` and ``-``
  spellings both work);
* data channels come from ``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALID`` / ``SM_CHANNEL_TEST``, or one
  ``SM_CHANNEL_TRAINING`` root holding ``train/``, ``valid/`` and ``test/`` (dogImages layout: one folder per
  class, ``001.Affenpinscher/...jpg``);
* the model artifact (:class:`~dogclf.models.ResNetBreedModel` format) goes to ``SM_MODEL_DIR``, extra outputs
  (``metrics.json``, Debugger tensors) to ``SM_OUTPUT_DATA_DIR``, checkpoints to ``/opt/ml/checkpoints``
  (``$SAGEMAKER_BASE_DIR/checkpoints`` when that is set), and a failure reason to ``/opt/ml/output/failure``.

It prints one metric line per epoch and one per test metric, read by :data:`~dogclf.training.METRIC_DEFINITIONS`::

    epoch=1; train_loss=2.710233; train_acc=0.312500; valid_loss=2.013378; valid_acc=0.450000;
    test_loss=0.656600;
    test_acc=0.812500;

Speed: images are decoded once (JPEG ``draft`` mode, then resize and centre-crop) by DataLoader workers sized to
the machine; with ``--freeze head`` and no augmentation (the seed's setup) the frozen backbone runs once per image
under ``torch.inference_mode`` and its pooled features are cached on disk, keyed by backbone, weights, transform
and the data's content; every epoch (and every later job on the same data) then trains only the head on those
features (``--feature-cache auto|on|off``).

Checkpoints: after every epoch the trainable weights, optimizer and random states are written atomically; a job
started again (after ``kill -9``, a spot interruption) resumes from the last one and ends with the same result as
an uninterrupted run. With a seed, runs on CPU are deterministic.

Run it as ``python -m dogclf.training.train --help`` or as the file ``dogclf/training/train.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file (SageMaker's user entry point): ship-along package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Iterator  # noqa: E402

from dogclf.errors import ArtifactError, ConfigError, DataError, DataNotFoundError, DatasetLayoutError, \
    DogclfError  # noqa: E402

__all__ = ["OPTIMIZERS", "AUGMENTATIONS", "FEATURE_CACHE_MODES", "build_parser", "parse_args", "main", "run"]

logger = logging.getLogger("dogclf.training.train")

OPTIMIZERS = ("adam", "adamw", "sgd")
"""Optimizers the entry point knows (``--optimizer``)."""
AUGMENTATIONS = ("none", "flip", "crop-flip")
"""Train-time augmentations (``--augment``): none (the seed), horizontal flips, random crop plus flips."""
FEATURE_CACHE_MODES = ("auto", "on", "off")
"""``--feature-cache``: ``auto`` uses cached backbone features whenever only the head trains without augmentation."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CHECKPOINT_FILE = "checkpoint.pt"
FEATURE_CACHE_VERSION = 2
_VALID_NAMES = ("valid", "validation", "val")


# -- arguments ---------------------------------------------------------------------------------------------------
def _base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml")


def _env_path(var: str, default: Path | None) -> str | None:
    value = os.environ.get(var)
    return value if value else (str(default) if default is not None else None)


def _none_or_str(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", "null", "random") else value


def _bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: hyperparameters as SageMaker passes them, and paths defaulting to the ``SM_*`` contract."""
    p = argparse.ArgumentParser(prog="dogclf.training.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def add(*names: str, **kw: Any) -> None:
        spellings = list(names)
        for name in names:
            alt = "--" + name[2:].replace("-", "_")
            if alt not in spellings:
                spellings.append(alt)
        p.add_argument(*spellings, **kw)

    add("--lr", "--learning-rate", type=float, default=0.001, help="learning rate (> 0)")
    add("--batch-size", type=int, default=64, help="training batch size (> 0)")
    add("--eval-batch-size", type=int, default=None, help="validation/test batch size (default: batch size)")
    add("--epochs", type=int, default=2, help="number of epochs (> 0)")
    add("--backbone", default="resnet50", help="resnet18|resnet34|resnet50|resnet101|resnet152")
    add("--weights", type=_none_or_str, default="IMAGENET1K_V2",
        help="torchvision weights name, checkpoint path, or None")
    add("--freeze", default="head", help="head|last-block|full")
    add("--dropout", type=float, default=0.0, help="dropout before the head's linear layer")
    add("--optimizer", default="adam", help="|".join(OPTIMIZERS))
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--weight-decay", type=float, default=0.0, help="weight decay (>= 0)")
    add("--seed", type=int, default=0, help="random seed (runs on CPU are deterministic)")
    add("--labels", default="auto",
        help="'auto' (the train channel's class folders), a registered label-set name, or a label-set JSON path")
    add("--augment", default="none", help="|".join(AUGMENTATIONS))
    add("--feature-cache", default="auto", help="|".join(FEATURE_CACHE_MODES))
    add("--num-workers", default="auto", help="DataLoader workers for decoding: 'auto' or a number")
    add("--resize", type=int, default=256, help="short side images are resized to")
    add("--crop", type=int, default=224, help="side of the centre crop fed to the network")
    add("--channels-last", default="auto", help="auto|on|off: channels-last memory format for convolutions")
    add("--device", default="auto", help="auto|cpu|cuda")
    add("--deterministic", type=_bool, default=True, help="use deterministic algorithms")
    add("--log-interval", type=int, default=0, help="log the train loss every N steps (0: never)")

    base = _base_dir()
    add("--train", default=_env_path("SM_CHANNEL_TRAIN", None), help="train split folder")
    add("--valid", default=_env_path("SM_CHANNEL_VALID", None) or _env_path("SM_CHANNEL_VALIDATION", None),
        help="validation split folder")
    add("--test", default=_env_path("SM_CHANNEL_TEST", None), help="test split folder")
    add("--training", default=_env_path("SM_CHANNEL_TRAINING", None),
        help="one folder holding train/, valid/ and test/")
    add("--model-dir", default=_env_path("SM_MODEL_DIR", base / "model"), help="where the model artifact goes")
    add("--output-data-dir", default=_env_path("SM_OUTPUT_DATA_DIR", base / "output" / "data"),
        help="where extra outputs go")
    add("--checkpoint-dir", default=str(base / "checkpoints"), help="where per-epoch checkpoints go")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse and check the arguments; unknown options are returned (and passed on to callbacks), not fatal.

    Raises:
        ConfigError: a value is out of range or not one of the choices; the message names it.
    """
    args, unknown = build_parser().parse_known_args(argv)
    check_args(args)
    return args, unknown


def check_args(args: argparse.Namespace) -> None:
    """Validate parsed arguments before any work starts.

    Raises:
        ConfigError: a value is out of range or not one of the choices; the message names it.
    """
    def positive(name: str) -> None:
        value = getattr(args, name.replace("-", "_"))
        if value is None or not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"hyperparameter {name!r} must be > 0, got {value!r}")

    for name in ("lr", "batch-size", "epochs", "resize", "crop"):
        positive(name)
    if args.eval_batch_size is not None:
        positive("eval-batch-size")
    if not args.weight_decay >= 0:
        raise ConfigError(f"hyperparameter 'weight-decay' must be >= 0, got {args.weight_decay!r}")
    if not 0 <= args.momentum < 1:
        raise ConfigError(f"hyperparameter 'momentum' must be in [0, 1), got {args.momentum!r}")
    for name, choices in (("optimizer", OPTIMIZERS), ("augment", AUGMENTATIONS),
                          ("feature_cache", FEATURE_CACHE_MODES), ("channels_last", ("auto", "on", "off")),
                          ("device", ("auto", "cpu", "cuda"))):
        value = getattr(args, name)
        if value not in choices:
            raise ConfigError(f"hyperparameter {name.replace('_', '-')!r} is {value!r}; choose one of "
                              f"{', '.join(repr(c) for c in choices)}")
    if args.num_workers != "auto":
        try:
            workers = int(args.num_workers)
        except ValueError:
            workers = -1
        if workers < 0:
            raise ConfigError(f"hyperparameter 'num-workers' must be 'auto' or an int >= 0, got {args.num_workers!r}")
    if args.crop > args.resize:
        raise ConfigError(f"crop {args.crop} is larger than resize {args.resize}")
    if args.feature_cache == "on" and (args.freeze != "head" or args.augment != "none"):
        raise ConfigError(f"feature-cache 'on' needs freeze='head' and augment='none' (got freeze={args.freeze!r}, "
                          f"augment={args.augment!r}): cached features only fit a frozen backbone and fixed inputs")


# -- data --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One dataset split: its folder and ``(path, label index)`` samples in a stable order."""

    name: str
    root: Path
    samples: tuple[tuple[Path, int], ...]

    def __len__(self) -> int:
        return len(self.samples)


def resolve_channels(args: argparse.Namespace) -> dict[str, Path | None]:
    """The train/valid/test folders from explicit channels or one ``training`` root.

    Raises:
        DataNotFoundError: no train or test folder, or a given folder does not exist.
    """
    found: dict[str, Path | None] = {"train": None, "valid": None, "test": None}
    root = Path(args.training) if args.training else None
    if root is not None and not root.is_dir():
        raise DataNotFoundError(f"training channel {str(root)!r} is not a folder")
    for split, names in (("train", ("train", "training")), ("valid", _VALID_NAMES), ("test", ("test", "testing"))):
        explicit = getattr(args, split)
        if explicit:
            found[split] = Path(explicit)
        elif root is not None:
            found[split] = next((root / n for n in names if (root / n).is_dir()), None)
    for split, path in found.items():
        if path is not None and not path.is_dir():
            raise DataNotFoundError(f"{split} channel {str(path)!r} is not a folder")
    for split in ("train", "test"):
        if found[split] is None:
            where = f" under the training channel {str(root)!r}" if root is not None else ""
            raise DataNotFoundError(f"no {split} data{where}: give a {split!r} channel (SM_CHANNEL_{split.upper()}) "
                                    f"or a 'training' channel holding {split}/")
    return found


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


def resolve_data_labels(spec: str, train_root: Path) -> Any:
    """The label set for the data: from the train channel's class folders (``auto``), or checked against them.

    Raises:
        DatasetLayoutError: the train channel has no class folders.
        LabelMismatchError: the label set's size or names differ from the train channel's class folders.
    """
    from dogclf.errors import LabelMismatchError
    from dogclf.labels import BreedLabels
    from dogclf.models import resolve_labels

    folders = _class_folders(train_root)
    if not folders:
        raise DatasetLayoutError(f"train channel {str(train_root)!r} has no class folders (expected "
                                 "NNN.Breed/ sub-folders holding images)")
    if spec in ("auto", "", None):
        try:
            return BreedLabels.from_folder_names(folders)
        except ConfigError:
            return BreedLabels(folders)
    labels = resolve_labels(spec)
    if len(labels) != len(folders):
        raise LabelMismatchError(f"label set {spec!r} has {len(labels)} breeds but the train channel "
                                 f"{str(train_root)!r} has {len(folders)} class folders; pass --labels auto or the "
                                 "matching label set")
    for position, folder in enumerate(folders):
        try:
            index = labels.index(folder)
        except DogclfError:
            index = -1
        if index != position:
            raise LabelMismatchError(f"train class folder {folder!r} (position {position}) is not breed {position} "
                                     f"({labels[position]!r}) of label set {spec!r}")
    return labels


def scan_split(name: str, root: Path, labels: Any) -> Split:
    """List a split's images as ``(path, label)``; class folders are matched to ``labels`` by name.

    Raises:
        DataError: the split holds no images (an empty channel).
        LabelMismatchError: a class folder is not in the label set.
    """
    from dogclf.errors import LabelMismatchError

    samples: list[tuple[Path, int]] = []
    for folder in _class_folders(root):
        try:
            index = labels.index(folder)
        except DogclfError:
            raise LabelMismatchError(f"{name} class folder {folder!r} in {str(root)!r} is not a breed of the label "
                                     f"set ({len(labels)} breeds)") from None
        samples.extend((p, index) for p in _images(root / folder))
    if not samples:
        raise DataError(f"{name} channel {str(root)!r} holds no images (expected class folders with "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))} files)")
    return Split(name, root, tuple(samples))


def load_image(path: Path, resize: int, crop: int) -> Any:
    """Decode one image to a ``uint8`` tensor ``(3, crop, crop)``: JPEG draft mode, resize the short side, centre-crop.

    Raises:
        CorruptImageError: the file cannot be decoded.
    """
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import functional as F

    from dogclf.errors import CorruptImageError

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (resize, resize))  # decode at a reduced scale that still covers `resize`
            img = img.convert("RGB")
            img = F.center_crop(F.resize(img, resize, interpolation=F.InterpolationMode.BILINEAR), [crop, crop])
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot decode image {str(path)!r}: {exc}", [str(path)]) from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class DecodedImages:
    """A map-style dataset decoding ``Split`` samples with :func:`load_image` (used by DataLoader workers)."""

    def __init__(self, split: Split, resize: int, crop: int) -> None:
        self.split, self.resize, self.crop = split, resize, crop

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.split.samples[i]
        return load_image(path, self.resize, self.crop), label


def auto_workers(n_images: int, batch_size: int) -> int:
    """DataLoader workers for decoding: the machine's CPUs less one (at most 8), none for tiny datasets."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    if cpus <= 1 or n_images <= batch_size:
        return 0
    return max(1, min(8, cpus - 1))


def decode_batches(split: Split, size: int, crop: int, batch_size: int, workers: int) -> Iterator[tuple[Any, Any]]:
    """Decode a split in order, yielding ``(uint8 images (B,3,crop,crop), labels (B,))`` batches."""
    import torch

    loader = torch.utils.data.DataLoader(DecodedImages(split, size, crop), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
                                         prefetch_factor=4 if workers else None)
    yield from loader


def _memory_budget() -> float:
    """Bytes the decoded-image cache may use: half the available memory (``DOGCLF_DECODE_CACHE_BYTES`` overrides)."""
    override = os.environ.get("DOGCLF_DECODE_CACHE_BYTES")
    if override:
        return float(override)
    try:
        import psutil

        return psutil.virtual_memory().available / 2
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        return 4e9


class LazyImages:
    """Images decoded on demand (a thread pool; PIL releases the GIL), for data too large to keep decoded."""

    def __init__(self, split: Split, resize: int, size: int, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.split, self.resize, self.size = split, resize, size
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: Any) -> Any:
        import torch

        paths = [self.split.samples[int(i)][0] for i in index]
        return torch.stack(list(self.pool.map(lambda p: load_image(p, self.resize, self.size), paths)))


class Normalizer:
    """Turns ``uint8`` batches into normalised float batches on the device (optionally channels-last)."""

    def __init__(self, mean: Any, std: Any, device: Any, channels_last: bool) -> None:
        import torch

        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device, self.channels_last = device, channels_last

    def __call__(self, images: Any) -> Any:
        import torch

        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# -- feature cache -----------------------------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(split: Split) -> str:
    """A digest of a split's content: relative paths, labels and file bytes (not modification times)."""
    h = hashlib.sha256()
    for path, label in split.samples:
        h.update(f"{path.relative_to(split.root).as_posix()}\0{label}\0{_file_digest(path)}\n".encode())
    return h.hexdigest()


def weights_identity(model: Any, seed: int) -> str:
    """What the backbone's weights are: the torchvision enum member, a checkpoint's digest, or the init seed."""
    cfg = model.config
    if cfg.weights is None:
        return f"random-init:seed={seed}"
    if cfg.weights_is_path:
        return f"file:{_file_digest(Path(cfg.weights))}"
    from torchvision.models import get_model_weights

    enum = get_model_weights(cfg.backbone)
    member = enum.DEFAULT if cfg.weights == "DEFAULT" else enum[cfg.weights]
    return f"torchvision:{member.url}"


def feature_cache_key(model: Any, split: Split, seed: int) -> str:
    """The cache key of a split's backbone features: backbone, weights, preprocessing, decoder and data manifest."""
    import torch

    doc = {"version": FEATURE_CACHE_VERSION, "backbone": model.backbone, "weights": weights_identity(model, seed),
           "preprocess": model.config.preprocess.to_dict(), "decoder": "pil-draft+bilinear+centre-crop",
           "backbone_run": "batchnorm-folded",
           "torch": torch.__version__.split("+")[0], "manifest": manifest_digest(split)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def feature_cache_dir(checkpoint_dir: Path) -> Path:
    """``$DOGCLF_FEATURE_CACHE_DIR`` (shared between jobs) or the job's ``checkpoints/features``."""
    shared = os.environ.get("DOGCLF_FEATURE_CACHE_DIR")
    return Path(shared) if shared else checkpoint_dir / "features"


def fold_batchnorm(module: Any, channels_last: bool = False) -> Any:
    """An inference-only copy of a torchvision ResNet whose BatchNorm layers are folded into the convolutions.

    In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be merged into the
    convolution's weight and bias: the copy computes the same features (up to float rounding, ~1e-6 relative)
    with one pass over each activation less, about 10-15% faster for ResNet50 on CPU. ``module`` is not changed.
    """
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(module).eval()

    def fold(parent: Any, conv: str, bn: str) -> None:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, torch.nn.Identity())

    fold(folded, "conv1", "bn1")
    for layer in (folded.layer1, folded.layer2, folded.layer3, folded.layer4):
        for block in layer:
            for i in (1, 2, 3):
                if hasattr(block, f"conv{i}"):
                    fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")
    if channels_last:
        folded.to(memory_format=torch.channels_last)
    return folded


def cached_features(model: Any, split: Split, cache_dir: Path, *, seed: int, batch_size: int, workers: int,
                    normalizer: Normalizer, backbone: Any = None) -> tuple[Any, Any]:
    """The split's backbone features and labels, from the cache or computed once and stored there.

    On a miss the backbone runs with its BatchNorm layers folded into the convolutions (:func:`fold_batchnorm`),
    channels-last when the normalizer produces channels-last batches. ``backbone`` (optional, no arguments)
    returns that folded copy, so a caller filling several splits folds the network once; it is called only on a
    miss.
    """
    import torch

    from dogclf.models import forward_features

    key = feature_cache_key(model, split, seed)
    path = cache_dir / f"{model.backbone}-{key[:24]}-{split.name}.pt"
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("key") == key and len(data["labels"]) == len(split):
                logger.info("feature cache hit for %s (%d images): %s", split.name, len(split), path)
                return data["features"], data["labels"]
            logger.warning("feature cache file %s does not match; recomputing", path)
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            logger.warning("feature cache file %s is unreadable (%s); recomputing", path, exc)
    start = time.perf_counter()
    model.module_.eval()
    module = backbone() if backbone is not None else fold_batchnorm(model.module_, normalizer.channels_last)
    feats, labels = [], []
    with torch.inference_mode():
        for images, y in decode_batches(split, model.config.preprocess.resize, model.config.preprocess.crop,
                                        batch_size, workers):
            feats.append(forward_features(module, normalizer(images)).float().cpu())
            labels.append(y)
    features, targets = torch.cat(feats), torch.cat(labels).long()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"key": key, "features": features, "labels": targets}, tmp)
    os.replace(tmp, path)
    logger.info("feature cache miss for %s: computed %d backbone features in %.1fs (%.1f images/s), saved to %s",
                split.name, len(split), time.perf_counter() - start, len(split) / max(1e-9, time.perf_counter() - start),
                path)
    return features, targets


# -- checkpoints -------------------------------------------------------------------------------------------------
def _fingerprint(args: argparse.Namespace) -> str:
    keys = ("lr", "batch_size", "backbone", "weights", "freeze", "dropout", "optimizer", "momentum",
            "weight_decay", "seed", "augment", "resize", "crop", "labels")
    return hashlib.sha256(json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` if there is none.

    Raises:
        ArtifactError: the file exists but is corrupt.
    """
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"checkpoint {str(path)!r} is corrupt ({type(exc).__name__}: {str(exc)[:200]}); "
                            "delete it to start over") from exc
    if not isinstance(state, dict) or "epoch" not in state or "trainable" not in state:
        raise ArtifactError(f"checkpoint {str(path)!r} is not a dogclf training checkpoint; delete it to start over")
    return state


def _trainable_state(model: Any) -> dict[str, Any]:
    prefixes = model.trainable_prefixes()
    return {k: v.detach().clone() for k, v in model.module_.state_dict().items()
            if not prefixes or any(k.startswith(p) for p in prefixes)}


# -- the loop ----------------------------------------------------------------------------------------------------
def _seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def _make_optimizer(args: argparse.Namespace, params: list[Any]) -> Any:
    import torch

    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _emit(line: str) -> None:
    print(line, flush=True)


def _write_failure(message: str) -> None:
    out = Path(os.environ.get("SM_OUTPUT_DIR") or _base_dir() / "output")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "failure").write_text(message[:1024], encoding="utf-8")
    except OSError:  # pragma: no cover - nowhere to write; the exit status still says it failed
        pass


def run(args: argparse.Namespace, extra_hyperparameters: dict[str, Any] | None = None) -> dict[str, float]:
    """Train, validate each epoch, test, save the artifact; returns the final metrics.

    Raises:
        DogclfError: bad input (data layout, labels, weights, corrupt checkpoint), before training starts.
    """
    import torch

    from dogclf.debug import make_callbacks
    from dogclf.models import Preprocess, ResNetBreedModel
    from dogclf.training.callbacks import StepInfo, TrainingContext
    from dogclf.training.metrics import format_metric_line

    started = time.perf_counter()
    # 1. Everything that can fail fast: data layout, labels, model config, weights, checkpoint.
    channels = resolve_channels(args)
    labels = resolve_data_labels(args.labels, channels["train"])
    splits = {name: scan_split(name, path, labels) for name, path in channels.items() if path is not None}
    if "valid" not in splits:
        logger.warning("no validation channel: epochs report train metrics only")
    model_dir, output_dir, ckpt_dir = Path(args.model_dir), Path(args.output_data_dir), Path(args.checkpoint_dir)
    ckpt_path = ckpt_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(ckpt_path)
    if checkpoint is not None and checkpoint.get("fingerprint") != _fingerprint(args):
        logger.warning("checkpoint %s was written with other hyperparameters; starting over", ckpt_path)
        checkpoint = None

    _seed_everything(args.seed, args.deterministic)
    model = ResNetBreedModel(labels, backbone=args.backbone, weights=args.weights, freeze=args.freeze,
                             dropout=args.dropout, preprocess=Preprocess(resize=args.resize, crop=args.crop))
    model.build()
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and device.type != "cuda":
        raise ConfigError("device 'cuda' was requested but CUDA is not available")
    # Convolutions run faster channels-last with oneDNN on CPU and with cuDNN on GPU (measured for resnet50 here).
    channels_last = args.channels_last in ("on", "auto")
    module = model.module_.to(device)
    pre = model.config.preprocess
    normalizer = Normalizer(pre.mean, pre.std, device, channels_last)
    eval_bs = args.eval_batch_size or args.batch_size
    n_train = len(splits["train"])
    workers = auto_workers(n_train, args.batch_size) if args.num_workers == "auto" else int(args.num_workers)
    use_cache = args.feature_cache == "on" or (args.feature_cache == "auto" and args.freeze == "head"
                                               and args.augment == "none")
    # Converting ResNet50 to channels-last (and back before saving) copies every conv weight: about 0.5 s each way
    # on 2 busy cores. Done only when the network runs on images: without the cache (on a cache miss the features
    # come from a BatchNorm-folded copy, made channels-last itself).
    converted = channels_last and not use_cache
    if converted:
        module.to(memory_format=torch.channels_last)
    logger.info("data: %s; labels: %d breeds; device %s; %d decode workers; channels-last %s",
                ", ".join(f"{n}={len(s)} images" for n, s in splits.items()), len(labels), device, workers,
                "on" if channels_last else "off")

    # 2. Inputs: cached backbone features (head-only fast path) or images decoded once into memory.
    gen = torch.Generator().manual_seed(args.seed)
    if use_cache:
        cache_dir = feature_cache_dir(ckpt_dir)
        logger.info("feature cache: ON (freeze=head, augment=none): the frozen backbone runs once per image and the "
                    "head trains on cached features; cache folder %s", cache_dir)
        folded: list[Any] = []

        def backbone() -> Any:  # folded once, on the first cache miss
            if not folded:
                folded.append(fold_batchnorm(module, channels_last))
            return folded[0]

        data = {name: cached_features(model, split, cache_dir, seed=args.seed, batch_size=eval_bs, workers=workers,
                                      normalizer=normalizer, backbone=backbone) for name, split in splits.items()}
        folded.clear()
        train_module = module.fc
    else:
        logger.info("feature cache: OFF (freeze=%s, augment=%s, feature-cache=%s): the network runs on images every "
                    "epoch; images are decoded once and kept in memory", args.freeze, args.augment,
                    args.feature_cache)
        decode_size = pre.resize if args.augment == "crop-flip" else pre.crop
        data = {}
        needed = sum(len(s) for s in splits.values()) * 3 * decode_size * decode_size
        budget = _memory_budget()
        for name, split in splits.items():
            if needed > budget:
                data[name] = (LazyImages(split, pre.resize, decode_size, max(1, workers)),
                              torch.tensor([label for _, label in split.samples]))
                continue
            t0 = time.perf_counter()
            batches = list(decode_batches(split, pre.resize, decode_size, eval_bs, workers))
            data[name] = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).long())
            logger.info("decoded %d %s images in %.1fs", len(split), name, time.perf_counter() - t0)
        if needed > budget:
            logger.warning("decoded images would take %.1f GB, over half the available memory: decoding on the fly "
                           "every epoch instead", needed / 1e9)
        train_module = module

    def inputs(name: str, index: Any, train: bool) -> Any:
        x = data[name][0][index]
        if use_cache:
            return x.to(device)
        if train and args.augment != "none":
            if args.augment == "crop-flip":
                size = pre.crop
                i, j = (int(v) for v in torch.randint(0, pre.resize - size + 1, (2,), generator=gen))
                x = x[:, :, i:i + size, j:j + size]
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        elif x.shape[-1] != pre.crop:  # crop-flip keeps `resize`-sized images; evaluate on the centre crop
            off = (x.shape[-1] - pre.crop) // 2
            x = x[:, :, off:off + pre.crop, off:off + pre.crop]
        return normalizer(x)

    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = _make_optimizer(args, model.trainable_parameters())
    hyperparameters = {k: v for k, v in vars(args).items()}
    hyperparameters.update(extra_hyperparameters or {})
    ctx = TrainingContext(model=train_module, loss_fn=loss_fn, optimizer=optimizer, hyperparameters=hyperparameters,
                          output_data_dir=output_dir, model_dir=model_dir, epochs=args.epochs)
    ctx.state.update({"feature_cache": use_cache, "device": str(device), "labels": labels,
                      "breed_model": model, "num_train_images": n_train})
    for var in ("SMDEBUG_CONFIG_FILE_PATH", "SMPROFILER_CONFIG_PATH"):
        if os.environ.get(var):
            logger.info("%s=%s", var, os.environ[var])
    callbacks = list(make_callbacks(hyperparameters, output_dir))
    if callbacks:
        logger.info("callbacks: %s", ", ".join(type(cb).__name__ for cb in callbacks))

    # Dropout draws from the global RNG: seed it here so the data path taken above (cache hit or miss) cannot
    # change what training does.
    torch.manual_seed(args.seed + 1)
    start_epoch, history, steps = 0, [], {"train": 0, "eval": 0}
    if checkpoint is not None:
        module.load_state_dict(checkpoint["trainable"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        gen.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        start_epoch, history = int(checkpoint["epoch"]), list(checkpoint.get("history", []))
        steps = dict(checkpoint.get("steps", steps))
        ctx.global_step = steps["train"]
        if checkpoint.get("stopped"):
            ctx.stop_training, ctx.stop_reason = True, checkpoint.get("stop_reason")
        logger.info("resuming from checkpoint %s: epoch %d of %d done", ckpt_path, start_epoch, args.epochs)
        for line in history:  # the metric lines of the epochs done before, so the job's log has them all
            _emit(format_metric_line({k: v for k, v in line.items() if k != "epoch"}, epoch=line["epoch"]))

    def call(method: str, *a: Any) -> None:
        for cb in callbacks:
            getattr(cb, method)(ctx, *a)

    def evaluate(name: str, epoch: int) -> tuple[float, float]:
        train_module.eval()
        n = len(data[name][1])  # labels: a tensor in every input mode
        total_loss, correct = 0.0, 0
        with torch.no_grad():
            for lo in range(0, n, eval_bs):
                index = torch.arange(lo, min(n, lo + eval_bs))
                call("on_step_begin", "eval", steps["eval"])
                t0 = time.perf_counter()
                x, y = inputs(name, index, False), data[name][1][index].to(device)
                t1 = time.perf_counter()
                logits = train_module(x)
                loss = loss_fn(logits, y)
                t2 = time.perf_counter()
                total_loss += float(loss) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                call("on_step_end", StepInfo("eval", steps["eval"], epoch, float(loss), len(y), t1 - t0, t2 - t1))
                steps["eval"] += 1
        return total_loss / n, correct / n

    call("on_train_begin")
    epoch = start_epoch
    train_started = time.perf_counter()
    for epoch in range(start_epoch + 1, args.epochs + 1 if not ctx.stop_training else start_epoch + 1):
        if use_cache:
            train_module.train()
        else:
            model.set_train_mode(True)
        order = torch.randperm(n_train, generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        for lo in range(0, n_train, args.batch_size):
            index = order[lo:lo + args.batch_size]
            call("on_step_begin", "train", steps["train"])
            t0 = time.perf_counter()
            x, y = inputs("train", index, True), data["train"][1][index].to(device)
            t1 = time.perf_counter()
            logits = train_module(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t2 = time.perf_counter()
            batch_loss = float(loss.detach())
            total_loss += batch_loss * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            call("on_step_end", StepInfo("train", steps["train"], epoch, batch_loss, len(y), t1 - t0, t2 - t1))
            steps["train"] += 1
            ctx.global_step = steps["train"]
            if args.log_interval and steps["train"] % args.log_interval == 0:
                logger.info("epoch %d step %d: batch loss %.4f", epoch, steps["train"], batch_loss)
            if ctx.stop_training:
                break
        metrics = {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}
        if "valid" in data:
            metrics["valid_loss"], metrics["valid_acc"] = evaluate("valid", epoch)
        _emit(format_metric_line(metrics, epoch=epoch))
        history.append({"epoch": epoch, **metrics})
        call("on_epoch_end", epoch, dict(metrics))
        save_checkpoint(ckpt_path, {
            "epoch": epoch, "fingerprint": _fingerprint(args), "trainable": _trainable_state(model),
            "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": history, "steps": dict(steps), "stopped": ctx.stop_training, "stop_reason": ctx.stop_reason,
        })
        logger.info("checkpoint saved: epoch %d -> %s", epoch, ckpt_path)
        if ctx.stop_training:
            break
    if ctx.stop_training:
        logger.info("training stopped early after epoch %d: %s", epoch, ctx.stop_reason or "a callback asked")
    train_time = time.perf_counter() - train_started

    test_loss, test_acc = evaluate("test", epoch)
    _emit(format_metric_line({"test_loss": test_loss}))
    _emit(format_metric_line({"test_acc": test_acc}))
    final = dict(history[-1]) if history else {}
    final.pop("epoch", None)
    final.update(test_loss=test_loss, test_acc=test_acc)
    call("on_train_end", dict(final))

    module.to("cpu")
    if converted:
        module.to(memory_format=torch.contiguous_format)
    model.save(model_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    doc = {"metrics": final, "history": history, "stopped_early": ctx.stop_training, "stop_reason": ctx.stop_reason,
           "feature_cache": use_cache, "train_seconds": train_time, "total_seconds": time.perf_counter() - started,
           "train_images": n_train, "epochs_done": epoch}
    tmp = output_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, output_dir / "metrics.json")
    logger.info("saved the model to %s; %.1fs in all", model_dir, time.perf_counter() - started)
    return final


def _unknown_to_dict(unknown: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = None
    for item in unknown:
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                out[key] = value
                key = None
            else:
                out[key] = True
        elif key is not None:
            out[key] = item
            key = None
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the entry point; returns the process exit status (0 success, 2 bad input, 1 other failures).

    On failure the reason is also written to ``$SM_OUTPUT_DIR/failure`` (SageMaker's ``FailureReason``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args, unknown = parse_args(argv)
        extra = _unknown_to_dict(unknown)
        if extra:
            logger.info("hyperparameters not used by the entry point (passed to callbacks): %s", sorted(extra))
        # Denormal floats make CPU convolutions several times slower. The flag is process-wide CPU state, so it is
        # set for the run only: the entry point may run inside a caller's process (tests, notebooks).
        import torch

        torch.set_flush_denormal(True)
        try:
            run(args, extra)
        finally:
            torch.set_flush_denormal(False)
    except DogclfError as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        _write_failure(f"{type(exc).__name__}: {exc}")
        return 2
    except Exception as exc:
        logger.error("training failed:\n%s", traceback.format_exc())
        _write_failure(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
