"""Mixed precision and the optimizer step: autocast, a gradient scaler for fp16, gradient clipping.

``amp`` (:class:`~dogclf.training.TrainingConfig`):

* ``off``: float32 (the default; runs on CPU are bit-for-bit deterministic);
* ``bf16``: forward passes under ``torch.autocast(dtype=torch.bfloat16)`` on the job's device (CPUs with
  AVX512-BF16 or AMX, GPUs from Ampere on); bf16 keeps float32's exponent range, so no gradient scaler;
* ``fp16``: autocast to float16 with a :class:`torch.amp.GradScaler` (loss scaling, skipped steps on overflow);
* ``auto``: ``bf16`` where the device supports it, ``fp16`` on a GPU without bf16, else ``off``.

Channels-last batches and weights stay as they are; the weights and the optimizer stay in float32 (autocast
casts per operation). :class:`Precision` is device-agnostic: the same code runs on ``cpu`` and ``cuda``, which is
how the tests cover the CUDA path on a machine without a GPU (the fp16 scaler path runs on CPU too).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

__all__ = ["Precision", "bf16_supported", "resolve_amp"]

logger = logging.getLogger(__name__)


def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast runs natively on ``device_type`` (``"cpu"``: oneDNN's bf16 kernels; ``"cuda"``:
    the GPU's bf16 support)."""
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without the probe
            return False
    return False


def resolve_amp(mode: str, device_type: str) -> str:
    """``amp`` as what runs on ``device_type``: ``"off"``, ``"bf16"`` or ``"fp16"``."""
    if mode != "auto":
        return mode
    if bf16_supported(device_type):
        return "bf16"
    return "fp16" if device_type == "cuda" else "off"


class Precision:
    """Autocast, loss scaling, gradient clipping and the optimizer step of one job.

    Args:
        mode: ``"off"``, ``"auto"``, ``"bf16"`` or ``"fp16"`` (``auto`` is resolved for ``device_type``).
        device_type: ``"cpu"`` or ``"cuda"``.
        clip_grad: Clip the gradients' global norm to this (``None``: no clipping).

    Attributes:
        mode: The resolved mode.
        dtype: The autocast dtype, or ``None`` with ``off``.
        scaler: The gradient scaler (``fp16`` only), else ``None``.
    """

    def __init__(self, mode: str = "off", device_type: str = "cpu", clip_grad: float | None = None) -> None:
        import torch

        self.device_type = device_type
        self.mode = resolve_amp(mode, device_type)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)
        self.scaler = torch.amp.GradScaler(device_type) if self.mode == "fp16" else None
        self.clip_grad = clip_grad
        if mode == "bf16" and not bf16_supported(device_type):
            logger.warning("amp bf16 asked for, but this %s has no native bf16 support: it will run, slowly",
                           device_type)

    def __repr__(self) -> str:
        return f"Precision(mode={self.mode!r}, device_type={self.device_type!r}, clip_grad={self.clip_grad!r})"

    def autocast(self) -> Any:
        """A context in which forward passes run in the mixed-precision dtype (a no-op with ``off``)."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: Any, optimizer: Any) -> float | None:
        """Backward pass, optional unscale and clipping, optimizer step (skipped by the scaler on overflow).

        Returns:
            The gradients' global norm before clipping when ``clip_grad`` is set, else ``None``.
        """
        import torch

        optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        norm = None
        if self.clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty without one), for checkpoints."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Put back what :meth:`state_dict` returned."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
