"""Pure PyTorch integer reference of the int8 execution contract (no Triton).

This module *is* the contract: every Triton kernel in the package must agree with it bit for
bit, and it is the CPU fallback of :mod:`kernels.ops`. It also holds the input validation and
the small helpers an integrator needs (bias folding, add multipliers, weight layouts).

Conventions
-----------
* Activations are int8, NHWC (channels last). A uint8 tensor ``q`` with zero point ``z`` is the
  int8 tensor ``q - 128`` with zero point ``z - 128``. Activation zero points are Python ints in
  [-128, 127].
* Weights are int8 with a zero point per tensor or per output channel (int32 ``[1]`` or
  ``[N]``; ``None`` means symmetric). Bias is int32 ``[N]`` or ``None``.
* Accumulation: ``acc = sum_k (x_k - z_x)(w_k - z_w) + bias`` in int32 (two's complement
  wrap-around on overflow, identical in kernels and reference). Convolution padding lies in the
  real domain: padded taps hold ``z_x`` and contribute exactly 0 (EfficientNet's ZeroPad2d and
  "same" padding, PyTorch's zero padding).
* Requantization: ``y = clamp(rne(float32(acc) * m) + z_y, lo, hi)`` (see :func:`requantize`).

Accumulators are computed in float64 on zero-point-subtracted integers (exact: every partial
sum is an integer far below 2^53), then converted to int64 and wrapped to int32.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
IntOrTensor = Union[int, Tensor]
FloatOrTensor = Union[float, Tensor]
Padding = Union[int, Sequence[int]]

__all__ = [
    "requantize",
    "fold_bias",
    "add_multipliers",
    "float32_value",
    "float32_reciprocal",
    "conv_weight_to_nhwc",
    "depthwise_weight_to_hwc",
    "conv_output_size",
    "int8_gemm",
    "int8_conv2d",
    "int8_depthwise_conv2d",
    "int8_add",
    "int8_avgpool",
    "int8_maxpool2d",
    "quantize",
    "dequantize",
]

INT8_MIN, INT8_MAX = -128, 127


# =============================================================================================
# Validation and normalization (shared with the Triton launchers)
# =============================================================================================
def _describe(t: Tensor) -> str:
    return f"dtype={t.dtype}, shape={tuple(t.shape)}, device={t.device}"


def check_int8_zero_point(value: int, name: str) -> int:
    """Validate an activation zero point (a Python int in [-128, 127])."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__}")
    value = int(value)
    if not INT8_MIN <= value <= INT8_MAX:
        raise ValueError(f"{name} must lie in [-128, 127], got {value}")
    return value


def check_tensor(t: Tensor, name: str, dtype: torch.dtype, ndim: int, layout: str = "") -> None:
    """Raise a ValueError unless ``t`` is a contiguous tensor of the given dtype and rank."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    what = f"{name} ({layout})" if layout else name
    if t.dtype != dtype:
        raise ValueError(f"{what} must have dtype {dtype}, got {_describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got {_describe(t)}")
    if not t.is_contiguous():
        hint = " (for NHWC data pass x.permute(0, 2, 3, 1).contiguous())" if ndim == 4 else ""
        raise ValueError(f"{what} must be contiguous, got strides {tuple(t.stride())}{hint}")


def _check_device(t: Tensor, device: torch.device, name: str) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")


def check_nhwc_input(x: Tensor, channels: int, device: torch.device) -> Tuple[int, int, int, int]:
    """Check the input of a prepared layer launch (int8, contiguous NHWC, ``channels`` channels,
    on ``device``, one image below 2^31 elements); returns ``(B, H, W, C)``."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    B, H, W, C = x.shape
    if C != channels:
        raise ValueError(f"x has C={C} channels (NHWC {tuple(x.shape)}) but the weight expects {channels}")
    if x.device != device:
        raise ValueError(f"x is on {x.device} but the weight is on {device}")
    if H * W * C >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{C} int8 values exceeds the kernel's 2^31 index range")
    return B, H, W, C


