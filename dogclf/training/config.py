"""The typed job contract: every hyperparameter of the training entry point, with one encoder and one decoder.

A training job is described by two frozen dataclasses, validated once when they are made:

* :class:`~dogclf.models.ModelConfig`: what the network is (backbone, weights, freeze policy, dropout, input
  size);
* :class:`TrainingConfig`: how it is trained (learning rate, batch size, epochs, optimizer, ...).

Each field is a :func:`~dogclf._contract.hyperparameter`: a dataclass field whose metadata carries its help text,
range, choices and its name on the wire. Python code uses Python names (``batch_size``); the wire (SageMaker
hyperparameters, ``hyperparameters.json``, the entry point's command-line options) keeps SageMaker's spelling
(``batch-size``). :func:`encode` turns configs into wire strings and :func:`decode` turns any spelling back into
typed configs; the entry point's options are generated from the same fields, so a new hyperparameter is one field
here and nothing else.

Example:
    >>> cfg = TrainingConfig(lr=0.01, batch_size=32)
    >>> encode(cfg)["batch-size"]
    '32'
    >>> decode(TrainingConfig, {"batch-size": "32", "lr": "0.01"}) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from dogclf._contract import decode, encode, hyperparameter, validate_fields

__all__ = ["AMP_MODES", "AUGMENTATIONS", "BATCHNORM_MODES", "FEATURE_CACHE_MODES", "MONITORS", "OPTIMIZERS",
           "SCHEDULES", "SELECTIONS", "TTA_MODES", "TrainingConfig", "decode", "encode"]

OPTIMIZERS = ("auto", "adam", "adamw", "sgd")
"""Optimizers the entry point knows (``optimizer``); ``auto`` is AdamW when backbone layers train, else Adam."""
SCHEDULES = ("constant", "cosine", "onecycle")
"""Learning-rate schedules, stepped every batch (``schedule``; :mod:`dogclf.training.schedule`)."""
AUGMENTATIONS = ("none", "flip", "crop", "crop-flip", "rrc", "rrc-flip", "trivialaugment")
"""Train-time augmentations (``augment``; :mod:`dogclf.training.augment`): none (the seed), horizontal flips, a
random crop (with flips), torchvision's RandomResizedCrop (with flips), and RandomResizedCrop + flip +
TrivialAugmentWide."""
TTA_MODES = ("none", "flip")
"""Test-time augmentation at evaluation (``tta``): none, or the mean of the photo's and its mirror image's
probabilities."""
BATCHNORM_MODES = ("auto", "sync", "local", "frozen")
"""What BatchNorm layers of training backbone stages normalise with (``batchnorm``;
:func:`dogclf.training.optim.resolve_batchnorm`): the global batch's statistics across the processes of a job
(``sync``, GPUs), each process's own batch (``local``), or the pretrained running ones (``frozen``)."""
AMP_MODES = ("off", "auto", "bf16", "fp16")
"""Mixed precision (``amp``; :mod:`dogclf.training.amp`)."""
SELECTIONS = ("best", "last")
"""Which epoch's weights the artifact holds (``select``)."""
MONITORS = ("valid_loss", "valid_acc")
"""The validation metric that picks the best epoch and drives early stopping (``monitor_metric``)."""
FEATURE_CACHE_MODES = ("auto", "on", "off")
"""``feature_cache``: ``auto`` uses cached backbone features whenever only the head trains on fixed inputs (the
whole run with ``freeze='head'``, the head-only epochs of a fine-tune) without augmentation or test-time
augmentation."""


