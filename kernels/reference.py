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

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

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
    "ResidualAdd",
    "residual_add",
    "int8_avgpool",
    "int8_maxpool2d",
    "quantize",
    "quantize_im2col",
    "im2col_width",
    "IM2COL_MAX_CHANNELS",
    "dequantize",
    "int8_lut",
    "lut_from_function",
    "int8_mul",
    "int8_avgpool2d",
    "avgpool2d_multipliers",
    "pool_output_size",
    "int8_upsample_nearest",
    "int8_upsample_bilinear",
    "bilinear_taps",
    "bilinear_accumulate",
    "BILINEAR_FRAC_BITS",
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
# The executor of the contract: exact integer reductions in floating point and the epilogue.
# The simulation of dfq_gpu (dfq_gpu.modules) runs its integer layers through these functions
# too, on the centered integers it recovers from its dequantized tensors, so the contract is
# executed by this module and by the Triton kernels, nowhere else.
# =============================================================================================
#: float32 holds every integer of magnitude up to 2^24 exactly.
EXACT_FLOAT32 = 1 << 24
#: A reduction whose float32 form would need more chunks than this runs as one float64 reduction.
MAX_FLOAT32_CHUNKS = 8

#: ``reduce(x, w, bias)``: the float convolution / matrix product of a layer (``bias`` may be ``None``).
Reduce = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


@dataclass(frozen=True)
class ExactReduction:
    """How :func:`exact_accumulate` computes ``acc = sum_k xc_k wc_k + bias`` exactly.

    Every partial sum of the reduction is an integer of magnitude at most
    ``max|xc| * sum_k |wc_k|``, exact in float32 below 2^24 and in float64 below 2^53. ``kind``:

    * ``"f32"``: one float32 reduction with the bias (the result is exact);
    * ``"f32+b"``: one float32 reduction, then the float32 bias added (one rounding of the exact sum);
    * ``"chunks"``: the input channels split into ``chunks`` whose float32 reductions are exact,
      added in float64 with the bias, rounded once to float32;
    * ``"f64"``: one float64 reduction (devices other than the CPU, whose convolution algorithms
      need not be exact in float32, and reductions too large for a few float32 chunks).

    ``weight``: the centered integer weights in the dtype of the reduction, on its device;
    ``bias32`` / ``bias64``: the bias in float32 / float64 (``None`` without a bias).
    """

    weight: Tensor
    kind: str
    chunks: Optional[Tuple[Tuple[int, int], ...]]
    bias32: Optional[Tensor]
    bias64: Optional[Tensor]


def float32_chunks(bound: np.ndarray) -> Optional[list[Tuple[int, int]]]:
    """Split the reduction ``[0, C)`` into contiguous chunks whose worst-case partial sums
    (``bound[n, c]``: the bound contributed by input channel ``c`` to output ``n``) stay exact
    in float32; ``None`` if one channel alone exceeds 2^24."""
    n, c = bound.shape
    if c == 0:
        return [(0, 0)]
    chunks: list[Tuple[int, int]] = []
    running = np.zeros(n)
    start = 0
    for k in range(c):
        col = bound[:, k]
        if col.max() >= EXACT_FLOAT32:
            return None
        nxt = running + col
        if nxt.max() >= EXACT_FLOAT32:
            chunks.append((start, k))
            start, running = k, col.copy()
        else:
            running = nxt
    chunks.append((start, c))
    return chunks


def plan_reduction(wc: Tensor, bias: Optional[Tensor], x_bound: int, groups: int, device: torch.device,
                   exact: bool = False) -> ExactReduction:
    """The :class:`ExactReduction` of a layer.

    Args:
        wc: the centered integer weights ``w - z_w`` in PyTorch layout ``[N, C / groups, ...]``
            (any dtype that holds them exactly).
        bias: the integer bias ``[N]`` (or ``None``).
        x_bound: the largest ``|x - z_x|`` of the input.
        groups: the convolution's groups (1 for a linear layer); grouped reductions are not
            split into chunks.
        device: where the reduction runs.
        exact: the caller needs the exact accumulator (an int32 output), not ``float32(acc)``:
            only ``"f32"`` and ``"f64"`` are used.
    """
    n = wc.shape[0]
    absw = wc.detach().to(device="cpu", dtype=torch.float64).abs()
    bias_abs = (torch.zeros(n, dtype=torch.float64) if bias is None
                else bias.detach().to(device="cpu", dtype=torch.float64).abs().reshape(-1))
    if groups == 1:
        per_channel = (absw.reshape(n, wc.shape[1], -1).sum(2) * x_bound).numpy()
        per_output = per_channel.sum(1)
        chunks = float32_chunks(per_channel)
    else:
        per_output = (absw.reshape(n, -1).sum(1) * x_bound).numpy()
        chunks = [(0, wc.shape[1])] if per_output.max(initial=0.0) < EXACT_FLOAT32 else None
    kind = "f64"
    if device.type == "cpu" and chunks is not None and len(chunks) <= MAX_FLOAT32_CHUNKS:
        if len(chunks) == 1 and float((torch.from_numpy(per_output) + bias_abs).max()) < EXACT_FLOAT32:
            kind = "f32"
        elif len(chunks) == 1 and float(bias_abs.max()) <= EXACT_FLOAT32:
            kind = "f32+b"
        elif groups == 1:
            kind = "chunks"
    if exact and kind != "f32":
        kind = "f64"
    dtype = torch.float64 if kind == "f64" else torch.float32
    return ExactReduction(
        weight=wc.detach().to(device=device, dtype=dtype),
        kind=kind,
        chunks=tuple(chunks) if kind == "chunks" and chunks is not None else None,
        bias32=None if bias is None else bias.detach().reshape(-1).to(device=device, dtype=torch.float32),
        bias64=None if bias is None else bias.detach().reshape(-1).to(device=device, dtype=torch.float64),
    )


