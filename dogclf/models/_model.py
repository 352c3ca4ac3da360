"""The :class:`ResNetBreedModel`: a torchvision ResNet with a new head for a breed label set."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dogclf._io import atomic_path, atomic_write, atomic_write_json
from dogclf.errors import ArtifactError, ConfigError, NotFittedError, UnknownLabelSetError
from dogclf.images import ImageTransform, Preprocess
from dogclf.labels import BreedLabels
from dogclf.models._archive import pack as _pack
from dogclf.models._archive import unpack as _unpack
from dogclf.models._config import ModelConfig

__all__ = ["ResNetBreedModel", "resolve_labels", "eval_transform", "forward_features", "MODEL_FILE", "LABELS_FILE",
           "CONFIG_FILE"]

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
            ``None`` for the defaults (256, 224, ImageNet mean/std).

    Returns:
        A :class:`dogclf.images.ImageTransform`: a photo (path, bytes, PIL image, array) to a normalised float
        tensor ``(3, crop, crop)``, the same pipeline the handler and the training entry point use (equal to
        torchvision's ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` on RGB images to float32 rounding).
    """
    return ImageTransform(preprocess)


def forward_features(module: Any, x: Any) -> Any:
    """Run a torchvision ResNet up to (and including) global average pooling: the input of its ``fc`` head.

    Args:
        module: A torchvision ``ResNet`` (e.g. :attr:`ResNetBreedModel.module_`).
        x: A batch ``(N, 3, H, W)``.

    Returns:
        The pooled features ``(N, module.fc in_features)``.
    """
    import torch

    m = module
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def _extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """A state dict from what ``torch.load`` returned: a state dict, or a dict wrapping one."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ArtifactError(f"{source} does not hold a state dict (a mapping of parameter names to tensors)")


def _torch_load(path: Path, map_location: Any = "cpu") -> Any:
    import torch

    if not path.is_file():
        raise ArtifactError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, not a torch file at all
        raise ArtifactError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file: "
                            f"{type(exc).__name__}: {str(exc)[:200]}") from exc


class ResNetBreedModel:
    """A torchvision ResNet whose ``fc`` is replaced by a head for a breed label set.

    The seed workflow's model, made configurable: a pretrained ResNet backbone (frozen by default), a new linear
    head (optionally after dropout) with one output per breed, saved as a self-describing artifact folder or a
    SageMaker ``model.tar.gz``.

    ``__init__`` only validates and stores the arguments; :meth:`build` creates the network and loads weights.

    Args:
        labels: The breeds, output ``i`` being breed ``i``: a registered label-set name (``"dogimages-133"``), a
            :class:`~dogclf.labels.BreedLabels`, a list of names, or a label-set JSON path / dataset split folder.
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        weights: A torchvision weights name for the backbone (``"IMAGENET1K_V2"``, ``"IMAGENET1K_V1"``,
            ``"DEFAULT"``), loaded through the weights enum and torchvision's cache under ``$TORCH_HOME``
            (downloaded there on first use); a local checkpoint path (a torchvision-style ResNet state dict; its
            ``fc`` is ignored when its shape differs); or ``None`` for random initialisation.
        freeze: ``"head"`` trains only the new head (the seed), ``"last-block"`` trains ``layer4`` and the head,
            ``"full"`` trains everything.
        dropout: Dropout probability before the head's linear layer (``0`` for none).
        preprocess: Input preprocessing (:class:`Preprocess` or its dict form); default resize 256, centre crop
            224, ImageNet mean/std.

    Attributes:
        config: The validated :class:`ModelConfig`.
        module_: The ``torch.nn.Module`` (set by :meth:`build`).
        labels_: The resolved :class:`~dogclf.labels.BreedLabels` (set by :meth:`build`).

    Raises:
        ConfigError: unknown backbone, freeze policy or weights name, or dropout outside ``[0, 1)``.

    Example:
        >>> model = ResNetBreedModel(["Beagle", "Pug"], backbone="resnet18", weights=None).build()
        >>> model.module_.fc.out_features
        2
    """

    def __init__(self, labels: Any = "dogimages-133", backbone: str = "resnet50",
                 weights: str | os.PathLike[str] | None = "IMAGENET1K_V2", freeze: str = "head",
                 dropout: float = 0.0, preprocess: Preprocess | dict[str, Any] | None = None) -> None:
        if not isinstance(labels, (str, os.PathLike, BreedLabels, list, tuple)):
            raise ConfigError(f"labels must be a label-set name, a BreedLabels, or a list of breed names; "
                              f"got {type(labels).__name__}")
        self.labels = labels
        self.config = ModelConfig(backbone=backbone, weights=weights, freeze=freeze, dropout=dropout,
                                  preprocess=preprocess if preprocess is not None else Preprocess())

    # -- convenient views of the config ------------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        """The backbone name."""
        return self.config.backbone

    @property
    def weights(self) -> str | None:
        """The weights name or checkpoint path (``None``: random initialisation)."""
        return self.config.weights

    @property
    def freeze(self) -> str:
        """The freeze policy."""
        return self.config.freeze

    @property
    def dropout(self) -> float:
        """The head's dropout probability."""
        return self.config.dropout

    def __repr__(self) -> str:
        labels = self.labels if isinstance(self.labels, str) else f"<{len(self.labels)} breeds>"
        built = "built" if hasattr(self, "module_") else "not built"
        return (f"ResNetBreedModel(labels={labels!r}, backbone={self.backbone!r}, weights={self.weights!r}, "
                f"freeze={self.freeze!r}, dropout={self.dropout!r}) [{built}]")

    def _check_built(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError("this ResNetBreedModel is not built yet; call .build() (or ResNetBreedModel.load)")

    # -- building ----------------------------------------------------------------------------------------------
    def _new_module(self, num_classes: int, on_meta: bool = False) -> Any:
        """The torchvision network with our head; ``on_meta`` skips initialising a body a state dict will replace."""
        import torch
        from torchvision import models

        if on_meta:
            with torch.device("meta"):
                module = getattr(models, self.backbone)(weights=None)
        else:
            module = getattr(models, self.backbone)(weights=None)
        in_features = module.fc.in_features
        linear = torch.nn.Linear(in_features, num_classes)
        module.fc = torch.nn.Sequential(torch.nn.Dropout(self.dropout), linear) if self.dropout > 0 else linear
        return module

    def _backbone_state_dict(self) -> dict[str, Any] | None:
        weights = self.config.weights
        if weights is None:
            return None
        if self.config.weights_is_path:
            return _extract_state_dict(_torch_load(Path(weights)), f"weights checkpoint {weights!r}")
        from torchvision.models import get_model_weights

        enum = get_model_weights(self.backbone)
        member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        logger.info("loading %s weights %s.%s (torchvision cache under TORCH_HOME)", self.backbone,
                    enum.__name__, member.name)
        try:
            return member.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            import torch.hub

            raise ArtifactError(
                f"could not load torchvision weights {enum.__name__}.{member.name} from {member.url} "
                f"(cache folder {torch.hub.get_dir()}/checkpoints): {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    def _load_backbone(self, module: Any, state: dict[str, Any]) -> None:
        own = module.state_dict()
        head_keys = {k for k in own if k.startswith("fc.")}
        body = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing = sorted(set(own) - head_keys - set(body))
        unexpected = sorted(set(body) - set(own))
        if missing or unexpected:
            raise ArtifactError(
                f"weights {self.weights!r} do not fit a {self.backbone}: missing {missing[:5]} "
                f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )
        bad = [k for k, v in body.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ArtifactError(f"weights {self.weights!r} do not fit a {self.backbone}: shape mismatch for {bad[:5]}")
        module.load_state_dict(body, strict=False, assign=True)
        # A checkpoint whose fc already matches our head (e.g. an earlier dogclf run) keeps its head too.
        fc = {k: v for k, v in state.items() if k.startswith("fc.")}
        if fc and set(fc) == head_keys and all(tuple(v.shape) == tuple(own[k].shape) for k, v in fc.items()):
            module.load_state_dict(fc, strict=False)
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:
            raise ArtifactError(f"weights {self.weights!r} leave {left[:5]} of the {self.backbone} unset")

    def build(self) -> ResNetBreedModel:
        """Create the network, load the backbone weights, replace ``fc`` and apply the freeze policy.

        Returns:
            ``self``, with :attr:`module_` and :attr:`labels_` set.

        Raises:
            UnknownLabelSetError: ``labels`` names no registered label set or file.
            ArtifactError: the weights cannot be loaded (missing/corrupt checkpoint, wrong architecture).
        """
        labels = resolve_labels(self.labels)
        state = self._backbone_state_dict()
        module = self._new_module(len(labels), on_meta=state is not None)
        if state is not None:
            self._load_backbone(module, state)
        self.labels_ = labels
        self.module_ = module
        self.apply_freeze()
        return self

    def apply_freeze(self) -> None:
        """Set ``requires_grad`` on :attr:`module_`'s parameters according to the freeze policy."""
        self._check_built()
        trainable = self.trainable_prefixes()
        for name, param in self.module_.named_parameters():
            param.requires_grad_(any(name.startswith(p) for p in trainable) if trainable else True)

    def trainable_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes trained under the freeze policy (empty: everything)."""
        return {"head": ("fc.",), "last-block": ("layer4.", "fc."), "full": ()}[self.freeze]

    def trainable_parameters(self) -> list[Any]:
        """The parameters the optimizer should update."""
        self._check_built()
        return [p for p in self.module_.parameters() if p.requires_grad]

    def set_train_mode(self, mode: bool = True) -> Any:
        """Put :attr:`module_` in train mode while frozen parts (and their BatchNorm statistics) stay in eval mode.

        Returns:
            :attr:`module_`.
        """
        self._check_built()
        module = self.module_
        module.train(mode)
        if mode and self.freeze != "full":
            keep = {p.rstrip(".") for p in self.trainable_prefixes()}
            for name, child in module.named_children():
                if name not in keep:
                    child.eval()
        return module

    # -- inference helpers ---------------------------------------------------------------------------------------
    @property
    def preprocess(self) -> Preprocess:
        """The input preprocessing (from the config)."""
        return self.config.preprocess

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
        # Streamed straight into the temporary file: no second in-memory copy of the ~100 MB state dict.
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
    def load(cls, path: str | os.PathLike[str], map_location: Any = "cpu") -> ResNetBreedModel:
        """Rebuild a model from an artifact folder or a ``model.tar.gz``; returns it built and in eval mode.

        The state dict is read with ``torch.load(weights_only=True)``; no backbone weights are downloaded.

        Args:
            path: A folder written by :meth:`save`, or a ``.tar.gz``/``.tar`` written by :meth:`pack` (or by a
                SageMaker training job).
            map_location: Passed to :func:`torch.load` (``"cpu"``, ``"cuda"``, a device).

        Raises:
            ArtifactError: missing ``model.pt``/``labels.json``/``config.json``, or any of them corrupt, or the
                state dict does not fit the config.
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
    def _load_dir(cls, folder: Path, map_location: Any, source: str) -> ResNetBreedModel:
        missing = [n for n in (MODEL_FILE, LABELS_FILE, CONFIG_FILE) if not (folder / n).is_file()]
        if missing:
            raise ArtifactError(f"model artifact {source!r} is missing {', '.join(missing)}")
        try:
            config, num_classes = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text("utf-8")))
            labels = BreedLabels.load(folder / LABELS_FILE)
        except (ValueError, ConfigError) as exc:
            raise ArtifactError(f"model artifact {source!r} has a corrupt {CONFIG_FILE} or {LABELS_FILE}: {exc}") \
                from exc
        if len(labels) != num_classes:
            raise ArtifactError(f"model artifact {source!r}: {LABELS_FILE} has {len(labels)} breeds but "
                                f"{CONFIG_FILE} says num_classes={num_classes}")
        state = _extract_state_dict(_torch_load(folder / MODEL_FILE, map_location), f"{source}/{MODEL_FILE}")
        model = cls.__new__(cls)
        model.labels = labels
        model.config = config
        module = model._new_module(num_classes, on_meta=True)
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ArtifactError(f"model artifact {source!r}: {MODEL_FILE} does not fit a {config.backbone} with "
                                f"{num_classes} classes: {str(exc)[:300]}") from exc
        import torch

        if isinstance(map_location, (str, torch.device)):
            module.to(map_location)
        model.module_ = module
        model.labels_ = labels
        model.apply_freeze()
        module.eval()
        return model


def copy_artifact(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy an artifact folder's three files to ``dest`` (``config.json`` last). Returns ``dest``."""
    s, d = Path(src), Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE):
        with atomic_path(d / name) as tmp:
            shutil.copyfile(s / name, tmp)
    return d
