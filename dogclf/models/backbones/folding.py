"""A network's pooled features and BatchNorm folding, for any backbone: what the head-only feature cache runs.

:func:`forward_features` knows torchvision ResNets and any network with a ``forward_features(x)`` method;
:func:`batchnorm_pairs` uses a network's own ``batchnorm_pairs()``, knows torchvision ResNets, and traces anything
else with ``torch.fx``; :func:`fold_batchnorm` folds those pairs into an inference copy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["batchnorm_pairs", "fold_batchnorm", "forward_features"]

logger = logging.getLogger(__name__)


def _is_torchvision_resnet(module: Any) -> bool:
    try:
        from torchvision.models import ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(module, ResNet)


def forward_features(module: Any, x: Any) -> Any:
    """A network's pooled features, the input of its classifier: ``(N, feature width)``.

    Works for a torchvision ResNet (up to and including global average pooling), and for any network with a
    ``forward_features(x)`` method that returns pooled features (dogclf's EfficientNet-Lite; a plug-in's own).

    Raises:
        ConfigError: ``module`` is neither.
    """
    import torch

    if hasattr(module, "forward_features"):
        return module.forward_features(x)
    if _is_torchvision_resnet(module):
        m = module
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)
    raise ConfigError(f"cannot compute features of a {type(module).__name__}: it is not a torchvision ResNet and has "
                      "no forward_features(x) method; use its backbone's forward_features")


def _resnet_pairs(module: Any) -> list[tuple[str, str]]:
    pairs = [("conv1", "bn1")]
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(module, lname)):
            for j in (1, 2, 3):
                if hasattr(block, f"conv{j}"):
                    pairs.append((f"{lname}.{i}.conv{j}", f"{lname}.{i}.bn{j}"))
            if block.downsample is not None:
                pairs.append((f"{lname}.{i}.downsample.0", f"{lname}.{i}.downsample.1"))
    return pairs


def _traced_pairs(module: Any) -> list[tuple[str, str]]:
    """Conv -> BatchNorm pairs found by tracing the network with ``torch.fx`` (each conv used once, feeding only its
    BatchNorm)."""
    import torch
    from torch import fx

    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as exc:  # data-dependent control flow and the like
        logger.warning("cannot trace %s to find BatchNorm layers to fold (%s); running it unfolded",
                       type(module).__name__, exc)
        return []
    modules = dict(module.named_modules())
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), torch.nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target),
                                                                                 torch.nn.Conv2d)
                and len(src.users) == 1 and uses[src.target] == 1 and uses[node.target] == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def batchnorm_pairs(module: Any) -> list[tuple[str, str]]:
    """``(conv, batchnorm)`` submodule names where the BatchNorm directly follows the convolution.

    A network's own ``batchnorm_pairs()`` method wins; torchvision ResNets are known; anything else is traced with
    ``torch.fx`` (an untraceable network gets no pairs, and runs unfolded).
    """
    if hasattr(module, "batchnorm_pairs"):
        return list(module.batchnorm_pairs())
    if _is_torchvision_resnet(module):
        return _resnet_pairs(module)
    return _traced_pairs(module)


def fold_batchnorm(module: Any, channels_last: bool = False, pairs: Sequence[tuple[str, str]] | None = None) -> Any:
    """An inference-only copy of ``module`` with each BatchNorm folded into the convolution before it.

    In eval mode a BatchNorm after a convolution is a per-channel affine map, so it merges into the convolution's
    weight and bias: the copy computes the same outputs (to float rounding, ~1e-6 relative) with one pass over each
    activation less. ``module`` itself is not changed.

    Args:
        module: The network (any backbone's, head included).
        channels_last: Convert the copy to the channels-last memory format (faster convolutions on CPU and GPU).
        pairs: The ``(conv, batchnorm)`` names to fold; default :func:`batchnorm_pairs`.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(module).eval()
    for conv_name, bn_name in (batchnorm_pairs(folded) if pairs is None else pairs):
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if isinstance(bn, torch.nn.Identity):
            continue  # already folded
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, bn_name, torch.nn.Identity())
    if channels_last:
        folded.to(memory_format=torch.channels_last)
    return folded


def _set_submodule(root: Any, name: str, value: Any) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)
