"""One registry helper behind every named extension point (label sets, backends, rules, strategies, backbones, ...).

A :class:`Registry` maps names to objects. Entries come from three places, looked at in this order:

1. in-process registration (:meth:`Registry.register`, also usable as a decorator, like timm's ``register_model``);
2. lazy built-ins (:meth:`Registry.register_lazy`: a loader called on first use);
3. an entry-point group (``[project.entry-points."dogclf.<kind>"]``), read on first use, so a third-party package
   registers exactly as dogclf's own built-ins do.

Unknown names raise the registry's error (a :class:`~dogclf.errors.NotFoundError` subclass) listing what is
registered, with a "did you mean" hint; a plug-in that fails to import raises its ``load_error``, naming the entry
point, so a bug in a plug-in never looks like one of dogclf's.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from dogclf.errors import ConfigError, DuplicateError, NotFoundError, PluginLoadError

__all__ = ["Registry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MISSING = object()


class _Lazy:
    __slots__ = ("loader", "source")

    def __init__(self, loader: Callable[[], Any], source: str) -> None:
        self.loader, self.source = loader, source


class Registry(Generic[T]):
    """Names to objects, with lazy built-ins and an entry-point group.

    Args:
        kind: What the entries are, for messages (``"backend"``, ``"label set"``, ``"rule"``).
        group: The entry-point group plug-ins register in (``"dogclf.backends"``), or ``None``.
        unknown_error: Raised for an unknown name (a :class:`~dogclf.errors.NotFoundError` subclass).
        load_error: Raised when an entry point or lazy loader fails (default :class:`~dogclf.errors.PluginLoadError`).
        check_name: Validates (and may normalise) a name on registration; raises :class:`ConfigError`.
        check: Validates an object on registration and after a lazy load; returns it (possibly converted).

    Example:
        >>> reg = Registry("colour")
        >>> @reg.register("red")
        ... def red():
        ...     return "#f00"
        >>> reg.get("red")()
        '#f00'
        >>> reg.names()
        ['red']
    """

    def __init__(self, kind: str, *, group: str | None = None, unknown_error: type[Exception] = NotFoundError,
                 load_error: type[Exception] = PluginLoadError, check_name: Callable[[Any], str] | None = None,
                 check: Callable[[str, Any], T] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.unknown_error = unknown_error
        self.load_error = load_error
        self._check_name = check_name
        self._check = check
        self._lock = threading.RLock()
        self._entries: dict[str, Any] = {}
        self._entry_points_read = group is None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, {len(self.names())} entries)"

    # -- registering ----------------------------------------------------------------------------------------------
    def _name(self, name: Any) -> str:
        if self._check_name is not None:
            return self._check_name(name)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
        return name

    def register(self, name: Any = None, obj: Any = _MISSING, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; returns ``obj``.

        Works as a call (``reg.register("x", obj)``), as a decorator with a name (``@reg.register("x")``) or
        without one (``@reg.register``, named after the object's ``__name__``).

        Raises:
            ConfigError: a malformed name, or an object the registry's ``check`` refuses.
            DuplicateError: the name is taken by another object and ``overwrite`` is false.
        """
        if obj is _MISSING:
            if callable(name) and not isinstance(name, str):
                return self.register(getattr(name, "__name__", None), name, overwrite=overwrite)
            return lambda o: self.register(name if name is not None else getattr(o, "__name__", None), o,
                                           overwrite=overwrite)
        key = self._name(name)
        if self._check is not None:
            obj = self._check(key, obj)
        with self._lock:
            self._read_entry_points()
            existing = self._entries.get(key, _MISSING)
            if existing is not _MISSING and existing is not obj and not overwrite:
                where = existing.source if isinstance(existing, _Lazy) else repr(existing)
                raise DuplicateError(f"{self.kind} {key!r} is already registered ({where:.120}); pass "
                                     "overwrite=True to replace it")
            self._entries[key] = obj
        return obj

    def register_lazy(self, name: str, loader: Callable[[], Any], *, source: str | None = None,
                      overwrite: bool = True) -> None:
        """Register a built-in whose object ``loader()`` makes on first :meth:`get` (kept afterwards)."""
        key = self._name(name)
        with self._lock:
            if key in self._entries and not overwrite:
                return
            self._entries[key] = _Lazy(loader, source or getattr(loader, "__qualname__", repr(loader)))

    def unregister(self, name: str) -> None:
        """Remove an entry (a built-in too).

        Raises:
            NotFoundError: nothing is registered under ``name`` (the registry's ``unknown_error``).
        """
        with self._lock:
            self._read_entry_points()
            if name not in self._entries:
                raise self.unknown_error(self.unknown_message(name))
            del self._entries[name]

    # -- reading --------------------------------------------------------------------------------------------------
    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        seen: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            if ep.name in seen:
                if seen[ep.name].value != ep.value:
                    logger.warning("%s %r is registered twice in %r (%s and %s); using %s", self.kind, ep.name,
                                   self.group, seen[ep.name].value, ep.value, seen[ep.name].value)
                continue
            seen[ep.name] = ep
            if ep.name not in self._entries:  # in-process registration wins over the entry point
                self._entries[ep.name] = _Lazy(ep.load, f"entry point {ep.value} in group {self.group!r}")

    def refresh(self) -> None:
        """Read the entry-point group again, adding plug-ins installed since the first look (entries stay)."""
        with self._lock:
            if self.group is not None:
                self._entry_points_read = False
                self._read_entry_points()

    def __contains__(self, name: object) -> bool:
        with self._lock:
            self._read_entry_points()
            return name in self._entries

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, filtered by a shell-style ``pattern`` (``"resnet*"``)."""
        with self._lock:
            self._read_entry_points()
            names = sorted(self._entries)
        return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def source(self, name: str) -> str | None:
        """Where an entry comes from (an entry point's ``module:attr``), or ``None`` once loaded in-process."""
        with self._lock:
            self._read_entry_points()
            entry = self._entries.get(name)
        return entry.source if isinstance(entry, _Lazy) else None

    def unknown_message(self, name: object) -> str:
        """The message for an unknown ``name``: what is registered, and the closest names."""
        names = self.names()
        known = ", ".join(repr(n) for n in names) or "none"
        where = f" in entry-point group {self.group!r}" if self.group else ""
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6) if isinstance(name, str) else []
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered{where}: {known}"

    def get(self, name: str) -> T:
        """The object registered under ``name`` (a lazy entry is loaded now).

        Raises:
            NotFoundError: nothing is registered under ``name`` (the registry's ``unknown_error``).
            ImportError: a lazy entry or entry point failed to load (the registry's ``load_error``).
        """
        with self._lock:
            self._read_entry_points()
            entry = self._entries.get(name, _MISSING) if isinstance(name, str) else _MISSING
            if entry is _MISSING:
                raise self.unknown_error(self.unknown_message(name))
            if not isinstance(entry, _Lazy):
                return entry
            try:
                obj = entry.loader()
            except Exception as exc:  # a plug-in's own failure, named as such
                raise self.load_error(f"{self.kind} {name!r} ({entry.source}) failed to load: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if self._check is not None:
                obj = self._check(name, obj)
            self._entries[name] = obj
            return obj
