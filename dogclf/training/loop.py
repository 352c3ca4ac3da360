"""The training loop (:class:`Trainer`): epochs of train steps and validation, checkpoints and callbacks, then test.

The loop knows nothing of where data and weights come from (see :mod:`dogclf.training.train`): it gets the
network, its inputs per split (cached backbone features or ``uint8`` images) and the typed training config, and
it publishes metrics through :class:`~dogclf.training.metrics.MetricsPublisher`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from dogclf._faults import failpoint
from dogclf.training.callbacks import StepInfo, TrainingContext
from dogclf.training.checkpoint import restore_rng_state, rng_state, save_checkpoint, trainable_state
from dogclf.training.distributed import Ranks

__all__ = ["Trainer", "make_optimizer"]

logger = logging.getLogger(__name__)


def make_optimizer(training: Any, params: list[Any]) -> Any:
    """The optimizer ``training.optimizer`` names, over ``params``."""
    import torch

    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=training.lr, weight_decay=training.weight_decay)
    if training.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)
    return torch.optim.SGD(params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)


class Trainer:
    """Train ``model`` on prepared inputs, validate every epoch, checkpoint, test; return the final metrics.

    Args:
        model: The breed model (``module_``, ``set_train_mode``, ``trainable_parameters``, ``trainable_prefixes``).
        training: The :class:`~dogclf.training.TrainingConfig`.
        data: Split name -> ``(inputs, labels)``: cached features ``(N, F)``, or ``uint8`` images
            ``(N, 3, S, S)`` (a tensor or :class:`~dogclf.training.data.LazyImages`).
        cached: Whether ``data`` holds cached backbone features (then only the head runs).
        device: The torch device.
        normalizer: Turns ``uint8`` image batches into normalised float batches (unused when ``cached``).
        crop: The side the network sees (images decoded larger for ``crop-flip`` are cropped to it).
        checkpoint_path: Where the per-epoch checkpoint goes.
        fingerprint: The digest that must match to resume from an existing checkpoint.
        callbacks: Callbacks (see :mod:`dogclf.training.callbacks`).
        metrics: Where metric events are published.
        context: The :class:`~dogclf.training.TrainingContext` callbacks see.
        ranks: This process's :class:`~dogclf.training.distributed.Ranks` in a job of several processes (each
            trains on its share of every global batch, metrics are summed over the ranks, rank 0 writes);
            default: a job of one process.
    """

    def __init__(self, model: Any, training: Any, data: dict[str, tuple[Any, Any]], *, cached: bool, device: Any,
                 normalizer: Any, crop: int, checkpoint_path: Path, fingerprint: str, callbacks: list[Any],
                 metrics: Any, context: TrainingContext, ranks: Ranks | None = None) -> None:
        self.model, self.training, self.data = model, training, data
        self.cached, self.device, self.normalizer, self.crop = cached, device, normalizer, crop
        self.checkpoint_path, self.fingerprint = checkpoint_path, fingerprint
        self.callbacks, self.metrics, self.ctx = callbacks, metrics, context
        self.module = model.head_ if cached else model.module_
        self.steps = {"train": 0, "eval": 0}
        self.history: list[dict[str, Any]] = []
        self.ranks = ranks if ranks is not None else Ranks(device=device)
        self.train_module = self.ranks.wrap(self.module)  # DistributedDataParallel with several processes

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, method)(self.ctx, *args)

    def _inputs(self, name: str, index: Any, train: bool, generator: Any, part: slice = slice(None)) -> Any:
        import torch

        x = self.data[name][0][index[part]]  # this rank's part; random draws below are for the whole batch
        if self.cached:
            return x.to(self.device)
        augment, crop = self.training.augment, self.crop
        if train and augment != "none":
            if augment == "crop-flip":
                i, j = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=generator))
                x = x[:, :, i:i + crop, j:j + crop]
            flip = torch.rand(len(index), generator=generator)[part] < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        elif x.shape[-1] != crop:  # crop-flip keeps `resize`-sized images; evaluate on the centre crop
            off = (x.shape[-1] - crop) // 2
            x = x[:, :, off:off + crop, off:off + crop]
        return self.normalizer(x)

    def evaluate(self, name: str, epoch: int, generator: Any) -> tuple[float, float]:
        """Mean loss and accuracy over split ``name`` (eval mode, no gradients)."""
        import torch

        self.module.eval()
        labels = self.data[name][1]
        n, batch = len(labels), self.training.eval_batch_size or self.training.batch_size
        total_loss, correct = 0.0, 0
        start, stop = self.ranks.span(n)  # each rank evaluates its part of the split
        with torch.no_grad():
            for lo in range(start, stop, batch):
                index = torch.arange(lo, min(stop, lo + batch))
                self._call("on_step_begin", "eval", self.steps["eval"])
                t0 = time.perf_counter()
                x, y = self._inputs(name, index, False, generator), labels[index].to(self.device)
                t1 = time.perf_counter()
                logits = self.module(x)
                loss = self.ctx.loss_fn(logits, y)
                t2 = time.perf_counter()
                total_loss += float(loss) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                self._call("on_step_end", StepInfo("eval", self.steps["eval"], epoch, float(loss), len(y), t1 - t0,
                                                   t2 - t1))
                self.steps["eval"] += 1
        total_loss, correct = self.ranks.sum(total_loss, correct)
        return total_loss / n, correct / n

    def _train_epoch(self, epoch: int, generator: Any) -> dict[str, float]:
        import torch

        if self.cached:
            self.module.train()
        else:
            self.model.set_train_mode(True)
        self.ranks.train_mode(self.module)  # batchnorm="frozen": BatchNorm layers stay in eval mode
        labels, ctx, optimizer = self.data["train"][1], self.ctx, self.ctx.optimizer
        n, batch = len(labels), self.training.batch_size
        order = torch.randperm(n, generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        for lo in range(0, n, batch):
            index = order[lo:lo + batch]  # the global batch; this rank trains on its share of it
            share = self.ranks.share(len(index))
            self._call("on_step_begin", "train", self.steps["train"])
            t0 = time.perf_counter()
            x, y = self._inputs("train", index, True, generator, share.positions), \
                labels[index[share.positions]].to(self.device)
            t1 = time.perf_counter()
            logits = self.train_module(x)
            loss = ctx.loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            share.scale_loss(loss).backward()
            optimizer.step()
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
                logger.info("epoch %d step %d: batch loss %.4f", epoch, self.steps["train"], batch_loss)
            ctx.stop_training = self.ranks.any(ctx.stop_training)  # a callback on rank 0 stops every rank
            if ctx.stop_training:
                break
        total_loss, correct, seen = self.ranks.sum(total_loss, correct, seen)
        return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}

    # -- the run --------------------------------------------------------------------------------------------------
    def fit(self, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the remaining epochs (all, or those after ``checkpoint``), then test.

        Returns:
            A dict with ``metrics`` (the final metrics, ``test_loss`` and ``test_acc`` included), ``history``
            (per-epoch metrics), ``epochs_done``, ``stopped_early``, ``stop_reason`` and ``train_seconds``.
        """
        import torch

        ctx, training = self.ctx, self.training
        generator = torch.Generator().manual_seed(training.seed)
        # Dropout draws from the global RNG: seeded here so the data path taken before (cache hit or miss)
        # cannot change what training does.
        torch.manual_seed(training.seed + 1 + self.ranks.rank)
        start_epoch = 0
        if checkpoint is not None:
            self.model.module_.load_state_dict(checkpoint["trainable"], strict=False)
            ctx.optimizer.load_state_dict(checkpoint["optimizer"])
            restore_rng_state(generator, self.ranks.rng_for_rank(checkpoint))
            start_epoch, self.history = int(checkpoint["epoch"]), list(checkpoint.get("history", []))
            self.steps = dict(checkpoint.get("steps", self.steps))
            ctx.global_step = self.steps["train"]
            if checkpoint.get("stopped"):
                ctx.stop_training, ctx.stop_reason = True, checkpoint.get("stop_reason")
            logger.info("resuming from checkpoint %s: epoch %d of %d done", self.checkpoint_path, start_epoch,
                        training.epochs)

        self._call("on_train_begin")
        epoch = start_epoch
        started = time.perf_counter()
        last = training.epochs if not ctx.stop_training else start_epoch
        for epoch in range(start_epoch + 1, last + 1):
            metrics = self._train_epoch(epoch, generator)
            if "valid" in self.data:
                metrics["valid_loss"], metrics["valid_acc"] = self.evaluate("valid", epoch, generator)
            self.metrics.publish(metrics, epoch=epoch)
            self.history.append({"epoch": epoch, **metrics})
            self._call("on_epoch_end", epoch, dict(metrics))
            self.ranks.on_main(save_checkpoint, self.checkpoint_path, {
                "epoch": epoch, "fingerprint": self.fingerprint, "trainable": trainable_state(self.model),
                "optimizer": ctx.optimizer.state_dict(), "rng": rng_state(generator), "history": self.history,
                "steps": dict(self.steps), "stopped": ctx.stop_training, "stop_reason": ctx.stop_reason,
                "rank_rng": self.ranks.gather_objects(rng_state(generator)),  # every rank's, to resume each
            })
            logger.info("checkpoint saved: epoch %d -> %s", epoch, self.checkpoint_path)
            if ctx.stop_training:
                break
        if ctx.stop_training:
            logger.info("training stopped early after epoch %d: %s", epoch, ctx.stop_reason or "a callback asked")
        train_seconds = time.perf_counter() - started

        test_loss, test_acc = self.evaluate("test", epoch, generator)
        self.metrics.publish({"test_loss": test_loss})
        self.metrics.publish({"test_acc": test_acc})
        final = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "epoch"}
        final.update(test_loss=test_loss, test_acc=test_acc)
        self._call("on_train_end", dict(final))
        return {"metrics": final, "history": self.history, "epochs_done": epoch, "stopped_early": ctx.stop_training,
                "stop_reason": ctx.stop_reason, "train_seconds": train_seconds}
