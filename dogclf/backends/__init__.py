"""Backends: where training, tuning and serving run, found by name through the ``dogclf.backends`` entry points.

The built-in backends are registered exactly as a third party registers one, in ``pyproject.toml``::

    [project.entry-points."dogclf.backends"]
    local = "dogclf.backends.local:LocalBackend"
    sagemaker = "dogclf.backends.sagemaker:SageMakerBackend"

Every class that takes a ``backend=`` argument resolves it with :func:`get_backend`, so ``backend="local"``,
``backend="sagemaker"``, ``backend=None`` (the default, ``local``) and a ready backend object all work.
"""

from __future__ import annotations

import os
from typing import Any

from dogclf._registry import Registry
from dogclf.backends.base import Backend
from dogclf.errors import BackendLoadError, ConfigError, UnknownBackendError

__all__ = ["Backend", "ENTRY_POINT_GROUP", "DEFAULT_BACKEND", "get_backend", "list_backends"]

ENTRY_POINT_GROUP = "dogclf.backends"
"""The entry-point group backends register in."""

DEFAULT_BACKEND = "local"
"""The backend used when none is named and ``DOGCLF_BACKEND`` is unset."""

_BACKENDS: Registry[Any] = Registry("backend", group=ENTRY_POINT_GROUP, unknown_error=UnknownBackendError,
                                    load_error=BackendLoadError)
"""Backend factories (classes) by name, from the entry-point group."""


def list_backends() -> list[str]:
    """Sorted names of the backends registered in the ``dogclf.backends`` entry-point group (read afresh, so
    backends installed since the last call are listed)."""
    _BACKENDS.refresh()
    return _BACKENDS.names()


def _where(factory: Any) -> str:
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__qualname__)}"


def get_backend(backend: str | Backend | None = None, **options: Any) -> Backend:
    """Resolve ``backend`` to a backend object.

    Args:
        backend: ``None`` for the default (``$DOGCLF_BACKEND`` or ``"local"``), a registered name, or an object
            that already implements :class:`Backend` (returned as it is).
        **options: Keyword arguments for the backend's constructor when ``backend`` is a name
            (e.g. ``root=`` for ``local``, ``role=`` and ``bucket=`` for ``sagemaker``).

    Returns:
        An object implementing :class:`Backend`.

    Raises:
        UnknownBackendError: no backend is registered under that name; the message lists the registered ones.
        BackendLoadError: the backend's entry point fails to import or construct, or what it builds lacks
            members of :class:`Backend`.
        ConfigError: ``backend`` is neither a name nor a backend, or options were passed with a backend object.

    Example:
        >>> get_backend("local").name
        'local'
    """
    if backend is None:
        backend = os.environ.get("DOGCLF_BACKEND") or DEFAULT_BACKEND
    if not isinstance(backend, str):
        if isinstance(backend, Backend):
            if options:
                raise ConfigError(f"options {sorted(options)} apply only when the backend is given by name")
            return backend
        raise ConfigError(
            f"backend must be a registered name ({', '.join(map(repr, list_backends()))}), None, or an object "
            f"implementing dogclf.backends.Backend; got {type(backend).__name__}: {backend!r:.80}"
        )
    if backend not in _BACKENDS:
        _BACKENDS.refresh()  # installed since the group was read
    factory = _BACKENDS.get(backend)
    try:
        instance = factory(**options) if callable(factory) else factory
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise BackendLoadError(f"backend {backend!r} ({_where(factory)}) could not be created with options "
                               f"{sorted(options)}: {exc}") from exc
    missing = [m for m in ("name", "train", "deploy") if not hasattr(instance, m)]
    if missing:
        raise BackendLoadError(
            f"backend {backend!r} ({_where(factory)}) does not implement dogclf.backends.Backend: missing {missing}"
        )
    return instance
