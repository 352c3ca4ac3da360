"""The training entry point: one script that runs unchanged in a SageMaker PyTorch container and on the local backend.

It follows the SageMaker training-container contract:

* hyperparameters arrive as command-line options (``--lr 0.001 --batch-size 64 --epochs 2 ...``; ``_`` and ``-``
  spellings both work);
* data channels come from ``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALID`` / ``SM_CHANNEL_TEST``, or one
  ``SM_CHANNEL_TRAINING`` root holding ``train/``, ``valid/`` and ``test/`` (dogImages layout: one folder per
  class, ``001.Affenpinscher/...jpg``);
* the model artifact (:class:`~dogclf.models.BreedModel` format) goes to ``SM_MODEL_DIR``, extra outputs
  (``metrics.json``, Debugger tensors) to ``SM_OUTPUT_DATA_DIR``, checkpoints to ``/opt/ml/checkpoints``
  (``$SAGEMAKER_BASE_DIR/checkpoints`` when that is set), and a failure reason to ``/opt/ml/output/failure``.

It prints one metric line per epoch, a selection line and one per test metric, read by
:data:`~dogclf.training.METRIC_DEFINITIONS`::

    epoch=1; train_loss=2.710233; train_acc=0.312500; valid_loss=2.013378; valid_acc=0.450000;
    best_epoch=1.000000; valid_loss=2.013378; valid_acc=0.450000;
    test_loss=0.656600;
    test_acc=0.812500;

Selection is honest: the artifact holds the weights of the epoch with the best validation metric
(``--select best``, the default; ``last`` keeps the last epoch), early stopping (``--patience``) watches the same
metric, and the test split is only reported. The recipe (schedules, a fastai-style fine-tune with discriminative
rates, label smoothing, augmentation, test-time augmentation, clipping, mixed precision) is a set of
hyperparameters like any other; see the how-to "Training recipe".

Speed: images are decoded once (JPEG ``draft`` mode, then resize and centre-crop) by DataLoader workers sized to
the machine; with ``--freeze head`` and no augmentation (the seed's setup) the frozen backbone runs once per image
under ``torch.inference_mode`` and its pooled features are cached on disk, keyed by backbone, weights, transform
and the data's content; every epoch (and every later job on the same data) then trains only the head on those
features (``--feature-cache auto|on|off``).

Checkpoints: after every epoch the trainable weights, optimizer and random states are written atomically; a job
started again (after ``kill -9``, a spot interruption) resumes from the last one and ends with the same result as
an uninterrupted run. With a seed, runs on CPU are deterministic.

Several processes: started by ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT`` in
the environment, as SageMaker's ``torch_distributed`` launcher and the local backend's ``processes`` start it), the
entry point trains with DistributedDataParallel: NCCL on CUDA, gloo on the CPU, each process a share of every
global batch, metrics summed over the processes, and rank 0 alone writing (:mod:`.distributed`).

Its hyperparameters are the fields of :class:`~dogclf.models.ModelConfig` and :class:`~dogclf.training.TrainingConfig`
(the options are generated from them, :mod:`dogclf._contract`); the work is split by concern: :mod:`.data`
(channels, splits, decoding), :mod:`.features` (the feature cache), :mod:`.checkpoint`, :mod:`.loop` (the
:class:`~dogclf.training.loop.Trainer`) and :mod:`.metrics` (the one metrics channel). Callbacks (Debugger,
profiling) come from the ``dogclf.callbacks`` entry-point group.

Run it as ``python -m dogclf.training.train --help`` or as the file ``dogclf/training/train.py``.
"""