def as_channel_param(
    value: Union[numbers.Number, Tensor],
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
) -> Tensor:
    """Normalize a per-tensor or per-channel parameter into a contiguous 1-D tensor of numel 1 or n.

    Python numbers become a ``[1]`` tensor of ``dtype`` on ``device``; tensors must already have
    that dtype and device (no silent conversion of multipliers or bounds).
    """
    if isinstance(value, Tensor):
        if value.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype}, got {_describe(value)}")
        if value.dim() != 1 or value.numel() not in (1, n):
            raise ValueError(f"{name} must be 1-D with 1 or {n} elements, got shape {tuple(value.shape)}")
        _check_device(value, device, name)
        return value.contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise ValueError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor([value], dtype=dtype, device=device)


def check_epilogue(
    multiplier: FloatOrTensor,
    z_y: int,
    lo: IntOrTensor,
    hi: IntOrTensor,
    n: int,
    device: torch.device,
    check_values: bool = True,
) -> Tuple[Tensor, int, Tensor, Tensor]:
    """Validate and normalize the requantization parameters for ``n`` output channels.

    Returns ``(multiplier f32[1|n], z_y, lo i32[1|n], hi i32[1|n])``. Bounds given as Python
    ints are checked to satisfy ``-128 <= lo <= hi <= 127``; bound tensors are checked too when
    ``check_values`` and they live on the CPU (device tensors are not read back, to avoid a
    synchronization; tracing passes ``check_values=False``).
    """
    z_y = check_int8_zero_point(z_y, "z_y")
    for v, nm in ((lo, "lo"), (hi, "hi")):
        if not isinstance(v, Tensor) and isinstance(v, numbers.Integral) and not INT8_MIN <= int(v) <= INT8_MAX:
            raise ValueError(f"{nm} must lie in [-128, 127], got {v}")
    if isinstance(lo, numbers.Integral) and isinstance(hi, numbers.Integral) and int(lo) > int(hi):
        # checked here for every device (bound tensors on a GPU are not read back below)
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    if isinstance(multiplier, numbers.Real) and not isinstance(multiplier, bool):
        if not math.isfinite(float(multiplier)):
            raise ValueError(f"multiplier must be finite, got {multiplier}")
    m_t = as_channel_param(multiplier, n, torch.float32, device, "multiplier")
    lo_t = as_channel_param(lo, n, torch.int32, device, "lo")
    hi_t = as_channel_param(hi, n, torch.int32, device, "hi")
    if check_values and lo_t.device.type == "cpu":
        if bool((lo_t < INT8_MIN).any()) or bool((hi_t > INT8_MAX).any()):
            raise ValueError("lo and hi must lie in [-128, 127]")
        if bool((lo_t > hi_t).any()):
            raise ValueError("lo must not exceed hi")
    return m_t, z_y, lo_t, hi_t


def check_weight_extras(
    bias: Optional[Tensor], w_zp: Optional[Tensor], n: int, device: torch.device
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Validate the optional int32 bias ``[n]`` and weight zero point ``[1|n]``."""
    if bias is not None:
        check_tensor(bias, "bias", torch.int32, 1)
        if bias.numel() != n:
            raise ValueError(f"bias must have {n} elements (one per output channel), got {bias.numel()}")
        _check_device(bias, device, "bias")
    if w_zp is not None:
        w_zp = as_channel_param(w_zp, n, torch.int32, device, "w_zp")
    return bias, w_zp


def normalize_stride(stride: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``s`` or ``(sh, sw)`` -> ``(sh, sw)``, each a positive int."""
    if isinstance(stride, numbers.Integral):
        stride = (int(stride), int(stride))
    stride = tuple(int(s) for s in stride)
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride must be a positive int or a pair of positive ints, got {stride}")
    return stride  # type: ignore[return-value]


def normalize_padding(padding: Padding) -> Tuple[int, int, int, int]:
    """``p``, ``(ph, pw)`` or ``(top, bottom, left, right)`` -> ``(top, bottom, left, right)``."""
    if isinstance(padding, numbers.Integral):
        p = int(padding)
        pad = (p, p, p, p)
    else:
        vals = tuple(int(p) for p in padding)
        if len(vals) == 2:
            pad = (vals[0], vals[0], vals[1], vals[1])
        elif len(vals) == 4:
            pad = vals  # type: ignore[assignment]
        else:
            raise ValueError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {padding}")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got {pad}")
    return pad


