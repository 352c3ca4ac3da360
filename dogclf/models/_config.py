"""The model configuration: a frozen, validated description of a :class:`~dogclf.models.ResNetBreedModel`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from dogclf._contract import hyperparameter, nested
from dogclf.errors import ConfigError
from dogclf.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = [
    "ARTIFACT_FORMAT",
    "BACKBONES",
    "FREEZE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelConfig",
    "Preprocess",
]

ARTIFACT_FORMAT = "dogclf.model/1"
"""The ``format`` value of an artifact's ``config.json``."""

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
"""The torchvision backbones :class:`~dogclf.models.ResNetBreedModel` supports."""

FREEZE_POLICIES = ("head", "last-block", "full")
"""What is trained: only the new ``fc`` head, ``layer4`` plus the head, or every parameter."""


def _choices(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(v) for v in values)


def weights_names(backbone: str) -> list[str]:
    """The torchvision weights enum names for ``backbone`` (e.g. ``["IMAGENET1K_V1", "IMAGENET1K_V2"]``)."""
    from torchvision.models import get_model_weights

    return [w.name for w in get_model_weights(backbone)]


def looks_like_path(value: str) -> bool:
    """Whether a ``weights`` string names a file rather than a torchvision weights enum member."""
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".ckpt")) or value.startswith(".")


@dataclass(frozen=True)
class ModelConfig:
    """What defines a :class:`~dogclf.models.ResNetBreedModel` apart from its labels, validated on creation.

    Attributes:
        backbone: One of :data:`BACKBONES`.
        weights: A torchvision weights enum name for the backbone (``"IMAGENET1K_V2"``, ``"IMAGENET1K_V1"`` or
            ``"DEFAULT"``), a local checkpoint path (a torchvision-style state dict), or ``None`` for random init.
        freeze: One of :data:`FREEZE_POLICIES`.
        dropout: Dropout probability before the final linear layer, in ``[0, 1)``.
        preprocess: The input preprocessing.

    Raises:
        ConfigError: a value is invalid; the message names it and the allowed choices.
    """

    backbone: str = hyperparameter("resnet50", "the backbone network")
    weights: str | None = hyperparameter("DEFAULT", "pretrained weights: a name such as IMAGENET1K_V2 or "
                                                          "DEFAULT, a checkpoint path, or None (random)")
    freeze: str = hyperparameter("head", "what trains: head, last-block or full")
    dropout: float = hyperparameter(0.0, "dropout before the head's linear layer", ge=0, lt=1)
    preprocess: Preprocess = nested(Preprocess)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {_choices(BACKBONES)}")
        if self.freeze not in FREEZE_POLICIES:
            raise ConfigError(f"unknown freeze policy {self.freeze!r}; choose one of {_choices(FREEZE_POLICIES)}")
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None:
            if not isinstance(self.weights, str) or not self.weights:
                raise ConfigError(f"weights must be a torchvision weights name, a checkpoint path or None, "
                                  f"got {self.weights!r}")
            if self.weights.lower() in ("none", "null", "random"):
                object.__setattr__(self, "weights", None)
            elif not looks_like_path(self.weights):
                names = weights_names(self.backbone)
                if self.weights not in (*names, "DEFAULT"):
                    raise ConfigError(
                        f"unknown weights {self.weights!r} for {self.backbone}; choose one of "
                        f"{_choices([*names, 'DEFAULT'])}, a checkpoint path, or None"
                    )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess.from_dict(self.preprocess))
        if not isinstance(self.preprocess, Preprocess):
            raise ConfigError(f"preprocess must be a Preprocess or a dict, got {self.preprocess!r:.100}")

    @property
    def weights_is_path(self) -> bool:
        """Whether :attr:`weights` names a local checkpoint file."""
        return self.weights is not None and looks_like_path(self.weights)

    def to_dict(self, num_classes: int) -> dict[str, Any]:
        """The artifact's ``config.json`` document for a model with ``num_classes`` outputs."""
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return {"format": ARTIFACT_FORMAT, **data, "num_classes": int(num_classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple[ModelConfig, int]:
        """Inverse of :meth:`to_dict`: the config and the number of classes.

        Raises:
            ConfigError: not a ``dogclf.model/1`` config document, or a value is invalid.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a JSON object, got {data!r:.100}")
        if data.get("format") != ARTIFACT_FORMAT:
            raise ConfigError(f"unsupported model config format {data.get('format')!r}; expected {ARTIFACT_FORMAT!r}")
        num_classes = data.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model config num_classes must be a positive int, got {num_classes!r}")
        keys = {"backbone", "weights", "freeze", "dropout", "preprocess"}
        return cls(**{k: data[k] for k in keys if k in data}), num_classes
