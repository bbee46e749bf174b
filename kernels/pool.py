"""int8 pooling and resampling kernels, NHWC (Triton): average pools, max pool, nearest upsampling.

Layout follows Triton's tutorials: block sizes, the ``@triton.jit`` kernels, thin launchers, and
a reference check (``python -m kernels.pool``).

* :func:`int8_avgpool`: ``acc[b, c] = sum_{h,w} (x - z_x)`` in int32, then the shared epilogue
  with ``m = s_x / (H * W * s_y)`` (computed by the caller) -> int8 ``[B, C]``.
* :func:`int8_maxpool2d`: windowed max (any stride, padding, dilation, floor or ceil mode) with
  taps outside the input at -128 (below every real value); the output keeps the input's scale and
  zero point (max commutes with the monotone quantizer).
* :func:`int8_avgpool2d`: windowed average, ``acc = sum_taps (x - z_x)`` in int32 over the in-bounds
  taps, divided as ``F.avg_pool2d`` divides (``count_include_pad``, ``ceil_mode``) through a table of
  float32 multipliers ``float32((s_x / s_y) / d)``, one per divisor ``d``.
* :func:`int8_adaptive_avgpool2d`: ``F.adaptive_avg_pool2d``'s windows (of varying sizes), summed
  and divided as the windowed average.
* :func:`int8_upsample_nearest`: nearest-neighbour upsampling with ``F.interpolate``'s indices.
* :func:`int8_upsample_bilinear`: bilinear resampling, ``acc = sum wh ww (x - z_x)`` over the two
  source rows and columns with integer weights (``2^8`` per axis, tables built by the caller from
  ``F.interpolate``'s source coordinates), then the shared epilogue.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence, Union

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    ADAPTIVE_POOL_GPU_CONFIGS,
    AVGPOOL_GPU_META,
    AVGPOOL_GPU_WARPS,
    AVGPOOL_INTERPRET_META,
    DEPTHWISE_GPU_CONFIGS,
    ELEMENTWISE_GPU_BLOCK,
    ELEMENTWISE_GPU_WARPS,
    ELEMENTWISE_INTERPRET_BLOCK,
    INTERPRETED,
    USE_RINT,
    cdiv,
    channel_stride,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .requant import requantize, requantize_channels

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


# =============================================================================================
# Kernels
# =============================================================================================
@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_avgpool_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 [B, C]
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|C] multiplier, int32 [1|C] bounds
    HW, C,
    stride_mult, stride_lo, stride_hi,  # 0 per tensor, 1 per channel
    z_x, z_y,
    USE_RINT: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    img = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_hw = tl.arange(0, BLOCK_HW)
    x_img = x_ptr + img.to(tl.int64) * HW * C
    # -- sum over pixels in a [BLOCK_HW, BLOCK_C] accumulator, reduced once at the end
    part = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.int32)
    for p0 in range(0, HW, BLOCK_HW):
        p = p0 + offs_hw
        xv = tl.load(x_img + p[:, None] * C + offs_c[None, :], mask=(p < HW)[:, None] & mask_c[None, :], other=0)
        part += xv.to(tl.int32)
    acc = tl.sum(part, axis=0) - HW * z_x
    out = requantize_channels(acc, offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                              USE_RINT, ROWS=False)
    tl.store(y_ptr + img.to(tl.int64) * C + offs_c, out, mask=mask_c)


@triton.jit
def _maxpool_tile(
    x_ptr, y_ptr, B, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One (pixels x channels) output tile of the max pool; taps outside the input count as -128."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < B * OH * OW
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    img = offs_p // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    # Padded taps count as -128. They are not loaded with other=-128: Triton (3.6 to 3.8) packs
    # a constant int8 `other` of a vectorized masked load as a sign-extended 32-bit word
    # (0xFFFFFF80, i.e. bytes -128, -1, -1, -1), so padding would read as -1 whenever C allows
    # 16-byte loads. Masked taps load 0 and are replaced by -128 after widening to int32.
    best = tl.full((BLOCK_P, BLOCK_C), -128, dtype=tl.int32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh * dil_h
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * dil_w
            ok = row_ok & (iw >= 0) & (iw < W)
            m = ok[:, None] & mask_c[None, :]
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=m, other=0).to(tl.int32)
            best = tl.maximum(best, tl.where(m, xv, -128))
    y_ptrs = y_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(y_ptrs, best.to(tl.int8), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _int8_maxpool_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    B, H, W, C, OH, OW,
    stride_h, stride_w, pad_top, pad_left,
    P_BUCKET,  # autotune bucket of the pixel count (not used in the body)
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    _maxpool_tile(x_ptr, y_ptr, B, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left, 1, 1,
                  KH, KW, BLOCK_P, BLOCK_C)  # fmt: skip


@triton.jit
def _int8_maxpool_dilated_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    B, H, W, C, OH, OW,
    stride_h, stride_w, pad_top, pad_left,
    dil_h, dil_w,  # spacing of the window taps
    P_BUCKET,  # autotune bucket of the pixel count (not used in the body)
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    _maxpool_tile(x_ptr, y_ptr, B, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                  KH, KW, BLOCK_P, BLOCK_C)  # fmt: skip


_int8_maxpool_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_maxpool_kernel)
_int8_maxpool_dilated_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w", "dil_h", "dil_w"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_maxpool_dilated_kernel)


@triton.jit
def _store_window_average(acc, d, mult_ptr, y_ptr, offs_p, offs_c, mask_p, mask_c, C, z_y, lo, hi,
                          USE_RINT: tl.constexpr):
    """The average pools' epilogue: each pixel's window sum ``acc`` times the multiplier of its
    divisor ``d`` (``mult_ptr[d]``), requantized, stored to the NHWC output (pixels x channels)."""
    mult = tl.load(mult_ptr + d, mask=mask_p, other=0.0)
    out = requantize(acc, mult[:, None], z_y, lo, hi, USE_RINT)
    y_ptrs = y_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(y_ptrs, out, mask=mask_p[:, None] & mask_c[None, :])


@triton.jit(do_not_specialize=["z_x", "z_y", "lo", "hi"])
def _int8_avgpool2d_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    mult_ptr,  # float32 [KH * KW + 1]: multiplier of each divisor d
    B, H, W, C, OH, OW,
    stride_h, stride_w,
    pad_top, pad_bottom, pad_left, pad_right,
    z_x, z_y, lo, hi,  # input zero point; output zero point and bounds
    P_BUCKET,  # autotune bucket of the pixel count (not used in the body)
    COUNT_INCLUDE_PAD: tl.constexpr, USE_RINT: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < B * OH * OW
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    img = offs_p // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    # -- divisor, counted as F.avg_pool2d does: the window clipped to the padded input, then
    #    (without COUNT_INCLUDE_PAD) to the input itself
    ih1 = tl.minimum(ih0 + KH, H + pad_bottom)
    iw1 = tl.minimum(iw0 + KW, W + pad_right)
    if COUNT_INCLUDE_PAD:
        d = (ih1 - ih0) * (iw1 - iw0)
    else:
        d = (tl.minimum(ih1, H) - tl.maximum(ih0, 0)) * (tl.minimum(iw1, W) - tl.maximum(iw0, 0))
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    # -- exact int32 sum of (x - z_x) over the in-bounds taps
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            m = ok[:, None] & mask_c[None, :]
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=m, other=0).to(tl.int32)
            acc += tl.where(m, xv - z_x, 0)
    # -- epilogue with the multiplier of each pixel's divisor (1 <= d <= KH * KW)
    _store_window_average(acc, d, mult_ptr, y_ptr, offs_p, offs_c, mask_p, mask_c, C, z_y, lo, hi, USE_RINT)


_int8_avgpool2d_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_avgpool2d_kernel)


@triton.jit(do_not_specialize=["z_x", "z_y", "lo", "hi"])
def _int8_adaptive_avgpool2d_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    mult_ptr,  # float32 [KH_MAX * KW_MAX + 1]: multiplier of each window size d
    B, H, W, C, OH, OW,
    KH_MAX, KW_MAX,  # the longest window along each axis (runtime loop bounds)
    z_x, z_y, lo, hi,  # input zero point; output zero point and bounds
    P_BUCKET,  # autotune bucket of the pixel count (not used in the body)
    USE_RINT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < B * OH * OW
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    img = offs_p // (OW * OH)
    # -- F.adaptive_avg_pool2d's window: floor(o n / out) <= i < ceil((o + 1) n / out)
    ih0 = (oh * H) // OH
    ih1 = ((oh + 1) * H + OH - 1) // OH
    iw0 = (ow * W) // OW
    iw1 = ((ow + 1) * W + OW - 1) // OW
    d = (ih1 - ih0) * (iw1 - iw0)
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    # -- exact int32 sum of (x - z_x) over the window (windows differ in size: masked taps)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    for kh in range(0, KH_MAX):
        ih = ih0 + kh
        row_ok = mask_p & (ih < ih1)
        for kw in range(0, KW_MAX):
            iw = iw0 + kw
            m = (row_ok & (iw < iw1))[:, None] & mask_c[None, :]
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=m, other=0).to(tl.int32)
            acc += tl.where(m, xv - z_x, 0)
    # -- epilogue with the multiplier of each pixel's window size (1 <= d <= KH_MAX * KW_MAX)
    _store_window_average(acc, d, mult_ptr, y_ptr, offs_p, offs_c, mask_p, mask_c, C, z_y, lo, hi, USE_RINT)


_int8_adaptive_avgpool2d_kernel_tuned = triton.autotune(
    configs=ADAPTIVE_POOL_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH_MAX", "KW_MAX"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_adaptive_avgpool2d_kernel)


@triton.jit
def _nhwc_position(offs, C, OH, OW):
    """``(channel, column, row, image)`` of flat offsets into a contiguous NHWC ``[B, OH, OW, C]``."""
    pix = offs // C
    return offs % C, pix % OW, (pix // OW) % OH, pix // (OW * OH)


@triton.jit
def _int8_upsample_nearest_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    n_elements,
    H, W, C, OH, OW,
    mode_h, scale_h, mode_w, scale_w,  # index rule per axis: 0 copy, 1 halve, 2 floor(float32(o) * scale)
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    c, ow, oh, img = _nhwc_position(offs, C, OH, OW)
    # floor of a non-negative float32 product: the truncating conversion
    ih_f = (oh.to(tl.float32) * scale_h).to(tl.int64)
    iw_f = (ow.to(tl.float32) * scale_w).to(tl.int64)
    ih = tl.where(mode_h == 0, oh, tl.where(mode_h == 1, oh // 2, tl.minimum(ih_f, H - 1)))
    iw = tl.where(mode_w == 0, ow, tl.where(mode_w == 1, ow // 2, tl.minimum(iw_f, W - 1)))
    src = ((img * H + ih) * W + iw) * C + c
    xv = tl.load(x_ptr + src, mask=mask, other=0)
    tl.store(y_ptr + offs, xv, mask=mask)


@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_upsample_bilinear_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    th_ptr, tw_ptr,  # int32 [OH, 3] / [OW, 3]: source index i0, i1 and the weight w1 of i1 (w0 = ONE - w1)
    n_elements,
    H, W, C, OH, OW,
    z_x, m, z_y, lo, hi,
    ONE: tl.constexpr, USE_RINT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    c, ow, oh, img = _nhwc_position(offs, C, OH, OW)
    h0 = tl.load(th_ptr + oh * 3, mask=mask, other=0).to(tl.int64)
    h1 = tl.load(th_ptr + oh * 3 + 1, mask=mask, other=0).to(tl.int64)
    wh1 = tl.load(th_ptr + oh * 3 + 2, mask=mask, other=0)
    w0 = tl.load(tw_ptr + ow * 3, mask=mask, other=0).to(tl.int64)
    w1 = tl.load(tw_ptr + ow * 3 + 1, mask=mask, other=0).to(tl.int64)
    ww1 = tl.load(tw_ptr + ow * 3 + 2, mask=mask, other=0)
    row0 = (img * H + h0) * W
    row1 = (img * H + h1) * W
    x00 = tl.load(x_ptr + (row0 + w0) * C + c, mask=mask, other=0).to(tl.int32) - z_x
    x01 = tl.load(x_ptr + (row0 + w1) * C + c, mask=mask, other=0).to(tl.int32) - z_x
    x10 = tl.load(x_ptr + (row1 + w0) * C + c, mask=mask, other=0).to(tl.int32) - z_x
    x11 = tl.load(x_ptr + (row1 + w1) * C + c, mask=mask, other=0).to(tl.int32) - z_x
    # exact in int32: |acc| <= 255 * ONE^2 < 2^24 (so float32(acc) in the epilogue is exact too)
    top = (ONE - ww1) * x00 + ww1 * x01
    bottom = (ONE - ww1) * x10 + ww1 * x11
    acc = (ONE - wh1) * top + wh1 * bottom
    out = requantize(acc, m, z_y, lo, hi, USE_RINT)
    tl.store(y_ptr + offs, out, mask=mask)


# =============================================================================================
# Launchers
# =============================================================================================
def int8_avgpool(
    x: Tensor,
    z_x: int,
    multiplier: ref.FloatOrTensor,
    z_y: int,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
) -> Tensor:
    """Triton global average pool; same contract as :func:`kernels.reference.int8_avgpool`."""
    z_x, m, z_y, lo, hi = ref.check_avgpool_args(x, z_x, multiplier, z_y, lo, hi)
    B, H, W, C = x.shape
    if H * W * C >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{C} int8 values exceeds the kernel's 2^31 index range")
    y = torch.empty((B, C), dtype=torch.int8, device=x.device)
    if B == 0 or C == 0:
        return y
    meta = AVGPOOL_INTERPRET_META if INTERPRETED else AVGPOOL_GPU_META
    opts = {} if INTERPRETED else {"num_warps": AVGPOOL_GPU_WARPS}
    grid = (B, cdiv(C, meta["BLOCK_C"]))
    _int8_avgpool_kernel[grid](
        x, y, m, lo, hi, H * W, C,
        channel_stride(m), channel_stride(lo), channel_stride(hi), z_x, z_y,
        USE_RINT=USE_RINT, **meta, **opts,
    )  # fmt: skip
    return y


def int8_maxpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: ref.Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Triton max pool; same contract as :func:`kernels.reference.int8_maxpool2d`."""
    ks, stride, pad, dil, _, OH, OW = ref.check_maxpool2d_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    B, H, W, C = x.shape
    y = torch.empty((B, OH, OW, C), dtype=torch.int8, device=x.device)
    P = B * OH * OW
    if P == 0 or C == 0:
        return y
    args = dict(
        x_ptr=x, y_ptr=y, B=B, H=H, W=W, C=C, OH=OH, OW=OW,
        stride_h=stride[0], stride_w=stride[1], pad_top=pad[0], pad_left=pad[2],
        P_BUCKET=next_pow2_bucket(P), KH=ks[0], KW=ks[1],
    )  # fmt: skip
    grid = lambda META: (cdiv(P, META["BLOCK_P"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
    if dil == (1, 1):
        launch(_int8_maxpool_kernel, _int8_maxpool_kernel_tuned, "depthwise", grid, args)
    else:
        args.update(dil_h=dil[0], dil_w=dil[1])
        launch(_int8_maxpool_dilated_kernel, _int8_maxpool_dilated_kernel_tuned, "depthwise", grid, args)
    return y


def int8_avgpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: ref.Padding,
    ceil_mode: bool,
    count_include_pad: bool,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> Tensor:
    """Triton windowed average pool; same contract as :func:`kernels.reference.int8_avgpool2d`."""
    ks, stride, pad, _, cip, OH, OW, z_x, s_x, s_y, z_y, lo, hi = ref.check_avgpool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
    )
    B, H, W, C = x.shape
    y = torch.empty((B, OH, OW, C), dtype=torch.int8, device=x.device)
    P = B * OH * OW
    if P == 0 or C == 0:
        return y
    mult = ref.avgpool2d_multipliers(s_x, s_y, ks[0] * ks[1], x.device)
    args = dict(
        x_ptr=x, y_ptr=y, mult_ptr=mult, B=B, H=H, W=W, C=C, OH=OH, OW=OW,
        stride_h=stride[0], stride_w=stride[1],
        pad_top=pad[0], pad_bottom=pad[1], pad_left=pad[2], pad_right=pad[3],
        z_x=z_x, z_y=z_y, lo=lo, hi=hi, P_BUCKET=next_pow2_bucket(P),
        COUNT_INCLUDE_PAD=cip, USE_RINT=USE_RINT, KH=ks[0], KW=ks[1],
    )  # fmt: skip
    grid = lambda META: (cdiv(P, META["BLOCK_P"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
    launch(_int8_avgpool2d_kernel, _int8_avgpool2d_kernel_tuned, "depthwise", grid, args)
    return y


def int8_adaptive_avgpool2d(
    x: Tensor,
    output_size: Union[int, Sequence[int]],
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> Tensor:
    """Triton adaptive average pool; same contract as :func:`kernels.reference.int8_adaptive_avgpool2d`."""
    OH, OW, z_x, s_x, s_y, z_y, lo, hi = ref.check_adaptive_avgpool2d_args(x, output_size, z_x, x_scale, y_scale,
                                                                           z_y, lo, hi)
    B, H, W, C = x.shape
    y = torch.empty((B, OH, OW, C), dtype=torch.int8, device=x.device)
    P = B * OH * OW
    if P == 0 or C == 0:
        return y
    kh, kw = ref.adaptive_window_max(H, OH), ref.adaptive_window_max(W, OW)
    mult = ref.avgpool2d_multipliers(s_x, s_y, kh * kw, x.device)
    args = dict(
        x_ptr=x, y_ptr=y, mult_ptr=mult, B=B, H=H, W=W, C=C, OH=OH, OW=OW, KH_MAX=kh, KW_MAX=kw,
        z_x=z_x, z_y=z_y, lo=lo, hi=hi, P_BUCKET=next_pow2_bucket(P), USE_RINT=USE_RINT,
    )  # fmt: skip
    grid = lambda META: (cdiv(P, META["BLOCK_P"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
    launch(_int8_adaptive_avgpool2d_kernel, _int8_adaptive_avgpool2d_kernel_tuned, "depthwise", grid, args)
    return y


def int8_upsample_nearest(
    x: Tensor,
    size: Union[int, Sequence[int], None] = None,
    scale_factor: Union[float, Sequence[float], None] = None,
) -> Tensor:
    """Triton nearest upsampling; same contract as :func:`kernels.reference.int8_upsample_nearest`."""
    OH, OW, (mode_h, scale_h), (mode_w, scale_w) = ref.check_upsample_args(x, size, scale_factor)
    B, H, W, C = x.shape
    y = torch.empty((B, OH, OW, C), dtype=torch.int8, device=x.device)
    n = y.numel()
    if n == 0:
        return y
    block = ELEMENTWISE_INTERPRET_BLOCK if INTERPRETED else ELEMENTWISE_GPU_BLOCK
    opts = {} if INTERPRETED else {"num_warps": ELEMENTWISE_GPU_WARPS}
    _int8_upsample_nearest_kernel[(cdiv(n, block),)](
        x, y, n, H, W, C, OH, OW, mode_h, scale_h, mode_w, scale_w, BLOCK=block, **opts
    )  # fmt: skip
    return y


@functools.lru_cache(maxsize=256)
def _bilinear_table(n_in: int, n_out: int, align_corners: bool, scale, device: torch.device) -> Tensor:
    """int32 ``[n_out, 3]`` rows ``(i0, i1, w1)`` of :func:`kernels.reference.bilinear_taps` on
    ``device``, built and copied once per axis size (no host-to-device copy per call)."""
    taps = torch.stack(ref.bilinear_taps(n_in, n_out, align_corners, scale), 1)
    return taps.to(device=device, dtype=torch.int32).contiguous()


def int8_upsample_bilinear(
    x: Tensor,
    size: Union[int, Sequence[int], None],
    scale_factor: Union[float, Sequence[float], None],
    align_corners: bool,
    z_x: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> Tensor:
    """Triton bilinear resampling; same contract as :func:`kernels.reference.int8_upsample_bilinear`."""
    OH, OW, sh, sw, z_x, m, z_y, lo, hi = ref.check_upsample_bilinear_args(x, size, scale_factor, align_corners, z_x,
                                                                          multiplier, z_y, lo, hi)
    B, H, W, C = x.shape
    y = torch.empty((B, OH, OW, C), dtype=torch.int8, device=x.device)
    n = y.numel()
    if n == 0:
        return y
    th = _bilinear_table(H, OH, align_corners, sh, x.device)
    tw = _bilinear_table(W, OW, align_corners, sw, x.device)
    block = ELEMENTWISE_INTERPRET_BLOCK if INTERPRETED else ELEMENTWISE_GPU_BLOCK
    opts = {} if INTERPRETED else {"num_warps": ELEMENTWISE_GPU_WARPS}
    _int8_upsample_bilinear_kernel[(cdiv(n, block),)](
        x, y, th, tw, n, H, W, C, OH, OW, z_x, m, z_y, lo, hi,
        ONE=1 << ref.BILINEAR_FRAC_BITS, USE_RINT=USE_RINT, BLOCK=block, **opts
    )  # fmt: skip
    return y


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare the pools and the nearest upsampling with the reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (3, 9, 7, 70), generator=g, dtype=torch.int8).to(device)
    m = ref.float32_value(0.9 / 63)
    ok = torch.equal(int8_avgpool(x, -3, m, 2), ref.int8_avgpool(x, -3, m, 2))
    ok &= torch.equal(int8_maxpool2d(x, 3, 2, 1), ref.int8_maxpool2d(x, 3, 2, 1))
    ok &= torch.equal(int8_maxpool2d(x, 3, 2, 1, 2, True), ref.int8_maxpool2d(x, 3, 2, 1, 2, True))
    for ceil_mode, cip in ((False, True), (True, False)):
        args = (3, 2, 1, ceil_mode, cip, -3, 0.05, 0.04, 2)
        ok &= torch.equal(int8_avgpool2d(x, *args), ref.int8_avgpool2d(x, *args))
    for size in ((4, 3), (9, 14), (None, 5)):
        args = (size, -3, 0.05, 0.04, 2)
        ok &= torch.equal(int8_adaptive_avgpool2d(x, *args), ref.int8_adaptive_avgpool2d(x, *args))
    for size, sf in ((None, 2), ((13, 10), None)):
        ok &= torch.equal(int8_upsample_nearest(x, size, sf), ref.int8_upsample_nearest(x, size, sf))
        args = (size, sf, False, -3, ref.float32_value(0.8 / 65536), 2)
        ok &= torch.equal(int8_upsample_bilinear(x, *args), ref.int8_upsample_bilinear(x, *args))
    logger.info("pool reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