def conv_output_size(
    h: int, w: int, kh: int, kw: int, stride: Tuple[int, int], padding: Tuple[int, int, int, int]
) -> Tuple[int, int]:
    """Output height and width of a convolution / pooling window (floor mode)."""
    oh = (h + padding[0] + padding[1] - kh) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - kw) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"window {kh}x{kw} with padding {padding} does not fit an input of {h}x{w} (output {oh}x{ow})"
        )
    return oh, ow


def check_gemm_args(x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, check_values: bool = True):
    """Validate GEMM inputs; returns normalized ``(bias, w_zp, multiplier, z_x, z_y, lo, hi)``."""
    check_tensor(x, "x", torch.int8, 2, "[M, K]")
    check_tensor(w, "w", torch.int8, 2, "[N, K]")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x is [M, K] = {tuple(x.shape)} but w is [N, K] = {tuple(w.shape)}: K differs")
    _check_device(w, x.device, "w")
    n = w.shape[0]
    z_x = check_int8_zero_point(z_x, "z_x")
    bias, w_zp = check_weight_extras(bias, w_zp, n, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, n, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi


def check_conv_args(
    x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values: bool = True
):
    """Validate convolution inputs (x NHWC ``[B,H,W,C]``, w ``[N,KH,KW,C]``)."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(w, "w", torch.int8, 4, "[N, KH, KW, C]")
    if x.shape[3] != w.shape[3]:
        raise ValueError(
            f"x has C={x.shape[3]} channels (NHWC {tuple(x.shape)}) but w [N, KH, KW, C] = {tuple(w.shape)}"
        )
    _check_device(w, x.device, "w")
    n = w.shape[0]
    z_x = check_int8_zero_point(z_x, "z_x")
    stride = normalize_stride(stride)
    padding = normalize_padding(padding)
    conv_output_size(x.shape[1], x.shape[2], w.shape[1], w.shape[2], stride, padding)
    bias, w_zp = check_weight_extras(bias, w_zp, n, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, n, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi, stride, padding


def check_depthwise_args(
    x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values: bool = True
):
    """Validate depthwise inputs (x NHWC ``[B,H,W,C]``, w ``[KH,KW,C]``)."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(w, "w", torch.int8, 3, "[KH, KW, C]")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"x has C={x.shape[3]} channels but w [KH, KW, C] = {tuple(w.shape)}")
    _check_device(w, x.device, "w")
    c = x.shape[3]
    z_x = check_int8_zero_point(z_x, "z_x")
    stride = normalize_stride(stride)
    padding = normalize_padding(padding)
    conv_output_size(x.shape[1], x.shape[2], w.shape[0], w.shape[1], stride, padding)
    bias, w_zp = check_weight_extras(bias, w_zp, c, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, c, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi, stride, padding


def check_add_args(a: Tensor, b: Tensor, z_a, z_b, ia, ib, multiplier, z_y, lo, hi):
    """Validate residual-add inputs; returns ``(z_a, z_b, ia, ib, m, z_y, lo, hi)`` as Python scalars."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ValueError("a and b must be torch.Tensors")
    check_tensor(a, "a", torch.int8, a.dim())
    check_tensor(b, "b", torch.int8, b.dim())
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _check_device(b, a.device, "b")
    z_a = check_int8_zero_point(z_a, "z_a")
    z_b = check_int8_zero_point(z_b, "z_b")
    z_y = check_int8_zero_point(z_y, "z_y")
    for v, nm in ((ia, "ia"), (ib, "ib")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{nm} must be a Python int")
        if abs(int(v)) > ADD_MAX_MULTIPLIER:
            raise ValueError(f"{nm} must satisfy |{nm}| <= {ADD_MAX_MULTIPLIER} so |acc| < 2^24, got {v}")
    lo, hi = _check_scalar_bounds(lo, hi)
    return z_a, z_b, int(ia), int(ib), _check_scalar_multiplier(multiplier), z_y, lo, hi


def _check_scalar_bounds(lo: int, hi: int) -> Tuple[int, int]:
    for v, nm in ((lo, "lo"), (hi, "hi")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{nm} must be a Python int")
        if not INT8_MIN <= int(v) <= INT8_MAX:
            raise ValueError(f"{nm} must lie in [-128, 127], got {v}")
    if lo > hi:
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    return int(lo), int(hi)


def _check_scalar_multiplier(m: float, name: str = "multiplier") -> float:
    if isinstance(m, bool) or not isinstance(m, numbers.Real):
        raise ValueError(f"{name} must be a Python float")
    if not math.isfinite(float(m)):
        raise ValueError(f"{name} must be finite, got {m}")
    return float32_value(float(m))


# =============================================================================================
# Helpers for integrators
# =============================================================================================
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


# =============================================================================================
# The contract
# =============================================================================================
def requantize(acc: Tensor, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor) -> Tensor:
    """``clamp(rne(float32(acc) * m) + z_y, lo, hi)`` -> int8; per-channel params broadcast on the last dim.

    The float product is clamped to ``[lo - z_y - 1, hi - z_y + 1]`` before rounding, which changes
    no result (every value beyond rounds to an integer the final clamp maps to the same bound) and
    keeps the float -> int conversion defined.
    """
    y = acc.to(torch.float32) * multiplier
    lo32 = lo.to(torch.int32)
    hi32 = hi.to(torch.int32)
    y = torch.clamp(y, min=(lo32 - z_y - 1).to(torch.float32), max=(hi32 - z_y + 1).to(torch.float32))
    q = torch.round(y).to(torch.int32) + z_y
    q = torch.clamp(q, min=lo32, max=hi32)
    return q.to(torch.int8)


def _finish(acc64: Tensor, bias: Optional[Tensor], multiplier, z_y, lo, hi, out_int32: bool) -> Tensor:
    """Add the bias (last dim), wrap to int32, and requantize unless ``out_int32``."""
    if bias is not None:
        acc64 = acc64 + bias.to(torch.int64)
    acc = acc64.to(torch.int32)
    if out_int32:
        return acc
    return requantize(acc, multiplier, z_y, lo, hi)


def _centered(t: Tensor, zp: Union[int, Tensor, None], shape: Sequence[int]) -> Tensor:
    """``t - zp`` in float64 (exact), with a per-channel ``zp`` reshaped to ``shape``."""
    out = t.to(torch.float64)
    if zp is None:
        return out
    if isinstance(zp, Tensor):
        return out - zp.to(torch.float64).reshape(shape)
    return out - float(zp)


def _raw_bias(w2d: Tensor, bias, z_x, w_zp, bias_folded: bool) -> Optional[Tensor]:
    return unfold_bias(w2d, bias, z_x, w_zp) if bias_folded else bias


def int8_gemm(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: IntOrTensor = INT8_MIN,
    hi: IntOrTensor = INT8_MAX,
    out_int32: bool = False,
    bias_folded: bool = False,
) -> Tensor:
    """Reference int8 GEMM: ``x [M, K] int8``, ``w [N, K] int8`` -> int8 ``[M, N]`` (int32 if ``out_int32``).

    ``acc[m, n] = sum_k (x[m,k] - z_x)(w[n,k] - z_w[n]) + bias[n]``, then :func:`requantize`.
    With ``bias_folded`` the given bias is the output of :func:`fold_bias`.
    """
    bias, w_zp, m, z_x, z_y, lo, hi = check_gemm_args(x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi)
    xc = _centered(x, z_x, ())
    wc = _centered(w, w_zp, (-1, 1))
    acc64 = torch.round(xc @ wc.t()).to(torch.int64)
    return _finish(acc64, _raw_bias(w, bias, z_x, w_zp, bias_folded), m, z_y, lo, hi, out_int32)


def int8_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: IntOrTensor = INT8_MIN,
    hi: IntOrTensor = INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    out_int32: bool = False,
    bias_folded: bool = False,
) -> Tensor:
    """Reference int8 convolution: x NHWC ``[B,H,W,C]``, w ``[N,KH,KW,C]`` -> NHWC ``[B,OH,OW,N]``.

    ``padding`` is ``(top, bottom, left, right)`` (or an int / ``(ph, pw)``); padded taps hold
    ``z_x`` (zero in the real domain). Dilation 1, groups 1.
    """
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = check_conv_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding
    )
    xc = _centered(x, z_x, ()).permute(0, 3, 1, 2)
    xc = F.pad(xc, (pad[2], pad[3], pad[0], pad[1]))
    wc = _centered(w, w_zp, (-1, 1, 1, 1)).permute(0, 3, 1, 2)
    # contiguous NCHW float64 (channels-last float64 convolution is very slow on the CPU); the
    # round guards against convolution algorithms that are not exact on a GPU (Winograd, FFT)
    acc = F.conv2d(xc.contiguous(), wc.contiguous(), stride=stride)
    acc64 = torch.round(acc).permute(0, 2, 3, 1).to(torch.int64)
    raw = _raw_bias(w, bias, z_x, w_zp, bias_folded)
    return _finish(acc64, raw, m, z_y, lo, hi, out_int32).contiguous()


def int8_depthwise_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: IntOrTensor = INT8_MIN,
    hi: IntOrTensor = INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    out_int32: bool = False,
) -> Tensor:
    """Reference depthwise convolution: x NHWC ``[B,H,W,C]``, w ``[KH,KW,C]`` -> NHWC ``[B,OH,OW,C]``.

    ``w_zp``, ``bias``, multiplier and bounds are per tensor or per channel ``C``.
    """
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = check_depthwise_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding
    )
    c = x.shape[3]
    xc = _centered(x, z_x, ()).permute(0, 3, 1, 2)
    xc = F.pad(xc, (pad[2], pad[3], pad[0], pad[1]))
    wc = _centered(w, w_zp, (1, 1, -1)).permute(2, 0, 1).unsqueeze(1)
    acc = F.conv2d(xc.contiguous(), wc.contiguous(), stride=stride, groups=c)
    acc64 = torch.round(acc).permute(0, 2, 3, 1).to(torch.int64)
    return _finish(acc64, bias, m, z_y, lo, hi, out_int32).contiguous()


def int8_add(
    a: Tensor,
    b: Tensor,
    z_a: int,
    z_b: int,
    ia: int,
    ib: int,
    multiplier: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference residual add: ``requantize((a - z_a) ia + (b - z_b) ib, m, z_y, lo, hi)``.

    ``ia``, ``ib``, ``multiplier`` come from :func:`add_multipliers`; ``multiplier`` is used as
    its float32 value.
    """
    z_a, z_b, ia, ib, m, z_y, lo, hi = check_add_args(a, b, z_a, z_b, ia, ib, multiplier, z_y, lo, hi)
    acc = (a.to(torch.int64) - z_a) * ia + (b.to(torch.int64) - z_b) * ib
    dev = a.device
    return requantize(
        acc.to(torch.int32),
        torch.tensor([m], dtype=torch.float32, device=dev),
        z_y,
        torch.tensor([lo], dtype=torch.int32, device=dev),
        torch.tensor([hi], dtype=torch.int32, device=dev),
    )


def check_avgpool_args(x: Tensor, z_x, multiplier, z_y, lo, hi, check_values: bool = True):
    """Validate global-average-pool inputs (x NHWC); per-tensor or per-channel epilogue."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    z_x = check_int8_zero_point(z_x, "z_x")
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, x.shape[3], x.device, check_values)
    return z_x, m, z_y, lo, hi


def int8_avgpool(
    x: Tensor,
    z_x: int,
    multiplier: FloatOrTensor,
    z_y: int,
    lo: IntOrTensor = INT8_MIN,
    hi: IntOrTensor = INT8_MAX,
) -> Tensor:
    """Reference global average pool: x NHWC ``[B,H,W,C]`` -> int8 ``[B, C]``.

    ``acc[b, c] = sum_{h,w} (x - z_x)`` then the epilogue with ``m = s_x / (H W s_y)`` (the
    caller computes ``m``).
    """
    z_x, m, z_y, lo, hi = check_avgpool_args(x, z_x, multiplier, z_y, lo, hi)
    acc = (x.to(torch.int64) - z_x).sum(dim=(1, 2))
    return requantize(acc.to(torch.int32), m, z_y, lo, hi)


def check_maxpool_args(x: Tensor, kernel_size, stride, padding):
    """Validate max-pool inputs; returns ``((kh, kw), stride, padding)``."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    ks = normalize_stride(kernel_size)
    stride = normalize_stride(stride)
    pad = normalize_padding(padding)
    if pad[0] >= ks[0] or pad[1] >= ks[0] or pad[2] >= ks[1] or pad[3] >= ks[1]:
        raise ValueError(f"padding {pad} must be smaller than the window {ks} on each side")
    conv_output_size(x.shape[1], x.shape[2], ks[0], ks[1], stride, pad)
    return ks, stride, pad


def int8_maxpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int]],
    padding: Padding = 0,
) -> Tensor:
    """Reference max pool on NHWC int8; padded taps hold -128 (below every real value).

    Scale and zero point pass through unchanged (max commutes with the monotone quantizer).
    """
    ks, stride, pad = check_maxpool_args(x, kernel_size, stride, padding)
    xf = x.to(torch.float32).permute(0, 3, 1, 2)
    xf = F.pad(xf, (pad[2], pad[3], pad[0], pad[1]), value=float(INT8_MIN))
    y = F.max_pool2d(xf, ks, stride)
    return y.permute(0, 2, 3, 1).to(torch.int8).contiguous()


