"""The optimizer of a job: discriminative learning rates per backbone stage, weight decay, and what trains when.

**Stages.** A network is split into stages from input to output, the last being the head; :func:`model_stages`
asks, in order:

1. the model: a ``stages()`` method returning ``[(stage name, (parameter-name prefixes, ...)), ...]`` from the
   input to the head (a backbone registry's model delegates it to its backbone, see below);
2. a torchvision ResNet (``conv1``/``bn1``, ``layer1`` ... ``layer4``, ``fc``): ``stem``, ``layer1`` ...
   ``layer4``, ``head``;
3. any other network: one stage per top-level child module, in registration order, the head last.

**Discriminative rates.** With ``lr_mult = m`` and ``n`` stages, stage ``i`` (from 0 at the input) trains at
``lr * m ** (-(n - 1 - i) / (n - 1))``: the head at ``lr``, the stem at ``lr / m``, the stages between
geometrically spaced (fastai's ``slice(lr / m, lr)``). Parameters are grouped by stage and, when weight decay is
on, split into decayed weights and undecayed biases and normalisation weights (one-dimensional tensors), as timm
and fastai do. Every group carries ``stage`` and ``peak_lr`` (what :class:`~dogclf.training.schedule.LRSchedule`
scales).

**Resolved settings.** :func:`resolve` turns the ``auto`` values of a :class:`~dogclf.training.TrainingConfig`
into what the job does (AdamW when backbone layers train, weight decay 0.01 with AdamW, ``lr_mult`` 100 for a
fine-tune of pretrained weights, frozen BatchNorm statistics for pretrained weights on small batches); the entry
point logs them and writes them into ``metrics.json``. Without pretrained weights (``weights=None``) every stage
must learn from scratch: ``lr_mult`` stays 1 and BatchNorm statistics update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["RESNET_STAGES", "model_stages", "head_prefixes", "stage_rates", "param_groups", "make_optimizer",
           "resolve", "resolve_batchnorm", "set_head_only", "train_mode"]

logger = logging.getLogger(__name__)

Stages = list[tuple[str, tuple[str, ...]]]

RESNET_STAGES: Stages = [("stem", ("conv1.", "bn1.")), ("layer1", ("layer1.",)), ("layer2", ("layer2.",)),
                         ("layer3", ("layer3.",)), ("layer4", ("layer4.",)), ("head", ("fc.",))]
"""The stages of a torchvision ResNet (the fallback when a model has no ``stages()`` of its own)."""


def _module(model: Any) -> Any:
    return getattr(model, "module_", model)


def model_stages(model: Any) -> Stages:
    """The stages of ``model`` (a breed model with ``module_``, or a ``torch.nn.Module``), input first, head last.

    Raises:
        ConfigError: a model's own ``stages()`` names no stage, or a prefix that does not end in ``"."``.
    """
    from dogclf.errors import ConfigError

    own = getattr(model, "stages", None)
    if callable(own):
        stages = [(str(name), tuple(prefixes)) for name, prefixes in own()]
        bad = [p for _, prefixes in stages for p in prefixes if not isinstance(p, str) or not p.endswith(".")]
        if not stages or bad:
            raise ConfigError(f"{type(model).__name__}.stages() must list (name, prefixes ending in '.') from the "
                              f"input to the head; got {stages!r:.200}")
        return stages
    module = _module(model)
    if all(hasattr(module, n) for n in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")):
        return [(name, tuple(prefixes)) for name, prefixes in RESNET_STAGES]
    return [(name, (f"{name}.",)) for name, _ in module.named_children()]


def head_prefixes(model: Any) -> tuple[str, ...]:
    """Parameter-name prefixes of the head (the last stage)."""
    return model_stages(model)[-1][1]


def stage_rates(n_stages: int, lr: float, lr_mult: float) -> list[float]:
    """The peak rate of each of ``n_stages`` stages, input first: geometric from ``lr / lr_mult`` to ``lr``.

    Example:
        >>> [round(r, 6) for r in stage_rates(3, 0.01, 100)]
        [0.0001, 0.001, 0.01]
    """
    if n_stages <= 1:
        return [lr] * n_stages
    return [lr * lr_mult ** (-(n_stages - 1 - i) / (n_stages - 1)) for i in range(n_stages)]


def _stage_of(name: str, stages: Stages) -> int:
    for i in range(len(stages) - 1, -1, -1):  # the most specific (latest) stage whose prefix matches
        if any(name.startswith(p) for p in stages[i][1]):
            return i
    return -1


def param_groups(model: Any, lr: float, lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups over the parameters that train under the model's freeze policy (those with
    ``requires_grad``): one per stage (and per decayed / undecayed part when ``weight_decay > 0``).

    A parameter under no stage's prefix joins the stage before the head (or the head when there is no other).
    """
    module = _module(model)
    stages = model_stages(model)
    rates = stage_rates(len(stages), lr, lr_mult)
    buckets: dict[tuple[int, bool], list[Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        i = _stage_of(name, stages)
        if i < 0:
            i = max(0, len(stages) - 2)
        decay = weight_decay > 0 and param.ndim > 1
        buckets.setdefault((i, decay), []).append(param)
    groups = []
    for (i, decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        groups.append({"params": params, "lr": rates[i], "peak_lr": rates[i], "stage": stages[i][0],
                       "weight_decay": weight_decay if decay else 0.0})
    return groups


def resolve_batchnorm(policy: str, *, pretrained: bool, batch_size: int, world_size: int = 1,
                      cuda: bool = False) -> str:
    """The BatchNorm mode a job runs with: ``"sync"``, ``"local"`` or ``"frozen"``.

    ``auto`` is ``frozen`` when the weights are pretrained and the batch BatchNorm would see is under 32 images
    (the global batch with several CUDA processes, which synchronise; each process's share otherwise): such
    batches give noisier statistics than the pretrained running ones. Else ``sync`` with several CUDA processes,
    else ``local``. ``sync`` in a job of one process is ``local`` (the same statistics).

    Raises:
        ConfigError: ``sync`` with several processes on the CPU (``torch.nn.SyncBatchNorm`` needs GPUs).

    Example:
        >>> resolve_batchnorm("auto", pretrained=True, batch_size=16)
        'frozen'
        >>> resolve_batchnorm("auto", pretrained=True, batch_size=64, world_size=4, cuda=True)
        'sync'
        >>> resolve_batchnorm("auto", pretrained=True, batch_size=64, world_size=4)   # 16 per CPU process
        'frozen'
    """
    several_gpus = world_size > 1 and cuda
    if policy == "auto":
        seen = batch_size if several_gpus else batch_size // max(1, world_size)
        if pretrained and seen < 32:
            return "frozen"
        return "sync" if several_gpus else "local"
    if policy == "sync":
        if world_size > 1 and not cuda:
            from dogclf.errors import ConfigError

            raise ConfigError("batchnorm 'sync' cannot run on cpu: torch.nn.SyncBatchNorm needs GPUs; use "
                              "batchnorm='frozen' (the same result on any number of processes) or 'local'")
        return "sync" if world_size > 1 else "local"
    return policy


def resolve(training: Any, model_config: Any, *, world_size: int = 1, cuda: bool = False) -> dict[str, Any]:
    """The ``auto`` settings of a job as what it does: ``optimizer``, ``weight_decay``, ``lr_mult``,
    ``batchnorm`` (for a job of ``world_size`` processes, on CUDA or not: :func:`resolve_batchnorm`)."""
    backbone_trains = model_config.freeze != "head"
    optimizer = training.optimizer if training.optimizer != "auto" else ("adamw" if backbone_trains else "adam")
    weight_decay = training.weight_decay if training.weight_decay is not None else (
        0.01 if optimizer == "adamw" else 0.0)
    pretrained = model_config.weights is not None
    lr_mult = training.lr_mult if training.lr_mult is not None else (
        100.0 if training.freeze_epochs > 0 and pretrained else 1.0)
    batchnorm = resolve_batchnorm(training.batchnorm, pretrained=pretrained, batch_size=training.batch_size,
                                  world_size=world_size, cuda=cuda)
    return {"optimizer": optimizer, "weight_decay": float(weight_decay), "lr_mult": float(lr_mult),
            "batchnorm": batchnorm}


def make_optimizer(training: Any, model: Any, model_config: Any = None) -> Any:
    """The optimizer ``training`` asks for over ``model``'s trainable parameters, grouped by stage with
    discriminative rates (:func:`param_groups`)."""
    import torch

    settings = resolve(training, model_config if model_config is not None else model.config)
    groups = param_groups(model, training.lr, settings["lr_mult"], settings["weight_decay"])
    name = settings["optimizer"]
    if name == "adam":
        return torch.optim.Adam(groups, lr=training.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=training.lr)
    return torch.optim.SGD(groups, lr=training.lr, momentum=training.momentum)


def set_head_only(model: Any, head_only: bool) -> None:
    """Make only the head trainable (a fine-tune's first phase), or put back the model's freeze policy."""
    if not head_only:
        model.apply_freeze()
        return
    heads = head_prefixes(model)
    for name, param in _module(model).named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in heads))


def train_mode(model: Any, *, head_only: bool = False, frozen_batchnorm: bool = False,
               heads: Sequence[str] | None = None) -> Any:
    """Put the model in train mode for a phase: frozen parts (all but the head when ``head_only``) stay in eval
    mode, and with ``frozen_batchnorm`` every BatchNorm outside the head keeps its running statistics.

    Returns:
        The network (``model.module_``).
    """
    import torch

    module = model.set_train_mode(True)
    heads = tuple(heads) if heads is not None else head_prefixes(model)
    if head_only:
        for name, child in module.named_children():
            if not any(p.startswith(name + ".") for p in heads):
                child.eval()
    if frozen_batchnorm:
        for name, child in module.named_modules():
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) \
                    and not any((name + ".").startswith(p) for p in heads):
                child.eval()
    return module
