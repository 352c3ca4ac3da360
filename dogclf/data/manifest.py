"""The dataset manifest: one JSON document listing every staged file with its split, class, size and sha256."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dogclf._io import atomic_write
from dogclf.data.duplicates import DuplicateGroup
from dogclf.errors import ConfigError, DataNotFoundError
from dogclf.labels import BreedLabels

__all__ = ["Manifest", "ManifestEntry", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"
"""File name of the manifest at the root of a staged dataset (local folder or S3 prefix)."""

_FORMAT = "dogclf.dataset_manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    """One staged image.

    Attributes:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        cls: The class folder (``"001.Affenpinscher"``).
        relpath: Path relative to the dataset root, with ``/`` separators (``"train/001.Affenpinscher/x.jpg"``).
        size: Size in bytes.
        sha256: Hex sha256 of the contents.
        md5: Hex MD5 of the contents (what S3 reports as the ETag of a single-part upload).
        phash: The image's perceptual hash (:func:`~dogclf.data.duplicates.perceptual_hash`), to find resized or
            re-encoded copies; ``""`` in manifests written before it was recorded.
    """

    split: str
    cls: str
    relpath: str
    size: int
    sha256: str
    md5: str = ""
    phash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"split", "class", "relpath", "size", "sha256", "md5", "phash"}``."""
        return {"split": self.split, "class": self.cls, "relpath": self.relpath, "size": self.size,
                "sha256": self.sha256, "md5": self.md5, "phash": self.phash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestEntry:
        """Inverse of :meth:`to_dict`."""
        return cls(data["split"], data["class"], data["relpath"], int(data["size"]), data["sha256"],
                   data.get("md5", ""), data.get("phash", ""))


@dataclass(frozen=True)
class Manifest:
    """Everything staged: the files, the classes, where they came from and what was left out.

    Attributes:
        name: The dataset's name (``"dogImages"``).
        labels: The classes, in label order.
        files: One :class:`ManifestEntry` per staged image, sorted by ``relpath``.
        source: ``{"uri": ..., "fingerprint": ...}``: what was staged; a second run with the same source and
            options finds the same fingerprint and does nothing.
        skipped: Relative paths of images left out because they did not decode (policy ``"skip"``).
        options: The staging options that shape the result (splits, corrupt-image policy, ...).
        created: ISO-8601 UTC time of staging.
        duplicates: The duplicate groups found (:class:`~dogclf.data.duplicates.DuplicateGroup`), with what was
            done about each; files left out by ``keep-first`` are in their group but not in :attr:`files`.
    """

    name: str
    labels: BreedLabels
    files: tuple[ManifestEntry, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    duplicates: tuple[DuplicateGroup, ...] = ()

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class folder: ``counts["train"]["001.Affenpinscher"]``."""
        out: dict[str, dict[str, int]] = {}
        for e in self.files:
            per = out.setdefault(e.split, {})
            per[e.cls] = per.get(e.cls, 0) + 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    @property
    def total_bytes(self) -> int:
        """Sum of the staged files' sizes."""
        return sum(e.size for e in self.files)

    def split_counts(self) -> dict[str, int]:
        """Images per split: ``{"train": 6680, "valid": 835, "test": 836}`` for dogImages."""
        return {s: sum(c.values()) for s, c in self.counts.items()}

    def same_files(self, other: Manifest) -> bool:
        """Whether ``other`` lists exactly the same files with the same contents."""
        key = lambda m: sorted((e.relpath, e.size, e.sha256) for e in m.files)  # noqa: E731
        return key(self) == key(other)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return {
            "format": _FORMAT,
            "name": self.name,
            "created": self.created,
            "source": dict(self.source),
            "options": dict(self.options),
            "labels": self.labels.to_dict(),
            "splits": self.counts,
            "skipped": list(self.skipped),
            "duplicates": [g.to_dict() for g in self.duplicates],
            "files": [e.to_dict() for e in self.files],
        }

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: ``data`` is not a dogclf manifest.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            fmt = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(f"not a dogclf dataset manifest: format {fmt!r}, expected {_FORMAT!r}")
        return cls(
            name=data["name"],
            labels=BreedLabels.from_dict(data["labels"]),
            files=tuple(ManifestEntry.from_dict(e) for e in data["files"]),
            source=dict(data.get("source", {})),
            skipped=tuple(data.get("skipped", ())),
            options=dict(data.get("options", {})),
            created=data.get("created", ""),
            duplicates=tuple(DuplicateGroup.from_dict(g) for g in data.get("duplicates", ())),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse the JSON form.

        Raises:
            ConfigError: the text is not JSON or not a manifest.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest to ``path`` atomically (temporary file, then rename)."""
        return atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save`.

        Raises:
            DataNotFoundError: ``path`` does not exist.
            ConfigError: it is not a manifest.
        """
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(f"manifest {str(path)!r} does not exist")
        return cls.from_json(path.read_bytes())

    @staticmethod
    def sorted_entries(entries: Iterable[ManifestEntry]) -> tuple[ManifestEntry, ...]:
        """Entries sorted by relative path (the order manifests keep)."""
        return tuple(sorted(entries, key=lambda e: e.relpath))
