"""Per-epoch checkpoints: what a job needs to resume after ``kill -9`` or a spot interruption as if uninterrupted.

A checkpoint holds the trainable weights, the optimizer, every random state the run draws from (the data-order
generator, torch's CPU generator and, on CUDA, every device's generator), the metric history and step counters,
plus a fingerprint of the hyperparameters that change the result: a job started again with other ones starts
over instead of mixing two runs. It is written atomically (:func:`dogclf._io.atomic_write`), so a kill during the
write leaves the previous checkpoint; the next :func:`load_checkpoint` removes the killed write's temporary file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from dogclf._contract import encode
from dogclf._faults import watch_writes
from dogclf._io import atomic_write, remove_stale_temporaries
from dogclf.errors import ArtifactError

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "fingerprint", "save_checkpoint", "load_checkpoint", "trainable_state", "rng_state",
           "restore_rng_state"]

CHECKPOINT_FILE = "checkpoint.pt"
"""The checkpoint's file name in the job's checkpoint folder."""

# Training hyperparameters that change how fast a run goes or how long, not what an epoch computes.
_RUN_ONLY = ("epochs", "eval-batch-size", "num-workers", "log-interval", "feature-cache", "channels-last", "device")


def fingerprint(model: Any, training: Any) -> str:
    """A digest of the hyperparameters that change what an epoch computes (not ``epochs``: a job may be resumed
    with more)."""
    wire = {k: v for k, v in encode(model, training).items() if k not in _RUN_ONLY}
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename).

    Fail point ``training.checkpoint.write``: after each MiB written to the temporary file.
    """
    import torch

    atomic_write(path, lambda fh: torch.save(state, watch_writes(fh, "training.checkpoint.write")))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` if there is none. Temporary files of writes killed midway are
    removed (the checkpoint they were to replace is the one read).

    Raises:
        ArtifactError: the file exists but is corrupt.
    """
    import torch

    for stale in remove_stale_temporaries(path):
        logger.warning("removed %s, a checkpoint write that was killed midway; %s is the last complete checkpoint",
                       stale, path if path.is_file() else "there is no earlier")
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"checkpoint {str(path)!r} is corrupt ({type(exc).__name__}: {str(exc)[:200]}); "
                            "delete it to start over") from exc
    if not isinstance(state, dict) or "epoch" not in state or "trainable" not in state:
        raise ArtifactError(f"checkpoint {str(path)!r} is not a dogclf training checkpoint; delete it to start over")
    return state


def trainable_state(model: Any) -> dict[str, Any]:
    """A copy of the weights the freeze policy trains (every weight under ``full``)."""
    prefixes = model.trainable_prefixes()
    return {k: v.detach().to("cpu", copy=True) for k, v in model.module_.state_dict().items()
            if not prefixes or any(k.startswith(p) for p in prefixes)}


def rng_state(generator: Any) -> dict[str, Any]:
    """Every random state a run draws from: the data-order ``generator``, torch's CPU generator and each CUDA
    device's generator (dropout on a GPU draws from those)."""
    import torch

    state = {"generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(generator: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved (CUDA states only where the run has CUDA devices)."""
    import torch

    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(cuda)[:torch.cuda.device_count()])
