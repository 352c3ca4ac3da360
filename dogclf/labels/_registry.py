"""A process-wide registry of named label sets, with the dogImages 133-breed set built in."""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable, Iterable
from importlib import resources

from dogclf.errors import ConfigError, DuplicateError, UnknownLabelSetError
from dogclf.labels._core import BreedLabels

__all__ = ["register_labels", "get_labels", "list_labels", "unregister_labels", "DOGIMAGES_133"]

DOGIMAGES_133 = "dogimages-133"
"""Registry name of the 133 breeds of Udacity's dogImages dataset, in label order (``001.Affenpinscher`` first)."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_lock = threading.RLock()
_registry: dict[str, BreedLabels | Callable[[], BreedLabels]] = {}


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
    _check_name(name)
    if not isinstance(labels, BreedLabels):
        labels = BreedLabels(labels)
    labels = labels.with_name(name) if labels.name != name else labels
    with _lock:
        if name in _registry and not overwrite:
            raise DuplicateError(f"a label set named {name!r} is already registered; pass overwrite=True to replace it")
        _registry[name] = labels
    return labels


def unregister_labels(name: str) -> None:
    """Remove a registered label set.

    Raises:
        UnknownLabelSetError: nothing is registered under ``name``.
    """
    with _lock:
        if name not in _registry:
            raise UnknownLabelSetError(_unknown(name))
        del _registry[name]


def get_labels(name: str) -> BreedLabels:
    """The label set registered under ``name``, e.g. ``get_labels("dogimages-133")``.

    Raises:
        UnknownLabelSetError: nothing is registered under ``name``; the message lists what is.
    """
    with _lock:
        entry = _registry.get(name) if isinstance(name, str) else None
        if entry is None:
            raise UnknownLabelSetError(_unknown(name))
        if not isinstance(entry, BreedLabels):
            entry = _registry[name] = entry()
        return entry


def list_labels(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered label sets, filtered by a shell-style ``pattern`` (``"dogimages-*"``)."""
    with _lock:
        names = sorted(_registry)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown(name: object) -> str:
    known = ", ".join(repr(n) for n in list_labels()) or "none"
    return f"unknown label set {name!r}; registered: {known}"


_registry[DOGIMAGES_133] = _load_dogimages