def channel_view(v: Tensor, y: Tensor, channel_dim: int) -> Tensor:
    """A ``[1|N]`` per-channel tensor shaped to broadcast against ``y`` along ``channel_dim``."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return v.view(shape)


@torch.no_grad()
def exact_accumulate(xc: Tensor, red: ExactReduction, reduce: Reduce, channel_dim: int) -> Tensor:
    """The accumulator ``acc = reduce(xc, wc) + bias`` of the centered integer input ``xc``
    (float32, its channels along ``channel_dim``): ``float32(acc)``, the exact value rounded once,
    for the float32 kinds, and the exact value in float64 for ``"f64"``."""
    if red.kind == "f64":
        acc = reduce(xc.to(torch.float64), red.weight, red.bias64)
        return torch.round(acc)  # exact; the rounding guards convolution algorithms that are not direct
    if red.kind == "f32":
        return reduce(xc, red.weight, red.bias32)
    if red.kind == "f32+b":
        acc = reduce(xc, red.weight, None)
        return acc if red.bias32 is None else acc.add_(channel_view(red.bias32, acc, channel_dim))
    assert red.chunks is not None
    acc64: Optional[Tensor] = None
    for a, b in red.chunks:
        part = reduce(xc.narrow(channel_dim, a, b - a), red.weight.narrow(1, a, b - a), None)
        acc64 = part.to(torch.float64) if acc64 is None else acc64.add_(part)
    assert acc64 is not None
    if red.bias64 is not None:
        acc64.add_(channel_view(red.bias64, acc64, channel_dim))
    return acc64.to(torch.float32)


@torch.no_grad()
def exact_add(ac: Tensor, bc: Tensor, ia: int, ib: int, bound: int) -> Tensor:
    """``float32(ac ia + bc ib)`` of centered integer tensors (float32), where ``bound`` bounds
    ``|ac ia + bc ib|``: in float32 below 2^24 (exact), else in float64 rounded once. ``ac`` is
    overwritten."""
    if bound >= EXACT_FLOAT32:
        return ac.to(torch.float64).mul_(ia).add_(bc.to(torch.float64), alpha=ib).to(torch.float32)
    return ac.mul_(ia).add_(bc, alpha=ib)


@torch.no_grad()
def exact_product(ac: Tensor, bc: Tensor, bound: int) -> Tensor:
    """``float32(ac bc)`` of centered integer tensors (float32, broadcasting), where ``bound``
    bounds ``|ac bc|``: in float32 below 2^24 (exact), else in float64 rounded once."""
    if bound < EXACT_FLOAT32:
        return ac * bc
    return (ac.to(torch.float64) * bc.to(torch.float64)).to(torch.float32)


@torch.no_grad()
def exact_sum(xc: Tensor, dims: Tuple[int, ...], bound: int) -> Tensor:
    """``float32(sum over dims of xc)`` of a centered integer tensor (float32), where ``bound``
    bounds the sum's magnitude: in float32 below 2^24 (every partial sum exact), else in float64."""
    if bound < EXACT_FLOAT32:
        return xc.sum(dim=dims)
    return xc.to(torch.float64).sum(dim=dims).to(torch.float32)


@torch.no_grad()
def requantize_centered(acc: Tensor, multiplier: Union[Tensor, float], lo: Union[Tensor, float],
                        hi: Union[Tensor, float]) -> Tensor:
    """The epilogue relative to the output zero point, in place on a float32 accumulator:
    ``clamp(rne(acc * m), lo, hi)`` = ``q - z_y`` for the ``q`` of :func:`requantize`, with
    ``lo``/``hi`` the bounds minus ``z_y`` (numbers, or float32 tensors broadcasting against
    ``acc``) and ``m`` a float32 tensor or a number (taken as its float32 value). Rounding and
    clamping to integer bounds commute, so this equals clamping first as the kernels do."""
    m = multiplier if isinstance(multiplier, Tensor) else torch.tensor(float(multiplier), dtype=torch.float32,
                                                                          device=acc.device)
    y = acc.mul_(m).round_()
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        lo_t = lo if isinstance(lo, Tensor) else torch.tensor(float(lo), device=acc.device)
        hi_t = hi if isinstance(hi, Tensor) else torch.tensor(float(hi), device=acc.device)
        torch.maximum(y, lo_t, out=y)  # two in-place passes: faster on the CPU than a tensor-bound clamp
        return torch.minimum(y, hi_t, out=y)
    return y.clamp_(float(lo), float(hi))


# =============================================================================================
# The contract
# =============================================================================================
def requantize(acc: Tensor, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor) -> Tensor:
    """``clamp(rne(float32(acc) * m) + z_y, lo, hi)`` -> int8; per-channel params broadcast on the last dim.

    ``acc``: the int32 accumulator, or ``float32(acc)`` as :func:`exact_accumulate` returns it.
    Computed by :func:`requantize_centered`.
    """
    y = acc.to(torch.float32)
    if y is acc:
        y = y.clone()
    rel_lo = (lo.to(torch.int32) - z_y).to(torch.float32)
    rel_hi = (hi.to(torch.int32) - z_y).to(torch.float32)
    y = requantize_centered(y, multiplier.to(torch.float32), rel_lo, rel_hi)
    return (y.to(torch.int32) + z_y).to(torch.int8)


def _finish(acc: Tensor, multiplier, z_y, lo, hi, out_int32: bool) -> Tensor:
    """From the result of :func:`exact_accumulate` (bias included; channels last): the int32
    accumulator (wrapped to int32 like the kernels) if ``out_int32``, else the int8 output."""
    if out_int32 or acc.dtype == torch.float64:
        acc = acc.to(torch.int64).to(torch.int32)  # two's complement wrap-around, as the kernels
    if out_int32:
        return acc
    return requantize(acc, multiplier, z_y, lo, hi)


