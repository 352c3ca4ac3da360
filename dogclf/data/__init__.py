"""Dataset staging: get dogImages (or any dataset in its layout) from a zip, URL, folder or S3 prefix into
validated ``train``/``valid``/``test`` splits, on local disk or in S3, ready to be a training job's channels.

* :class:`DatasetStager` stages and validates a dataset and writes its manifest.
* :func:`make_synthetic_dataset` writes a small dogImages-shaped dataset of synthetic JPEGs (tests, demos).
"""

from __future__ import annotations

from dogclf._lazy import lazy_exports
from dogclf.data.synthetic import (
    SPLITS,
    SyntheticDataset,
    make_synthetic_dataset,
    synthetic_image,
)

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
