"""What :class:`~dogclf.data.DatasetStager` takes (:class:`StagerConfig`) and what it returns (:class:`StagedDataset`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dogclf.data.archive import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES
from dogclf.data.duplicates import (
    DUPLICATE_POLICIES,
    NEAR_DUPLICATE_DISTANCE,
    DuplicateGroup,
)
from dogclf.data.s3 import MIB, parse_s3_uri
from dogclf.data.synthetic import SPLITS
from dogclf.errors import (
    ConfigError,
    InvalidURIError,
)
from dogclf.labels import BreedLabels, get_labels

__all__ = ["StagerConfig", "StagedDataset", "DEFAULT_URL", "LABELS_NAME"]

DEFAULT_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
"""Where Udacity publishes ``dogImages.zip`` (1.13 GB; 8,351 images of 133 breeds), as the seed notebook used."""

LABELS_NAME = "labels.json"
"""File name of the label set written beside the manifest."""

_POLICIES = ("fail", "skip")



def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root.startswith("s3://") else str(Path(root) / rel)


def _source_kind(source: str) -> str:
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("http", "https"):
        return "url"
    if scheme == "s3":
        return "s3"
    if scheme:
        raise InvalidURIError(f"unsupported source scheme {scheme!r} in {source!r}; expected a folder, a .zip "
                              "file, an http(s):// URL or an s3://bucket/prefix")
    return "path"


@dataclass(frozen=True)
class StagerConfig:
    """What to stage, where to, and how strictly. Validated on creation; touches no disk or network.

    Args:
        source: A folder laid out ``train|valid|test/NNN.Breed/*.jpg`` (or holding one folder that is), a ``.zip``
            of such a folder, an ``http(s)://`` URL of such a zip, or an ``s3://bucket/prefix``. None means
            :data:`DEFAULT_URL`.
        target: Where the staged dataset goes: a local folder or an ``s3://bucket/prefix``. None means
            ``<local backend root>/data/<name>`` (``$DOGCLF_HOME`` or ``~/.dogclf``).
        name: The dataset's name, recorded in the manifest and used for the default target.
        labels: The label set the dataset must have (a :class:`BreedLabels` or a registered name such as
            ``"dogimages-133"``); None accepts whatever classes the folders name.
        sha256: Expected sha256 of the downloaded (or given) zip archive.
        on_corrupt: ``"fail"`` raises :class:`~dogclf.errors.CorruptImageError` listing every image that does not
            decode; ``"skip"`` leaves them out and lists them in the manifest's ``skipped``.
        on_duplicate: The same bytes in more than one split (they inflate test accuracy): ``"fail"`` (default)
            raises :class:`~dogclf.errors.DuplicateImagesError` listing the paths, ``"warn"`` keeps every copy,
            ``"keep-first"`` keeps the earliest split's copy only (see :mod:`dogclf.data.duplicates`).
        on_duplicate_in_split: The same bytes twice within a split: ``"warn"`` (default), ``"fail"`` or
            ``"keep-first"``.
        on_near_duplicate: Resized or re-encoded copies (perceptual hashes within ``near_duplicate_distance``):
            ``"warn"`` (default), ``"fail"`` or ``"keep-first"``.
        near_duplicate_distance: Largest Hamming distance (of 63 bits) of near duplicates; ``None`` skips the
            search.
        splits: The split folders required.
        workers: Threads for hashing/decoding and concurrent S3 transfers.
        max_archive_bytes: Refuse archives that unpack to more bytes than this.
        max_archive_entries: Refuse archives with more members than this.
        multipart_threshold: Files at least this large are uploaded to S3 in parts.
        multipart_chunksize: Part size of multipart uploads.
        cache_short_side: If set, also write a compact copy with every image downscaled to this short side
            (256 is what ResNet training crops 224 from) under ``cache-<N>/`` beside the splits.
        cache_quality: JPEG quality of the compact copy.
        download_dir: Where URL downloads are kept (and resumed); default ``<local backend root>/downloads``.
        force: Stage again even when the target's manifest says this source was already staged.
        retries: How often a dropped download connection is resumed before giving up.
        timeout: HTTP timeout in seconds.
        region: AWS region of the S3 client (default: the environment's).

    Raises:
        ConfigError: an option is out of range or not one of its choices.
        InvalidURIError: ``source`` or ``target`` is a malformed URI (e.g. ``s3://`` without a bucket).
    """

    source: str | None = None
    target: str | None = None
    name: str = "dogImages"
    labels: BreedLabels | str | Sequence[str] | None = None
    sha256: str | None = None
    on_corrupt: str = "fail"
    on_duplicate: str = "fail"
    on_duplicate_in_split: str = "warn"
    on_near_duplicate: str = "warn"
    near_duplicate_distance: int | None = NEAR_DUPLICATE_DISTANCE
    splits: tuple[str, ...] = SPLITS
    workers: int = 8
    max_archive_bytes: int = DEFAULT_MAX_BYTES
    max_archive_entries: int = DEFAULT_MAX_ENTRIES
    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    cache_short_side: int | None = None
    cache_quality: int = 90
    download_dir: str | None = None
    force: bool = False
    retries: int = 5
    timeout: float = 60.0
    region: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for key in ("source", "target", "download_dir"):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                set_(key, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"{key} must be a path or URI string, got {type(value).__name__}: {value!r}")
            if isinstance(getattr(self, key), str) and not getattr(self, key).strip():
                raise ConfigError(f"{key} must not be empty")
        if self.source is None:
            set_("source", DEFAULT_URL)
        kind = _source_kind(self.source)
        if kind == "s3":
            parse_s3_uri(self.source)
        if self.target is not None:
            tkind = _source_kind(self.target)
            if tkind == "url":
                raise InvalidURIError(f"target must be a local folder or s3://bucket/prefix, got URL {self.target!r}")
            if tkind == "s3":
                parse_s3_uri(self.target)
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name must be a plain folder name like 'dogImages', got {self.name!r}")
        if isinstance(self.labels, str):
            set_("labels", get_labels(self.labels))
        elif self.labels is not None and not isinstance(self.labels, BreedLabels):
            set_("labels", BreedLabels(self.labels))
        if self.sha256 is not None:
            sha = str(self.sha256).lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ConfigError(f"sha256 must be 64 hex digits, got {self.sha256!r}")
            set_("sha256", sha)
        if self.on_corrupt not in _POLICIES:
            raise ConfigError(f"on_corrupt must be one of {_POLICIES}, got {self.on_corrupt!r}")
        for key in ("on_duplicate", "on_duplicate_in_split", "on_near_duplicate"):
            if getattr(self, key) not in DUPLICATE_POLICIES:
                raise ConfigError(f"{key} must be one of {DUPLICATE_POLICIES}, got {getattr(self, key)!r}")
        d = self.near_duplicate_distance
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 32):
            raise ConfigError(f"near_duplicate_distance must be None or an int in 0..32, got {d!r}")
        splits = (self.splits,) if isinstance(self.splits, str) else tuple(self.splits)
        if not splits or len(set(splits)) != len(splits) or any(
                not isinstance(s, str) or not s or "/" in s or s.startswith(".") for s in splits):
            raise ConfigError(f"splits must be distinct plain folder names, got {self.splits!r}")
        set_("splits", splits)
        for key, low in (("workers", 1), ("max_archive_bytes", 1), ("max_archive_entries", 1),
                         ("multipart_threshold", 5 * MIB), ("multipart_chunksize", 5 * MIB), ("retries", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be an int >= {low}, got {value!r}")
        if self.cache_short_side is not None and (
                isinstance(self.cache_short_side, bool) or not isinstance(self.cache_short_side, int)
                or not 16 <= self.cache_short_side <= 4096):
            raise ConfigError(f"cache_short_side must be None or an int in 16..4096, got {self.cache_short_side!r}")
        if not 1 <= self.cache_quality <= 95:
            raise ConfigError(f"cache_quality must be in 1..95, got {self.cache_quality!r}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout!r}")

    @property
    def source_kind(self) -> str:
        """``"url"``, ``"s3"``, or ``"path"`` (a folder or a zip; which one is decided when staging)."""
        return _source_kind(self.source)

    @property
    def target_is_s3(self) -> bool:
        """Whether the target is an ``s3://`` prefix."""
        return self.target is not None and self.target.startswith("s3://")

    def resolved_target(self) -> str:
        """The target, with the default filled in (``<local backend root>/data/<name>``)."""
        if self.target is not None:
            return self.target if self.target_is_s3 else str(Path(self.target).expanduser().absolute())
        from dogclf._paths import home

        return str(home() / "data" / self.name)

    def options(self) -> dict[str, Any]:
        """The options that shape the staged result (recorded in the manifest; a change restages)."""
        return {
            "splits": list(self.splits),
            "on_corrupt": self.on_corrupt,
            "duplicates": [self.on_duplicate, self.on_duplicate_in_split, self.on_near_duplicate,
                           self.near_duplicate_distance],
            "labels": list(self.labels.names) if self.labels is not None else None,
            "cache_short_side": self.cache_short_side,
            "cache_quality": self.cache_quality if self.cache_short_side else None,
        }


@dataclass(frozen=True)
class StagedDataset:
    """Where a staged dataset is and what it holds; hand :attr:`channels` to a training job.

    Attributes:
        uri: The dataset root: a local folder path or ``s3://bucket/prefix``.
        channels: One URI per split, ``{"train": ..., "valid": ..., "test": ...}``, the form a training job's
            ``channels`` mapping takes on either backend.
        labels: The dataset's classes, in label order.
        counts: Images per split and class folder.
        manifest_uri: Where the manifest is (``<uri>/manifest.json``).
        skipped: Relative paths of images left out because they did not decode.
        duplicates: The duplicate groups found, with what was done (:class:`~dogclf.data.duplicates.DuplicateGroup`).
        noop: True when nothing had to be done (this source was already staged there).
        stats: Measurements of the run: ``seconds``, ``files``, ``bytes``, ``uploaded``, ``skipped_existing``,
            ``bytes_uploaded``, and with a cache ``cache_bytes``.
        cache_uri: Root of the compact preprocessed copy, when one was requested.
    """

    uri: str
    channels: Mapping[str, str]
    labels: BreedLabels
    counts: Mapping[str, Mapping[str, int]]
    manifest_uri: str
    skipped: tuple[str, ...] = ()
    duplicates: tuple[DuplicateGroup, ...] = ()
    noop: bool = False
    stats: Mapping[str, Any] = field(default_factory=dict)
    cache_uri: str | None = None

    @property
    def is_s3(self) -> bool:
        """Whether the dataset lives in S3."""
        return self.uri.startswith("s3://")

    @property
    def path(self) -> Path | None:
        """The local dataset folder, or None for S3."""
        return None if self.is_s3 else Path(self.uri)

    @property
    def cache_channels(self) -> dict[str, str]:
        """Per-split URIs of the compact copy (empty when there is none)."""
        if self.cache_uri is None:
            return {}
        return {split: _join(self.cache_uri, split) for split in self.channels}

    def channels_for(self, layout: str = "splits", *, cached: bool = False) -> dict[str, str]:
        """Channel mapping for a training job.

        Args:
            layout: ``"splits"`` gives one channel per split (``train``/``valid``/``test``); ``"root"`` gives one
                channel ``"training"`` holding all splits, as the seed notebook's estimator received it.
            cached: Point at the compact preprocessed copy instead of the originals.

        Raises:
            ConfigError: ``layout`` is not one of the two, or ``cached`` is asked without a cache.
        """
        if cached and self.cache_uri is None:
            raise ConfigError("this dataset was staged without a cache; pass cache_short_side=256 to DatasetStager")
        if layout == "splits":
            return dict(self.cache_channels if cached else self.channels)
        if layout == "root":
            return {"training": self.cache_uri if cached else self.uri}
        raise ConfigError(f"layout must be 'splits' or 'root', got {layout!r}")

    @property
    def n_images(self) -> int:
        """Total staged images."""
        return sum(sum(c.values()) for c in self.counts.values())
