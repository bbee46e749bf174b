"""int8 depthwise 2-D convolution, NHWC, with the fused requantization epilogue (Triton).

Layout follows Triton's matmul tutorial: tile configurations, the ``@triton.jit`` kernel, a thin
launcher, and a reference check (``python -m kernels.depthwise``).

Each program owns a ``BLOCK_P`` output pixels x ``BLOCK_C`` channels tile; channels are the
contiguous NHWC dimension, so every tap is one vectorized load per pixel row. The weight is
``[KH, KW, C]`` (one contiguous channel vector per tap). There are no tensor cores here: the
kernel is a memory-bound stencil on CUDA cores (``KH``/``KW`` constexpr; window columns unrolled).

``acc[p, c] = sum_taps (x - z_x)(w - z_w[c]) + bias[c]`` is computed as
``sum_taps x * w' + (bias - z_x * sum_taps w')`` with ``w' = w - z_w`` (the per-channel correction
is built in the kernel from the same weight vectors). Padded taps load ``z_x``, so they add
``z_x * w'`` to the first sum and cancel exactly against the correction.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    DEPTHWISE_GPU_CONFIGS,
    DEPTHWISE_ROWS_GPU_CONFIGS,
    DEPTHWISE_ROWS_MAX_KH,
    USE_RINT,
    cdiv,
    depthwise_variant,
    epilogue_args,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .requant import load_channel_params, requantize, requantize_channels

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_depthwise_kernel(
    # Pointers: input, weight, per-channel vectors, output
    x_ptr, w_ptr,  # int8 NHWC [B, H, W, C], int8 [KH, KW, C]
    bias_ptr, wzp_ptr,  # int32 [C], int32 [1|C] weight zero point
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|C] multiplier, int32 [1|C] bounds
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, C]
    # Geometry
    B, H, W, C, OH, OW,
    stride_h, stride_w, pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Zero points
    z_x, z_y,
    # Autotune bucket of the pixel count (not used in the body)
    P_BUCKET,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    P = B * OH * OW

    # -- output pixels (flattened b, oh, ow) and channels of this tile
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    img = offs_p // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)  # [BLOCK_P] int64 image base
    zx8 = z_x.to(tl.int8)
    if HAS_WZP:
        zw = tl.load(wzp_ptr + offs_c * stride_wzp, mask=mask_c, other=0)

    # -- taps: acc += x * (w - z_w); w_sum collects sum_taps (w - z_w). Window rows are a loop and
    #    columns are unrolled: unrolling both lets the compiler hoist every tap's loads and
    #    spill registers (measured on sm_90), one row of taps at a time keeps ~110-140 registers.
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    w_sum = tl.zeros((BLOCK_C,), dtype=tl.int32)
    for kh in range(KH):
        ih = ih0 + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            wv = tl.load(w_ptr + (kh * KW + kw) * C + offs_c, mask=mask_c, other=0).to(tl.int32)
            if HAS_WZP:
                wv = tl.where(mask_c, wv - zw, 0)
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=ok[:, None] & mask_c[None, :], other=zx8)
            acc += xv.to(tl.int32) * wv[None, :]
            w_sum += wv

    # -- per-channel correction: bias - z_x * sum_taps (w - z_w)
    corr = -z_x * w_sum
    if HAS_BIAS:
        corr += tl.load(bias_ptr + offs_c, mask=mask_c, other=0)
    acc += corr[None, :]

    # -- epilogue and store
    y_ptrs = y_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    mask = mask_p[:, None] & mask_c[None, :]
    if OUT_INT32:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        out = requantize_channels(acc, offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                                  USE_RINT, ROWS=True)
        tl.store(y_ptrs, out, mask=mask)


_int8_depthwise_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w", "HAS_WZP", "OUT_INT32"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_depthwise_kernel)


@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_depthwise_rows_kernel(
    # Pointers: input, weight, per-channel vectors, output
    x_ptr, w_ptr,  # int8 NHWC [B, H, W, C], int8 [KH, KW, C]
    bias_ptr, wzp_ptr,  # int32 [C], int32 [1|C] weight zero point
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|C] multiplier, int32 [1|C] bounds
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, C]
    # Geometry (stride 1)
    B, H, W, C, OH, OW,
    pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Zero points
    z_x, z_y,
    # Autotune bucket of the pixel count (not used in the body)
    P_BUCKET,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Stride-1 depthwise convolution, ``KH <= 5``: the program owns ``BLOCK_W`` output columns x
    ``BLOCK_C`` channels of one image and walks down its rows. Input row ``t - pad_top`` is
    loaded once per window column and added into the ``KH`` output rows that use it: ``a_j``
    holds output row ``t - j`` and receives window row ``j``; ``a_{KH-1}`` is then complete and
    stored, and the accumulators shift by one row. Each input element is loaded ``KW`` times
    instead of ``KH * KW``. Same arithmetic as :func:`_int8_depthwise_kernel`."""
    pid_bw = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_wb = tl.cdiv(OW, BLOCK_W)
    img = pid_bw // n_wb
    offs_w = (pid_bw - img * n_wb) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_w = offs_w < OW
    mask_c = offs_c < C
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    y_img = y_ptr + img.to(tl.int64) * (OH * OW * C)
    zx8 = z_x.to(tl.int8)
    if HAS_WZP:
        zw = tl.load(wzp_ptr + offs_c * stride_wzp, mask=mask_c, other=0)

    # -- per-channel correction: bias - z_x * sum_taps (w - z_w) (padded taps load z_x and cancel)
    w_sum = tl.zeros((BLOCK_C,), dtype=tl.int32)
    for tap in tl.static_range(KH * KW):
        wv = tl.load(w_ptr + tap * C + offs_c, mask=mask_c, other=0).to(tl.int32)
        if HAS_WZP:
            wv = tl.where(mask_c, wv - zw, 0)
        w_sum += wv
    corr = -z_x * w_sum
    if HAS_BIAS:
        corr += tl.load(bias_ptr + offs_c, mask=mask_c, other=0)
    if not OUT_INT32:
        mult, lo, hi = load_channel_params(offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr,
                                           stride_hi)  # fmt: skip

    # -- one accumulator per window row (unused ones are compiled out)
    a0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)
    a1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)
    a2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)
    a3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)
    a4 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)
    for t in range(0, OH + KH - 1):
        ih = t - pad_top
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = offs_w - pad_left + kw
            ok = (iw >= 0) & (iw < W) & row_ok
            x_ptrs = x_img + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=ok[:, None] & mask_c[None, :], other=zx8).to(tl.int32)
            for j in tl.static_range(KH):
                wv = tl.load(w_ptr + (j * KW + kw) * C + offs_c, mask=mask_c, other=0).to(tl.int32)
                if HAS_WZP:
                    wv = tl.where(mask_c, wv - zw, 0)
                if j == 0:
                    a0 += xv * wv[None, :]
                elif j == 1:
                    a1 += xv * wv[None, :]
                elif j == 2:
                    a2 += xv * wv[None, :]
                elif j == 3:
                    a3 += xv * wv[None, :]
                else:
                    a4 += xv * wv[None, :]
        # -- output row t - (KH - 1) is complete: epilogue and store; then shift the rows
        if KH == 1:
            done = a0
        elif KH == 2:
            done = a1
        elif KH == 3:
            done = a2
        elif KH == 4:
            done = a3
        else:
            done = a4
        oh = t - (KH - 1)
        acc = done + corr[None, :]
        y_ptrs = y_img + ((oh * OW + offs_w) * C)[:, None] + offs_c[None, :]
        mask = ((oh >= 0) & mask_w)[:, None] & mask_c[None, :]
        if OUT_INT32:
            tl.store(y_ptrs, acc, mask=mask)
        else:
            tl.store(y_ptrs, requantize(acc, mult[None, :], z_y, lo[None, :], hi[None, :], USE_RINT), mask=mask)
        if KH >= 5:
            a4 = a3
        if KH >= 4:
            a3 = a2
        if KH >= 3:
            a2 = a1
        if KH >= 2:
            a1 = a0
        a0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.int32)


