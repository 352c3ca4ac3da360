"""The torchvision ResNets (``resnet18`` ... ``resnet152``) as backbones.

The network is torchvision's ``ResNet`` (classifier ``fc``); its weights are torchvision's weights enum members,
loaded through torchvision's real loading path (``get_state_dict`` and its cache under
``$TORCH_HOME/hub/checkpoints``, downloading there on first use).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from dogclf.errors import ArtifactError, ConfigError, WeightsUnavailableError
from dogclf.models._config import Preprocess
from dogclf.models.backbones.base import Backbone, FreezePolicy, Weights, standard_policies

__all__ = ["ResNetBackbone", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

_DEPTHS = {18: ("IMAGENET1K_V1", 512), 34: ("IMAGENET1K_V1", 512), 50: ("IMAGENET1K_V2", 2048),
           101: ("IMAGENET1K_V2", 2048), 152: ("IMAGENET1K_V2", 2048)}


def _cache_path(url: str) -> str:
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _load_torchvision(enum_name: str, member: Any) -> dict[str, Any]:
    """``member.get_state_dict`` (torchvision's cache, downloading on a miss), with errors that say what to do."""
    cached = _cache_path(member.url)
    try:
        return member.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        if os.path.isfile(cached):
            raise ArtifactError(f"torchvision weights {enum_name}.{member.name}: the cached file {cached!r} is "
                                f"truncated or corrupt ({type(exc).__name__}: {str(exc)[:200]}); delete it to "
                                "download it again") from exc
        raise WeightsUnavailableError(
            f"could not load torchvision weights {enum_name}.{member.name}: not in torchvision's cache and the "
            f"download from {member.url} failed ({type(exc).__name__}: {str(exc)[:160]}). With no network, copy "
            f"that file to {cached!r} (the cache folder is $TORCH_HOME/hub/checkpoints), or pass weights= a "
            "checkpoint path") from exc


def _preprocess(member: Any) -> Preprocess:
    t = member.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    return Preprocess(resize=int(resize), crop=int(crop), mean=tuple(t.mean), std=tuple(t.std),
                      interpolation=str(t.interpolation.value))


class ResNetBackbone(Backbone):
    """A torchvision ResNet (``resnet18`` ... ``resnet152``): head ``fc``; ``last-block`` trains ``layer4``."""

    family = "resnet"
    head = "fc"

    def __init__(self, name: str) -> None:
        depth = int(name.removeprefix("resnet")) if name.removeprefix("resnet").isdigit() else -1
        if not name.startswith("resnet") or depth not in _DEPTHS:
            raise ConfigError(f"not a torchvision ResNet: {name!r}; expected resnet18/34/50/101/152")
        super().__init__(name)
        self.default_weights, self.feature_dim = _DEPTHS[depth]
        self.description = f"torchvision ResNet-{depth}"

    def build(self) -> Any:
        """A randomly initialised torchvision ResNet with its 1000-class ``fc``."""
        from torchvision import models

        return getattr(models, self.name)(weights=None)

    @cached_property
    def weights(self) -> Mapping[str, Weights]:  # type: ignore[override]
        """torchvision's weights enum members for this ResNet (``IMAGENET1K_V1``, and ``IMAGENET1K_V2`` for 50+)."""
        from torchvision.models import get_model_weights

        enum = get_model_weights(self.name)
        return {m.name: Weights(
            name=m.name, backbone=self.name, preprocess=_preprocess(m),
            loader=lambda m=m: _load_torchvision(enum.__name__, m), identity=f"torchvision:{m.url}",
            source=f"torchvision {enum.__name__}.{m.name}, cached as {_cache_path(m.url)}", meta=dict(m.meta),
        ) for m in enum}

    @property
    def freeze_policies(self) -> Mapping[str, FreezePolicy]:
        """``head`` (``fc``), ``last-block`` (``layer4`` and ``fc``), ``full``."""
        return standard_policies(("layer4.",), "fc")

    @property
    def preprocess(self) -> Preprocess:
        """Without named weights: resize 256, centre crop 224, ImageNet mean/std (as dogclf always used)."""
        return Preprocess()


resnet18 = ResNetBackbone("resnet18")
resnet34 = ResNetBackbone("resnet34")
resnet50 = ResNetBackbone("resnet50")
resnet101 = ResNetBackbone("resnet101")
resnet152 = ResNetBackbone("resnet152")
