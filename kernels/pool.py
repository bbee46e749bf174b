"""int8 pooling kernels, NHWC (Triton): global average pool and max pool.

Layout follows Triton's tutorials: block sizes, the ``@triton.jit`` kernels, thin launchers, and
a reference check (``python -m kernels.pool``).

* :func:`int8_avgpool`: ``acc[b, c] = sum_{h,w} (x - z_x)`` in int32, then the shared epilogue
  with ``m = s_x / (H * W * s_y)`` (computed by the caller) -> int8 ``[B, C]``.
* :func:`int8_maxpool2d`: windowed max with padded taps at -128 (below every real value); the
  output keeps the input's scale and zero point (max commutes with the monotone quantizer).
"""

from __future__ import annotations

import logging
from typing import Sequence, Union

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    AVGPOOL_GPU_META,
    AVGPOOL_GPU_WARPS,
    AVGPOOL_INTERPRET_META,
    DEPTHWISE_GPU_CONFIGS,
    INTERPRETED,
    USE_RINT,
    cdiv,
    channel_stride,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .requant import requantize_channels

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
def _int8_maxpool_kernel(
    x_ptr, y_ptr,  # int8 NHWC [B, H, W, C], int8 NHWC [B, OH, OW, C]
    B, H, W, C, OH, OW,
    stride_h, stride_w, pad_top, pad_left,
    P_BUCKET,  # autotune bucket of the pixel count (not used in the body)
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
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    # Padded taps count as -128. They are not loaded with other=-128: Triton (3.6 to 3.8) packs
    # a constant int8 `other` of a vectorized masked load as a sign-extended 32-bit word
    # (0xFFFFFF80, i.e. bytes -128, -1, -1, -1), so padding would read as -1 whenever C allows
    # 16-byte loads. Masked taps load 0 and are replaced by -128 after widening to int32.
    best = tl.full((BLOCK_P, BLOCK_C), -128, dtype=tl.int32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            m = ok[:, None] & mask_c[None, :]
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=m, other=0).to(tl.int32)
            best = tl.maximum(best, tl.where(m, xv, -128))
    y_ptrs = y_ptr + offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(y_ptrs, best.to(tl.int8), mask=mask_p[:, None] & mask_c[None, :])


_int8_maxpool_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_C": ("C",)})},
)(_int8_maxpool_kernel)


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
    stride: Union[int, Sequence[int]],
    padding: ref.Padding = 0,
) -> Tensor:
    """Triton max pool; same contract as :func:`kernels.reference.int8_maxpool2d`."""
    ks, stride, pad = ref.check_maxpool_args(x, kernel_size, stride, padding)
    B, H, W, C = x.shape
    if H * W * C >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{C} int8 values exceeds the kernel's 2^31 index range")
    OH, OW = ref.conv_output_size(H, W, ks[0], ks[1], stride, pad)
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
    launch(_int8_maxpool_kernel, _int8_maxpool_kernel_tuned, "depthwise", grid, args)
    return y


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare both pools with the reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (3, 9, 7, 70), generator=g, dtype=torch.int8).to(device)
    m = ref.float32_value(0.9 / 63)
    ok = torch.equal(int8_avgpool(x, -3, m, 2), ref.int8_avgpool(x, -3, m, 2))
    ok &= torch.equal(int8_maxpool2d(x, 3, 2, 1), ref.int8_maxpool2d(x, 3, 2, 1))
    logger.info("pool reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
