"""Where dogclf keeps its own files on this machine: one home folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home"]


def home() -> Path:
    """dogclf's folder for job folders, staged data, downloads and reports: ``$DOGCLF_HOME`` or ``~/.dogclf``.

    Nothing is created here; callers make the sub-folders they write to.
    """
    return Path(os.environ.get("DOGCLF_HOME") or Path.home() / ".dogclf")
