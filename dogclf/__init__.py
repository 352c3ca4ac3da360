"""dogclf: the dog-breed image-classification workflow as a library.

Stage the dogImages dataset, tune a ResNet transfer model, train it with Debugger tensors, rules and profiling,
deploy an endpoint and predict breeds from photos, on AWS SageMaker or offline with the local backend.

Importing :mod:`dogclf` is cheap: the heavy parts (torch, the SageMaker SDK) load when first used.
"""

from __future__ import annotations

import logging

from dogclf._lazy import lazy_exports
from dogclf.errors import DogclfError

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Public classes live in their own subpackages; they are imported on first access so `import dogclf` stays light.
_LAZY = {
    "BreedLabels": "dogclf.labels",
    "get_labels": "dogclf.labels",
    "register_labels": "dogclf.labels",
    "list_labels": "dogclf.labels",
    "get_backend": "dogclf.backends",
    "list_backends": "dogclf.backends",
    "EndpointDeployer": "dogclf.serving",
    "BreedPredictor": "dogclf.serving",
    "BreedModel": "dogclf.models",
    "ResNetBreedModel": "dogclf.models",
    "ModelConfig": "dogclf.models",
    "TrainingConfig": "dogclf.training",
    "TrainingJobSpec": "dogclf.training",
    "Distribution": "dogclf.training",
    "Continuous": "dogclf.hpo",
    "Integer": "dogclf.hpo",
    "Categorical": "dogclf.hpo",
    "DatasetStager": "dogclf.data",
    "make_synthetic_dataset": "dogclf.data",
    "HPOExperiment": "dogclf.hpo",
    "DebugTrainer": "dogclf.debug",
}

__all__ = ["DogclfError", "__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
