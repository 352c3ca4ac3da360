"""Callbacks: how Debugger hooks, rules, profilers and tuners observe a training run without editing the loop.

The training loop calls these methods in this order::

    on_train_begin(ctx)
    for each epoch:
        for each train step:  on_step_begin(ctx, "train", step) ... on_step_end(ctx, info)
        for each eval step:   on_step_begin(ctx, "eval", step)  ... on_step_end(ctx, info)
        on_epoch_end(ctx, epoch, metrics)      # metrics: {"train_loss": ..., "valid_loss": ..., "valid_acc": ...}
    test steps run with mode "eval" too, then
    on_train_end(ctx, metrics)                 # final metrics, "test_loss" and "test_acc" included

Epochs are counted from 1 (``on_epoch_end(ctx, 1, ...)`` follows the first epoch). A job resumed from a
checkpoint calls ``on_train_begin`` again and continues with the next epoch and step numbers. With the cached-feature
fast path (``--freeze head``, no augmentation), ``ctx.model`` is the ``fc`` head and the steps run on cached
backbone features; otherwise it is the whole network.

A callback asks the loop to stop by setting ``ctx.stop_training = True`` (with a reason in
``ctx.stop_reason``); the loop finishes the current step, skips the remaining epochs, still evaluates on test
and saves the model.

The entry point finds callbacks through the ``dogclf.callbacks`` entry-point group: each entry is a factory
``factory(hyperparameters, output_data_dir) -> list[Callback]`` that returns the callbacks the job's settings ask
for (none when they ask for nothing). dogclf's Debugger support registers there like any plug-in::

    [project.entry-points."dogclf.callbacks"]
    debug = "dogclf.debug.callbacks:make_callbacks"

so training never imports the packages that observe it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dogclf._registry import Registry

__all__ = ["CALLBACK_GROUP", "Callback", "StepInfo", "TrainingContext", "callback_factories", "make_callbacks"]

CALLBACK_GROUP = "dogclf.callbacks"
"""The entry-point group of callback factories."""

callback_factories: Registry[Any] = Registry("callback factory", group=CALLBACK_GROUP)
"""The registered callback factories (``callback_factories.register("name", factory)`` adds one in-process)."""

Mode = Literal["train", "eval"]


@dataclass
class TrainingContext:
    """What a callback can see of the run.

    Attributes:
        model: The ``torch.nn.Module`` being trained (with a cached-feature fast path, the head that runs).
        loss_fn: The loss module (``torch.nn.CrossEntropyLoss``).
        optimizer: The optimizer.
        hyperparameters: The job's hyperparameters on the wire (``{"batch-size": "64", ...}``), with the options
            the entry point does not know itself (a plug-in's settings) as given.
        output_data_dir: Where the job writes extra outputs (``SM_OUTPUT_DATA_DIR``): tensors, reports, traces.
        model_dir: Where the model artifact goes (``SM_MODEL_DIR``).
        epochs: The number of epochs requested.
        global_step: Train steps done so far across epochs.
        stop_training: Set to ``True`` to end training early.
        stop_reason: Why a callback stopped training.
        state: Free space for callbacks to share values (the entry point puts ``num_workers``,
            ``feature_cache``, ``device``, ``labels`` and ``breed_model`` there, and ``resumed_from``: ``None``, or
            for a job resumed from a checkpoint ``{"epoch": epochs done, "steps": {"train": n, "eval": m}}``, the
            step counts the run continues from).
        training: The job's typed :class:`~dogclf.training.TrainingConfig` (``None`` outside the entry point).
        model_config: The job's typed :class:`~dogclf.models.ModelConfig` (``None`` outside the entry point).
    """

    model: Any
    loss_fn: Any
    optimizer: Any
    hyperparameters: dict[str, Any]
    output_data_dir: Path
    model_dir: Path
    epochs: int = 1
    global_step: int = 0
    stop_training: bool = False
    stop_reason: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    training: Any = None
    model_config: Any = None


@dataclass(frozen=True)
class StepInfo:
    """One finished step.

    Attributes:
        mode: ``"train"`` or ``"eval"``.
        step: The step number within its mode, counted from 0 over the whole run.
        epoch: The epoch the step belongs to, counted from 1 as in the ``epoch=`` metric lines (test steps carry
            the last epoch trained).
        loss: The batch's mean loss.
        batch_size: Images in the batch.
        data_time: Seconds spent waiting for the batch (data loading).
        compute_time: Seconds spent in forward, backward and the optimizer step.
    """

    mode: Mode
    step: int
    epoch: int
    loss: float
    batch_size: int
    data_time: float
    compute_time: float


class Callback:
    """Base class with no-op methods; override what you need. See the module docs for the call order."""

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """Called once before the first step."""

    def on_step_begin(self, ctx: TrainingContext, mode: Mode, step: int) -> None:
        """Called before each step's forward pass."""

    def on_step_end(self, ctx: TrainingContext, info: StepInfo) -> None:
        """Called after each step."""

    def on_epoch_end(self, ctx: TrainingContext, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's validation."""

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Called once after the test evaluation, before the model is saved."""


def make_callbacks(hyperparameters: dict[str, Any], output_data_dir: Path) -> list[Callback]:
    """The callbacks every registered factory returns for this job, factories in name order.

    Raises:
        DogclfError: a factory refuses the job's settings (e.g. an unknown rule); a factory that fails to import
            raises :class:`~dogclf.errors.PluginLoadError` naming it.
    """
    callbacks: list[Callback] = []
    for name in callback_factories.names():
        callbacks.extend(callback_factories.get(name)(hyperparameters, output_data_dir))
    return callbacks
