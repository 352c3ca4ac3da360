"""The model configuration: a frozen, validated description of a :class:`~dogclf.models.BreedModel`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dogclf._contract import hyperparameter, nested
from dogclf.errors import ConfigError
from dogclf.images import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess
from dogclf.models.backbones.base import FREEZE_POLICIES, looks_like_path

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_FORMATS",
    "BACKBONES",
    "INTERPOLATIONS",
    "FREEZE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelConfig",
    "Preprocess",
]

ARTIFACT_FORMAT = "dogclf.model/2"
"""The ``format`` value of the ``config.json`` dogclf writes."""

ARTIFACT_FORMATS = ("dogclf.model/1", "dogclf.model/2")
"""The ``config.json`` formats dogclf reads: ``/1`` (ResNets only, before the backbone registry) and ``/2``."""

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
"""The torchvision ResNets :class:`~dogclf.models.ResNetBreedModel` supports. Every registered backbone (these and
``efficientnet_lite0/1/2``, plus plug-ins) is listed by :func:`~dogclf.models.backbones.list_models`."""


def _choices(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(v) for v in values)


def weights_names(backbone: str) -> list[str]:
    """The weights names of a registered backbone (e.g. ``["IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"]``)."""
    from dogclf.models.backbones import get_backbone

    return get_backbone(backbone).weights_names()


@dataclass(frozen=True)
class ModelConfig:
    """What defines a :class:`~dogclf.models.BreedModel` apart from its labels, validated on creation.

    Attributes:
        backbone: A registered backbone name (:func:`~dogclf.models.backbones.list_models`).
        weights: A weights name of the backbone (``"IMAGENET1K_V2"``, ``"DEFAULT"``), a local checkpoint path (a
            state dict with the backbone's key names), or ``None`` for random initialisation.
        freeze: One of the backbone's freeze policies (:data:`FREEZE_POLICIES` for every built-in).
        dropout: Dropout probability before the final linear layer, in ``[0, 1)``.
        preprocess: The input preprocessing; ``None`` (the default) takes the named weights' preprocessing, or
            the backbone's without named weights.

    Raises:
        ConfigError: a value is invalid; the message names it and the allowed choices
            (:class:`~dogclf.errors.UnknownBackboneError` and :class:`~dogclf.errors.UnknownWeightsError` for an
            unknown backbone or weights name, listing the registered ones).
    """

    backbone: str = hyperparameter("resnet50", "the backbone network (a registered name, e.g. resnet50, "
                                               "efficientnet_lite0)")
    weights: str | None = hyperparameter("DEFAULT", "pretrained weights: DEFAULT (the backbone's), a name such as "
                                                    "IMAGENET1K_V1, a checkpoint path, or None (random)")
    freeze: str = hyperparameter("head", "what trains: head, last-block or full")
    dropout: float = hyperparameter(0.0, "dropout before the head's linear layer", ge=0, lt=1)
    preprocess: Preprocess | None = nested(None, reset_on=("backbone", "weights"))

    def __post_init__(self) -> None:
        from dogclf.models.backbones import get_backbone

        spec = get_backbone(self.backbone)
        object.__setattr__(self, "backbone", spec.name)
        spec.freeze_policy(self.freeze)
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None:
            if not isinstance(self.weights, str) or not self.weights:
                raise ConfigError(f"weights must be a weights name, a checkpoint path or None, got {self.weights!r}")
            if self.weights.lower() in ("none", "null", "random"):
                object.__setattr__(self, "weights", None)
            elif not looks_like_path(self.weights):
                spec.get_weights(self.weights)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.preprocess is None:
            named = self.weights is not None and not self.weights_is_path
            object.__setattr__(self, "preprocess",
                               spec.get_weights(self.weights).preprocess if named else spec.preprocess)
        elif isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess.from_dict(self.preprocess))
        if not isinstance(self.preprocess, Preprocess):
            raise ConfigError(f"preprocess must be a Preprocess, a dict or None, got {self.preprocess!r:.100}")

    @property
    def weights_is_path(self) -> bool:
        """Whether :attr:`weights` names a local checkpoint file."""
        return self.weights is not None and looks_like_path(self.weights)

    @property
    def backbone_spec(self) -> Any:
        """The registered :class:`~dogclf.models.backbones.Backbone`."""
        from dogclf.models.backbones import get_backbone

        return get_backbone(self.backbone)

    def to_dict(self, num_classes: int) -> dict[str, Any]:
        """The artifact's ``config.json`` document (format :data:`ARTIFACT_FORMAT`) for ``num_classes`` outputs."""
        assert self.preprocess is not None
        spec = self.backbone_spec
        return {"format": ARTIFACT_FORMAT, "backbone": self.backbone, "weights": self.weights, "freeze": self.freeze,
                "dropout": self.dropout, "preprocess": self.preprocess.to_dict(), "num_classes": int(num_classes),
                "backbone_info": {"family": spec.family, "feature_dim": spec.feature_dim, "head": spec.head,
                                  "module": type(spec).__module__}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple[ModelConfig, int]:
        """Inverse of :meth:`to_dict`: the config and the number of classes. Reads every format in
        :data:`ARTIFACT_FORMATS` (a ``dogclf.model/1`` document is a ResNet's, without ``interpolation``).

        Raises:
            UnknownBackboneError: the document names a backbone that is not registered here.
            ConfigError: not a dogclf model config document, or a value is invalid.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a JSON object, got {data!r:.100}")
        if data.get("format") not in ARTIFACT_FORMATS:
            raise ConfigError(f"unsupported model config format {data.get('format')!r}; expected one of "
                              f"{_choices(ARTIFACT_FORMATS)}")
        num_classes = data.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"model config num_classes must be a positive int, got {num_classes!r}")
        if data["format"] == "dogclf.model/1" and data.get("backbone", "resnet50") not in BACKBONES:
            raise ConfigError(f"a dogclf.model/1 config names a ResNet, got backbone {data.get('backbone')!r}")
        keys = {"backbone", "weights", "freeze", "dropout", "preprocess"}
        doc = {k: data[k] for k in keys if k in data}
        doc.setdefault("preprocess", Preprocess().to_dict())  # as written before preprocessing was recorded
        return cls(**doc), num_classes
