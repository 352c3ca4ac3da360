"""A tiny training loop that drives callbacks exactly as the training entry point does.

Use it to try a rule plug-in or a callback without a dataset or a job: synthetic tensors, a small MLP, the
callback order of :mod:`dogclf.training.callbacks`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dogclf.training.callbacks import Callback, StepInfo, TrainingContext

__all__ = ["tiny_training"]


def tiny_training(callbacks: list[Callback], output_data_dir: str | Path, *, epochs: int = 2, train_steps: int = 20,
                  eval_steps: int = 4, batch_size: int = 16, lr: float = 0.5, num_classes: int = 4,
                  features: int = 16, seed: int = 0, flat: bool = False, zero_grad: bool = False,
                  label_noise: float = 0.0, imbalance: float | None = None, train_batches: int | None = None,
                  model: Any = None,
                  hyperparameters: dict[str, Any] | None = None) -> TrainingContext:
    """Train a small classifier on synthetic, learnable data while calling ``callbacks``.

    Args:
        callbacks: Callbacks to drive (e.g. from :func:`dogclf.debug.make_callbacks`).
        output_data_dir: The run's output data folder.
        epochs: Epochs to run (each: ``train_steps`` train steps, then ``eval_steps`` eval steps).
        train_steps: Train steps per epoch.
        eval_steps: Eval steps per epoch.
        batch_size: Samples per batch.
        lr: SGD learning rate (a huge one makes the loss diverge; 0 keeps the weights still).
        num_classes: Number of classes.
        features: Input features.
        seed: Random seed.
        flat: Make the labels random noise, so the loss cannot decrease.
        zero_grad: Zero every gradient as it is computed (nothing learns; gradients vanish).
        label_noise: Fraction of train labels replaced by random ones (raises the train loss).
        imbalance: If given, class 0 gets this share of the labels.
        train_batches: If given, training cycles through this many fixed batches (a model can memorise them
            and overfit), while eval batches stay fresh.
        model: A ``torch.nn.Module`` to train instead of the default MLP.
        hyperparameters: The hyperparameters the context carries.

    Returns:
        The training context after the run (``stop_training`` / ``stop_reason`` tell whether a callback stopped it).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w_true = torch.randn(features, num_classes, generator=g) * 3
    net = model if model is not None else torch.nn.Sequential(
        torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, num_classes))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    from dogclf.training import TrainingConfig

    training = TrainingConfig(batch_size=batch_size, num_workers=0, epochs=epochs, lr=max(lr, 1e-12))
    ctx = TrainingContext(model=net, loss_fn=loss_fn, optimizer=opt,
                          hyperparameters=dict(hyperparameters or {"batch-size": str(batch_size), "num-workers": "0"}),
                          output_data_dir=Path(output_data_dir), model_dir=Path(output_data_dir) / "model",
                          epochs=epochs, training=training)
    ctx.state["num_workers"] = 0

    def batch(train: bool) -> tuple[Any, Any]:
        x = torch.randn(batch_size, features, generator=g)
        y = (x @ w_true).argmax(1)
        if imbalance is not None:
            mask = torch.rand(batch_size, generator=g) < imbalance
            y = torch.where(mask, torch.zeros_like(y), 1 + torch.randint(0, num_classes - 1, (batch_size,), generator=g))
        if flat:
            y = torch.randint(0, num_classes, (batch_size,), generator=g)
        elif train and label_noise:
            noisy = torch.rand(batch_size, generator=g) < label_noise
            y = torch.where(noisy, torch.randint(0, num_classes, (batch_size,), generator=g), y)
        return x, y

    if zero_grad:  # registered before any callback's hooks, so a Debugger hook sees the zeroed gradients
        for param in net.parameters():
            param.register_hook(lambda grad: grad * 0.0)
    pool = [batch(True) for _ in range(train_batches)] if train_batches else None
    for cb in callbacks:
        cb.on_train_begin(ctx)
    step = {"train": 0, "eval": 0}
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        if ctx.stop_training:
            break
        net.train()
        losses = []
        for _ in range(train_steps):
            for cb in callbacks:
                cb.on_step_begin(ctx, "train", step["train"])
            t0 = time.time()
            x, y = pool[step["train"] % len(pool)] if pool else batch(True)
            t1 = time.time()
            out = net(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.time()
            losses.append(float(loss.detach()))
            info = StepInfo("train", step["train"], epoch, float(loss.detach()), batch_size, t1 - t0, t2 - t1)
            ctx.global_step += 1
            step["train"] += 1
            for cb in callbacks:
                cb.on_step_end(ctx, info)
            if ctx.stop_training:
                break
        net.eval()
        vlosses = []
        with torch.no_grad():
            for _ in range(eval_steps):
                for cb in callbacks:
                    cb.on_step_begin(ctx, "eval", step["eval"])
                t0 = time.time()
                x, y = batch(False)
                t1 = time.time()
                loss = loss_fn(net(x), y)
                vlosses.append(float(loss.detach()))
                info = StepInfo("eval", step["eval"], epoch, float(loss), batch_size, t1 - t0, time.time() - t1)
                step["eval"] += 1
                for cb in callbacks:
                    cb.on_step_end(ctx, info)
        metrics = {"train_loss": sum(losses) / max(len(losses), 1), "valid_loss": sum(vlosses) / max(len(vlosses), 1)}
        for cb in callbacks:
            cb.on_epoch_end(ctx, epoch, metrics)
    for cb in callbacks:
        cb.on_train_end(ctx, metrics)
    return ctx
