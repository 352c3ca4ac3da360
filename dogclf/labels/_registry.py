"""A process-wide registry of named label sets (a :class:`~dogclf._registry.Registry`), with dogImages' 133 built in."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

from dogclf._registry import Registry
from dogclf.errors import ConfigError, UnknownLabelSetError
from dogclf.labels._core import BreedLabels

__all__ = ["register_labels", "get_labels", "list_labels", "unregister_labels", "DOGIMAGES_133"]

DOGIMAGES_133 = "dogimages-133"
"""Registry name of the 133 breeds of Udacity's dogImages dataset, in label order (``001.Affenpinscher`` first)."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _load_dogimages() -> BreedLabels:
    text = resources.files("dogclf.labels").joinpath("data/dogimages_133.txt").read_text(encoding="utf-8")
    folders = [line.strip() for line in text.splitlines() if line.strip()]
    return BreedLabels.from_folder_names(folders, name=DOGIMAGES_133, strict=True)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"label set name must be lower-case letters, digits, '.', '_' or '-' starting with a letter or digit "
            f"(like 'dogimages-133'), got {name!r}"
        )
    return name


def _named(name: str, labels: BreedLabels | Iterable[str]) -> BreedLabels:
    labels = labels if isinstance(labels, BreedLabels) else BreedLabels(labels)
    return labels.with_name(name) if labels.name != name else labels


_LABEL_SETS: Registry[BreedLabels] = Registry("label set", unknown_error=UnknownLabelSetError,
                                              check_name=_check_name, check=_named)
_LABEL_SETS.register_lazy(DOGIMAGES_133, _load_dogimages, source="dogclf/labels/data/dogimages_133.txt")


def register_labels(name: str, labels: BreedLabels | Iterable[str], *, overwrite: bool = False) -> BreedLabels:
    """Register a label set under ``name`` so :func:`get_labels` finds it, and return it.

    Args:
        name: Registry key: lower-case letters, digits, ``.``, ``_`` and ``-`` (``"my-5-breeds"``).
        labels: A :class:`BreedLabels` or the breed names in label order.
        overwrite: Replace a set already registered under ``name`` instead of refusing.

    Returns:
        The registered label set, carrying ``name``.

    Raises:
        ConfigError: ``name`` is malformed, or ``labels`` is empty or malformed.
        DuplicateError: ``name`` is taken and ``overwrite`` is false, or ``labels`` repeats a breed.
    """
    return _LABEL_SETS.register(name, labels, overwrite=overwrite)


def unregister_labels(name: str) -> None:
    """Remove a registered label set.

    Raises:
        UnknownLabelSetError: nothing is registered under ``name``.
    """
    _LABEL_SETS.unregister(name)


def get_labels(name: str) -> BreedLabels:
    """The label set registered under ``name``, e.g. ``get_labels("dogimages-133")``.

    Raises:
        UnknownLabelSetError: nothing is registered under ``name``; the message lists what is and the closest names.
    """
    return _LABEL_SETS.get(name)


def list_labels(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered label sets, filtered by a shell-style ``pattern`` (``"dogimages-*"``)."""
    return _LABEL_SETS.names(pattern)