_int8_depthwise_rows_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_ROWS_GPU_CONFIGS,
    key=["P_BUCKET", "C", "OW", "KH", "KW", "HAS_WZP", "OUT_INT32"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",), "BLOCK_W": ("OW",)})},
)(_int8_depthwise_rows_kernel)


# =============================================================================================
# Launcher
# =============================================================================================
class DepthwisePlan:
    """The depthwise launch with its weight-side arguments bound once; calling it on an NHWC
    ``x`` checks ``x`` (dtype, rank, channels, layout, device), sizes the output and launches.

    The arguments must already be validated and normalized (as
    :func:`kernels.reference.check_depthwise_args` returns them).
    """

    def __init__(
        self,
        w: Tensor,
        bias: Optional[Tensor],
        w_zp: Optional[Tensor],
        multiplier: Tensor,
        z_x: int,
        z_y: int,
        lo: Tensor,
        hi: Tensor,
        stride: Tuple[int, int],
        pad: Tuple[int, int, int, int],
        out_int32: bool,
    ) -> None:
        KH, KW, C = w.shape
        self.KH, self.KW, self.C = KH, KW, C
        self.stride, self.pad = stride, pad
        self.rows_ok = stride == (1, 1) and KH <= DEPTHWISE_ROWS_MAX_KH  # the rows variant applies
        self.device = w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        self.static = dict(
            w_ptr=w, C=C, stride_h=stride[0], stride_w=stride[1], pad_top=pad[0], pad_left=pad[2], z_x=z_x, z_y=z_y,
            KH=KH, KW=KW, OUT_INT32=out_int32, USE_RINT=USE_RINT, **epilogue_args(bias, w_zp, multiplier, lo, hi),
        )  # fmt: skip
        # the rows kernel takes no stride arguments (stride 1)
        self.static_rows = {k: v for k, v in self.static.items() if k not in ("stride_h", "stride_w")}

    def __call__(self, x: Tensor) -> Tensor:
        B, H, W, C = ref.check_nhwc_input(x, self.C, self.device)
        OH, OW = ref.conv_output_size(H, W, self.KH, self.KW, self.stride, self.pad)
        y = torch.empty((B, OH, OW, C), dtype=self.out_dtype, device=x.device)
        P = B * OH * OW
        if P == 0 or C == 0:
            return y
        rows = self.rows_ok and depthwise_variant() == "rows"
        args = dict(self.static_rows if rows else self.static, x_ptr=x, y_ptr=y, B=B, H=H, W=W, OH=OH, OW=OW,
                    P_BUCKET=next_pow2_bucket(P))
        if rows:
            grid = lambda META: (B * cdiv(OW, META["BLOCK_W"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
            launch(_int8_depthwise_rows_kernel, _int8_depthwise_rows_kernel_tuned, "depthwise_rows", grid, args)
            return y
        grid = lambda META: (cdiv(P, META["BLOCK_P"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
        launch(_int8_depthwise_kernel, _int8_depthwise_kernel_tuned, "depthwise", grid, args)
        return y


def int8_depthwise_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: ref.Padding = 0,
    out_int32: bool = False,
) -> Tensor:
    """Triton depthwise convolution; same contract as :func:`kernels.reference.int8_depthwise_conv2d`.

    ``x`` int8 NHWC ``[B, H, W, C]``, ``w`` int8 ``[KH, KW, C]`` (both contiguous), any window size;
    ``padding`` ``(top, bottom, left, right)``; returns int8 NHWC ``[B, OH, OW, C]``.
    """
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = ref.check_depthwise_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding
    )
    return DepthwisePlan(w, bias, w_zp, m, z_x, z_y, lo, hi, stride, pad, out_int32)(x)


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare with the reference on a 5x5 stride-2 case with asymmetric padding."""
    g = torch.Generator().manual_seed(0)
    C = 70
    x = torch.randint(-128, 128, (2, 13, 10, C), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-128, 128, (5, 5, C), generator=g, dtype=torch.int8).to(device)
    bias = torch.randint(-5000, 5000, (C,), generator=g, dtype=torch.int32).to(device)
    mult = (torch.rand(C, generator=g) * 1e-2).to(device)
    w_zp = torch.randint(-3, 4, (C,), generator=g, dtype=torch.int32).to(device)
    kwargs = dict(z_x=9, w_zp=w_zp, z_y=-4, lo=-128, hi=100, stride=2, padding=(1, 2, 1, 2))
    ok = torch.equal(
        int8_depthwise_conv2d(x, w, bias, mult, **kwargs), ref.int8_depthwise_conv2d(x, w, bias, mult, **kwargs)
    )
    logger.info("int8_depthwise_conv2d reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return ok


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
