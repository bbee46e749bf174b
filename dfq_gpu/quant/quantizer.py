"""Quantization parameters for weights and activations (min/max, uniform affine)."""

from __future__ import annotations

import numpy as np
import torch

from .. import formulas as fm
from ..nn import fake_quant_tensor

__all__ = ["weight_qparams", "quantize_weight", "act_qparams", "weight_sqnr_db"]


def weight_qparams(w: torch.Tensor, bits: int, per_channel: bool, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float64) and zero point (int64) of a weight tensor, shape ``[1]`` or ``[out_channels]``.

    Min/max of the whole tensor or of each output channel, always including 0.
    """
    wd = w.detach().to(torch.float64).reshape(w.shape[0], -1)
    if per_channel:
        lo, hi = wd.min(1).values.cpu().numpy(), wd.max(1).values.cpu().numpy()
    else:
        lo, hi = np.array([wd.min().item()]), np.array([wd.max().item()])
    scale, zp = fm.quant_params(lo, hi, bits, symmetric)
    return torch.from_numpy(scale), torch.from_numpy(zp)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                    symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize ``w`` with per-tensor or per-output-channel parameters (in float64,
    returned in ``w``'s dtype)."""
    qmin, qmax = fm.quant_grid(bits, symmetric)
    shape = [-1] + [1] * (w.dim() - 1)
    s = scale.to(torch.float64).view(shape) if scale.numel() > 1 else scale.to(torch.float64).reshape(())
    z = zero_point.to(torch.float64).view(shape) if zero_point.numel() > 1 else zero_point.to(torch.float64).reshape(())
    return fake_quant_tensor(w.detach().to(torch.float64), s, z, qmin, qmax).to(w.dtype)


def act_qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    """Per-tensor activation scale and zero point for the float range ``[lo, hi]``."""
    scale, zp = fm.quant_params(np.array([lo]), np.array([hi]), bits, symmetric)
    return float(scale[0]), int(zp[0])


def weight_sqnr_db(w: torch.Tensor, w_q: torch.Tensor) -> float:
    return fm.sqnr_db(w.detach().double().cpu().numpy(), w_q.detach().double().cpu().numpy())
