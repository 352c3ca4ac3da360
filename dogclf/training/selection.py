"""Honest model selection: the best epoch on validation, early stopping with a patience, and best weights that
survive a kill.

The test split only reports: nothing here (nor in tuning) looks at it. After every epoch
:class:`EpochSelector` compares the monitored validation metric (``monitor_metric``: ``valid_loss``, lower is better,
or ``valid_acc``) with the best so far:

* with ``select='best'`` a better epoch's trainable weights are written atomically beside the checkpoint
  (``best-epoch-<N>.pt``) and kept in memory; the checkpoint records which file holds them, and older files are
  removed only after the checkpoint that no longer needs them is written, so a kill at any moment leaves the
  best weights the checkpoint names. At the end the loop puts them back before testing and saving;
* with ``patience=P``, training stops after ``P`` epochs in a row without a better value.

Without a validation channel nothing can be selected: ``select='best'`` falls back to the last epoch (with a
warning) and early stopping is refused before training (:func:`check_splits`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["BEST_FILE_PATTERN", "EpochSelector", "check_splits"]

logger = logging.getLogger(__name__)

BEST_FILE_PATTERN = "best-epoch-{epoch}.pt"
"""The file, beside the checkpoint, holding the best epoch's trainable weights (``select='best'``)."""


def check_splits(training: Any, splits: Any) -> None:
    """Refuse settings the data cannot support, before training: early stopping without a validation channel.

    Raises:
        ConfigError: ``patience`` is set but there is no validation split.
    """
    if training.patience is not None and "valid" not in splits:
        raise ConfigError(f"patience (--patience) {training.patience} needs a validation channel to watch "
                          f"{training.monitor_metric}, and this job has none; give a 'valid' channel or --patience off")


class EpochSelector:
    """Tracks the best epoch on the monitored validation metric, its weights, and early stopping.

    Args:
        training: The :class:`~dogclf.training.TrainingConfig` (``select``, ``monitor_metric``, ``patience``).
        folder: Where the best weights file goes (the checkpoint's folder).
        has_valid: Whether the job has a validation split.
        writer: Whether this process writes the best weights file (rank 0 of a job of several processes; the
            others keep the weights in memory only).
    """

    def __init__(self, training: Any, folder: Path, has_valid: bool = True, writer: bool = True) -> None:
        self.writer = writer
        self.monitor, self.patience = training.monitor_metric, training.patience
        self.select = training.select if has_valid else "last"
        if training.select == "best" and not has_valid:
            logger.warning("select=best needs a validation channel; the artifact holds the last epoch's weights")
        self.folder = Path(folder)
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_state: dict[str, Any] | None = None
        self.stopped_epoch: int | None = None

    @property
    def sign(self) -> float:
        """``1`` when lower is better (losses), ``-1`` when higher is (accuracies)."""
        return -1.0 if self.monitor.endswith("acc") else 1.0

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return self.best_value is None or self.sign * value < self.sign * self.best_value

    def _file(self, epoch: int) -> Path:
        return self.folder / BEST_FILE_PATTERN.format(epoch=epoch)

    def update(self, epoch: int, metrics: dict[str, float], state: Any) -> bool:
        """Record epoch ``epoch``'s metrics; ``state()`` returns its trainable weights (called only when they
        must be kept). Returns whether the epoch is the new best."""
        value = metrics.get(self.monitor)
        if value is None or not self._better(float(value)):
            return False
        self.best_epoch, self.best_value = epoch, float(value)
        if self.select == "best":
            import torch

            from dogclf._io import atomic_write

            self.best_state = state()
            weights = self.best_state
            if self.writer:
                atomic_write(self._file(epoch),
                             lambda fh: torch.save({"epoch": epoch, "trainable": weights}, fh))
        return True

    def should_stop(self, epoch: int) -> str | None:
        """Why training stops after ``epoch`` (patience run out), or ``None``."""
        if self.patience is None or self.best_epoch is None or epoch - self.best_epoch < self.patience:
            return None
        self.stopped_epoch = epoch
        return (f"early stopping: {self.monitor} has not improved for {epoch - self.best_epoch} epochs "
                f"(patience {self.patience}; best {self.best_value:.6f} at epoch {self.best_epoch})")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (the weights themselves stay in their file)."""
        return {"best_epoch": self.best_epoch, "best_value": self.best_value, "stopped_epoch": self.stopped_epoch,
                "monitor": self.monitor}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Put back a checkpoint's selection state and read the best weights from their file.

        Raises:
            ArtifactError: the checkpoint names a best-weights file that is missing or corrupt.
        """
        if not state or state.get("best_epoch") is None:
            return
        self.best_epoch, self.best_value = int(state["best_epoch"]), float(state["best_value"])
        self.stopped_epoch = state.get("stopped_epoch")
        if self.select == "best":
            import torch

            from dogclf.errors import ArtifactError

            path = self._file(self.best_epoch)
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ArtifactError(f"best-epoch weights {str(path)!r} named by the checkpoint are missing or "
                                    f"corrupt ({type(exc).__name__}); delete the checkpoint folder to start over") \
                    from exc
            self.best_state = saved["trainable"]

    def cleanup(self) -> None:
        """Remove best-weights files the last checkpoint no longer names (call after writing it)."""
        keep = self._file(self.best_epoch).name if self.best_epoch is not None and self.select == "best" else None
        for path in self.folder.glob(BEST_FILE_PATTERN.format(epoch="*")):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def restore(self, model: Any, last_epoch: int) -> int:
        """Put the selected epoch's weights into ``model.module_``; returns the epoch the model now holds."""
        if self.select != "best" or self.best_state is None or self.best_epoch == last_epoch:
            return last_epoch
        model.module_.load_state_dict(self.best_state, strict=False)
        logger.info("restored the weights of epoch %d, the best on %s (%.6f); the last epoch was %d",
                    self.best_epoch, self.monitor, self.best_value, last_epoch)
        return int(self.best_epoch)
