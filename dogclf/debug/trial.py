"""Reading Debugger tensors back with smdebug's trial API, with clear errors instead of endless waits."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf.errors import EmptyTrialError

__all__ = ["open_trial", "has_tensors", "loss_series"]

logger = logging.getLogger(__name__)


def _s3_has_collections(uri: str) -> bool:
    from dogclf.data.s3 import has_objects
    from dogclf.errors import BackendError

    try:
        return has_objects(uri.rstrip("/") + "/collections")
    except BackendError as exc:  # missing bucket, no access: say which trial
        raise EmptyTrialError(f"cannot read Debugger trial at {uri!r}: {exc}") from exc


def has_tensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a folder or ``s3://`` URI) holds a Debugger trial with at least one saved step."""
    text = os.fspath(path)
    if text.startswith("s3://"):
        return _s3_has_collections(text)
    root = Path(text)
    return any(root.glob("collections/*/*collections.json")) and any(root.glob("index/*/*.json"))


def open_trial(path: str | os.PathLike[str]) -> Any:
    """Open a Debugger trial (``smdebug.trials.create_trial``) on a local folder or an ``s3://`` URI.

    smdebug waits forever for a trial that has not started writing; this checks first.

    Raises:
        EmptyTrialError: the folder does not exist, or holds no saved collections or steps.
    """
    text = os.fspath(path)
    if not text.startswith("s3://"):
        root = Path(text)
        if not root.is_dir():
            raise EmptyTrialError(f"Debugger trial folder {text!r} does not exist")
        if not has_tensors(root):
            raise EmptyTrialError(f"no Debugger tensors under {text!r} (expected collections/ and index/ written by "
                                  "smdebug's hook); was the job run with a debugger hook config?")
    elif not _s3_has_collections(text):
        raise EmptyTrialError(f"no Debugger tensors under {text!r} (no collections/ objects)")
    create_trial = require("debug", "smdebug.trials", "Debugger trial reader").create_trial

    if text.startswith("s3://"):
        trial = create_trial(text)
    else:
        # smdebug waits a second after seeing the end-of-training marker, for S3 uploads to settle; a local
        # trial is complete once the hook has closed.
        key = "SMDEBUG_TRAINING_END_DELAY_REFRESH"
        saved = os.environ.get(key)
        os.environ[key] = "0"
        try:
            trial = create_trial(text)
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved
    if not trial.steps():
        raise EmptyTrialError(f"the Debugger trial at {text!r} has no saved steps")
    return trial


def loss_series(trial: Any, tensor: str | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """The loss per mode step: ``{"TRAIN": (steps, values), "EVAL": (steps, values)}``.

    Args:
        trial: An smdebug trial.
        tensor: The loss tensor's name; default the first saved tensor matching smdebug's losses regex
            (``CrossEntropyLoss_output_0`` for dogclf's training).
    """
    import numpy as np
    from smdebug import modes

    from .rules.tensor import LOSS_REGEX

    if tensor is None:
        names = trial.tensor_names(regex=LOSS_REGEX)
        if not names:
            return {}
        tensor = names[0]
    t = trial.tensor(tensor)
    out = {}
    for mode in (modes.TRAIN, modes.EVAL):
        steps = t.steps(mode=mode)
        if steps:
            out[mode.name] = (list(steps), [float(np.mean(t.value(s, mode=mode))) for s in steps])
    return out
