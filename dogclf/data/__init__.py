"""Dataset staging: get dogImages (or any dataset in its layout) from a zip, URL, folder or S3 prefix into
validated ``train``/``valid``/``test`` splits, on local disk or in S3, ready to be a training job's channels.

* :class:`DatasetStager` stages and validates a dataset and writes its manifest.
* :func:`make_synthetic_dataset` writes a small dogImages-shaped dataset of synthetic JPEGs (tests, demos).
"""

from __future__ import annotations

import importlib
from typing import Any

from dogclf.data.synthetic import SPLITS, SyntheticDataset, make_synthetic_dataset, synthetic_image

# The stager pulls in more (boto3 on use, PIL); it is imported on first access.
_LAZY = {
    "DatasetStager": "dogclf.data.stager",
    "StagerConfig": "dogclf.data.stager",
    "StagedDataset": "dogclf.data.stager",
    "DEFAULT_URL": "dogclf.data.stager",
    "Manifest": "dogclf.data.manifest",
    "ManifestEntry": "dogclf.data.manifest",
    "safe_extract": "dogclf.data.archive",
    "download": "dogclf.data.fetch",
}

__all__ = ["SPLITS", "SyntheticDataset", "make_synthetic_dataset", "synthetic_image", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dogclf.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
