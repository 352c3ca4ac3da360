"""What a backbone is: :class:`Backbone`, its named :class:`Weights` and its :class:`FreezePolicy` objects.

A backbone describes one network family member (``resnet50``, ``efficientnet_lite0``): how to build the network
(with a classifier at :attr:`Backbone.head`, replaced by dogclf's head), which pretrained weights exist and how
their inputs are preprocessed, how wide its pooled features are, what each freeze policy trains, how to compute the
pooled features the head sees, and which convolutions a BatchNorm can be folded into.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogclf.errors import ArtifactError, ConfigError, UnknownWeightsError, WeightsUnavailableError
from dogclf.images import Preprocess
from dogclf.models.backbones.folding import batchnorm_pairs, fold_batchnorm, forward_features

__all__ = ["FREEZE_POLICIES", "Backbone", "FreezePolicy", "Weights", "extract_state_dict", "load_state_dict_file",
           "looks_like_path", "standard_policies"]

logger = logging.getLogger(__name__)

FREEZE_POLICIES = ("head", "last-block", "full")
"""What is trained: only the new head, the backbone's last block plus the head, or every parameter. Every backbone
has these three (a plug-in may add its own)."""


# -- freeze policies ---------------------------------------------------------------------------------------------
def _under(name: str, prefix: str) -> bool:
    """Whether module/parameter ``name`` lies under ``prefix`` (``"layer4."`` covers ``layer4`` and ``layer4.0``)."""
    return (name + ".").startswith(prefix)


@dataclass(frozen=True)
class FreezePolicy:
    """What trains under one freeze policy.

    Attributes:
        name: ``"head"``, ``"last-block"``, ``"full"`` or a backbone's own policy name.
        trainable: Parameter-name prefixes that train, each ending in ``"."`` (``("layer4.", "fc.")``); empty means
            every parameter trains.
        eval_modules: Submodule names kept in eval mode while training (their BatchNorm statistics and dropout stay
            fixed); ``None`` means every submodule outside :attr:`trainable`.
        description: One line for messages and docs.

    Example:
        >>> policy = FreezePolicy("last-block", ("layer4.", "fc."))
        >>> policy.is_trainable("layer4.1.conv2.weight"), policy.is_trainable("layer3.0.bn1.bias")
        (True, False)
    """

    name: str
    trainable: tuple[str, ...] = ()
    eval_modules: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        trainable = (self.trainable,) if isinstance(self.trainable, str) else tuple(self.trainable)
        bad = [p for p in trainable if not isinstance(p, str) or not p.endswith(".")]
        if bad:
            raise ConfigError(f"freeze policy {self.name!r}: trainable prefixes must end with '.', got {bad}")
        object.__setattr__(self, "trainable", trainable)
        if self.eval_modules is not None:
            object.__setattr__(self, "eval_modules", tuple(self.eval_modules))

    def is_trainable(self, name: str) -> bool:
        """Whether the parameter called ``name`` trains under this policy."""
        return not self.trainable or any(name.startswith(p) for p in self.trainable)

    def frozen_modules(self, module: Any) -> list[str]:
        """The outermost submodules of ``module`` that stay in eval mode while the rest trains."""
        if self.eval_modules is not None:
            return list(self.eval_modules)
        if not self.trainable:
            return []
        out: list[str] = []
        for name, _ in module.named_modules():
            if not name or any(_under(name, f"{o}.") for o in out):
                continue
            trains = any(_under(name, p) or p.startswith(name + ".") for p in self.trainable)
            if not trains:
                out.append(name)
        return out


def standard_policies(last_block: Sequence[str], head: str = "fc") -> dict[str, FreezePolicy]:
    """The three standard policies for a network whose classifier is ``head`` and whose last block is
    ``last_block`` (parameter prefixes)."""
    h = f"{head}."
    return {
        "head": FreezePolicy("head", (h,), description="only the new head trains (the seed)"),
        "last-block": FreezePolicy("last-block", (*last_block, h), description="the last block and the head train"),
        "full": FreezePolicy("full", (), description="every parameter trains"),
    }


# -- weights -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    """One named set of pretrained weights for a backbone, in the manner of a torchvision weights enum member.

    Attributes:
        name: The name users pass as ``weights=`` (``"IMAGENET1K_V1"``).
        backbone: The backbone these weights are for.
        preprocess: How inputs were preprocessed when the weights were trained (resize, crop, mean, std,
            interpolation); the default preprocessing of a model built on them.
        loader: Returns the state dict (no arguments); raises :class:`~dogclf.errors.WeightsUnavailableError` when
            the weights cannot be had.
        identity: A stable id of the exact weights (a URL or a file name with its hash), for caches.
        source: Where the weights come from, in words (for messages: what to install or where to put the file).
        meta: Anything else: ``"categories"`` (the 1000 ImageNet class names, or a callable returning them),
            ``"num_params"``, ``"license"``, ``"metrics"``, ...
        requirements: pip requirement strings needed to load them (e.g. a weights wheel), for training jobs.
    """

    name: str
    backbone: str
    preprocess: Preprocess
    loader: Callable[[], dict[str, Any]] = field(repr=False, compare=False)
    identity: str = ""
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    requirements: tuple[str, ...] = ()

    @property
    def categories(self) -> list[str] | None:
        """The class names of the weights' own classifier (ImageNet's 1000), if known."""
        cats = self.meta.get("categories")
        return list(cats() if callable(cats) else cats) if cats is not None else None

    def get_state_dict(self) -> dict[str, Any]:
        """Load the state dict (the network's own key names, classifier included).

        Raises:
            WeightsUnavailableError: the weights cannot be had (not installed, not downloadable offline).
            ArtifactError: the file is corrupt or not a state dict.
        """
        logger.info("loading %s weights %s (%s)", self.backbone, self.name, self.source or self.identity)
        return self.loader()

    def transforms(self) -> Any:
        """The deterministic eval transform for these weights (:func:`~dogclf.models.eval_transform`)."""
        from dogclf.images import ImageTransform

        return ImageTransform(self.preprocess)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")


def load_state_dict_file(path: str | os.PathLike[str], *, check_hash: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and return its state dict.

    A dict wrapping the state dict under ``state_dict``/``model_state_dict``/``model`` is unwrapped and a
    ``module.`` prefix (``DataParallel``) is dropped. With ``check_hash``, a file named like torch hub's
    ``name-<sha256 prefix>.pth`` must have that sha256 prefix.

    Raises:
        WeightsUnavailableError: the file does not exist.
        ArtifactError: the file is truncated, corrupt, not a PyTorch file, not a state dict, or fails its hash.
    """
    import torch

    file = Path(path)
    if not file.is_file():
        raise WeightsUnavailableError(f"weights file {str(file)!r} does not exist")
    if check_hash:
        match = _HASH_IN_NAME.search(file.name)
        if match:
            h = hashlib.sha256()
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if not h.hexdigest().startswith(match.group(1)):
                raise ArtifactError(f"weights file {str(file)!r} is damaged: its sha256 {h.hexdigest()[:16]}... does "
                                    f"not start with {match.group(1)} as its name says; reinstall it")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, not a torch file at all
        raise ArtifactError(f"weights file {str(file)!r} is truncated, corrupt or not a PyTorch file: "
                            f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    return extract_state_dict(obj, f"weights file {str(file)!r}")


def extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """A state dict from what ``torch.load`` returned: a state dict, or a dict wrapping one.

    Raises:
        ArtifactError: ``obj`` holds no mapping of parameter names to tensors.
    """
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ArtifactError(f"{source} does not hold a state dict (a mapping of parameter names to tensors)")


# -- the backbone ------------------------------------------------------------------------------------------------
class Backbone:
    """A registered network family member: its network, weights, features, freeze policies and BatchNorm folding.

    Subclass it (or build one with the attributes below) and register it with
    :func:`~dogclf.models.backbones.register_model` or the ``dogclf.backbones`` entry-point group. Only
    :meth:`build` must be written; the rest has defaults that work for a network with a linear classifier
    attribute :attr:`head` and a ``forward_features(x)`` method (or a torchvision ResNet).

    Attributes:
        name: The registered name (``"efficientnet_lite0"``).
        family: The family (``"resnet"``, ``"efficientnet_lite"``), for messages and the artifact.
        feature_dim: Width of the pooled features the head sees.
        head: Attribute of the network holding its classifier (replaced by dogclf's head).
        default_weights: The name ``weights="DEFAULT"`` stands for, or ``None`` when there are no weights.
        description: One line for listings.

    The properties :attr:`weights` (the named :class:`Weights`), :attr:`freeze_policies` (the :class:`FreezePolicy`
    objects, at least ``head``, ``last-block`` and ``full``) and :attr:`preprocess` (preprocessing without named
    weights) complete the description.
    """

    name: str = ""
    family: str = ""
    feature_dim: int = 0
    head: str = "fc"
    default_weights: str | None = None
    description: str = ""

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.feature_dim} features, weights {self.weights_names()}>"

    # -- subclasses fill these in ----------------------------------------------------------------------------
    def build(self) -> Any:
        """A new randomly initialised network (with its own classifier at :attr:`head`). Must be overridden."""
        raise NotImplementedError(f"backbone {self.name!r} does not implement build()")

    @property
    def weights(self) -> Mapping[str, Weights]:
        """The named pretrained weights (none by default)."""
        return {}

    @property
    def freeze_policies(self) -> Mapping[str, FreezePolicy]:
        """The freeze policies (default: ``head`` trains :attr:`head`, ``last-block`` the same, ``full`` all)."""
        return standard_policies((), self.head)

    @property
    def preprocess(self) -> Preprocess:
        """Preprocessing without pretrained weights: the default weights', else resize 256, crop 224, ImageNet."""
        if self.default_weights is not None and self.default_weights in self.weights:
            return self.weights[self.default_weights].preprocess
        return Preprocess()

    def remap_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """Rename a weights file's keys to the network's (default: unchanged)."""
        return state

    # -- derived -------------------------------------------------------------------------------------------------
    def weights_names(self) -> list[str]:
        """The weights names (plus ``"DEFAULT"`` when there is a default)."""
        names = list(self.weights)
        return [*names, "DEFAULT"] if self.default_weights is not None else names

    def get_weights(self, name: str) -> Weights:
        """The :class:`Weights` called ``name`` (``"DEFAULT"``: the default ones).

        Raises:
            UnknownWeightsError: no such weights; the message lists this backbone's weights.
        """
        key = self.default_weights if name == "DEFAULT" and self.default_weights is not None else name
        weights = self.weights
        if key not in weights:
            known = ", ".join(repr(n) for n in self.weights_names()) or "none (this backbone has no pretrained weights)"
            raise UnknownWeightsError(f"unknown weights {name!r} for backbone {self.name!r}; choose one of {known}, "
                                      "a checkpoint path, or None")
        return weights[key]

    def freeze_policy(self, name: str) -> FreezePolicy:
        """The :class:`FreezePolicy` called ``name``.

        Raises:
            ConfigError: no such policy; the message lists them.
        """
        policies = self.freeze_policies
        if name not in policies:
            raise ConfigError(f"unknown freeze policy {name!r} for backbone {self.name!r}; choose one of "
                              f"{', '.join(repr(p) for p in policies)}")
        return policies[name]

    def forward_features(self, module: Any, x: Any) -> Any:
        """Pooled features ``(N, feature_dim)`` of a batch ``(N, 3, H, W)``: the input of the head."""
        return forward_features(module, x)

    def stages(self, module: Any) -> list[tuple[str, tuple[str, ...]]]:
        """The network's stages from input to head, ``[(name, (parameter-name prefixes, ...)), ...]``, for
        discriminative learning rates (:mod:`dogclf.training.optim`). Default: one stage per top-level child
        module, the head (:attr:`head`) last."""
        names = [name for name, _ in module.named_children() if name != self.head]
        return [(name, (f"{name}.",)) for name in names] + [("head", (f"{self.head}.",))]

    def batchnorm_pairs(self, module: Any) -> list[tuple[str, str]]:
        """The ``(conv, batchnorm)`` pairs :meth:`fold_batchnorm` folds (default: :func:`batchnorm_pairs`)."""
        return batchnorm_pairs(module)

    def fold_batchnorm(self, module: Any, channels_last: bool = False) -> Any:
        """An inference copy of ``module`` with BatchNorm folded into the convolutions (see :func:`fold_batchnorm`)."""
        return fold_batchnorm(module, channels_last, self.batchnorm_pairs(module))

    def new_network(self, num_classes: int | None = None, *, dropout: float = 0.0, on_meta: bool = False) -> Any:
        """The network with dogclf's head: ``Linear(feature_dim, num_classes)``, after ``Dropout`` when
        ``dropout > 0``. ``num_classes=None`` keeps the network's own classifier; ``0`` makes the head an
        ``Identity`` (the network then returns pooled features). ``on_meta`` skips initialising parameters a
        state dict will replace."""
        import torch

        if on_meta:
            with torch.device("meta"):
                module = self.build()
        else:
            module = self.build()
        return module if num_classes is None else self.attach_head(module, num_classes, dropout=dropout)

    def attach_head(self, module: Any, num_classes: int, *, dropout: float = 0.0) -> Any:
        """Replace ``module``'s classifier (the child :attr:`head`) with dogclf's head, in place, and return
        ``module``: ``Linear(feature_dim, num_classes)`` after ``Dropout`` when ``dropout > 0``, or ``Identity``
        when ``num_classes`` is 0 (the network then returns pooled features)."""
        import torch

        if num_classes == 0:
            head: Any = torch.nn.Identity()
        else:
            linear = torch.nn.Linear(self.feature_dim, num_classes)
            head = torch.nn.Sequential(torch.nn.Dropout(dropout), linear) if dropout > 0 else linear
        setattr(module, self.head, head)
        return module

    def load_pretrained(self, module: Any, weights: str | os.PathLike[str], *, strict_head: bool = False) -> None:
        """Load pretrained weights (a name or a checkpoint path) into ``module``'s body, in place.

        The weights' classifier is kept only when it fits ``module``'s head (an earlier dogclf run's checkpoint);
        otherwise it is dropped. Parameters left on the meta device afterwards are an error.

        Raises:
            UnknownWeightsError: an unknown weights name.
            WeightsUnavailableError: the weights cannot be had.
            ArtifactError: the file is corrupt, or does not fit this backbone: the message names the file and the
                first mismatched key.
        """
        if isinstance(weights, os.PathLike) or looks_like_path(str(weights)):
            source = f"weights file {os.fspath(weights)!r}"
            state = load_state_dict_file(weights)
        else:
            spec = self.get_weights(str(weights))
            source = f"{self.name} weights {spec.name} ({spec.source or spec.identity})"
            state = spec.get_state_dict()
        state = self.remap_state_dict(state)
        own = module.state_dict()
        h = f"{self.head}."
        head_keys = {k for k in own if k.startswith(h)}
        body = {k: v for k, v in state.items() if not k.startswith(h)}
        import torch

        for k in own:  # checkpoints saved before PyTorch 0.4.1 have no BatchNorm step counters
            if k.endswith(".num_batches_tracked") and k not in body and not k.startswith(h):
                body[k] = torch.zeros((), dtype=torch.long)
        problems = []
        for k in own:
            if k not in head_keys and k not in body:
                problems.append((k, "missing from the file"))
        for k, v in body.items():
            if k not in own:
                problems.append((k, "not in the network"))
            elif tuple(v.shape) != tuple(own[k].shape):
                problems.append((k, f"shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network"))
        if problems:
            order = {k: i for i, k in enumerate([*own, *body])}
            key, why = min(problems, key=lambda p: order.get(p[0], 0))
            missing = sum(1 for _, w in problems if w.startswith("missing"))
            raise ArtifactError(
                f"{source} does not fit backbone {self.name}: first mismatched key {key!r} ({why}); {missing} keys "
                f"missing, {len(problems) - missing} unexpected or of another shape. Is it truncated, or for another "
                "network?")
        module.load_state_dict(body, strict=False, assign=True)
        fc = {k: v for k, v in state.items() if k.startswith(h)}
        if fc and set(fc) == head_keys and all(tuple(v.shape) == tuple(own[k].shape) for k, v in fc.items()):
            module.load_state_dict(fc, strict=False, assign=True)
        elif strict_head:
            raise ArtifactError(f"{source}: its classifier does not fit the network's head {self.head!r}")
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left and not all(k.startswith(h) for k in left):
            raise ArtifactError(f"{source} leaves {left[:5]} of the {self.name} unset")

    def check(self) -> Backbone:
        """Validate the description (name, feature width, freeze policies, default weights); returns ``self``.

        Raises:
            ConfigError: something is missing or inconsistent.
        """
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"backbone {self!r} has no name")
        if isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int) or self.feature_dim < 1:
            raise ConfigError(f"backbone {self.name!r}: feature_dim must be a positive int, got {self.feature_dim!r}")
        missing = [p for p in FREEZE_POLICIES if p not in self.freeze_policies]
        if missing:
            raise ConfigError(f"backbone {self.name!r} lacks the freeze policies {missing}")
        if self.default_weights is not None and self.default_weights not in self.weights:
            raise ConfigError(f"backbone {self.name!r}: default weights {self.default_weights!r} are not among "
                              f"{list(self.weights)}")
        return self


def looks_like_path(value: str) -> bool:
    """Whether a ``weights`` string names a file rather than a weights name."""
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".ckpt")) or value.startswith(".")