def _centered(t: Tensor, zp: Union[int, Tensor, None], shape: Sequence[int],
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``t - zp`` in ``dtype``, with a per-channel ``zp`` reshaped to ``shape``. Exact in float32
    for activations (zero points in [-128, 127]); weights, whose int32 zero points may be large,
    are centered in float64 (:func:`plan_reduction` narrows them to float32 only when exact)."""
    out = t.to(dtype)
    if zp is None:
        return out
    if isinstance(zp, Tensor):
        return out - zp.to(dtype).reshape(shape)
    return out - float(zp)


def _x_bound(z_x: int) -> int:
    """The largest ``|x - z_x|`` of an int8 input."""
    return max(abs(INT8_MIN - z_x), abs(INT8_MAX - z_x))


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
    wc = _centered(w, w_zp, (-1, 1), torch.float64)
    red = plan_reduction(wc, _raw_bias(w, bias, z_x, w_zp, bias_folded), _x_bound(z_x), 1, x.device, out_int32)
    acc = exact_accumulate(_centered(x, z_x, ()), red, F.linear, 1)
    return _finish(acc, m, z_y, lo, hi, out_int32)


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
    # contiguous NCHW (channels-last float64 convolution is very slow on the CPU)
    xc = F.pad(xc, (pad[2], pad[3], pad[0], pad[1])).contiguous()
    wc = _centered(w, w_zp, (-1, 1, 1, 1), torch.float64).permute(0, 3, 1, 2).contiguous()
    red = plan_reduction(wc, _raw_bias(w, bias, z_x, w_zp, bias_folded), _x_bound(z_x), 1, x.device, out_int32)
    acc = exact_accumulate(xc, red, lambda a, k, b: F.conv2d(a, k, b, stride=stride), 1)
    return _finish(acc.permute(0, 2, 3, 1), m, z_y, lo, hi, out_int32).contiguous()


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
    xc = F.pad(xc, (pad[2], pad[3], pad[0], pad[1])).contiguous()
    wc = _centered(w, w_zp, (1, 1, -1), torch.float64).permute(2, 0, 1).unsqueeze(1).contiguous()
    red = plan_reduction(wc, bias, _x_bound(z_x), c, x.device, out_int32)
    acc = exact_accumulate(xc, red, lambda a, k, b: F.conv2d(a, k, b, stride=stride, groups=c), 1)
    return _finish(acc.permute(0, 2, 3, 1), m, z_y, lo, hi, out_int32).contiguous()


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
    acc = exact_add(_centered(a, z_a, ()), _centered(b, z_b, ()), ia, ib, _x_bound(z_a) * abs(ia) + _x_bound(z_b) * abs(ib))
    dev = a.device
    return requantize(
        acc,
        torch.tensor([m], dtype=torch.float32, device=dev),
        z_y,
        torch.tensor([lo], dtype=torch.int32, device=dev),
        torch.tensor([hi], dtype=torch.int32, device=dev),
    )


@dataclass(frozen=True)
class ResidualAdd:
    """A residual add fused into the epilogue of the layer that produces one of its operands.

    The layer first requantizes its accumulator to its own int8 output ``a`` (zero point ``z_a``,
    the layer's ``z_y``), exactly as without fusion; the epilogue then loads the other operand
    ``r`` (zero point ``z_b``, same shape as the layer's output) and applies the add's contract
    (:func:`int8_add`): ``clamp(rne(float32((a - z_a) ia + (r - z_b) ib) * m) + z_y, lo, hi)``.
    The fused result equals the separate layer and add bit for bit; only the layer's int8 output
    is never written to memory. The integer sum is symmetric, so the layer's output may be either
    operand of the original add: the caller passes that operand's zero point and multiplier as
    ``z_a``/``ia``.
    """

    z_a: int
    z_b: int
    ia: int
    ib: int
    multiplier: float
    z_y: int
    lo: int = INT8_MIN
    hi: int = INT8_MAX

    def swapped(self) -> "ResidualAdd":
        """The same add with the roles of its two operands exchanged."""
        return ResidualAdd(self.z_b, self.z_a, self.ib, self.ia, self.multiplier, self.z_y, self.lo, self.hi)


def residual_add(a: Tensor, r: Tensor, spec: ResidualAdd) -> Tensor:
    """Reference of a fused residual add: :func:`int8_add` of the layer's int8 output ``a`` and
    the residual ``r`` with ``spec``'s parameters (the contract the fused epilogues follow)."""
    return int8_add(a, r, spec.z_a, spec.z_b, spec.ia, spec.ib, spec.multiplier, spec.z_y, spec.lo, spec.hi)


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
    acc = exact_sum(_centered(x, z_x, ()), (1, 2), x.shape[1] * x.shape[2] * _x_bound(z_x))
    return requantize(acc, m, z_y, lo, hi)


def check_quantize_args(x: Tensor, scale: float, zero_point: int, lo: int, hi: int, layout: str):
    """Validate quantize inputs; returns ``(inv_scale float32 value, z, lo, hi)``."""
    if not isinstance(x, Tensor) or x.dtype != torch.float32:
        raise ValueError(f"x must be a float32 tensor, got {_describe(x) if isinstance(x, Tensor) else type(x)}")
    if layout not in ("nchw", "nhwc", "flat"):
        raise ValueError(f"layout must be 'nchw', 'nhwc' or 'flat', got {layout!r}")
    if layout != "flat" and x.dim() != 4:
        raise ValueError(f"layout {layout!r} needs a 4-D input, got shape {tuple(x.shape)}")
    return check_quantizer(scale, zero_point, lo, hi)


def check_quantizer(scale: float, zero_point: int, lo: int, hi: int) -> Tuple[float, int, int, int]:
    """Validate an int8 quantizer; returns ``(inv_scale float32 value, z, lo, hi)``."""
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


#: Inputs with fewer channels than this (an RGB stem) are read through an im2col matrix: the
#: convolution kernel's flat-K loop (``kernels.conv``) gathers them that way, and the network's
#: first convolution fuses the input quantization into one (``dfq_gpu.quant.plan.stem_fusions``).
IM2COL_MAX_CHANNELS = 16

#: Rows of the stem's im2col matrix are padded to a multiple of this many bytes (aligned rows,
#: whole ``BLOCK_K`` steps of the GEMM that reads them).
IM2COL_ROW_ALIGN = 32


def im2col_width(k: int) -> int:
    """The row length of the im2col matrix of a reduction over ``k = KH*KW*C``: ``k`` rounded up to
    a multiple of :data:`IM2COL_ROW_ALIGN`."""
    return -(-int(k) // IM2COL_ROW_ALIGN) * IM2COL_ROW_ALIGN


def check_quantize_im2col_args(x: Tensor, scale: float, zero_point: int, lo: int, hi: int,
                               kernel: Tuple[int, int], stride: Union[int, Sequence[int]], padding: Padding):
    """Validate :func:`quantize_im2col`'s inputs; returns ``(inv, z, lo, hi, (KH, KW), stride, pad, (OH, OW))``."""
    inv, z, lo, hi = check_quantize_args(x, scale, zero_point, lo, hi, "nchw")
    kh, kw = (int(k) for k in kernel)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel must be two positive ints, got {tuple(kernel)}")
    stride, pad = normalize_stride(stride), normalize_padding(padding)
    oh, ow = conv_output_size(x.shape[2], x.shape[3], kh, kw, stride, pad)
    return inv, z, lo, hi, (kh, kw), stride, pad, (oh, ow)


def quantize_im2col(
    x: Tensor,
    scale: float,
    zero_point: int,
    lo: int,
    hi: int,
    kernel: Tuple[int, int],
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
) -> Tensor:
    """The float NCHW network input quantized (:func:`quantize`) and unfolded for a convolution:
    int8 ``[B*OH*OW, im2col_width(KH*KW*C)]``, row ``(b, oh, ow)``, column ``(kh*KW + kw)*C + c``
    (the order of a ``[N, KH, KW, C]`` weight flattened to ``[N, KH*KW*C]``).

    A tap outside the input holds the zero point (real zero, as :func:`int8_conv2d` pads); the
    columns past ``KH*KW*C`` hold 0. With the weight padded by zero columns to the same width, the
    GEMM of this matrix (:func:`int8_gemm`, the convolution's folded bias unchanged: the padded
    columns add nothing to ``sum x w``, ``sum x`` nor ``sum w``) is the convolution of the
    quantized input, bit for bit.
    """
    inv, z, lo, hi, (kh, kw), (sh, sw), (t, b, left, r), (oh, ow) = check_quantize_im2col_args(
        x, scale, zero_point, lo, hi, kernel, stride, padding)
    q = quantize(x, scale, zero_point, lo, hi, layout="nchw")  # NHWC
    bsz, c = q.shape[0], q.shape[3]
    q = F.pad(q, (0, 0, left, r, t, b), value=z)
    cols = q.unfold(1, kh, sh).unfold(2, kw, sw)  # [B, OH, OW, C, KH, KW]
    cols = cols[:, :oh, :ow].permute(0, 1, 2, 4, 5, 3).reshape(bsz * oh * ow, kh * kw * c)
    k = kh * kw * c
    return F.pad(cols, (0, im2col_width(k) - k), value=0).contiguous()


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


# =============================================================================================
# Table lookup, gating multiply, windowed average pool, general max pool, nearest upsampling
# =============================================================================================
#: Entries of an int8 lookup table: one per int8 value, ``table[q + 128]``.
LUT_SIZE = 256


def _check_is_tensor(t: object, name: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_int_arg(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool_arg(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_scale(value: object, name: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(float(value))):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    if float(value) <= 0:
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return float(value)


def check_lut_args(x: Tensor, table: Tensor, out: Optional[Tensor] = None, channel_offset: int = 0) -> int:
    """Validate table-lookup inputs; returns ``channel_offset`` as an int.

    ``x``: int8, contiguous, any rank; ``table``: int8 ``[256]``, or ``[C, 256]`` with ``C`` the
    size of ``x``'s last dimension (one table per channel of an NHWC tensor), contiguous on
    ``x``'s device. With ``out``: ``x`` is NHWC ``[B, H, W, C]``, ``out`` int8 NHWC ``[B, H, W, C_out]`` on the
    same device and ``0 <= channel_offset``, ``channel_offset + C <= C_out``.
    """
    _check_is_tensor(x, "x")
    _check_is_tensor(table, "table")
    check_tensor(x, "x", torch.int8, x.dim())
    if table.dim() == 2:
        check_tensor(table, "table", torch.int8, 2, f"[C, {LUT_SIZE}]")
        if x.dim() == 0 or table.shape != (x.shape[-1], LUT_SIZE):
            raise ValueError(f"a per-channel table must be [C, {LUT_SIZE}] with C = x.shape[-1] = "
                             f"{x.shape[-1] if x.dim() else None}, got {tuple(table.shape)}")
    else:
        check_tensor(table, "table", torch.int8, 1, f"[{LUT_SIZE}] or [C, {LUT_SIZE}]")
        if table.numel() != LUT_SIZE:
            raise ValueError(f"table must have {LUT_SIZE} entries (table[q + 128] for q in [-128, 127]), "
                             f"got {table.numel()}")
    _check_device(table, x.device, "table")
    offset = _check_int_arg(channel_offset, "channel_offset", 0)
    if out is None:
        if offset != 0:
            raise ValueError(f"channel_offset={offset} needs an out tensor")
        return 0
    _check_is_tensor(out, "out")
    check_tensor(out, "out", torch.int8, 4, "NHWC [B, H, W, C_out]")
    if x.dim() != 4:
        raise ValueError(f"with out, x must be NHWC [B, H, W, C], got {_describe(x)}")
    _check_device(out, x.device, "out")
    if tuple(out.shape[:3]) != tuple(x.shape[:3]):
        raise ValueError(
            f"out [B, H, W, C_out] = {tuple(out.shape)} must match x [B, H, W, C] = {tuple(x.shape)} in B, H, W"
        )
    if offset + x.shape[3] > out.shape[3]:
        raise ValueError(
            f"channels [{offset}, {offset + x.shape[3]}) of x do not fit out, which has C_out={out.shape[3]}"
        )
    return offset


def int8_lut(x: Tensor, table: Tensor, out: Optional[Tensor] = None, channel_offset: int = 0) -> Tensor:
    """Reference table lookup: ``y = table[x + 128]`` elementwise (int8, any rank, same shape);
    with a per-channel table ``[C, 256]``, ``y[..., c] = table[c, x[..., c] + 128]``.

    With ``out`` (int8 NHWC ``[B, H, W, C_out]``, ``x`` ``[B, H, W, C]``) the result is written into
    channels ``[channel_offset, channel_offset + C)`` of ``out`` in place and ``out`` is returned
    (a channel concatenation: each input mapped by its own table into its slice). Build tables
    with :func:`lut_from_function`.
    """
    offset = check_lut_args(x, table, out, channel_offset)
    idx = x.to(torch.int64) + 128
    if table.dim() == 2:  # per channel: row c of the table for the last dimension's index c
        idx = idx + torch.arange(x.shape[-1], device=x.device, dtype=torch.int64) * LUT_SIZE
    y = table.reshape(-1)[idx]
    if out is None:
        return y
    out[..., offset : offset + x.shape[3]] = y
    return out


def lut_from_function(
    fn,
    x_scale: float,
    x_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """The int8 ``[256]`` table of ``fn`` between two quantizations, as a float simulation computes it.

    For every ``q`` in [-128, 127]: ``v = float32(q - z_x) * float32(s_x)`` (:func:`dequantize`),
    ``f = fn(v)`` (``fn`` maps a float32 tensor of 256 values to a tensor of 256 values, converted
    to float32), then :func:`quantize`'s ``clamp(rne(f * (1.0f / float32(s_y))) + z_y, lo, hi)``
    with the float32 reciprocal of :func:`float32_reciprocal`. Entry ``q + 128`` is the output for
    input ``q``; pass the table to :func:`int8_lut`. ``fn`` must not return NaN (infinities
    saturate to the bounds). With ``fn`` the identity this is a requantization from ``(s_x, z_x)``
    to ``(s_y, z_y)``.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    z_x = check_int8_zero_point(x_zero_point, "x_zero_point")
    z_y = check_int8_zero_point(y_zero_point, "y_zero_point")
    lo, hi = _check_scalar_bounds(lo, hi)
    inv = float32_reciprocal(s_y)
    if not math.isfinite(inv) or inv == 0.0:
        raise ValueError(f"1/y_scale for y_scale={y_scale} is not a finite nonzero float32")
    q = torch.arange(INT8_MIN, INT8_MAX + 1, dtype=torch.int32, device=device)
    v = (q - z_x).to(torch.float32) * float32_value(s_x)
    f = fn(v)
    if not isinstance(f, Tensor) or f.shape != v.shape or not f.is_floating_point():
        got = _describe(f) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"fn must return a floating-point tensor of shape ({LUT_SIZE},), got {got}")
    f = f.to(device=v.device, dtype=torch.float32)
    if bool(torch.isnan(f).any()):
        raise ValueError("fn returned NaN for some input value; the table needs a number for every int8 input")
    y = f * inv
    y = torch.clamp(y, min=float(lo - z_y - 1), max=float(hi - z_y + 1))
    t = torch.round(y).to(torch.int32) + z_y
    return torch.clamp(t, lo, hi).to(torch.int8)


def check_mul_args(x: Tensor, g: Tensor, z_x, z_g, multiplier, z_y, lo, hi):
    """Validate gating-multiply inputs; returns ``(z_x, z_g, m, z_y, lo, hi, per_channel)``.

    ``x`` int8 NHWC ``[B, H, W, C]``; ``g`` int8 ``[B, C]`` (``per_channel``: one gate per image and
    channel) or of ``x``'s shape (elementwise), contiguous, on ``x``'s device.
    """
    _check_is_tensor(x, "x")
    _check_is_tensor(g, "g")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(g, "g", torch.int8, g.dim())
    B, _, _, C = x.shape
    if tuple(g.shape) == tuple(x.shape):
        per_channel = False
    elif tuple(g.shape) == (B, C):
        per_channel = True
    else:
        raise ValueError(
            f"g must be [B, C] = {(B, C)} (one gate per image and channel) or have x's shape "
            f"{tuple(x.shape)}, got {tuple(g.shape)}"
        )
    _check_device(g, x.device, "g")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_g = check_int8_zero_point(z_g, "z_g")
    z_y = check_int8_zero_point(z_y, "z_y")
    lo, hi = _check_scalar_bounds(lo, hi)
    return z_x, z_g, _check_scalar_multiplier(multiplier), z_y, lo, hi, per_channel


def _scalar_epilogue(m: float, lo: int, hi: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    return (
        torch.tensor([m], dtype=torch.float32, device=device),
        torch.tensor([lo], dtype=torch.int32, device=device),
        torch.tensor([hi], dtype=torch.int32, device=device),
    )


def int8_mul(
    x: Tensor,
    g: Tensor,
    z_x: int,
    z_g: int,
    multiplier: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference gating multiply (squeeze-excitation): x NHWC ``[B,H,W,C]`` times ``g`` -> NHWC int8.

    ``g`` is ``[B, C]`` (broadcast over H and W) or of ``x``'s shape. ``acc = (x - z_x)(g - z_g)``
    exactly in int32 (``|acc| <= 255^2``), then :func:`requantize` with the per-tensor
    ``multiplier`` (``s_x s_g / s_y``, used as its float32 value) and bounds.
    """
    z_x, z_g, m, z_y, lo, hi, per_channel = check_mul_args(x, g, z_x, z_g, multiplier, z_y, lo, hi)
    gc = _centered(g, z_g, ())
    if per_channel:
        gc = gc[:, None, None, :]
    acc = exact_product(_centered(x, z_x, ()), gc, _x_bound(z_x) * _x_bound(z_g))
    m_t, lo_t, hi_t = _scalar_epilogue(m, lo, hi, x.device)
    return requantize(acc, m_t, z_y, lo_t, hi_t)


def pool_output_size(
    n: int, k: int, pad_before: int, pad_after: int, stride: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a pooling window along one axis, as PyTorch computes it.

    ``(n + pad_before + pad_after - dilation (k - 1) - 1 [+ stride - 1 if ceil_mode]) // stride + 1``;
    in ceil mode the last window is dropped when it would start past the input and the leading
    padding (``(out - 1) stride >= n + pad_before``). Raises ValueError when no window fits.
    """
    span = dilation * (k - 1) + 1
    num = n + pad_before + pad_after - span
    if num < 0:
        raise ValueError(
            f"window {k} (dilation {dilation}) with padding ({pad_before}, {pad_after}) does not fit an input of {n}"
        )
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + pad_before:
        out -= 1
    return out


def _pool_window_args(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode):
    """Shared window validation of the max and average pools: ``(ks, stride, pad, dil, ceil, oh, ow)``."""
    _check_is_tensor(x, "x")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    ks = normalize_stride(kernel_size)
    stride = ks if stride is None else normalize_stride(stride)
    pad = normalize_padding(padding)
    dil = normalize_stride(dilation)
    ceil_mode = _check_bool_arg(ceil_mode, "ceil_mode")
    H, W = x.shape[1], x.shape[2]
    oh = pool_output_size(H, ks[0], pad[0], pad[1], stride[0], dil[0], ceil_mode)
    ow = pool_output_size(W, ks[1], pad[2], pad[3], stride[1], dil[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"window {ks} with padding {pad} does not fit an input of {H}x{W} (output {oh}x{ow})")
    if H * W * x.shape[3] >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{x.shape[3]} int8 values exceeds the kernel's 2^31 index range")
    return ks, stride, pad, dil, ceil_mode, oh, ow


def avgpool2d_multipliers(x_scale: float, y_scale: float, n: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """float32 ``[n + 1]``: entry ``d`` (1 <= d <= n) is ``float32((s_x / s_y) / d)`` computed in
    float64 (the multiplier of a window sum with divisor ``d``); entry 0 is unused (0)."""
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    vals = [0.0] + [float32_value((s_x / s_y) / d) for d in range(1, n + 1)]
    return torch.tensor(vals, dtype=torch.float32, device=device)


def check_avgpool2d_args(
    x: Tensor, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
):
    """Validate windowed-average-pool inputs.

    Returns ``(ks, stride, pad, ceil_mode, count_include_pad, oh, ow, z_x, s_x, s_y, z_y, lo, hi)``.
    ``stride=None`` means ``kernel_size`` (as in PyTorch); ``padding`` is ``p``, ``(ph, pw)`` or
    ``(top, bottom, left, right)``, each side at most half the window (PyTorch's condition).
    """
    ks, stride, pad, _, ceil_mode, oh, ow = _pool_window_args(x, kernel_size, stride, padding, 1, ceil_mode)
    if pad[0] > ks[0] // 2 or pad[1] > ks[0] // 2 or pad[2] > ks[1] // 2 or pad[3] > ks[1] // 2:
        raise ValueError(f"padding {pad} must be at most half the window {ks} on each side")
    count_include_pad = _check_bool_arg(count_include_pad, "count_include_pad")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_y = check_int8_zero_point(z_y, "z_y")
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    lo, hi = _check_scalar_bounds(lo, hi)
    return ks, stride, pad, ceil_mode, count_include_pad, oh, ow, z_x, s_x, s_y, z_y, lo, hi


def avgpool2d_divisors(
    n: int, out: int, k: int, stride: int, pad_before: int, pad_after: int, count_include_pad: bool,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:  # fmt: skip
    """int64 ``[out]``: the divisor factor of each window along one axis, as ``F.avg_pool2d`` counts.

    Window ``o`` starts at ``s = o stride - pad_before`` and ends at ``e = min(s + k, n + pad_after)``;
    it counts ``e - s`` taps with ``count_include_pad``, else ``min(e, n) - max(s, 0)``. The divisor of
    an output position is the product of its two axes' factors.
    """
    start = torch.arange(out, dtype=torch.int64, device=device) * stride - pad_before
    end = torch.clamp(start + k, max=n + pad_after)
    if count_include_pad:
        return end - start
    return torch.clamp(end, max=n) - torch.clamp(start, min=0)


def int8_avgpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: Padding,
    ceil_mode: bool,
    count_include_pad: bool,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference windowed average pool: x NHWC ``[B,H,W,C]`` -> NHWC ``[B,OH,OW,C]`` (``F.avg_pool2d``'s shape).

    ``acc = sum over the window's in-bounds taps of (x - z_x)`` (exact int32; padded taps add 0),
    ``d`` = the window's divisor as ``F.avg_pool2d`` counts it (``count_include_pad``, ``ceil_mode``,
    :func:`avgpool2d_divisors`), ``y = clamp(rne(float32(acc) * m_d) + z_y, lo, hi)`` with
    ``m_d = float32((s_x / s_y) / d)`` computed in float64 (:func:`avgpool2d_multipliers`).
    """
    ks, st, pad, _, cip, oh, ow, z_x, s_x, s_y, z_y, lo, hi = check_avgpool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
    )
    xc = _centered(x, z_x, ()).permute(0, 3, 1, 2).contiguous()
    y = exact_window_average(xc, ks, st, pad, (oh, ow), cip, s_x, s_y, float(int(lo) - z_y), float(int(hi) - z_y),
                             _x_bound(z_x))
    return (y.permute(0, 2, 3, 1).to(torch.int32) + z_y).to(torch.int8).contiguous()


@torch.no_grad()
def exact_window_average(
    xc: Tensor,
    ks: Tuple[int, int],
    st: Tuple[int, int],
    pad: Tuple[int, int, int, int],
    out_hw: Tuple[int, int],
    count_include_pad: bool,
    x_scale: float,
    y_scale: float,
    lo: float,
    hi: float,
    x_bound: int,
) -> Tensor:
    """The windowed average pool of :func:`int8_avgpool2d` on centered integers ``xc`` (float32
    NCHW), relative to the output zero point: ``clamp(rne(float32(acc) * m_d), lo, hi)`` (float32
    NCHW), ``acc`` the exact window sum (padded taps add 0), ``m_d`` by the window's divisor. Shared
    by the reference and the simulation's windowed average pool."""
    oh, ow = out_hw
    H, W = xc.shape[2], xc.shape[3]
    extra_h = max(0, (oh - 1) * st[0] + ks[0] - (H + pad[0] + pad[1]))
    extra_w = max(0, (ow - 1) * st[1] + ks[1] - (W + pad[2] + pad[3]))
    exact32 = ks[0] * ks[1] * x_bound < EXACT_FLOAT32
    xp = F.pad(xc if exact32 else xc.to(torch.float64), (pad[2], pad[3] + extra_w, pad[0], pad[1] + extra_h))
    acc = F.avg_pool2d(xp, ks, st, divisor_override=1)[:, :, :oh, :ow].to(torch.float32)  # window sums, exact
    dev = xc.device
    dh = avgpool2d_divisors(H, oh, ks[0], st[0], pad[0], pad[1], count_include_pad, dev)
    dw = avgpool2d_divisors(W, ow, ks[1], st[1], pad[2], pad[3], count_include_pad, dev)
    table = avgpool2d_multipliers(x_scale, y_scale, ks[0] * ks[1], dev)
    m = table[dh[:, None] * dw[None, :]].reshape(1, 1, oh, ow)
    return requantize_centered(acc.contiguous(), m, lo, hi)


def check_maxpool2d_args(x: Tensor, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Validate max-pool inputs; returns ``(ks, stride, pad, dilation, ceil_mode, oh, ow)``.

    ``stride=None`` means ``kernel_size``; ``padding`` ``p``, ``(ph, pw)`` or ``(top, bottom, left,
    right)``, each side smaller than the window; the output size is ``F.max_pool2d``'s
    (:func:`pool_output_size`).
    """
    ks, st, pad, dil, ceil_mode, oh, ow = _pool_window_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    if pad[0] >= ks[0] or pad[1] >= ks[0] or pad[2] >= ks[1] or pad[3] >= ks[1]:
        raise ValueError(f"padding {pad} must be smaller than the window {ks} on each side")
    return ks, st, pad, dil, ceil_mode, oh, ow


def int8_maxpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Reference max pool on NHWC int8 -> NHWC ``[B,OH,OW,C]`` (``F.max_pool2d``'s output shape).

    Taps outside the input (padding, and windows running past the border in ``ceil_mode``) are
    ignored: they count as -128, below or equal to every real value. ``dilation`` spaces the taps.
    Scale and zero point pass through unchanged (max commutes with the monotone quantizer).
    """
    ks, st, pad, dil, _, oh, ow = check_maxpool2d_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    H, W = x.shape[1], x.shape[2]
    extra_h = max(0, (oh - 1) * st[0] + dil[0] * (ks[0] - 1) + 1 - (H + pad[0] + pad[1]))
    extra_w = max(0, (ow - 1) * st[1] + dil[1] * (ks[1] - 1) + 1 - (W + pad[2] + pad[3]))
    xf = x.to(torch.float32).permute(0, 3, 1, 2)
    xf = F.pad(xf, (pad[2], pad[3] + extra_w, pad[0], pad[1] + extra_h), value=float(INT8_MIN))
    y = F.max_pool2d(xf, ks, st, dilation=dil)[:, :, :oh, :ow]
    return y.permute(0, 2, 3, 1).to(torch.int8).contiguous()


def check_upsample_args(x: Tensor, size=None, scale_factor=None):
    """Validate nearest-upsampling inputs; returns ``(oh, ow, (mode_h, scale_h), (mode_w, scale_w))``.

    Exactly one of ``size`` (``n`` or ``(oh, ow)``) and ``scale_factor`` (``s`` or ``(sh, sw)``,
    positive) is given. The output size is ``F.interpolate``'s: ``size``, or
    ``floor(float64(n) * s)``. Each axis has an index rule (:func:`upsample_nearest_indices`).
    """
    _check_is_tensor(x, "x")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    H, W = x.shape[1], x.shape[2]
    if H < 1 or W < 1:
        raise ValueError(f"x must have H, W >= 1, got {_describe(x)}")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    if size is not None:
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (int(size), int(size))
        size = tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in size):
            raise ValueError(f"size must be a positive int or a pair of positive ints, got {size}")
        out = (int(size[0]), int(size[1]))
        scales: Tuple[Optional[float], Optional[float]] = (None, None)
    else:
        if isinstance(scale_factor, numbers.Real) and not isinstance(scale_factor, bool):
            scale_factor = (scale_factor, scale_factor)
        sf = tuple(scale_factor)
        if len(sf) != 2:
            raise ValueError(f"scale_factor must be a positive float or a pair of them, got {scale_factor}")
        sf = tuple(_check_scale(v, "scale_factor") for v in sf)
        out = (math.floor(float(H) * sf[0]), math.floor(float(W) * sf[1]))
        if min(out) < 1:
            raise ValueError(f"scale_factor {sf} gives an empty output {out} for an input of {H}x{W}")
        scales = sf  # type: ignore[assignment]
    rule_h = _nearest_rule(H, out[0], scales[0])
    rule_w = _nearest_rule(W, out[1], scales[1])
    if out[0] * out[1] * x.shape[3] >= 2**31 or H * W * x.shape[3] >= 2**31:
        raise ValueError(f"an image of {out[0]}x{out[1]}x{x.shape[3]} values exceeds the kernel's 2^31 index range")
    return out[0], out[1], rule_h, rule_w


def _nearest_rule(n_in: int, n_out: int, scale: Optional[float]) -> Tuple[int, float]:
    """``(mode, s)``: mode 0 copies (``n_out == n_in``), 1 halves (``n_out == 2 n_in``), 2 uses the
    float32 factor ``s`` (``float32(1 / scale)``, else ``float32(n_in) / float32(n_out)``)."""
    if n_out == n_in:
        return 0, 1.0
    if n_out == 2 * n_in:
        return 1, 0.5
    if scale is not None:
        return 2, float32_value(1.0 / scale)
    return 2, float(np.float32(n_in) / np.float32(n_out))


def upsample_nearest_indices(
    n_in: int, n_out: int, rule: Tuple[int, float], device: Union[str, torch.device] = "cpu"
) -> Tensor:
    """int64 ``[n_out]`` source indices of nearest upsampling along one axis (PyTorch's CPU rule):
    ``o`` if ``n_out == n_in``, ``o // 2`` if ``n_out == 2 n_in``, else
    ``min(floor(float32(o) * s), n_in - 1)`` with one float32 multiply."""
    o = torch.arange(n_out, dtype=torch.int64, device=device)
    mode, s = rule
    if mode == 0:
        return o
    if mode == 1:
        return o // 2
    idx = torch.floor(o.to(torch.float32) * torch.tensor(s, dtype=torch.float32, device=device)).to(torch.int64)
    return torch.clamp(idx, max=n_in - 1)


def int8_upsample_nearest(
    x: Tensor,
    size: Union[int, Sequence[int], None] = None,
    scale_factor: Union[float, Sequence[float], None] = None,
) -> Tensor:
    """Reference nearest-neighbour upsampling of NHWC int8 -> NHWC ``[B, OH, OW, C]``, values unchanged.

    Output size and source indices are those of ``F.interpolate(mode="nearest")`` on the CPU
    (:func:`check_upsample_args`, :func:`upsample_nearest_indices`): ``size`` gives the factor
    ``float32(n_in) / float32(n_out)``, ``scale_factor`` the factor ``float32(1 / scale_factor)``;
    outputs as large as the input, or twice as large, copy or halve the index exactly.
    """
    oh, ow, rule_h, rule_w = check_upsample_args(x, size, scale_factor)
    ih = upsample_nearest_indices(x.shape[1], oh, rule_h, x.device)
    iw = upsample_nearest_indices(x.shape[2], ow, rule_w, x.device)
    return x[:, ih][:, :, iw].contiguous()


#: Fraction bits of the bilinear interpolation weights: ``w0 + w1 = 2^8`` per axis, so the
#: accumulator ``sum w_h w_w (x - z_x)`` stays within ``255 * 2^16 < 2^24`` and ``float32(acc)`` is exact.
BILINEAR_FRAC_BITS = 8


def bilinear_taps(n_in: int, n_out: int, align_corners: bool, scale: Optional[float] = None,
                  device: Union[str, torch.device] = "cpu") -> Tuple[Tensor, Tensor, Tensor]:
    """The taps of bilinear resampling along one axis: int64 ``[n_out]`` source indices
    ``i0 <= i1`` and the integer weight ``w1`` of ``i1`` (``w0 = 2^F - w1``, ``F =``
    :data:`BILINEAR_FRAC_BITS`).

    The source coordinate is ``F.interpolate(mode="bilinear")``'s, in float64:
    ``align_corners``: ``o (n_in - 1) / (n_out - 1)`` (0 when ``n_out == 1``); otherwise
    ``max((o + 0.5) r - 0.5, 0)`` with ``r = 1 / scale`` when a scale factor was given, else
    ``n_in / n_out``. ``i0 = min(floor(src), n_in - 1)``, ``i1 = min(i0 + 1, n_in - 1)``,
    ``w1 = rne((src - i0) 2^F)``.
    """
    i0, i1, w1 = _bilinear_taps_cpu(int(n_in), int(n_out), bool(align_corners), None if scale is None else float(scale))
    return i0.to(device), i1.to(device), w1.to(device)


@functools.lru_cache(maxsize=256)
def _bilinear_taps_cpu(n_in: int, n_out: int, align_corners: bool, scale: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`bilinear_taps` on the CPU, computed once per axis size (callers do not modify them)."""
    o = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        r = 1.0 / float(scale) if scale is not None else n_in / n_out
        src = ((o + 0.5) * r - 0.5).clamp_(min=0.0)
    i0 = src.floor().clamp_(max=n_in - 1)
    w1 = torch.round((src - i0) * (1 << BILINEAR_FRAC_BITS)).clamp_(0, 1 << BILINEAR_FRAC_BITS).to(torch.int64)
    i0 = i0.to(torch.int64)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, w1


def bilinear_accumulate(xc: Tensor, dims: Tuple[int, int], taps_h: Tuple[Tensor, Tensor, Tensor],
                        taps_w: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """The exact accumulator of bilinear resampling: ``sum_{a, b} wh_a ww_b xc[.., i_a, .., j_b, ..]``
    over the two taps of each axis (:func:`bilinear_taps`), on the integers ``xc = x - z_x``
    (int64, or float32/float64 holding integers) with its height and width along ``dims``;
    int64 result, ``|acc| <= max|xc| 2^(2F)``."""
    one = 1 << BILINEAR_FRAC_BITS
    x = xc.to(torch.int64)
    for dim, (i0, i1, w1) in zip(dims, (taps_h, taps_w)):
        shape = [1] * x.dim()
        shape[dim] = -1
        w1v = w1.to(x.device).view(shape)
        x = (one - w1v) * x.index_select(dim, i0.to(x.device)) + w1v * x.index_select(dim, i1.to(x.device))
    return x


def check_upsample_bilinear_args(x: Tensor, size, scale_factor, align_corners: bool, z_x: int, multiplier: float,
                                 z_y: int, lo: int, hi: int):
    """Validate bilinear-resampling inputs (sizes as :func:`check_upsample_args`); returns ``(oh,
    ow, scale_h, scale_w, z_x, m, z_y, lo, hi)``, the scale factors ``None`` when ``size`` was
    given and ``m`` the multiplier's float32 value."""
    oh, ow, _, _ = check_upsample_args(x, size, scale_factor)
    if not isinstance(align_corners, bool):
        raise ValueError(f"align_corners must be a bool, got {align_corners!r}")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_y = check_int8_zero_point(z_y, "z_y")
    m = float32_value(_check_scale(multiplier, "multiplier"))
    lo, hi = _check_scalar_bounds(lo, hi)
    sh = sw = None
    if scale_factor is not None:
        sf = (scale_factor, scale_factor) if isinstance(scale_factor, numbers.Real) else tuple(scale_factor)
        sh, sw = float(sf[0]), float(sf[1])
    return oh, ow, sh, sw, z_x, m, z_y, lo, hi


def int8_upsample_bilinear(
    x: Tensor,
    size: Union[int, Sequence[int], None],
    scale_factor: Union[float, Sequence[float], None],
    align_corners: bool,
    z_x: int,
    multiplier: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference bilinear resampling of NHWC int8 -> NHWC ``[B, OH, OW, C]`` int8 (any output size).

    ``acc = sum_{a, b} wh_a ww_b (x[i_a, j_b] - z_x)`` exactly (:func:`bilinear_taps`: the two
    source rows and columns of ``F.interpolate(mode="bilinear", align_corners=...)`` and weights
    in steps of ``2^-8`` summing to ``2^8``), then :func:`requantize`'s
    ``clamp(rne(float32(acc) * m) + z_y, lo, hi)`` with ``m = float32((s_x / s_y) / 2^16)``
    computed by the caller. Output size as :func:`check_upsample_args`.
    """
    oh, ow, sh, sw, z_x, m, z_y, lo, hi = check_upsample_bilinear_args(x, size, scale_factor, align_corners, z_x,
                                                                      multiplier, z_y, lo, hi)
    th = bilinear_taps(x.shape[1], oh, align_corners, sh, x.device)
    tw = bilinear_taps(x.shape[2], ow, align_corners, sw, x.device)
    acc = bilinear_accumulate(x.to(torch.int64) - z_x, (1, 2), th, tw).to(torch.float32)
    y = requantize_centered(acc, m, lo - z_y, hi - z_y)
    return (y + z_y).to(torch.int8)
