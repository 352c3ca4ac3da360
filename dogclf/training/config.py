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

__all__ = ["AUGMENTATIONS", "BATCHNORM_MODES", "FEATURE_CACHE_MODES", "OPTIMIZERS", "TrainingConfig", "decode",
           "encode"]

OPTIMIZERS = ("adam", "adamw", "sgd")
"""Optimizers the entry point knows (``optimizer``)."""
AUGMENTATIONS = ("none", "flip", "crop-flip")
"""Train-time augmentations (``augment``): none (the seed), horizontal flips, random crop plus flips."""
FEATURE_CACHE_MODES = ("auto", "on", "off")
"""``feature_cache``: ``auto`` uses cached backbone features whenever only the head trains without augmentation."""
BATCHNORM_MODES = ("auto", "sync", "local", "frozen")
"""``batchnorm``: statistics of BatchNorm layers that train, for jobs of several processes
(:mod:`dogclf.training.distributed`)."""

@dataclass(frozen=True)
class TrainingConfig:
    """How the network is trained: the entry point's training hyperparameters, validated on creation.

    Every field is a hyperparameter of the one entry point, searchable by :class:`~dogclf.hpo.HPOExperiment`,
    recorded in the job's ``metrics.json``. On the wire ``_`` is spelled ``-`` (``batch-size``).

    Raises:
        ConfigError: a value of the wrong type, out of range, or not one of the choices (the message names it).

    Example:
        >>> TrainingConfig(lr=0.01, batch_size=32).epochs
        2
    """

    lr: float = hyperparameter(0.001, "learning rate", gt=0)
    batch_size: int = hyperparameter(64, "training batch size", ge=1)
    eval_batch_size: int | None = hyperparameter(None, "validation/test batch size (None: the batch size)", ge=1)
    epochs: int = hyperparameter(2, "number of epochs", ge=1)
    optimizer: str = hyperparameter("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = hyperparameter(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = hyperparameter(0.0, "weight decay", ge=0)
    seed: int = hyperparameter(0, "random seed (runs on CPU are deterministic)")
    labels: str = hyperparameter("auto", "'auto' (the train channel's class folders), a registered label-set name, "
                                         "or a label-set JSON path")
    augment: str = hyperparameter("none", "train-time augmentation", choices=AUGMENTATIONS)
    feature_cache: str = hyperparameter("auto", "cached backbone features for head-only training",
                                        choices=FEATURE_CACHE_MODES)
    num_workers: int | None = hyperparameter(None, "DataLoader workers for decoding (auto: the CPUs less one)", ge=0,
                                             none="auto")
    channels_last: str = hyperparameter("auto", "channels-last memory format for convolutions",
                                        choices=("auto", "on", "off"))
    device: str = hyperparameter("auto", "where to train", choices=("auto", "cpu", "cuda"))
    deterministic: bool = hyperparameter(True, "use deterministic algorithms")
    batchnorm: str = hyperparameter("auto", "statistics of BatchNorm layers that train, in a job of several "
                                            "processes: sync (the global batch's; CUDA), local (each process's "
                                            "part), frozen (running statistics, never updated; any device, any "
                                            "process count); auto: sync on CUDA, else local",
                                    choices=BATCHNORM_MODES)
    log_interval: int = hyperparameter(0, "log the train loss every N steps (0: never)", ge=0)

    def __post_init__(self) -> None:
        validate_fields(self)
