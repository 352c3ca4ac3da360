"""Test helpers: stand-in torchvision weights placed where torchvision's cache looks for them.

No model hub is reachable in tests, yet the real loading path (the weights enum, ``load_state_dict_from_url`` and
its cache under ``$TORCH_HOME/hub/checkpoints``) should run. :func:`place_fake_weights` writes a randomly
initialised checkpoint under the file name torchvision expects, so ``weights="IMAGENET1K_V2"`` loads it as if it
had been downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from dogclf._io import atomic_write

__all__ = ["fake_weights_path", "place_fake_weights"]


def fake_weights_path(backbone: str, weights_name: str, torch_home: str | os.PathLike[str]) -> Path:
    """Where torchvision caches ``backbone``'s ``weights_name`` checkpoint under ``torch_home``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(backbone)
    member = enum.DEFAULT if weights_name == "DEFAULT" else enum[weights_name]
    return Path(torch_home) / "hub" / "checkpoints" / os.path.basename(member.url)


def place_fake_weights(backbone: str, weights_name: str, torch_home: str | os.PathLike[str], *,
                       seed: int = 0, calibrate_batchnorm: bool = False) -> Path:
    """Write a randomly initialised ``backbone`` checkpoint (1000-class ``fc``) into torchvision's cache.

    Set ``TORCH_HOME`` to ``torch_home`` (e.g. with ``monkeypatch.setenv``) before loading.

    Args:
        backbone: ``"resnet18"`` ... ``"resnet152"``.
        weights_name: A weights enum member name, e.g. ``"IMAGENET1K_V1"``.
        torch_home: The folder ``TORCH_HOME`` will point at.
        seed: Seed for the random initialisation (the same seed writes the same tensors).
        calibrate_batchnorm: Set the BatchNorm running statistics from a few random images (train-mode forward
            passes), so that eval-mode activations stay in a sane range as with real pretrained weights. Without
            it, a random ResNet's eval-mode features are huge and losses on them are not comparable to a run
            that keeps BatchNorm in train mode.

    Returns:
        The checkpoint's path.
    """
    import torch
    from torchvision import models

    path = fake_weights_path(backbone, weights_name, torch_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = getattr(models, backbone)(weights=None)
        if calibrate_batchnorm:
            for m in module.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None  # cumulative average over the calibration batches
            module.train()
            with torch.no_grad():
                for _ in range(4):
                    module(torch.randn(8, 3, 64, 64))
    return atomic_write(path, lambda fh: torch.save(module.state_dict(), fh))
