""":class:`BreedModel` (any registered backbone with a new head for a breed label set) and
:class:`ResNetBreedModel` (the same, for the torchvision ResNets)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dogclf._io import atomic_path, atomic_write, atomic_write_json
from dogclf.errors import ArtifactError, ConfigError, NotFittedError, UnknownBackboneError, UnknownLabelSetError
from dogclf.images import ImageTransform, Preprocess
from dogclf.labels import BreedLabels
from dogclf.models._archive import pack as _pack
from dogclf.models._archive import unpack as _unpack
from dogclf.models._config import ModelConfig
from dogclf.models.backbones.base import Backbone, FreezePolicy, extract_state_dict
from dogclf.models.backbones.folding import forward_features as _forward_features

__all__ = ["BreedModel", "ResNetBreedModel", "resolve_labels", "eval_transform", "forward_features", "MODEL_FILE",
           "LABELS_FILE", "CONFIG_FILE"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
"""The state dict in an artifact folder."""
LABELS_FILE = "labels.json"
"""The label set in an artifact folder."""
CONFIG_FILE = "config.json"
"""The model config in an artifact folder (written last: its presence marks a complete artifact)."""

def resolve_labels(labels: Any) -> BreedLabels:
    """Turn a ``labels`` argument into a :class:`~dogclf.labels.BreedLabels`.

    Args:
        labels: A :class:`~dogclf.labels.BreedLabels`; a list/tuple of breed names; a registered label-set name
            (``"dogimages-133"``); the path of a label-set JSON file; or a dataset split folder whose class
            sub-folders (``001.Affenpinscher`` ...) give the labels.

    Raises:
        UnknownLabelSetError: a string that is neither a registered name nor an existing path.
        ConfigError: anything else that is not a label set.
    """
    from dogclf.labels import get_labels, list_labels

    if isinstance(labels, BreedLabels):
        return labels
    if isinstance(labels, (list, tuple)):
        return BreedLabels(labels)
    if isinstance(labels, (str, os.PathLike)):
        text = os.fspath(labels)
        if isinstance(labels, str) and text in list_labels():
            return get_labels(text)
        path = Path(text)
        if path.is_file():
            return BreedLabels.load(path)
        if path.is_dir():
            return BreedLabels.from_directory(path)
        known = ", ".join(repr(n) for n in list_labels()) or "none"
        raise UnknownLabelSetError(f"unknown label set {text!r}: not a registered name ({known}) nor an existing "
                                   "label-set JSON file or dataset folder")
    raise ConfigError(f"labels must be a label-set name, a BreedLabels, or a list of breed names; "
                      f"got {type(labels).__name__}: {labels!r:.80}")


def eval_transform(preprocess: Preprocess | dict[str, Any] | None = None) -> ImageTransform:
    """The deterministic input transform: decode, resize the short side, centre-crop, to tensor, normalise.

    Args:
        preprocess: A :class:`Preprocess`, its dict form (an artifact's ``config.json["preprocess"]``), or
            ``None`` for the defaults (256, 224, ImageNet mean/std, bilinear).

    Returns:
        A :class:`dogclf.images.ImageTransform`: a photo (path, bytes, PIL image, array) to a normalised float
        tensor ``(3, crop, crop)``, the same pipeline the handler and the training entry point use (equal to
        torchvision's ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` on RGB images to float32 rounding).
    """
    return ImageTransform(preprocess)


def forward_features(module: Any, x: Any) -> Any:
    """A network's pooled features ``(N, feature width)``: the input of its head.

    Kept for the training code written for ResNets; it works for a torchvision ResNet and for any network with a
    ``forward_features(x)`` method (every built-in backbone). New code calls :meth:`BreedModel.forward_features` or
    the backbone's :meth:`~dogclf.models.backbones.Backbone.forward_features`.

    Args:
        module: The network (e.g. :attr:`BreedModel.module_`).
        x: A batch ``(N, 3, H, W)``.
    """
    return _forward_features(module, x)


class BreedModel:
    """A registered backbone with a new linear head for a breed label set.

    The seed workflow's model, made configurable: a pretrained backbone (frozen by default) from the backbone
    registry (:func:`~dogclf.models.backbones.list_models`: ``resnet18`` ... ``resnet152``,
    ``efficientnet_lite0/1/2``, plug-ins), a new linear head (optionally after dropout) with one output per breed
    at the backbone's classifier attribute (``fc`` for every built-in), saved as a self-describing artifact folder
    or a SageMaker ``model.tar.gz`` that records the backbone and its preprocessing.

    ``__init__`` only validates and stores the arguments; :meth:`build` creates the network and loads weights.

    Args:
        labels: The breeds, output ``i`` being breed ``i``: a registered label-set name (``"dogimages-133"``), a
            :class:`~dogclf.labels.BreedLabels`, a list of names, or a label-set JSON path / dataset split folder.
        backbone: A registered backbone name.
        weights: The backbone's weights name (``"DEFAULT"``: its default pretrained weights, as in torchvision),
            a local checkpoint path (a state dict with the backbone's key names; a classifier that does not fit is
            ignored), or ``None`` for random initialisation.
        freeze: ``"head"`` trains only the new head (the seed), ``"last-block"`` trains the backbone's last block
            and the head, ``"full"`` trains everything (or a backbone's own policy).
        dropout: Dropout probability before the head's linear layer (``0`` for none).
        preprocess: Input preprocessing (:class:`Preprocess` or its dict form); default: the weights'.

    Attributes:
        config: The validated :class:`ModelConfig`.
        module_: The ``torch.nn.Module`` (set by :meth:`build`).
        labels_: The resolved :class:`~dogclf.labels.BreedLabels` (set by :meth:`build`).

    Raises:
        ConfigError: unknown backbone, weights name or freeze policy (the message lists the registered ones), or
            dropout outside ``[0, 1)``.

    Example:
        >>> model = BreedModel(["Beagle", "Pug"], backbone="efficientnet_lite0", weights=None).build()
        >>> model.feature_dim, model.head_.out_features, model.preprocess.crop
        (1280, 2, 224)
    """

    family: str | None = None
    """The only backbone family this class accepts (``None``: any)."""

    def __init__(self, labels: Any = "dogimages-133", backbone: str = "efficientnet_lite0",
                 weights: str | os.PathLike[str] | None = "DEFAULT", freeze: str = "head", dropout: float = 0.0,
                 preprocess: Preprocess | dict[str, Any] | None = None) -> None:
        if not isinstance(labels, (str, os.PathLike, BreedLabels, list, tuple)):
            raise ConfigError(f"labels must be a label-set name, a BreedLabels, or a list of breed names; "
                              f"got {type(labels).__name__}")
        self.labels = labels
        self._check_family(backbone)
        self.config = ModelConfig(backbone=backbone, weights=weights, freeze=freeze, dropout=dropout,
                                  preprocess=preprocess)

    @classmethod
    def _check_family(cls, backbone: str) -> None:
        if cls.family is None:
            return
        from dogclf.models.backbones import get_backbone, list_models

        family = get_backbone(backbone).family
        if family != cls.family:
            same = [n for n in list_models() if get_backbone(n).family == cls.family]
            raise ConfigError(f"{cls.__name__} takes the {cls.family} backbones ({', '.join(map(repr, same))}); "
                              f"{backbone!r} is a {family or 'other'} backbone: use dogclf.models.BreedModel")

    # -- convenient views of the config ------------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        """The backbone name."""
        return self.config.backbone

    @property
    def backbone_spec(self) -> Backbone:
        """The registered :class:`~dogclf.models.backbones.Backbone`."""
        return self.config.backbone_spec

    @property
    def weights(self) -> str | None:
        """The weights name or checkpoint path (``None``: random initialisation)."""
        return self.config.weights

    @property
    def freeze(self) -> str:
        """The freeze policy's name."""
        return self.config.freeze

    @property
    def freeze_policy(self) -> FreezePolicy:
        """The :class:`~dogclf.models.backbones.FreezePolicy`: which parameters train, which modules stay in eval."""
        return self.backbone_spec.freeze_policy(self.freeze)

    @property
    def dropout(self) -> float:
        """The head's dropout probability."""
        return self.config.dropout

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features the head sees."""
        return self.backbone_spec.feature_dim

    def __repr__(self) -> str:
        labels = self.labels if isinstance(self.labels, str) else f"<{len(self.labels)} breeds>"
        built = "built" if hasattr(self, "module_") else "not built"
        return (f"{type(self).__name__}(labels={labels!r}, backbone={self.backbone!r}, weights={self.weights!r}, "
                f"freeze={self.freeze!r}, dropout={self.dropout!r}) [{built}]")

    def _check_built(self) -> None:
        if not hasattr(self, "module_"):
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not built yet; call .build() (or {name}.load)")

    # -- building ----------------------------------------------------------------------------------------------
    def build(self) -> BreedModel:
        """Create the network, load the backbone weights, put the new head in place and apply the freeze policy.

        Returns:
            ``self``, with :attr:`module_` and :attr:`labels_` set.

        Raises:
            UnknownLabelSetError: ``labels`` names no registered label set or file.
            WeightsUnavailableError: the weights cannot be had (the message says what to install or where to put
                the file).
            ArtifactError: a weights file is corrupt or does not fit (the message names the file and the first
                mismatched key).
        """
        labels = resolve_labels(self.labels)
        spec = self.backbone_spec
        pretrained = self.config.weights is not None
        module = spec.new_network(len(labels), dropout=self.dropout, on_meta=pretrained)
        if pretrained:
            spec.load_pretrained(module, self.config.weights)  # type: ignore[arg-type]
        self.labels_ = labels
        self.module_ = module
        self.apply_freeze()
        return self

    @property
    def head_(self) -> Any:
        """The head module (``Linear``, or ``Sequential(Dropout, Linear)``): what trains on cached features."""
        self._check_built()
        return getattr(self.module_, self.backbone_spec.head)

    def apply_freeze(self) -> None:
        """Set ``requires_grad`` on :attr:`module_`'s parameters according to the freeze policy."""
        self._check_built()
        policy = self.freeze_policy
        for name, param in self.module_.named_parameters():
            param.requires_grad_(policy.is_trainable(name))

    def trainable_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes trained under the freeze policy (empty: everything)."""
        return self.freeze_policy.trainable

    def trainable_parameters(self) -> list[Any]:
        """The parameters the optimizer should update."""
        self._check_built()
        return [p for p in self.module_.parameters() if p.requires_grad]

    def eval_modules(self) -> list[str]:
        """The submodules that stay in eval mode while training (frozen BatchNorm statistics and dropout)."""
        self._check_built()
        return self.freeze_policy.frozen_modules(self.module_)

    def set_train_mode(self, mode: bool = True) -> Any:
        """Put :attr:`module_` in train mode while frozen parts (and their BatchNorm statistics) stay in eval mode.

        Returns:
            :attr:`module_`.
        """
        self._check_built()
        module = self.module_
        module.train(mode)
        if mode:
            for name in self.eval_modules():
                module.get_submodule(name).eval()
        return module

    # -- features and inference ----------------------------------------------------------------------------------
    def forward_features(self, batch: Any, module: Any = None) -> Any:
        """Pooled backbone features ``(N, feature_dim)`` of a preprocessed batch: what the head sees.

        Args:
            batch: ``(N, 3, H, W)``.
            module: The network to run (default :attr:`module_`; e.g. the copy from :meth:`fold_batchnorm`).
        """
        self._check_built()
        return self.backbone_spec.forward_features(self.module_ if module is None else module, batch)

    def fold_batchnorm(self, channels_last: bool = False) -> Any:
        """An inference-only copy of :attr:`module_` with BatchNorm folded into the convolutions (the feature
        cache's backbone pass); :attr:`module_` is unchanged. Run it with :meth:`forward_features`."""
        self._check_built()
        return self.backbone_spec.fold_batchnorm(self.module_, channels_last)

    @property
    def preprocess(self) -> Preprocess:
        """The input preprocessing (from the config)."""
        return self.config.preprocess  # type: ignore[return-value]

    def transform(self) -> Any:
        """The deterministic input transform for this model; see :func:`eval_transform`."""
        return eval_transform(self.config.preprocess)

    @property
    def eval_transform(self) -> Any:
        """The deterministic input transform for this model (same as :meth:`transform`)."""
        return self.transform()

    def predict_logits(self, batch: Any) -> Any:
        """Logits for a preprocessed batch ``(N, 3, H, W)``, computed in eval mode under ``torch.inference_mode``."""
        import torch

        self._check_built()
        self.module_.eval()
        with torch.inference_mode():
            return self.module_(batch)

    # -- artifacts -----------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The artifact's ``config.json`` document."""
        self._check_built()
        return self.config.to_dict(len(self.labels_))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact folder: ``model.pt`` (state dict), ``labels.json`` and ``config.json``.

        Each file is written to a temporary name and renamed into place; ``config.json`` goes last, so a folder
        with a ``config.json`` always has the matching ``model.pt`` and ``labels.json``. Other files already in
        the folder (e.g. ``code/``) are kept.

        Returns:
            The folder's :class:`~pathlib.Path`.
        """
        import torch

        self._check_built()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).unlink(missing_ok=True)  # the folder is incomplete until config.json is back
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.module_.state_dict().items()}
        # Streamed straight into the temporary file: no second in-memory copy of the state dict.
        atomic_write(out / MODEL_FILE, lambda fh: torch.save(state, fh))
        atomic_write(out / LABELS_FILE, self.labels_.to_json(indent=1))
        atomic_write_json(out / CONFIG_FILE, self.config_dict())
        logger.info("saved %s (%d classes) to %s", self.backbone, len(self.labels_), out)
        return out

    def pack(self, tar_path: str | os.PathLike[str], code_dir: str | os.PathLike[str] | None = None) -> Path:
        """Write a SageMaker-style ``model.tar.gz``: the artifact files at its root and ``code/`` from ``code_dir``.

        Returns:
            ``tar_path`` as a :class:`~pathlib.Path`.
        """
        self._check_built()
        with tempfile.TemporaryDirectory(prefix="dogclf-pack-") as tmp:
            self.save(tmp)
            return _pack(tmp, tar_path, code_dir=code_dir)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
        """Rebuild a model from an artifact folder or a ``model.tar.gz``; returns it built and in eval mode.

        Reads ``dogclf.model/1`` (ResNet) and ``dogclf.model/2`` artifacts. The state dict is read with
        ``torch.load(weights_only=True)``; no backbone weights are loaded or downloaded.

        Args:
            path: A folder written by :meth:`save`, or a ``.tar.gz``/``.tar`` written by :meth:`pack` (or by a
                SageMaker training job).
            map_location: Passed to :func:`torch.load` (``"cpu"``, ``"cuda"``, a device).

        Raises:
            ArtifactError: missing ``model.pt``/``labels.json``/``config.json``, or any of them corrupt, a
                backbone that is not registered here (or not of this class's family), or a state dict that does
                not fit the config.
            UnsafeArchiveError: the archive holds unsafe members.
        """
        src = Path(path)
        if src.is_file():
            with tempfile.TemporaryDirectory(prefix="dogclf-unpack-") as tmp:
                _unpack(src, tmp)
                return cls._load_dir(Path(tmp), map_location, source=str(src))
        if not src.is_dir():
            raise ArtifactError(f"model artifact {str(src)!r} does not exist")
        return cls._load_dir(src, map_location, source=str(src))

    @classmethod
    def _load_dir(cls, folder: Path, map_location: Any, source: str) -> Any:
        import torch

        missing = [n for n in (MODEL_FILE, LABELS_FILE, CONFIG_FILE) if not (folder / n).is_file()]
        if missing:
            raise ArtifactError(f"model artifact {source!r} is missing {', '.join(missing)}")
        try:
            doc = json.loads((folder / CONFIG_FILE).read_text("utf-8"))
            config, num_classes = ModelConfig.from_dict(doc)
            labels = BreedLabels.load(folder / LABELS_FILE)
            cls._check_family(config.backbone)
        except UnknownBackboneError as exc:
            info = doc.get("backbone_info", {}) if isinstance(doc, dict) else {}
            raise ArtifactError(f"model artifact {source!r} was made with backbone {doc.get('backbone')!r} "
                                f"(from {info.get('module', 'an unknown module')}), which is not registered here; "
                                f"install the package that provides it. {exc}") from exc
        except (ValueError, ConfigError) as exc:
            raise ArtifactError(f"model artifact {source!r} has a corrupt or unusable {CONFIG_FILE} or "
                                f"{LABELS_FILE}: {exc}") from exc
        if len(labels) != num_classes:
            raise ArtifactError(f"model artifact {source!r}: {LABELS_FILE} has {len(labels)} breeds but "
                                f"{CONFIG_FILE} says num_classes={num_classes}")
        try:
            raw = torch.load(folder / MODEL_FILE, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle, not a torch file at all
            raise ArtifactError(f"model artifact {source!r}: {MODEL_FILE} is corrupt or not a PyTorch file: "
                                f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        state = extract_state_dict(raw, f"{source}/{MODEL_FILE}")
        model = cls.__new__(cls)
        model.labels = labels
        model.config = config
        module = config.backbone_spec.new_network(num_classes, dropout=config.dropout, on_meta=True)
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ArtifactError(f"model artifact {source!r}: {MODEL_FILE} does not fit a {config.backbone} with "
                                f"{num_classes} classes: {str(exc)[:300]}") from exc
        if isinstance(map_location, (str, torch.device)):
            module.to(map_location)
        model.module_ = module
        model.labels_ = labels
        model.apply_freeze()
        module.eval()
        return model


class ResNetBreedModel(BreedModel):
    """A torchvision ResNet whose ``fc`` is replaced by a head for a breed label set: :class:`BreedModel` for the
    ResNet family, with the seed's defaults (``resnet50``, ``IMAGENET1K_V2``).

    Args:
        labels: As for :class:`BreedModel`.
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        weights: A torchvision weights name for the backbone (``"IMAGENET1K_V2"``, ``"IMAGENET1K_V1"``,
            ``"DEFAULT"``), loaded through the weights enum and torchvision's cache under ``$TORCH_HOME``
            (downloaded there on first use); a local checkpoint path (a torchvision-style ResNet state dict; its
            ``fc`` is ignored when its shape differs); or ``None`` for random initialisation.
        freeze: ``"head"`` trains only the new head (the seed), ``"last-block"`` trains ``layer4`` and the head,
            ``"full"`` trains everything.
        dropout: Dropout probability before the head's linear layer (``0`` for none).
        preprocess: Input preprocessing (:class:`Preprocess` or its dict form); default: the weights' (resize 256,
            or 232 for ``IMAGENET1K_V2``, centre crop 224, ImageNet mean/std), 256/224 without weights.

    Raises:
        ConfigError: an unknown or non-ResNet backbone, unknown freeze policy or weights name, or dropout outside
            ``[0, 1)``.

    Example:
        >>> model = ResNetBreedModel(["Beagle", "Pug"], backbone="resnet18", weights=None).build()
        >>> model.module_.fc.out_features
        2
    """

    family = "resnet"

    def __init__(self, labels: Any = "dogimages-133", backbone: str = "resnet50",
                 weights: str | os.PathLike[str] | None = "IMAGENET1K_V2", freeze: str = "head",
                 dropout: float = 0.0, preprocess: Preprocess | dict[str, Any] | None = None) -> None:
        super().__init__(labels, backbone=backbone, weights=weights, freeze=freeze, dropout=dropout,
                         preprocess=preprocess)


def copy_artifact(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy an artifact folder's three files to ``dest`` (``config.json`` last). Returns ``dest``."""
    s, d = Path(src), Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE):
        with atomic_path(d / name) as tmp:
            shutil.copyfile(s / name, tmp)
    return d
