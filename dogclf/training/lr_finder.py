"""A learning-rate finder like fastai's ``lr_find``: an exponential sweep, the loss-versus-rate plot, a suggestion.

:func:`lr_find` builds the job's model and data from a :class:`~dogclf.training.TrainingJobSpec` in this process
(local channels), then trains on one split for ``num_it`` batches while the rate grows exponentially from
``start_lr`` to ``end_lr`` (discriminative rates keep their ratios to the head's). It records the loss of each
batch, smooths it (an exponential moving average with bias correction, as fastai does), stops once the smoothed
loss exceeds four times its minimum, and suggests a rate:

* ``valley`` (the suggestion; fastai's default): the rate a third and a half into the longest run of falling
  losses, a rate that trains fast without being near the divergence;
* ``minimum``: a tenth of the rate at the smallest loss (fastai's ``lr_min``);
* ``steep``: the rate where the loss falls fastest against the log rate.

The sweep trains what the job's first epochs train: the head alone (on cached backbone features when no
augmentation runs) for ``freeze='head'`` or a fine-tune (``freeze_epochs > 0``), else what the freeze policy
trains, with the job's optimizer, loss (label smoothing included), augmentation and mixed precision. The model is
thrown away afterwards; nothing is written but the plot.

Example::

    result = lr_find(spec, plot="lr_find.png")
    spec = spec.with_params({"lr": result.suggestion})
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["LRFinderResult", "exponential_rates", "lr_find", "smooth", "suggest", "sweep"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "valid", "test")


def exponential_rates(start_lr: float, end_lr: float, num_it: int) -> list[float]:
    """``num_it`` rates from ``start_lr`` to ``end_lr``, evenly spaced on a log scale.

    Example:
        >>> [f"{r:g}" for r in exponential_rates(1e-4, 1e-2, 3)]
        ['0.0001', '0.001', '0.01']
    """
    return [start_lr * (end_lr / start_lr) ** (i / (num_it - 1)) for i in range(num_it)]


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average of ``losses`` with bias correction (fastai's ``SmoothenValue``)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def _valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley``: the longest decreasing subsequence of the losses, a third and a half into it."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return lrs[min(n - 1, max_start + int(sections) + int(sections / 2))]


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """The suggested rates (``valley``, ``minimum``, ``steep``) from a sweep's rates and smoothed losses.

    The first tenth of the sweep and its last five points are left out (the start is noise, the end divergence),
    as fastai does, where the sweep is long enough.
    """
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if len(finite) < 2:
        raise ConfigError(f"the learning-rate sweep recorded {len(finite)} finite loss(es); it needs at least 2 "
                          "(lower start_lr or raise num_it)")
    rates, values = [lr for lr, _ in finite], [loss for _, loss in finite]
    lo, hi = len(rates) // 10, len(rates) - 5
    if hi - lo >= 3:
        rates, values = rates[lo:hi], values[lo:hi]
    best = min(range(len(values)), key=values.__getitem__)
    slopes = [(values[i + 1] - values[i]) / (math.log(rates[i + 1]) - math.log(rates[i]))
              for i in range(len(values) - 1)]
    steep = min(range(len(slopes)), key=slopes.__getitem__) if slopes else best
    return {"valley": _valley(rates, values), "minimum": rates[best] / 10, "steep": rates[steep]}


@dataclass
class LRFinderResult:
    """What a learning-rate sweep found.

    Attributes:
        lrs: The rate of each batch (the head's, with discriminative rates).
        losses: The smoothed loss after each batch.
        raw_losses: Each batch's loss as computed.
        suggestion: The suggested rate (``suggestions["valley"]``).
        suggestions: ``{"valley": ..., "minimum": ..., "steep": ...}``.
        diverged: Whether the sweep stopped early because the loss blew up.
        plot_path: Where the plot was written, if it was.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    suggestions: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    plot_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {"lrs": self.lrs, "losses": self.losses, "raw_losses": self.raw_losses, "suggestion": self.suggestion,
                "suggestions": dict(self.suggestions), "diverged": self.diverged, "plot_path": self.plot_path}

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """The loss-versus-rate plot (log rate axis, the suggestions marked); written as PNG, atomically, to
        ``path`` when given.

        Returns:
            The :class:`matplotlib.figure.Figure`.
        """
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.lrs, self.losses, color="C0", label="loss (smoothed)")
        ax.plot(self.lrs, self.raw_losses, color="C0", alpha=0.25, lw=0.8, label="loss per batch")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        finite = [v for v in self.losses if math.isfinite(v)]
        if finite:
            ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 4 * min(finite) + 1e-12) * 1.05)
        markers = {"valley": "o", "minimum": "v", "steep": "^"}
        for (name, lr), colour in zip(self.suggestions.items(), ("C3", "C2", "C1")):
            i = min(range(len(self.lrs)), key=lambda k: abs(math.log(self.lrs[k]) - math.log(lr)))
            ax.plot([lr], [self.losses[i]], markers.get(name, "o"), color=colour, label=f"{name}: {lr:.2e}")
        ax.legend(loc="best", fontsize="small")
        ax.set_title(f"learning-rate finder: suggested {self.suggestion:.2e}")
        fig.tight_layout()
        if path is not None:
            from dogclf._io import atomic_path

            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            self.plot_path = os.fspath(path)
        return fig


