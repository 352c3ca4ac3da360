"""Debugger output files: JSON and bytes written atomically (through :mod:`dogclf._io`), JSON read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dogclf._io import atomic_write, atomic_write_json


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as compact JSON to ``path`` atomically (values JSON cannot hold are written as ``str``).

    Not fsync'ed: these files are rewritten often during training, and a crash only loses the latest samples.
    """
    return atomic_write_json(path, data, indent=None, default=str, fsync=False)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (not fsync'ed, like :func:`write_json`)."""
    return atomic_write(path, data, fsync=False)


def read_json(path: Path, default: Any = None) -> Any:
    """Read JSON from ``path``; ``default`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))