from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file (SageMaker's user entry point): ship-along package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from dogclf._contract import add_arguments, decode, split_known  # noqa: E402
from dogclf.errors import DogclfError  # noqa: E402

__all__ = ["JobPaths", "build_parser", "parse_args", "main", "run"]

logger = logging.getLogger("dogclf.training.train")


@dataclass(frozen=True)
class JobPaths:
    """Where a job's data and outputs are (SageMaker's ``SM_*`` contract, or the command line).

    Attributes:
        train, valid, test: Split folders (``SM_CHANNEL_TRAIN``, ...), or ``None``.
        training: One folder holding ``train/``, ``valid/`` and ``test/`` (``SM_CHANNEL_TRAINING``), or ``None``.
        model_dir: Where the model artifact goes (``SM_MODEL_DIR``).
        output_data_dir: Where metrics, tensors and reports go (``SM_OUTPUT_DATA_DIR``).
        checkpoint_dir: Where per-epoch checkpoints go (``/opt/ml/checkpoints``).
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    training: str | None = None
    model_dir: str = "/opt/ml/model"
    output_data_dir: str = "/opt/ml/output/data"
    checkpoint_dir: str = "/opt/ml/checkpoints"


def _base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml")


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def build_parser() -> argparse.ArgumentParser:
    """The entry point's options: one per model and training hyperparameter (generated from the configs' fields,
    both spellings), and the paths, defaulting to the ``SM_*`` contract."""
    from dogclf.models import ModelConfig
    from dogclf.training.config import TrainingConfig

    p = argparse.ArgumentParser(prog="dogclf.training.train", description=__doc__.split("\n\n")[0])
    add_arguments(p.add_argument_group("model hyperparameters"), ModelConfig)
    add_arguments(p.add_argument_group("training hyperparameters"), TrainingConfig)
    base = _base_dir()
    paths = p.add_argument_group("paths (default: the SageMaker training-container contract)")
    paths.add_argument("--train", default=_env("SM_CHANNEL_TRAIN"), help="train split folder")
    paths.add_argument("--valid", default=_env("SM_CHANNEL_VALID", "SM_CHANNEL_VALIDATION"),
                       help="validation split folder")
    paths.add_argument("--test", default=_env("SM_CHANNEL_TEST"), help="test split folder")
    paths.add_argument("--training", default=_env("SM_CHANNEL_TRAINING"),
                       help="one folder holding train/, valid/ and test/")
    for option, var, default in (("--model-dir", "SM_MODEL_DIR", base / "model"),
                                 ("--output-data-dir", "SM_OUTPUT_DATA_DIR", base / "output" / "data"),
                                 ("--checkpoint-dir", None, base / "checkpoints")):
        paths.add_argument(option, option.replace("-", "_").replace("__", "--", 1),
                           default=(_env(var) if var else None) or str(default), help=f"default: {default}")
    return p


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


def parse_args(argv: list[str] | None = None) -> tuple[Any, Any, JobPaths, dict[str, Any]]:
    """``(ModelConfig, TrainingConfig, JobPaths, other options)`` from the command line; options the entry point
    does not know are returned (and passed on to callbacks), not fatal.

    Raises:
        ConfigError: a value of the wrong type, out of range or not one of the choices; the message names it.
    """
    from dogclf.models import ModelConfig
    from dogclf.training.config import TrainingConfig
    from dogclf.training.spec import check_job

    namespace, unknown = build_parser().parse_known_args(argv)
    given = {k: v for k, v in vars(namespace).items() if v is not None}
    path_names = set(JobPaths.__dataclass_fields__)
    model_values, rest = split_known(ModelConfig, {k: v for k, v in given.items() if k not in path_names})
    model, training = decode(ModelConfig, model_values), decode(TrainingConfig, rest)
    check_job(model, training)
    paths = JobPaths(**{k: v for k, v in given.items() if k in path_names})
    return model, training, paths, _unknown_to_dict(unknown)


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


def _write_failure(message: str) -> None:
    """``$SM_OUTPUT_DIR/failure``; in a job of several processes prefixed with the rank, and written by another
    rank than 0 only when no process has written one (rank 0's reason wins, the first one otherwise)."""
    from dogclf._io import atomic_write

    out = Path(os.environ.get("SM_OUTPUT_DIR") or _base_dir() / "output")
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if world not in ("", "1"):
        message = f"rank {rank} of {world}: {message}"
        if rank != "0" and (out / "failure").exists():
            return
    try:
        atomic_write(out / "failure", message[:1024])
    except OSError:  # pragma: no cover - nowhere to write; the exit status still says it failed
        pass


def run(model_config: Any, training: Any, paths: JobPaths, extra: dict[str, Any] | None = None) -> dict[str, float]:
    """Train, validate each epoch, test, save the artifact; returns the final metrics.

    Raises:
        DogclfError: bad input (data layout, labels, weights, corrupt checkpoint), before training starts.
    """
    import torch

    from dogclf._contract import encode
    from dogclf.models import BreedModel
    from dogclf.training.callbacks import TrainingContext, make_callbacks
    from dogclf.training.checkpoint import CHECKPOINT_FILE, fingerprint, load_checkpoint
    from dogclf.images import Normalizer
    from dogclf.training.augment import decode_size
    from dogclf.training.data import auto_workers, load_split_images, resolve_channels, resolve_data_labels, scan_split
    from dogclf.training.distributed import start
    from dogclf.training.features import cache_plan, cached_features, feature_cache_dir
    from dogclf.training.loop import Trainer
    from dogclf.training.metrics import MetricsPublisher
    from dogclf.training.optim import make_optimizer
    from dogclf.training.selection import check_splits

    started = time.perf_counter()
    # 1. Everything that can fail fast: the processes of the job (world size, device), data layout, labels, model
    # config, weights, checkpoint.
    ranks = start(training, pretrained=model_config.weights is not None)
    channels = resolve_channels(paths)
    labels = resolve_data_labels(training.labels, channels["train"])
    splits = {name: scan_split(name, path, labels) for name, path in channels.items() if path is not None}
    if "valid" not in splits:
        logger.warning("no validation channel: epochs report train metrics only")
    check_splits(training, splits)
    model_dir, output_dir, ckpt_dir = Path(paths.model_dir), Path(paths.output_data_dir), Path(paths.checkpoint_dir)
    ckpt_path = ckpt_dir / CHECKPOINT_FILE
    print_ = fingerprint(model_config, training)
    checkpoint = load_checkpoint(ckpt_path)
    if checkpoint is not None and (checkpoint.get("fingerprint") != print_ or "rng" not in checkpoint):
        logger.warning("checkpoint %s was written with other hyperparameters; starting over", ckpt_path)
        checkpoint = None

    _seed_everything(training.seed, training.deterministic)
    model = BreedModel(labels, backbone=model_config.backbone, weights=model_config.weights,
                       freeze=model_config.freeze, dropout=model_config.dropout,
                       preprocess=model_config.preprocess).build()
    device = ranks.device
    # Convolutions run faster channels-last with oneDNN on CPU and with cuDNN on GPU (measured for resnet50 here).
    channels_last = training.channels_last in ("on", "auto")
    module = model.module_.to(device)
    pre = model_config.preprocess
    normalizer = Normalizer(pre, device=device, channels_last=channels_last)
    eval_bs = training.eval_batch_size or training.batch_size
    workers = training.num_workers if training.num_workers is not None else \
        ranks.workers(auto_workers(len(splits["train"]), training.batch_size))
    plan = cache_plan(model_config, training)  # "all": the whole run on cached features; "head": a fine-tune's
    use_cache = plan == "all"                   # head-only epochs on them, later epochs on images
    # Converting ResNet50 to channels-last (and back before saving) copies every conv weight: about 0.5 s each way
    # on 2 busy cores. Done only when the network runs on images: without the cache (on a cache miss the features
    # come from a BatchNorm-folded copy, made channels-last itself).
    converted = channels_last and not use_cache
    if converted:
        module.to(memory_format=torch.channels_last)
    logger.info("data: %s; labels: %d breeds; device %s; %d decode workers; channels-last %s",
                ", ".join(f"{n}={len(s)} images" for n, s in splits.items()), len(labels), device, workers,
                "on" if channels_last else "off")

    # 2. Inputs: cached backbone features (head-only fast path) and/or images decoded once into memory.
    inputs_started = time.perf_counter()
    features = None
    if plan != "off":
        cache_dir = feature_cache_dir(ckpt_dir)
        logger.info("feature cache: ON (%s, augment=none): the frozen backbone runs once per image and the head "
                    "trains on cached features%s; cache folder %s",
                    "freeze=head" if use_cache else f"the first {training.freeze_epochs} head-only epochs",
                    "" if use_cache else " (later epochs run on images)", cache_dir)
        folded: list[Any] = []

        def backbone() -> Any:  # folded once, on the first cache miss
            if not folded:
                folded.append(model.fold_batchnorm(channels_last))
            return folded[0]

        features = {name: cached_features(model, split, cache_dir, seed=training.seed, batch_size=eval_bs,
                                          workers=workers, normalizer=normalizer, backbone=backbone,
                                          ranks=ranks)
                    for name, split in splits.items()}
        folded.clear()
    if use_cache:
        data, features = features, None
    else:
        if plan == "off":
            logger.info("feature cache: OFF (freeze=%s, augment=%s, tta=%s, feature-cache=%s): the network runs on "
                        "images every epoch; images are decoded once and kept in memory", model_config.freeze,
                        training.augment, training.tta, training.feature_cache)
        data = load_split_images(splits, pre, decode_size(training.augment, pre), eval_bs, workers)
        module = ranks.prepare(module)  # SyncBatchNorm in a job of several CUDA processes (after the feature pass)

    input_seconds = time.perf_counter() - inputs_started
    # 3. The loop, observed by the registered callbacks.
    hyperparameters = {**encode(model_config, training), **(extra or {})}
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)
    ctx = TrainingContext(model=model.head_ if use_cache else module, loss_fn=loss_fn,
                          optimizer=make_optimizer(training, model, model_config),
                          hyperparameters=hyperparameters, output_data_dir=output_dir, model_dir=model_dir,
                          epochs=training.epochs, training=training, model_config=model_config)
    ctx.state.update({"feature_cache": use_cache, "device": str(device), "labels": labels, "num_workers": workers,
                      "breed_model": model, "num_train_images": len(splits["train"]),
                      "resumed_from": None if checkpoint is None else {
                          "epoch": int(checkpoint["epoch"]), "steps": dict(checkpoint.get("steps") or {})},
                      "rank": ranks.rank, "world_size": ranks.world_size})
    for var in ("SMDEBUG_CONFIG_FILE_PATH", "SMPROFILER_CONFIG_PATH"):
        if os.environ.get(var):
            logger.info("%s=%s", var, os.environ[var])
    callbacks = make_callbacks(hyperparameters, output_dir) if ranks.is_main else []  # rank 0 observes the run
    if callbacks:
        logger.info("callbacks: %s", ", ".join(type(cb).__name__ for cb in callbacks))
    metrics = ranks.publisher(lambda: MetricsPublisher(output_dir, history=checkpoint.get("history")
                                                       if checkpoint else None))
    trainer = Trainer(model, training, data, cached=use_cache, device=device, normalizer=normalizer, crop=pre.crop,
                      checkpoint_path=ckpt_path, fingerprint=print_, callbacks=callbacks, metrics=metrics,
                      context=ctx, features=features, ranks=ranks)
    outcome = trainer.fit(checkpoint)

    # 4. The artifact and the metrics summary.
    module.to("cpu")
    if converted:
        module.to(memory_format=torch.contiguous_format)
    ranks.on_main(model.save, model_dir)
    metrics.finish({**outcome, "feature_cache": use_cache, "train_images": len(splits["train"]),
                    "total_seconds": time.perf_counter() - started, "input_seconds": input_seconds,
                    "hyperparameters": hyperparameters,
                    "world_size": ranks.world_size})
    ranks.barrier()  # every process ends after the artifact is complete
    logger.info("saved the model to %s; %.1fs in all", model_dir, time.perf_counter() - started)
    return outcome["metrics"]


def main(argv: list[str] | None = None) -> int:
    """Run the entry point; returns the process exit status (0 success, 2 bad input, 1 other failures).

    On failure the reason is also written to ``$SM_OUTPUT_DIR/failure`` (SageMaker's ``FailureReason``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model, training, paths, extra = parse_args(argv)
        if extra:
            logger.info("hyperparameters not used by the entry point (passed to callbacks): %s", sorted(extra))
        # Denormal floats make CPU convolutions several times slower. The flag is process-wide CPU state, so it is
        # set for the run only: the entry point may run inside a caller's process (tests, notebooks).
        import torch

        from dogclf.training.distributed import stop

        torch.set_flush_denormal(True)
        try:
            run(model, training, paths, extra)
        finally:
            torch.set_flush_denormal(False)
            stop()
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
