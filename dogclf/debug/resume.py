"""A job's Debugger trial across a restart: a job killed and started again continues its own trial.

smdebug writes one trial per run and refuses to merge runs; a job that is killed (``kill -9``, a reclaimed spot
instance) and started again resumes from its last checkpoint instead of starting over, so its trial must resume
too. The hook callback records which trial folder belongs to the job (``debug/trial.json`` in the job's output);
when the same job starts again:

* resumed from a checkpoint taken after ``n`` forward passes (train and eval steps), the steps ``>= n`` (written
  after the checkpoint, about to be computed again) are removed with smdebug's leftovers of the killed process
  (its claim file, unfinished ``.tmp`` files, an end-of-training marker), and the hook continues at step ``n``:
  the trial ends with the same steps and values as an uninterrupted run's;
* started over (killed before its first checkpoint), the killed attempt's trial is removed.

A trial folder that is not the job's own (another job's, a folder the user named) is never touched:
:func:`check_fresh` refuses it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from dogclf.errors import OutputExistsError

from ._io import read_json, write_json

__all__ = ["OWNER_FILE", "check_fresh", "owns", "claim", "prepare_trial", "kept_tensor_names"]

logger = logging.getLogger(__name__)

OWNER_FILE = "trial.json"
"""In the job's ``debug/`` folder: the trial folder the job's hook writes (``{"tensor_dir": ...}``)."""

_STEP = re.compile(r"^(\d{12})")
_LEFTOVERS = ("claim.smd", "training_job_end.ts")


def owns(tensor_dir: Path, debug_dir: Path) -> bool:
    """Whether ``tensor_dir`` is the trial an earlier start of this job wrote (recorded in ``debug_dir``)."""
    doc = read_json(Path(debug_dir) / OWNER_FILE, None)
    return isinstance(doc, dict) and doc.get("tensor_dir") == str(Path(tensor_dir))


def claim(tensor_dir: Path, debug_dir: Path) -> None:
    """Record ``tensor_dir`` as this job's trial."""
    write_json(Path(debug_dir) / OWNER_FILE, {"tensor_dir": str(Path(tensor_dir))})


def _has_files(folder: Path) -> bool:
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def check_fresh(tensor_dir: Path, debug_dir: Path) -> None:
    """Refuse a trial folder that holds files and is not this job's own.

    Raises:
        OutputExistsError: ``tensor_dir`` already holds another run's files.
    """
    tensor_dir = Path(tensor_dir)
    if _has_files(tensor_dir) and not (tensor_dir.is_dir() and owns(tensor_dir, debug_dir)):
        raise OutputExistsError(
            f"Debugger output folder {str(tensor_dir)!r} already exists and is not empty; smdebug never writes "
            "into an existing trial. Use a fresh job (or output folder), or delete it first.")


def _step(name: str) -> int | None:
    match = _STEP.match(name)
    return int(match.group(1)) if match else None


def prepare_trial(tensor_dir: Path, debug_dir: Path, first_step: int | None) -> int:
    """Make ``tensor_dir`` ready for this job's hook; returns how many steps of an earlier start were kept.

    Args:
        tensor_dir: The trial folder.
        debug_dir: The job's ``debug/`` folder (where the trial's owner is recorded).
        first_step: The global step the run continues from (resumed from a checkpoint), or ``None`` (the run
            starts over).

    Raises:
        OutputExistsError: the folder holds files and is not this job's trial.
    """
    tensor_dir = Path(tensor_dir)
    check_fresh(tensor_dir, debug_dir)
    kept = 0
    if _has_files(tensor_dir):
        if first_step is None:
            shutil.rmtree(tensor_dir)
            logger.warning("Debugger trial %s was left by an earlier start of this job that ended before its first "
                           "checkpoint; removed it, the job starts over", tensor_dir)
        else:
            removed = set()
            for path in sorted(tensor_dir.rglob("*"), reverse=True):  # files before their folders
                step = _step(path.name)
                if path.name.endswith(".tmp") or path.name in _LEFTOVERS or (step is not None and step >= first_step):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    elif path.exists():
                        path.unlink()
                    if step is not None:
                        removed.add(step)
            kept = len({s for p in tensor_dir.glob("index/*/*.json") if (s := _step(p.name)) is not None})
            logger.info("Debugger trial %s continues at step %d: kept %d saved steps, removed %d written after the "
                        "checkpoint", tensor_dir, first_step, kept, len(removed))
    claim(tensor_dir, debug_dir)
    return kept


def kept_tensor_names(tensor_dir: Path) -> set[str]:
    """The names of the tensors saved in ``tensor_dir``'s steps so far."""
    names: set[str] = set()
    for index in Path(tensor_dir).glob("index/*/*.json"):
        try:
            doc: Any = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        names.update(t.get("tensorname") for t in doc.get("tensor_payload", []) if isinstance(t, dict))
    names.discard(None)  # type: ignore[arg-type]
    return names