def check_quantize_args(x: Tensor, scale: float, zero_point: int, lo: int, hi: int, layout: str):
    """Validate quantize inputs; returns ``(inv_scale float32 value, z, lo, hi)``."""
    if not isinstance(x, Tensor) or x.dtype != torch.float32:
        raise ValueError(f"x must be a float32 tensor, got {_describe(x) if isinstance(x, Tensor) else type(x)}")
    if layout not in ("nchw", "nhwc", "flat"):
        raise ValueError(f"layout must be 'nchw', 'nhwc' or 'flat', got {layout!r}")
    if layout != "flat" and x.dim() != 4:
        raise ValueError(f"layout {layout!r} needs a 4-D input, got shape {tuple(x.shape)}")
    if not (isinstance(scale, numbers.Real) and math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    inv = float32_reciprocal(float(scale))
    if not math.isfinite(inv) or inv == 0.0:
        raise ValueError(f"1/scale for scale={scale} is not a finite nonzero float32")
    z = check_int8_zero_point(zero_point, "zero_point")
    lo, hi = _check_scalar_bounds(lo, hi)
    return inv, z, lo, hi


def quantize(
    x: Tensor,
    scale: float,
    zero_point: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
    layout: str = "nchw",
) -> Tensor:
    """Quantize float32 -> int8: ``clamp(rne(x * float32(1 / scale)) + zero_point, lo, hi)``.

    The reciprocal is PyTorch's own convention (``fake_quantize_per_tensor_affine``,
    ``quantize_per_tensor``): ``1.0f / float32(scale)`` in float32 (:func:`float32_reciprocal`), so
    fake-quantized simulations and this op agree bit for bit; the product is one float32 multiply
    (there is no division, whose GPU rounding differs). ``layout="nchw"``
    takes a 4-D NCHW tensor (any strides) and returns NHWC ``[B,H,W,C]``; ``"nhwc"`` keeps a
    4-D NHWC tensor's shape; ``"flat"`` keeps any shape. Inputs must not be NaN.
    """
    inv, z, lo, hi = check_quantize_args(x, scale, zero_point, lo, hi, layout)
    if layout == "nchw":
        x = x.permute(0, 2, 3, 1)
    y = x.contiguous() * inv
    y = torch.clamp(y, min=float(lo - z - 1), max=float(hi - z + 1))
    q = torch.round(y).to(torch.int32) + z
    return torch.clamp(q, lo, hi).to(torch.int8)


def check_dequantize_args(q: Tensor, scale: float, zero_point: int):
    """Validate dequantize inputs; returns ``(scale float32 value, z)``."""
    if not isinstance(q, Tensor) or q.dtype != torch.int8:
        raise ValueError(f"q must be an int8 tensor, got {_describe(q) if isinstance(q, Tensor) else type(q)}")
    if not q.is_contiguous():
        raise ValueError(f"q must be contiguous, got strides {tuple(q.stride())}")
    if not (isinstance(scale, numbers.Real) and math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    return float32_value(float(scale)), check_int8_zero_point(zero_point, "zero_point")


def dequantize(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """int8 -> float32: ``float32(q - zero_point) * float32(scale)`` (same shape)."""
    s, z = check_dequantize_args(q, scale, zero_point)
    return (q.to(torch.int32) - z).to(torch.float32) * s