def sweep(step: Any, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, diverge: float = 4.0,
          beta: float = 0.98) -> LRFinderResult:
    """Run ``step(lr) -> loss`` at exponentially growing rates and return the sweep with its suggestions.

    Stops early once the smoothed loss exceeds ``diverge`` times its minimum, or is not finite.
    """
    lrs, raw, smoothed = [], [], []
    avg, best = 0.0, math.inf
    diverged = False
    for i, lr in enumerate(exponential_rates(start_lr, end_lr, num_it), start=1):
        loss = float(step(lr))
        avg = beta * avg + (1 - beta) * loss
        value = avg / (1 - beta**i)
        lrs.append(lr)
        raw.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if not math.isfinite(value) or (i > 1 and value > diverge * best):
            diverged = True
            break
    suggestions = suggest(lrs, smoothed)
    return LRFinderResult(lrs, smoothed, raw, suggestions["valley"], suggestions, diverged)


def _check(start_lr: float, end_lr: float, num_it: int, split: str) -> None:
    if isinstance(start_lr, bool) or not isinstance(start_lr, (int, float)) or not 0 < start_lr < math.inf:
        raise ConfigError(f"lr_find start_lr must be a positive number, got {start_lr!r}")
    if isinstance(end_lr, bool) or not isinstance(end_lr, (int, float)) or not start_lr < end_lr < math.inf:
        raise ConfigError(f"lr_find end_lr must be a number above start_lr ({start_lr!r}), got {end_lr!r}")
    if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
        raise ConfigError(f"lr_find num_it must be an int >= 2, got {num_it!r}")
    if split not in _SPLITS:
        raise ConfigError(f"lr_find split must be one of {', '.join(map(repr, _SPLITS))}, got {split!r}")


def _split_of(spec: Any, split: str) -> tuple[Any, Any]:
    """``(labels, the split's Split)`` from the spec's local channels."""
    from dogclf.training.data import resolve_channels, resolve_data_labels, scan_split

    channels = dict(spec.channels)
    remote = [uri for uri in channels.values() if str(uri).startswith("s3://")]
    if remote:
        raise ConfigError(f"lr_find runs in this process on local folders; channels {remote} are on S3 (stage or "
                          "download the data first)")
    paths = SimpleNamespace(train=channels.get("train"), test=channels.get("test"), training=channels.get("training"),
                            valid=channels.get("valid") or channels.get("validation"))
    found = resolve_channels(paths)
    labels = resolve_data_labels(spec.training.labels, found["train"])
    if found.get(split) is None:
        raise ConfigError(f"lr_find split {split!r} has no channel in {sorted(channels)}")
    return labels, scan_split(split, found[split], labels)  # an empty split raises DataError naming it


