"""Local backend: tuning (filled in by its capability)."""

from __future__ import annotations

from typing import Any

from dogclf.errors import BackendError


def tune(backend: Any, spec: Any, **kwargs: Any) -> Any:
    """Not available yet in this version of dogclf."""
    raise BackendError("LocalBackend.tune is not available in this version of dogclf")