@dataclass(frozen=True)
class TrainingConfig:
    """How the network is trained: the entry point's training hyperparameters, validated on creation.

    Every field is a hyperparameter of the one entry point, searchable by :class:`~dogclf.hpo.HPOExperiment`,
    recorded in the job's ``metrics.json``. On the wire ``_`` is spelled ``-`` (``batch-size``). Checks that
    span fields (a warm-up longer than the run, an unfreeze epoch past the end) are in
    :func:`~dogclf.training.spec.check_job`; the recipe is described in the how-to "Training recipe".

    Raises:
        ConfigError: a value of the wrong type, out of range, or not one of the choices (the message names it).

    Example:
        >>> TrainingConfig(lr=0.01, batch_size=32).epochs
        2
        >>> TrainingConfig(schedule="onecycle", freeze_epochs=1, epochs=5, label_smoothing=0.1).select
        'best'
    """

    lr: float = hyperparameter(0.001, "peak learning rate (of the head, with discriminative rates)", gt=0)
    batch_size: int = hyperparameter(64, "training batch size", ge=1)
    eval_batch_size: int | None = hyperparameter(None, "validation/test batch size (None: the batch size)", ge=1)
    epochs: int = hyperparameter(2, "number of epochs (head-only epochs of a fine-tune included)", ge=1)
    optimizer: str = hyperparameter("auto", "optimizer; auto: AdamW when backbone layers train, else Adam",
                                    choices=OPTIMIZERS)
    momentum: float = hyperparameter(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float | None = hyperparameter(None, "weight decay, not applied to biases and normalisation "
                                                      "weights; auto: 0.01 with AdamW, else 0", ge=0, none="auto")
    schedule: str = hyperparameter("constant", "learning-rate schedule, stepped every batch, run again in each "
                                               "phase of a fine-tune", choices=SCHEDULES)
    warmup_epochs: float | None = hyperparameter(None, "linear warm-up at the start of each phase, in epochs "
                                                       "(fractions allowed); auto: a quarter of the phase for "
                                                       "onecycle, else none", ge=0, none="auto")
    freeze_epochs: int = hyperparameter(0, "fine-tune: epochs that train the head alone before the freeze policy's "
                                           "layers unfreeze (fastai's fine_tune with freeze='full')", ge=0)
    lr_mult: float | None = hyperparameter(None, "discriminative rates: the earliest backbone stage trains at "
                                                 "lr / lr_mult, later ones geometrically closer to lr; auto: 100 "
                                                 "with freeze_epochs and pretrained weights, else 1", ge=1,
                                          none="auto")
    batchnorm: str = hyperparameter("auto", "statistics of BatchNorm layers in training backbone stages: sync "
                                            "(the global batch's, over a job's processes; GPUs), local (each "
                                            "process's batch, running ones updated), frozen (the pretrained "
                                            "running ones, never updated); auto: frozen with pretrained weights "
                                            "when the batch BatchNorm sees is under 32, else sync with several "
                                            "GPU processes, else local", choices=BATCHNORM_MODES)
    label_smoothing: float = hyperparameter(0.0, "label smoothing of the training loss (validation and test "
                                                 "losses are plain cross-entropy)", ge=0, lt=1)
    clip_grad: float | None = hyperparameter(None, "clip the gradients' global norm to this (off: no clipping)",
                                             gt=0, none="off")
    amp: str = hyperparameter("off", "mixed precision: bf16 autocast on CPUs and GPUs that support it, fp16 with "
                                     "a gradient scaler; auto: bf16 where supported, fp16 on older GPUs, else off",
                              choices=AMP_MODES)
    seed: int = hyperparameter(0, "random seed (runs on CPU are deterministic)")
    labels: str = hyperparameter("auto", "'auto' (the train channel's class folders), a registered label-set name, "
                                         "or a label-set JSON path")
    augment: str = hyperparameter("none", "train-time augmentation", choices=AUGMENTATIONS)
    rrc_scale: float = hyperparameter(0.35, "smallest area of a RandomResizedCrop, as a fraction of the image "
                                            "(augment rrc, rrc-flip, trivialaugment)", gt=0, le=1)
    tta: str = hyperparameter("none", "test-time augmentation at validation and test", choices=TTA_MODES)
    select: str = hyperparameter("best", "the artifact's weights: the epoch with the best validation metric, or "
                                         "the last epoch (without a validation channel: the last)",
                                 choices=SELECTIONS)
    monitor_metric: str = hyperparameter("valid_loss", "the validation metric for select=best and early "
                                                       "stopping", choices=MONITORS)
    patience: int | None = hyperparameter(None, "early stopping: stop after this many epochs without a better "
                                                "validation metric (off: never)", ge=1, none="off")
    feature_cache: str = hyperparameter("auto", "cached backbone features for head-only training",
                                        choices=FEATURE_CACHE_MODES)
    num_workers: int | None = hyperparameter(None, "DataLoader workers for decoding (auto: the CPUs less one)", ge=0,
                                             none="auto")
    channels_last: str = hyperparameter("auto", "channels-last memory format for convolutions",
                                        choices=("auto", "on", "off"))
    device: str = hyperparameter("auto", "where to train", choices=("auto", "cpu", "cuda"))
    deterministic: bool = hyperparameter(True, "use deterministic algorithms")
    log_interval: int = hyperparameter(0, "log the train loss every N steps (0: never)", ge=0)

    def __post_init__(self) -> None:
        validate_fields(self)
