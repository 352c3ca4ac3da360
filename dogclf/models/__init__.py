"""Models: :class:`ResNetBreedModel`, its validated config and its artifact format.

An artifact is a folder (or a SageMaker ``model.tar.gz`` with the same files at its root, plus ``code/``)::

    model.pt      the state dict (read with torch.load(weights_only=True))
    labels.json   the label set (BreedLabels.to_json)
    config.json   {"format": "dogclf.model/1", "backbone", "weights", "freeze", "dropout", "num_classes",
                   "preprocess": {"resize": 256, "crop": 224, "mean": [...], "std": [...]}}

Example::

    >>> from dogclf.models import ResNetBreedModel
    >>> model = ResNetBreedModel(["Beagle", "Pug"], backbone="resnet18", weights=None).build()
    >>> path = model.save("/tmp/dogclf-doctest-model")
    >>> ResNetBreedModel.load(path).labels_.names
    ('Beagle', 'Pug')
"""

from dogclf.models._archive import MAX_UNPACKED_BYTES, pack, unpack
from dogclf.models._config import (
    ARTIFACT_FORMAT,
    BACKBONES,
    FREEZE_POLICIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    Preprocess,
)
from dogclf.models._model import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    ResNetBreedModel,
    copy_artifact,
    eval_transform,
    forward_features,
    resolve_labels,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "BACKBONES",
    "CONFIG_FILE",
    "FREEZE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABELS_FILE",
    "MAX_UNPACKED_BYTES",
    "MODEL_FILE",
    "ModelConfig",
    "Preprocess",
    "ResNetBreedModel",
    "copy_artifact",
    "eval_transform",
    "forward_features",
    "pack",
    "resolve_labels",
    "unpack",
]
