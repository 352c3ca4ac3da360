"""The training loop (:class:`Trainer`): epochs of train steps and validation, checkpoints and callbacks, then test.

The loop knows nothing of where data and weights come from (see :mod:`dogclf.training.train`): it gets the
network, its inputs per split (cached backbone features or ``uint8`` images) and the typed training config, and
it publishes metrics through :class:`~dogclf.training.metrics.MetricsPublisher`.

The recipe's parts live in their own modules and the loop calls them: the phases of a fine-tune and the per-batch
learning-rate schedule (:mod:`~dogclf.training.schedule`), what trains and BatchNorm modes
(:mod:`~dogclf.training.optim`), augmentation and test-time augmentation (:mod:`~dogclf.training.augment`),
mixed precision, clipping and the optimizer step (:mod:`~dogclf.training.amp`), best-epoch selection and early
stopping (:mod:`~dogclf.training.selection`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from dogclf.training.amp import Precision
from dogclf.training.augment import Augmenter, average_views
from dogclf._faults import failpoint
from dogclf.training.callbacks import StepInfo, TrainingContext
from dogclf.training.checkpoint import restore_rng_state, rng_state, save_checkpoint, trainable_state
from dogclf.training.distributed import Ranks
from dogclf.training.optim import head_prefixes, make_optimizer, resolve, set_head_only, train_mode
from dogclf.training.schedule import LRSchedule, Phase
from dogclf.training.selection import EpochSelector

__all__ = ["Trainer", "make_optimizer"]

logger = logging.getLogger(__name__)


class Trainer:
    """Train ``model`` on prepared inputs, validate every epoch, checkpoint, test; return the final metrics.

    Args:
        model: The breed model (``module_``, ``set_train_mode``, ``trainable_parameters``, ``trainable_prefixes``,
            ``apply_freeze``, ``config``).
        training: The :class:`~dogclf.training.TrainingConfig`.
        data: Split name -> ``(inputs, labels)``: cached features ``(N, F)``, or ``uint8`` images
            ``(N, 3, S, S)`` (a tensor or :class:`~dogclf.training.data.LazyImages`).
        cached: Whether ``data`` holds cached backbone features (then only the head runs, the whole run).
        device: The torch device.
        normalizer: Turns ``uint8`` image batches into normalised float batches (unused when ``cached``).
        crop: The side the network sees (images decoded larger for random crops are cropped to it).
        checkpoint_path: Where the per-epoch checkpoint goes (best-epoch weights go beside it).
        fingerprint: The digest that must match to resume from an existing checkpoint.
        callbacks: Callbacks (see :mod:`dogclf.training.callbacks`).
        metrics: Where metric events are published.
        context: The :class:`~dogclf.training.TrainingContext` callbacks see.
        features: Cached backbone features per split for the head-only epochs of a fine-tune (``data`` then
            holds the images the later epochs run on), or ``None``.
        ranks: This process's :class:`~dogclf.training.distributed.Ranks` in a job of several processes (each
            trains on its share of every global batch, metrics are summed over the ranks, rank 0 writes);
            default: a job of one process.
    """

    def __init__(self, model: Any, training: Any, data: dict[str, tuple[Any, Any]], *, cached: bool, device: Any,
                 normalizer: Any, crop: int, checkpoint_path: Path, fingerprint: str, callbacks: list[Any],
                 metrics: Any, context: TrainingContext, features: dict[str, tuple[Any, Any]] | None = None,
                 ranks: Ranks | None = None) -> None:
        self.model, self.training, self.data = model, training, data
        self.cached, self.device, self.normalizer, self.crop = cached, device, normalizer, crop
        self.checkpoint_path, self.fingerprint = checkpoint_path, fingerprint
        self.callbacks, self.metrics, self.ctx = callbacks, metrics, context
        self.features = features
        self.module = model.head_ if cached else model.module_
        self.steps = {"train": 0, "eval": 0}
        self.history: list[dict[str, Any]] = []
        self.ranks = ranks if ranks is not None else Ranks(device=device)
        self.settings = resolve(training, model.config, world_size=self.ranks.world_size,
                                cuda=getattr(device, "type", str(device)) == "cuda")
        self.augmenter = Augmenter(training.augment, crop, training.rrc_scale, training.tta)
        self.precision = Precision(training.amp, getattr(device, "type", str(device)), training.clip_grad)
        self.schedule = LRSchedule(training, self.steps_per_epoch)
        self.selector = EpochSelector(training, checkpoint_path.parent, has_valid="valid" in data,
                                      writer=self.ranks.is_main)
        self.heads = head_prefixes(model)
        self.phase: Phase | None = None
        self.on_features = cached  # whether the current phase runs the head on cached features
        self.train_module = self.module  # in DistributedDataParallel with several processes (per phase)

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in one epoch."""
        n, batch = len(self.data["train"][1]), self.training.batch_size
        return max(1, -(-n // batch))

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, method)(self.ctx, *args)

    def _split(self, name: str) -> tuple[Any, Any]:
        return (self.features if self.on_features and self.features is not None else self.data)[name]

    def _enter_phase(self, epoch: int) -> None:
        """Set what trains for ``epoch``'s phase (on the first epoch of a run or a resume, and at a switch)."""
        phase = self.schedule.plan.phase(epoch)
        if phase == self.phase:
            return
        self.phase = phase
        set_head_only(self.model, phase.head_only and not self.cached)
        self.on_features = self.cached or (phase.head_only and self.features is not None)
        self.module = self.model.head_ if self.on_features else self.model.module_
        # DistributedDataParallel registers the parameters that train when it wraps: wrapped again each phase.
        self.train_module = self.ranks.wrap(self.module)
        rates = {g.get("stage", "all"): g.get("peak_lr", g["lr"]) for g in self.ctx.optimizer.param_groups
                 if any(p.requires_grad for p in g["params"])}
        logger.info("phase %s, epochs %d-%d: %s%s; %s schedule; peak rates %s", phase.name, phase.first, phase.last,
                    "the head alone" if phase.head_only else f"freeze policy {self.model.config.freeze!r}",
                    " on cached features" if self.on_features else "", self.training.schedule,
                    ", ".join(f"{k} {v:.3g}" for k, v in rates.items()))

    def _set_train_mode(self) -> None:
        if self.on_features:
            self.module.train()
        else:
            train_mode(self.model, head_only=bool(self.phase and self.phase.head_only),
                       frozen_batchnorm=self.settings["batchnorm"] == "frozen", heads=self.heads)

    def _inputs(self, name: str, index: Any, train: bool, generator: Any, part: slice = slice(None)) -> list[Any]:
        """The batch's inputs: one tensor per view (several with test-time augmentation). ``part`` is this rank's
        share of a global training batch ``index``; random draws are made for the whole batch."""
        x = self._split(name)[0][index[part]]
        if self.on_features:
            return [x.to(self.device)]
        views = [self.augmenter.train(x, generator, part, len(index))] if train else self.augmenter.views(x)
        return [self.normalizer(v) for v in views]

    def evaluate(self, name: str, epoch: int, generator: Any) -> tuple[float, float]:
        """Mean loss (plain cross-entropy: no label smoothing) and accuracy over split ``name`` (eval mode, no
        gradients, test-time augmentation when asked for)."""
        import torch

        self.module.eval()
        labels = self._split(name)[1]
        n, batch = len(labels), self.training.eval_batch_size or self.training.batch_size
        total_loss, correct = 0.0, 0
        loss_fn = self.ctx.loss_fn
        smoothing = getattr(loss_fn, "label_smoothing", 0.0)
        start, stop = self.ranks.span(n)  # each rank evaluates its part of the split
        try:
            if smoothing:
                loss_fn.label_smoothing = 0.0
            with torch.no_grad():
                for lo in range(start, stop, batch):
                    index = torch.arange(lo, min(stop, lo + batch))
                    self._call("on_step_begin", "eval", self.steps["eval"])
                    t0 = time.perf_counter()
                    views, y = self._inputs(name, index, False, generator), labels[index].to(self.device)
                    t1 = time.perf_counter()
                    with self.precision.autocast():
                        outputs = [self.module(v) for v in views]
                    logits = average_views([o.float() for o in outputs])
                    loss = loss_fn(logits, y)
                    t2 = time.perf_counter()
                    total_loss += float(loss) * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    self._call("on_step_end", StepInfo("eval", self.steps["eval"], epoch, float(loss), len(y),
                                                       t1 - t0, t2 - t1))
                    self.steps["eval"] += 1
        finally:
            if smoothing:
                loss_fn.label_smoothing = smoothing
        total_loss, correct = self.ranks.sum(total_loss, correct)
        return total_loss / n, correct / n

    def _train_epoch(self, epoch: int, generator: Any) -> dict[str, float]:
        import torch

        self._set_train_mode()
        labels, ctx, optimizer = self._split("train")[1], self.ctx, self.ctx.optimizer
        n, batch = len(labels), self.training.batch_size
        order = torch.randperm(n, generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        for i, lo in enumerate(range(0, n, batch)):
            index = order[lo:lo + batch]  # the global batch; this rank trains on its share of it
            share = self.ranks.share(len(index))
            self.schedule.apply(optimizer, epoch, i)
            self._call("on_step_begin", "train", self.steps["train"])
            t0 = time.perf_counter()
            x = self._inputs("train", index, True, generator, share.positions)[0]
            y = labels[index[share.positions]].to(self.device)
            t1 = time.perf_counter()
            with self.precision.autocast():
                logits = self.train_module(x)
                loss = ctx.loss_fn(logits.float(), y)
            self.precision.step(share.scale_loss(loss), optimizer)
            t2 = time.perf_counter()
            batch_loss = float(loss.detach())
            total_loss += batch_loss * share.count
            correct += int((logits.detach().argmax(1) == y).sum()) if share.count else 0
            seen += share.count
            self._call("on_step_end", StepInfo("train", self.steps["train"], epoch, batch_loss, share.count, t1 - t0,
                                               t2 - t1))
            self.steps["train"] += 1
            ctx.global_step = self.steps["train"]
            failpoint("training.loop.step")  # the fault suite's mid-epoch kill (no-op unless armed)
            if self.training.log_interval and self.steps["train"] % self.training.log_interval == 0:
                logger.info("epoch %d step %d: batch loss %.4f, lr %.3g", epoch, self.steps["train"], batch_loss,
                            optimizer.param_groups[-1]["lr"])
            ctx.stop_training = self.ranks.any(ctx.stop_training)  # a callback on rank 0 stops every rank
            if ctx.stop_training:
                break
        total_loss, correct, seen = self.ranks.sum(total_loss, correct, seen)
        return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}

    def _resume(self, checkpoint: dict[str, Any], generator: Any) -> int:
        """Put back a checkpoint's state; returns the epochs it had done."""
        ctx = self.ctx
        self.model.module_.load_state_dict(checkpoint["trainable"], strict=False)
        ctx.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(generator, self.ranks.rng_for_rank(checkpoint))
        start_epoch, self.history = int(checkpoint["epoch"]), list(checkpoint.get("history", []))
        self.steps = dict(checkpoint.get("steps", self.steps))
        self.selector.load_state_dict(checkpoint.get("selection"))
        self.precision.load_state_dict(checkpoint.get("scaler"))
        ctx.global_step = self.steps["train"]
        if checkpoint.get("stopped"):
            ctx.stop_training, ctx.stop_reason = True, checkpoint.get("stop_reason")
        logger.info("resuming from checkpoint %s: epoch %d of %d done", self.checkpoint_path, start_epoch,
                    self.training.epochs)
        return start_epoch

    def _end_of_epoch(self, epoch: int, metrics: dict[str, float], generator: Any) -> None:
        """Selection, early stopping and the checkpoint after an epoch."""
        ctx = self.ctx
        if self.selector.update(epoch, metrics, lambda: trainable_state(self.model)):
            logger.info("epoch %d is the best so far on %s (%.6f)", epoch, self.selector.monitor,
                        self.selector.best_value)
        reason = self.selector.should_stop(epoch) if not ctx.stop_training else None
        if reason:
            ctx.stop_training, ctx.stop_reason = True, reason
        rank_rng = self.ranks.gather_objects(rng_state(generator))  # every rank's, to resume each (collective)
        self.ranks.on_main(save_checkpoint, self.checkpoint_path, {
            "epoch": epoch, "fingerprint": self.fingerprint, "trainable": trainable_state(self.model),
            "optimizer": ctx.optimizer.state_dict(), "rng": rng_state(generator), "history": self.history,
            "steps": dict(self.steps), "stopped": ctx.stop_training, "stop_reason": ctx.stop_reason,
            "selection": self.selector.state_dict(), "scaler": self.precision.state_dict(), "rank_rng": rank_rng,
        })
        self.ranks.on_main(self.selector.cleanup)
        logger.info("checkpoint saved: epoch %d -> %s", epoch, self.checkpoint_path)

    # -- the run --------------------------------------------------------------------------------------------------
    def fit(self, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the remaining epochs (all, or those after ``checkpoint``), select the epoch, then test.

        Returns:
            A dict with ``metrics`` (the final metrics: the selected epoch's, ``best_epoch`` and ``test_loss`` and
            ``test_acc`` included), ``history`` (per-epoch metrics), ``epochs_done``, ``best_epoch``,
            ``model_epoch`` (whose weights the model holds), ``stopped_early``, ``stop_reason``, ``settings``
            (the resolved ``auto`` values) and ``train_seconds``.
        """
        import torch

        ctx, training = self.ctx, self.training
        generator = torch.Generator().manual_seed(training.seed)
        # Dropout draws from the global RNG: seeded here so the data path taken before (cache hit or miss)
        # cannot change what training does.
        torch.manual_seed(training.seed + 1 + self.ranks.rank)
        start_epoch = self._resume(checkpoint, generator) if checkpoint is not None else 0
        logger.info("recipe: %s, lr %.3g, %s schedule, label smoothing %g, augment %s, tta %s, amp %s, select %s "
                    "on %s, patience %s", ", ".join(f"{k} {v}" for k, v in self.settings.items()), training.lr,
                    training.schedule, training.label_smoothing, training.augment, training.tta,
                    self.precision.mode, self.selector.select, training.monitor_metric, training.patience)

        self._call("on_train_begin")
        epoch = start_epoch
        started = time.perf_counter()
        last = training.epochs if not ctx.stop_training else start_epoch
        for epoch in range(start_epoch + 1, last + 1):
            self._enter_phase(epoch)
            metrics = self._train_epoch(epoch, generator)
            if "valid" in self.data:
                metrics["valid_loss"], metrics["valid_acc"] = self.evaluate("valid", epoch, generator)
            self.metrics.publish(metrics, epoch=epoch)
            self.history.append({"epoch": epoch, **metrics})
            self._call("on_epoch_end", epoch, dict(metrics))
            self._end_of_epoch(epoch, metrics, generator)
            if ctx.stop_training:
                break
        if ctx.stop_training:
            logger.info("training stopped early after epoch %d: %s", epoch, ctx.stop_reason or "a callback asked")
        train_seconds = time.perf_counter() - started
        return self._finish(epoch, generator, train_seconds)

    def _finish(self, epoch: int, generator: Any, train_seconds: float) -> dict[str, Any]:
        """Publish the selection, put the selected weights back, test (reported only), return the outcome."""
        ctx, selector = self.ctx, self.selector
        model_epoch = selector.restore(self.model, epoch)
        self._enter_phase(max(1, epoch))  # a resumed run that had finished its epochs has entered no phase yet
        chosen = next((dict(h) for h in self.history if h["epoch"] == model_epoch), {})
        chosen.pop("epoch", None)
        selection: dict[str, float] = {}
        if selector.best_epoch is not None and selector.select == "best":
            selection = {"best_epoch": float(selector.best_epoch),
                         **{k: chosen[k] for k in ("valid_loss", "valid_acc") if k in chosen}}
        if selector.stopped_epoch is not None:
            selection["stopped_epoch"] = float(selector.stopped_epoch)
        if selection:
            self.metrics.publish(selection)
        test_loss, test_acc = self.evaluate("test", epoch, generator)
        self.metrics.publish({"test_loss": test_loss})
        self.metrics.publish({"test_acc": test_acc})
        final = {**chosen, **selection, "test_loss": test_loss, "test_acc": test_acc}
        self._call("on_train_end", dict(final))
        return {"metrics": final, "history": self.history, "epochs_done": epoch, "best_epoch": selector.best_epoch,
                "model_epoch": model_epoch, "stopped_early": ctx.stop_training, "stop_reason": ctx.stop_reason,
                "settings": dict(self.settings), "precision": self.precision.mode, "train_seconds": train_seconds}
