"""The contract's layers: requantization, GEMM, convolution, depthwise convolution, add (and
the residual add fused into a layer), global average pool, quantization (also into an im2col
matrix) and dequantization."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .helpers import (
    float32_reciprocal, float32_value, FloatOrTensor, INT8_MAX, INT8_MIN, IntOrTensor, Padding, Tensor, unfold_bias,
)
from .checks import (
    check_add_args, check_conv_args, check_depthwise_args, check_epilogue, check_gemm_args, check_int8_zero_point,
    _check_scalar_bounds, check_tensor, conv_output_size, _describe, normalize_padding, normalize_stride,
)
from .exact import exact_accumulate, exact_add, exact_sum, plan_reduction, requantize_centered


def requantize(acc: Tensor, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor) -> Tensor:
    """``clamp(rne(float32(acc) * m) + z_y, lo, hi)`` -> int8; per-channel params broadcast on the last dim.

    ``acc``: the int32 accumulator, or ``float32(acc)`` as :func:`exact_accumulate` returns it.
    Computed by :func:`requantize_centered`.
    """
    y = acc.to(torch.float32)
    return _requantize_owned(y.clone() if y is acc else y, multiplier, z_y, lo, hi)


def _requantize_owned(y: Tensor, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor) -> Tensor:
    """:func:`requantize` of a float32 accumulator ``y`` that it may overwrite."""
    rel_lo = (lo.to(torch.int32) - z_y).to(torch.float32)
    rel_hi = (hi.to(torch.int32) - z_y).to(torch.float32)
    y = requantize_centered(y, multiplier.to(torch.float32), rel_lo, rel_hi)
    return y.add_(z_y).to(torch.int8)  # integers in [lo, hi]: exact in float32 and in int8


def _finish(acc: Tensor, multiplier, z_y, lo, hi, out_int32: bool) -> Tensor:
    """From the result of :func:`exact_accumulate` (bias included; channels last): the int32
    accumulator (wrapped to int32 like the kernels) if ``out_int32``, else the int8 output."""
    if out_int32 or acc.dtype == torch.float64:
        acc = acc.to(torch.int64).to(torch.int32)  # two's complement wrap-around, as the kernels
    if out_int32:
        return acc
    if acc.dtype == torch.float32:  # a new tensor of exact_accumulate's
        return _requantize_owned(acc, multiplier, z_y, lo, hi)
    return requantize(acc, multiplier, z_y, lo, hi)


def _centered(t: Tensor, zp: Union[int, Tensor, None], shape: Sequence[int],
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``t - zp`` in ``dtype``, with a per-channel ``zp`` reshaped to ``shape``. Exact in float32
    for activations (zero points in [-128, 127]); weights, whose int32 zero points may be large,
    are centered in float64 (:func:`plan_reduction` narrows them to float32 only when exact)."""
    out = t.to(dtype)
    if zp is None:
        return out
    if out is t:
        out = out.clone()  # the caller's tensor is never overwritten
    return out.sub_(zp.to(dtype).reshape(shape) if isinstance(zp, Tensor) else float(zp))


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
    # channels last, as x is (exact_accumulate makes float64 convolutions NCHW: channels-last
    # float64 convolution is very slow on the CPU)
    xc = F.pad(_centered(x, z_x, ()).permute(0, 3, 1, 2), (pad[2], pad[3], pad[0], pad[1]))
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
    xc = F.pad(_centered(x, z_x, ()).permute(0, 3, 1, 2), (pad[2], pad[3], pad[0], pad[1]))  # channels last
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
