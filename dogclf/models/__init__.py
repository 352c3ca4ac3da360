"""Models: :class:`BreedModel` (any registered backbone), :class:`ResNetBreedModel` (the ResNets), their validated
config, the backbone registry (:mod:`dogclf.models.backbones`) and the artifact format.

An artifact is a folder (or a SageMaker ``model.tar.gz`` with the same files at its root, plus ``code/``)::

    model.pt      the state dict of the whole network, head included (read with torch.load(weights_only=True))
    labels.json   the label set (BreedLabels.to_json)
    config.json   {"format": "dogclf.model/2", "backbone", "weights", "freeze", "dropout", "num_classes",
                   "preprocess": {"resize", "crop", "mean", "std", "interpolation"},
                   "backbone_info": {"family", "feature_dim", "head", "module"}}

``dogclf.model/1`` artifacts (ResNets, written before the backbone registry; no ``interpolation`` and no
``backbone_info``) still load.

Example::

    >>> from dogclf.models import BreedModel
    >>> model = BreedModel(["Beagle", "Pug"], backbone="efficientnet_lite0", weights=None).build()
    >>> path = model.save("/tmp/dogclf-doctest-model")
    >>> loaded = BreedModel.load(path)
    >>> loaded.labels_.names, loaded.backbone
    (('Beagle', 'Pug'), 'efficientnet_lite0')
"""

from dogclf.models._archive import MAX_UNPACKED_BYTES, pack, unpack
from dogclf.models._config import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMATS,
    BACKBONES,
    FREEZE_POLICIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    ModelConfig,
    Preprocess,
)
from dogclf.models._model import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    BreedModel,
    ResNetBreedModel,
    copy_artifact,
    eval_transform,
    forward_features,
    resolve_labels,
)
from dogclf.models.backbones import (
    Backbone,
    FreezePolicy,
    Weights,
    create_model,
    fold_batchnorm,
    get_backbone,
    list_models,
    register_model,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_FORMATS",
    "BACKBONES",
    "CONFIG_FILE",
    "FREEZE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "LABELS_FILE",
    "MAX_UNPACKED_BYTES",
    "MODEL_FILE",
    "Backbone",
    "BreedModel",
    "FreezePolicy",
    "ModelConfig",
    "Preprocess",
    "ResNetBreedModel",
    "Weights",
    "copy_artifact",
    "create_model",
    "eval_transform",
    "fold_batchnorm",
    "forward_features",
    "get_backbone",
    "list_models",
    "pack",
    "register_model",
    "resolve_labels",
    "unpack",
]