def lr_find(spec: Any, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, split: str = "train",
            plot: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
            ) -> LRFinderResult:
    """Sweep the learning rate on a job's model and data and suggest one (fastai's ``lr_find``).

    Args:
        spec: The :class:`~dogclf.training.TrainingJobSpec` (its channels must be local folders).
        start_lr: The first rate.
        end_lr: The last rate.
        num_it: Batches in the sweep (the split is cycled through as often as needed).
        split: The split the sweep trains on (``"train"``).
        plot: Where to write the loss-versus-rate plot (PNG), if anywhere.
        cache_dir: Where cached backbone features go (default ``$DOGCLF_FEATURE_CACHE_DIR``, else a temporary
            folder removed afterwards).

    Returns:
        The :class:`LRFinderResult`; ``result.suggestion`` is the suggested peak rate (``lr``).

    Raises:
        ConfigError: bad sweep settings, S3 channels, or a split without a channel.
        DataError: the split holds no images (the message names it).
    """
    _check(start_lr, end_lr, num_it, split)
    labels, data_split = _split_of(spec, split)
    shared = cache_dir or os.environ.get("DOGCLF_FEATURE_CACHE_DIR")
    if shared:
        return _run(spec, labels, data_split, Path(shared), start_lr, end_lr, num_it, plot)
    with tempfile.TemporaryDirectory(prefix="dogclf-lr-find-") as tmp:
        return _run(spec, labels, data_split, Path(tmp), start_lr, end_lr, num_it, plot)


def _run(spec: Any, labels: Any, data_split: Any, cache_dir: Path, start_lr: float, end_lr: float, num_it: int,
         plot: Any) -> LRFinderResult:
    import torch

    from dogclf.images import Normalizer
    from dogclf.models import BreedModel
    from dogclf.training.amp import Precision
    from dogclf.training.augment import Augmenter, decode_size
    from dogclf.training.data import load_split_images
    from dogclf.training.features import cache_plan, cached_features
    from dogclf.training.optim import make_optimizer, resolve, set_head_only, train_mode

    model_config, training = spec.model, spec.training
    torch.manual_seed(training.seed)
    model = BreedModel(labels, backbone=model_config.backbone, weights=model_config.weights,
                       freeze=model_config.freeze, dropout=model_config.dropout,
                       preprocess=model_config.preprocess).build()
    device = torch.device("cuda" if training.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    channels_last = training.channels_last in ("on", "auto")
    module = model.module_.to(device)
    pre = model_config.preprocess
    normalizer = Normalizer(pre, device=device, channels_last=channels_last)
    optimizer = make_optimizer(training, model, model_config)
    head_only = model_config.freeze == "head" or training.freeze_epochs > 0
    cached = cache_plan(model_config, training) != "off"
    batch = training.eval_batch_size or training.batch_size
    if cached:
        x_all, y_all = cached_features(model, data_split, cache_dir, seed=training.seed, batch_size=batch,
                                       workers=0, normalizer=normalizer)
        net = model.head_
    else:
        if channels_last:
            module.to(memory_format=torch.channels_last)
        x_all, y_all = load_split_images({data_split.name: data_split}, pre, decode_size(training.augment, pre),
                                         batch, 0)[data_split.name]
        net = module
    set_head_only(model, head_only and model_config.freeze != "head")
    settings = resolve(training, model_config)
    if cached:
        net.train()
    else:
        train_mode(model, head_only=head_only, frozen_batchnorm=settings["batchnorm"] == "frozen")
    augmenter = Augmenter(training.augment, pre.crop, training.rrc_scale, training.tta)
    precision = Precision(training.amp, device.type, training.clip_grad)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)
    ratios = [g["peak_lr"] / training.lr for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(training.seed)
    n = len(y_all)
    order, cursor = torch.randperm(n, generator=generator), 0
    logger.info("lr_find: %d batches of %d from %s to %s on %d %s images (%s)%s", num_it, training.batch_size,
                f"{start_lr:.1e}", f"{end_lr:.1e}", n, data_split.name,
                "the head alone" if head_only else f"freeze policy {model_config.freeze!r}",
                ", cached features" if cached else "")

    def step(lr: float) -> float:
        nonlocal order, cursor
        if cursor >= n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + training.batch_size]
        cursor += training.batch_size
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        x = x_all[index]
        x = x.to(device) if cached else normalizer(augmenter.train(x, generator))
        with precision.autocast():
            loss = loss_fn(net(x).float(), y_all[index].to(device))
        precision.step(loss, optimizer)
        return float(loss.detach())

    result = sweep(step, start_lr=start_lr, end_lr=end_lr, num_it=num_it)
    logger.info("lr_find: suggested lr %.3g (valley); minimum/10 %.3g, steepest %.3g%s", result.suggestion,
                result.suggestions["minimum"], result.suggestions["steep"],
                "; the loss diverged and the sweep stopped early" if result.diverged else "")
    if plot is not None:
        result.plot(plot)
    return result
