"""Types, int8 bounds and the helpers an integrator needs: float32 rounding of scales, bias
folding, the add's fixed-point multipliers, weight layouts."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch


Tensor = torch.Tensor
IntOrTensor = Union[int, Tensor]
FloatOrTensor = Union[float, Tensor]
Padding = Union[int, Sequence[int]]

INT8_MIN, INT8_MAX = -128, 127


def float32_value(x: float) -> float:
    """``x`` rounded to the nearest float32 (as a Python float): the value kernels really use."""
    return float(np.float32(x))


def float32_reciprocal(scale: float) -> float:
    """``1.0f / float32(scale)`` computed in float32, as PyTorch's quantize/fake-quantize kernels do."""
    return float(np.float32(1.0) / np.float32(scale))  # IEEE float32 division (numpy, not traced)


def fold_bias(w: Tensor, bias: Optional[Tensor], z_x: int, w_zp: Optional[Tensor]) -> Optional[Tensor]:
    """Fold the activation zero point into the bias: ``bias - z_x * sum_k w_k + K * z_x * z_w``.

    ``w`` is the int8 GEMM or convolution weight, output channel first (``[N, K]`` or
    ``[N, KH, KW, C]``, ``K`` = everything after the first dimension). The result (int32, wrapped
    like the kernels) is what the GEMM/convolution kernels add to ``sum_k x_k w_k - z_w * sum_k
    x_k``; precompute it once per layer and pass it with ``bias_folded=True`` to skip the per-call
    weight reduction. Returns ``None`` when there is nothing to add.
    """
    n = w.shape[0]
    k = w[0].numel() if n > 0 else 0
    if z_x == 0 and bias is None:
        return None
    acc = torch.zeros(n, dtype=torch.int64, device=w.device)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    if z_x != 0:
        acc = acc - int(z_x) * w.reshape(n, -1).sum(dim=1, dtype=torch.int64)
        if w_zp is not None:
            acc = acc + int(k) * int(z_x) * w_zp.to(torch.int64).expand(n)
    return acc.to(torch.int32)


def unfold_bias(w: Tensor, bias: Optional[Tensor], z_x: int, w_zp: Optional[Tensor]) -> Optional[Tensor]:
    """Inverse of :func:`fold_bias` (int64): the raw bias a folded bias stands for."""
    if bias is None:
        return None
    n = w.shape[0]
    raw = bias.to(torch.int64)
    if z_x != 0:
        raw = raw + int(z_x) * w.reshape(n, -1).sum(dim=1, dtype=torch.int64)
        if w_zp is not None:
            raw = raw - int(w[0].numel()) * int(z_x) * w_zp.to(torch.int64).expand(n)
    return raw


#: Shift of the integer add multipliers: |acc| <= 2 * 255 * 2^15 < 2^24, so float32(acc) is exact.
ADD_SHIFT = 15
ADD_MAX_MULTIPLIER = 1 << ADD_SHIFT


def add_multipliers(s_a: float, s_b: float, s_y: float, shift: int = ADD_SHIFT) -> Tuple[int, int, float]:
    """Integer multipliers for ``y = ((a - z_a) s_a + (b - z_b) s_b) / s_y``.

    With ``s_ref = max(s_a, s_b)``: ``ia = round(s_a / s_ref * 2^shift)``, ``ib = round(s_b / s_ref *
    2^shift)`` and ``m = float32(s_ref / (2^shift * s_y))``; the kernel computes ``acc = (a - z_a) ia +
    (b - z_b) ib`` exactly in int32 (``|acc| <= 2 * 255 * 2^15 < 2^24``, so ``float32(acc)`` is exact)
    and applies the shared epilogue with ``m``.

    Deviation from the exact real-valued add: each of ``ia``/``ib`` is off by at most 1/2 unit, so
    the pre-rounding value ``acc * m`` differs from ``((a-z_a) s_a + (b-z_b) s_b) / s_y`` by at most
    ``255 * (s_ref / s_y) * 2^-shift`` (about ``0.008 * s_ref / s_y`` output steps) plus float32
    rounding of ``m`` and of the product (relative 2^-23). The rounded output differs from the exact
    one only when the exact value lies that close to a rounding boundary.
    """
    for v, nm in ((s_a, "s_a"), (s_b, "s_b"), (s_y, "s_y")):
        if not (isinstance(v, numbers.Real) and math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"{nm} must be a positive finite float, got {v}")
    if not 1 <= int(shift) <= ADD_SHIFT:
        raise ValueError(f"shift must lie in [1, {ADD_SHIFT}], got {shift}")
    s_ref = max(float(s_a), float(s_b))
    scale = float(1 << int(shift))
    ia = int(round(float(s_a) / s_ref * scale))
    ib = int(round(float(s_b) / s_ref * scale))
    m = float32_value(s_ref / (scale * float(s_y)))
    return ia, ib, m


def conv_weight_to_nhwc(w: Tensor) -> Tensor:
    """PyTorch conv weight ``[N, C, KH, KW]`` -> kernel layout ``[N, KH, KW, C]`` (contiguous)."""
    if w.dim() != 4:
        raise ValueError(f"expected a [N, C, KH, KW] weight, got shape {tuple(w.shape)}")
    return w.permute(0, 2, 3, 1).contiguous()


def depthwise_weight_to_hwc(w: Tensor) -> Tensor:
    """PyTorch depthwise weight ``[C, 1, KH, KW]`` -> kernel layout ``[KH, KW, C]`` (contiguous)."""
    if w.dim() != 4 or w.shape[1] != 1:
        raise ValueError(f"expected a [C, 1, KH, KW] depthwise weight, got shape {tuple(w.shape)}")
    return w[:, 0].permute(1, 2, 0).contiguous()
